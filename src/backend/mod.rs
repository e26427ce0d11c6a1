//! Backend selection: the only place that names concrete Burn backends.
//!
//! Everything else in the crate is generic over [`AdCorreBackend`]: a Burn backend with
//! adcorre's own operations ([`ops`]), which each backend here implements (generic defaults,
//! host kernels on `flex`, a backward step per operation on `Autodiff`). The cargo features
//! pick which backends exist: `flex` (default, Burn's fast CPU backend), `ndarray`, `cuda`.

#[cfg(not(any(feature = "flex", feature = "ndarray")))]
compile_error!("adcorre needs a CPU backend: enable the `flex` (default) or `ndarray` feature");

/// Burn's `flex` CPU backend (f32).
#[cfg(feature = "flex")]
pub type Flex = burn::backend::Flex;

/// Burn's `ndarray` CPU backend (f32).
#[cfg(feature = "ndarray")]
pub type NdArray = burn::backend::NdArray;

/// The default CPU backend: `flex` when enabled (the fastest measured), else `ndarray`.
#[cfg(feature = "flex")]
pub type Cpu = Flex;
/// The default CPU backend: `flex` when enabled (the fastest measured), else `ndarray`.
#[cfg(all(not(feature = "flex"), feature = "ndarray"))]
pub type Cpu = NdArray;

/// The CUDA backend (libraries are loaded at run time; building needs no CUDA toolkit).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// Burn's wgpu backend (CubeCL kernels compiled to WGSL, on a Vulkan, Metal or DX12 driver).
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu;

/// Burn's wgpu backend without its kernel fusion: the same kernels launched one operation at
/// a time, to tell fusion's effect apart.
#[cfg(feature = "wgpu")]
pub type WgpuUnfused = burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;

/// A backend with automatic differentiation, for training.
#[cfg(feature = "train")]
pub type Autodiff<B> = burn::backend::Autodiff<B>;

/// The default CPU training backend.
#[cfg(feature = "train")]
pub type CpuAutodiff = Autodiff<Cpu>;

/// The device of the default CPU backend.
pub fn cpu_device() -> burn::tensor::Device<Cpu> {
    Default::default()
}

#[cfg(feature = "train")]
mod autodiff;
#[cfg(feature = "flex")]
mod flex;
mod generic;
#[cfg(feature = "flex")]
mod host_conv;
#[cfg(feature = "flex")]
mod host_isa;
#[cfg(feature = "flex")]
mod host_kernels;
#[cfg(feature = "flex")]
mod host_matmul;
pub mod host_profile;
#[cfg(feature = "flex")]
mod host_simd;
#[cfg(feature = "flex")]
mod host_training;
#[cfg(feature = "flex")]
pub mod host_xception;
pub mod ops;

pub use ops::AdCorreBackend;
#[cfg(feature = "train")]
pub use ops::AdCorreAutodiffBackend;

#[cfg(feature = "ndarray")]
impl AdCorreBackend for NdArray {}

/// `ndarray` in double precision (reference computations).
#[cfg(feature = "ndarray")]
impl AdCorreBackend for burn::backend::NdArray<f64> {}

#[cfg(feature = "cuda")]
impl AdCorreBackend for Cuda {}

#[cfg(feature = "wgpu")]
impl AdCorreBackend for Wgpu {
    const MOVES_TENSORS_BETWEEN_DEVICES: bool = false;
}

#[cfg(feature = "wgpu")]
impl AdCorreBackend for WgpuUnfused {
    const MOVES_TENSORS_BETWEEN_DEVICES: bool = false;
}
