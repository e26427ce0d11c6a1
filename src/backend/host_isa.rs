//! The widest vector instruction set of this CPU, for the host kernels' own loops.
//!
//! The crate is built for baseline x86-64, so the loops that LLVM vectorises in the host
//! kernels (depthwise convolution, pooling, the reads that add a bias and a ReLU) get SSE2's
//! four lanes. A kernel defined with [`isa_kernel`] is compiled for AVX-512 and AVX2 as well,
//! and its callers pass [`detected`]'s choice. Only the vector width changes: Rust never fuses
//! a multiply and an add into one rounding, so every result is bit-identical to the
//! baseline's. The matrix products are the `gemm` crate's, which picks its own kernels the
//! same way.

/// The instruction sets an [`isa_kernel`] is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VectorIsa {
    /// AVX-512F: 16 floats per vector.
    Avx512,
    /// AVX2: 8 floats per vector.
    Avx2,
    /// What the crate is built for (SSE2 on x86-64).
    Baseline,
}

/// The instruction set for the kernels on this CPU: the widest it has, capped by the
/// environment variable `ADCORRE_HOST_ISA` (`avx2` or `baseline`), which measures the narrower
/// paths on a machine that has the wider ones.
pub(crate) fn detected() -> VectorIsa {
    static DETECTED: std::sync::OnceLock<VectorIsa> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| {
        let cap = std::env::var("ADCORRE_HOST_ISA").unwrap_or_default().to_ascii_lowercase();
        let allowed = |isa: VectorIsa| match cap.as_str() {
            "avx2" => isa != VectorIsa::Avx512,
            "baseline" => isa == VectorIsa::Baseline,
            _ => true,
        };
        supported().into_iter().find(|&isa| allowed(isa)).unwrap_or(VectorIsa::Baseline)
    })
}

/// The instruction sets of [`VectorIsa`] that this CPU has, widest first (always ending with
/// [`VectorIsa::Baseline`]).
pub(crate) fn supported() -> Vec<VectorIsa> {
    let mut isas = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            isas.push(VectorIsa::Avx512);
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            isas.push(VectorIsa::Avx2);
        }
    }
    isas.push(VectorIsa::Baseline);
    isas
}

/// Defines a kernel function compiled three times (for AVX-512, AVX2 and the baseline), with
/// the instruction set as an extra first argument: `fn name(isa: VectorIsa, args...)` runs the
/// copy for `isa` if the CPU has it, else the baseline's. The body is inlined into each copy,
/// with whatever it calls that is `#[inline]` or `#[inline(always)]`; arguments are plain
/// names.
macro_rules! isa_kernel {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name(isa: $crate::backend::host_isa::VectorIsa, $($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn kernel($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::backend::host_isa::VectorIsa;
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($arg: $ty),*) {
                    kernel($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) {
                    kernel($($arg),*)
                }
                match isa {
                    // SAFETY: the CPU has AVX-512F, as just checked.
                    VectorIsa::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => return unsafe { avx512($($arg),*) },
                    // SAFETY: the CPU has AVX2, as just checked.
                    VectorIsa::Avx2 if std::arch::is_x86_feature_detected!("avx2") => return unsafe { avx2($($arg),*) },
                    _ => {}
                }
            }
            let _ = isa;
            kernel($($arg),*)
        }
    };
}
pub(crate) use isa_kernel;

#[cfg(test)]
mod tests {
    use super::*;

    isa_kernel! {
        /// A loop that LLVM vectorises: products, sums and maxima of neighbours.
        fn blend(x: &[f32], out: &mut [f32]) {
            for (o, w) in out.iter_mut().zip(x.windows(3)) {
                *o = (0.5 * w[0] + 1.25 * w[1] - 0.75 * w[2]).max(w[1] * 0.1);
            }
        }
    }

    /// Every supported instruction set computes the baseline's bits (NaN and -0 included).
    #[test]
    fn every_instruction_set_gives_the_baseline_bits() {
        let x: Vec<f32> = (0..1000).map(|i| ((i * 7919 % 1001) as f32 - 500.0) / 37.0).chain([f32::NAN, -0.0, 3.0]).collect();
        let run = |isa| {
            let mut out = vec![0.0f32; x.len() - 2];
            blend(isa, &x, &mut out);
            out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
        };
        let baseline = run(VectorIsa::Baseline);
        assert!(supported().contains(&detected()));
        for isa in supported() {
            assert_eq!(run(isa), baseline, "{isa:?}");
        }
    }
}
