//! Host-memory kernels for the two layers that Burn's CPU backend runs slowest in Xception
//! inference: 3x3 max pooling with stride 2 (a scalar loop that also writes indices) and the
//! 3x3 depthwise convolution (short per-plane rows).
//!
//! Model code calls the typed entry points ([`same_max_pool_3x3_stride2`],
//! [`depthwise_conv_3x3`]); they run the kernel when the tensor lives on the `flex` backend
//! (f32, no autodiff: the kernels have no backward pass) and hand the input back otherwise, so
//! the caller falls back on Burn's generic operation. `flex` tensors move to and from host data
//! without copying, so the kernels add no traffic. Both kernels reproduce Burn's results: the
//! pooling takes the maximum of the same elements, the convolution adds the same products in
//! the same order (checked against Burn in the tests below).

use std::sync::atomic::{AtomicBool, Ordering};

use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use rayon::prelude::*;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Switches the host kernels on or off for the whole process (on by default). Off, every layer
/// runs Burn's generic operation: to measure what the kernels bring (`adcorre bench
/// --no-host-kernels`) or to rule them out when results differ.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether the host kernels are switched on (see [`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Pads of TensorFlow's "same" rule for one axis: `(before, after)`.
fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out.max(1) - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// 3x3 max pooling, stride 2, TensorFlow "same" padding (padded cells never win), on NCHW
/// data of shape `dims`: returns `[n, c, ceil(h/2), ceil(w/2)]`.
pub fn max_pool_3x3_stride2_same(input: &[f32], dims: [usize; 4]) -> (Vec<f32>, [usize; 4]) {
    let [n, c, h, w] = dims;
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let mut output = vec![0.0f32; n * c * ho * wo];
    max_pool_planes(input, &mut output, [h, w], false);
    (output, [n, c, ho, wo])
}

/// [`max_pool_3x3_stride2_same`] on every `h x w` plane of `input` (in any plane order), each
/// written to the plane of `output` at the same index, or added to it when `accumulate` (the
/// host backbone adds the pooled branch onto the shortcut this way).
pub(crate) fn max_pool_planes(input: &[f32], output: &mut [f32], [h, w]: [usize; 2], accumulate: bool) {
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let (top, _) = same_padding(h, 3, 2);
    let (left, _) = same_padding(w, 3, 2);
    if output.is_empty() {
        return;
    }
    output
        .par_chunks_mut(ho * wo)
        .zip(input.par_chunks(h * w))
        .for_each_init(
            || vec![f32::NEG_INFINITY; 2 * wo + 1],
            |window_row, (out_plane, plane)| max_pool_plane(plane, out_plane, [h, w], [top, left], accumulate, window_row),
        );
}

/// One plane of [`max_pool_planes`]. `window_row` holds `2 * wo + 1` floats, -inf outside
/// `left..left + w`: per output row it receives the column maxima of the (up to) three input
/// rows at the padded positions, so every output is the maximum of three neighbours.
fn max_pool_plane(
    plane: &[f32],
    out_plane: &mut [f32],
    [h, w]: [usize; 2],
    [top, left]: [usize; 2],
    accumulate: bool,
    window_row: &mut [f32],
) {
    let wo = w.div_ceil(2);
    for (oh, out_row) in out_plane.chunks_mut(wo).enumerate() {
        let first = (2 * oh).saturating_sub(top);
        let last = (2 * oh + 3 - top).min(h);
        let column_max = &mut window_row[left..left + w];
        column_max.copy_from_slice(&plane[first * w..(first + 1) * w]);
        for row in first + 1..last {
            for (m, &v) in column_max.iter_mut().zip(&plane[row * w..(row + 1) * w]) {
                *m = m.max(v);
            }
        }
        let pairs = window_row.chunks_exact(2);
        let thirds = window_row[2..].iter().step_by(2);
        for ((out, pair), &third) in out_row.iter_mut().zip(pairs).zip(thirds) {
            let max = pair[0].max(pair[1]).max(third);
            *out = if accumulate { *out + max } else { max };
        }
    }
}

/// Depthwise 3x3 convolution, stride 1, padding 1 on every side (TensorFlow "same" for this
/// kernel), on NCHW data of shape `dims` with weights `[c, 1, 3, 3]` and an optional bias `[c]`.
/// Each output is `((0 + w00 x00) + w01 x01) + ... + w22 x22`, then `+ bias`: Burn's order.
pub fn depthwise_conv_3x3_same(
    input: &[f32],
    dims: [usize; 4],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let [_, c, h, w] = dims;
    let mut output = vec![0.0f32; input.len()];
    depthwise_planes(input, &mut output, [h, w], weight, bias, |plane| plane % c, InputRead::default());
    output
}

/// How a kernel reads its input values: plus a per-channel bias they still lack (a 1x1
/// product of the host pass leaves its bias to the layers that read its output), then the ReLU
/// that precedes the layer if `relu`. The default reads values as they are.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct InputRead<'a> {
    /// Bias to add, per channel.
    pub bias: Option<&'a [f32]>,
    /// Whether to apply `max(x, 0)` (after the bias).
    pub relu: bool,
}

impl InputRead<'_> {
    /// Writes `values` (of channel `channel`), read this way, into `target`.
    pub(crate) fn copy<'v>(&self, channel: usize, values: impl Iterator<Item = &'v f32>, target: &mut [f32]) {
        let pairs = target.iter_mut().zip(values);
        match (self.bias.map(|bias| bias[channel]), self.relu) {
            (Some(b), true) => pairs.for_each(|(t, &v)| *t = (v + b).max(0.0)),
            (Some(b), false) => pairs.for_each(|(t, &v)| *t = v + b),
            (None, true) => pairs.for_each(|(t, &v)| *t = v.max(0.0)),
            (None, false) => pairs.for_each(|(t, &v)| *t = v),
        }
    }
}

/// [`depthwise_conv_3x3_same`] on every `h x w` plane of `input`, plane `p` filtered by channel
/// `channel_of(p)` (so any plane order works), of the input read as `read` says (the ReLU before
/// a separable convolution, and a bias left by the layer before, applied while reading).
///
/// Each plane is copied into a zero-bordered `(h + 2) x (w + 2)` buffer; the outputs are then
/// computed in that buffer's coordinates as one long run per plane (the two border columns of
/// each row are computed and dropped), so the vectorised loop is not cut into rows of `w`.
pub(crate) fn depthwise_planes(
    input: &[f32],
    output: &mut [f32],
    [h, w]: [usize; 2],
    weight: &[f32],
    bias: Option<&[f32]>,
    channel_of: impl Fn(usize) -> usize + Sync,
    read: InputRead,
) {
    if output.is_empty() {
        return;
    }
    let row = w + 2;
    output
        .par_chunks_mut(h * w)
        .zip(input.par_chunks(h * w))
        .enumerate()
        .for_each_init(
            || (vec![0.0f32; (h + 2) * row + 2], vec![0.0f32; h * row]),
            |(padded, sums), (plane_index, (out_plane, plane))| {
                let channel = channel_of(plane_index);
                let k: [f32; 9] = std::array::from_fn(|i| weight[channel * 9 + i]);
                let b = bias.map(|bias| bias[channel]);
                depthwise_plane(plane, out_plane, [h, w], k, b, read, channel, padded, sums);
            },
        );
}

/// One plane (of channel `channel`) of [`depthwise_planes`] with filter `k` and bias `b`;
/// `padded` holds `(h + 2) * (w + 2) + 2` floats with a zero border, `sums` `h * (w + 2)`.
#[allow(clippy::too_many_arguments)]
fn depthwise_plane(
    plane: &[f32],
    out_plane: &mut [f32],
    [h, w]: [usize; 2],
    k: [f32; 9],
    b: Option<f32>,
    read: InputRead,
    channel: usize,
    padded: &mut [f32],
    sums: &mut [f32],
) {
    let row = w + 2;
    for (r, values) in plane.chunks(w).enumerate() {
        let start = (r + 1) * row + 1;
        read.copy(channel, values.iter(), &mut padded[start..start + w]);
    }
    let n = h * row;
    let (t0, t1, t2) = (&padded[..n + 2], &padded[row..row + n + 2], &padded[2 * row..2 * row + n + 2]);
    for (p, sum) in sums[..n].iter_mut().enumerate() {
        let mut acc = 0.0f32;
        acc += k[0] * t0[p];
        acc += k[1] * t0[p + 1];
        acc += k[2] * t0[p + 2];
        acc += k[3] * t1[p];
        acc += k[4] * t1[p + 1];
        acc += k[5] * t1[p + 2];
        acc += k[6] * t2[p];
        acc += k[7] * t2[p + 1];
        acc += k[8] * t2[p + 2];
        *sum = acc;
    }
    for (out_row, sum_row) in out_plane.chunks_mut(w).zip(sums.chunks(row)) {
        match b {
            Some(b) => out_row.iter_mut().zip(sum_row).for_each(|(o, &v)| *o = v + b),
            None => out_row.copy_from_slice(&sum_row[..w]),
        }
    }
}

/// [`max_pool_3x3_stride2_same`] on a tensor when it lives on a backend with host kernels;
/// otherwise the unchanged input comes back as `Err` for the generic path.
pub fn same_max_pool_3x3_stride2<B: Backend>(x: Tensor<B, 4>) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    on_host(x, |input, dims| Some(max_pool_3x3_stride2_same(input, dims)))
}

/// The depthwise convolution `conv` applied to `x` by [`depthwise_conv_3x3_same`] when `conv`
/// is a 3x3, stride 1, "same", one-filter-per-channel convolution and `x` lives on a backend
/// with host kernels; otherwise the unchanged input comes back as `Err` for `conv.forward`.
pub fn depthwise_conv_3x3<B: Backend>(
    x: Tensor<B, 4>,
    conv: &Conv2d<B>,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    if !runs_on_host(&x) {
        return Err(x);
    }
    let [c_out, c_per_group, kh, kw] = conv.weight.dims();
    let channels = x.dims()[1];
    let depthwise_3x3 = [kh, kw] == [3, 3]
        && c_per_group == 1
        && conv.groups == channels
        && c_out == channels
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && matches!(conv.padding, PaddingConfig2d::Same | PaddingConfig2d::Explicit(1, 1, 1, 1));
    if !depthwise_3x3 {
        return Err(x);
    }
    let Some(weight) = host_data(conv.weight.val()) else {
        return Err(x);
    };
    let bias = match &conv.bias {
        Some(bias) => match host_data(bias.val()) {
            Some(bias) => Some(bias),
            None => return Err(x),
        },
        None => None,
    };
    on_host(x, |input, dims| {
        let weight = weight.as_slice::<f32>().ok()?;
        let bias = match &bias {
            Some(bias) => Some(bias.as_slice::<f32>().ok()?),
            None => None,
        };
        Some((depthwise_conv_3x3_same(input, dims, weight, bias), dims))
    })
}

/// Whether the kernels would run on `x`: switched on, f32, on `flex`.
pub(crate) fn runs_on_host<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    #[cfg(feature = "flex")]
    {
        enabled()
            && x.dtype() == burn::tensor::DType::F32
            && std::any::TypeId::of::<B>() == std::any::TypeId::of::<super::Flex>()
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = x;
        false
    }
}

/// The f32 data of a tensor that lives on a backend with host kernels.
fn host_data<B: Backend, const D: usize>(x: Tensor<B, D>) -> Option<TensorData> {
    #[cfg(feature = "flex")]
    if runs_on_host(&x) {
        if let Ok(x) = cast::<Tensor<B, D>, Tensor<super::Flex, D>>(x) {
            return Some(x.into_data());
        }
    }
    #[cfg(not(feature = "flex"))]
    let _ = x;
    None
}

/// Runs `kernel` on the host data of `x` (f32 on `flex`) and wraps its output as a tensor of the
/// same backend; gives `x` back when the backend has no host kernels or the kernel declines.
fn on_host<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    kernel: impl FnOnce(&[f32], [usize; D]) -> Option<(Vec<f32>, [usize; D])>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    #[cfg(feature = "flex")]
    if runs_on_host(&x) {
        use super::Flex;
        let x = cast::<Tensor<B, D>, Tensor<Flex, D>>(x)?;
        let dims = x.dims();
        let device = x.device();
        let data = x.into_data();
        let output = data.as_slice::<f32>().ok().and_then(|input| kernel(input, dims));
        let result = match output {
            Some((values, shape)) => Ok(Tensor::<Flex, D>::from_data(TensorData::new(values, shape), &device)),
            None => Err(Tensor::<Flex, D>::from_data(data, &device)),
        };
        return result.map(from_flex).map_err(from_flex);
    }
    #[cfg(not(feature = "flex"))]
    let _ = &kernel;
    Err(x)
}

/// A `flex` tensor as a tensor of `B`, for code that has checked that `B` is `Flex`
/// ([`runs_on_host`]).
#[cfg(feature = "flex")]
pub(crate) fn from_flex<B: Backend, const D: usize>(x: Tensor<super::Flex, D>) -> Tensor<B, D> {
    cast(x).unwrap_or_else(|_| unreachable!("B is Flex"))
}

/// `value` as type `U` when `T` and `U` are the same type (a backend check at run time).
#[cfg(feature = "flex")]
pub(crate) fn cast<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    let mut slot = Some(value);
    let any: &mut dyn std::any::Any = &mut slot;
    match any.downcast_mut::<Option<U>>() {
        Some(target) => Ok(target.take().unwrap_or_else(|| unreachable!("the slot was filled"))),
        None => Err(slot.unwrap_or_else(|| unreachable!("the slot was filled"))),
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::backend::{Autodiff, Flex};
    use crate::model::xception::same_max_pool;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    fn values(x: Tensor<Flex, 4>) -> Vec<f32> {
        x.into_data().to_vec::<f32>().unwrap()
    }

    #[test]
    fn max_pool_equals_burns_on_even_odd_and_tiny_planes() {
        let device = Default::default();
        for (n, c, h, w) in [(1, 3, 109, 109), (2, 5, 28, 28), (3, 2, 14, 15), (1, 4, 7, 6), (2, 1, 1, 1), (1, 2, 2, 3)] {
            let x = Tensor::<Flex, 4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &device);
            let expected = same_max_pool().forward(x.clone());
            let got = same_max_pool_3x3_stride2(x).expect("flex has the host kernel");
            assert_eq!(got.dims(), expected.dims(), "{n}x{c}x{h}x{w}");
            assert_eq!(values(got), values(expected), "{n}x{c}x{h}x{w}");
        }
    }

    #[test]
    fn depthwise_equals_burns_bit_for_bit_with_and_without_bias() {
        let device = Default::default();
        for (n, c, h, w, bias) in [(1, 8, 109, 109, false), (2, 16, 14, 14, true), (3, 3, 5, 9, false), (1, 2, 1, 1, true)] {
            let conv = Conv2dConfig::new([c, c], [3, 3])
                .with_groups(c)
                .with_padding(PaddingConfig2d::Same)
                .with_bias(bias)
                .init::<Flex>(&device);
            let x = Tensor::<Flex, 4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &device);
            let expected = conv.forward(x.clone());
            let got = depthwise_conv_3x3(x, &conv).expect("a 3x3 depthwise conv on flex");
            assert_eq!(got.dims(), expected.dims());
            assert_eq!(values(got), values(expected), "{n}x{c}x{h}x{w} bias {bias}");
        }
    }

    #[test]
    fn other_convolutions_and_backends_take_the_generic_path() {
        let device = Default::default();
        let x = Tensor::<Flex, 4>::random([1, 4, 6, 6], Distribution::Default, &device);
        let strided = Conv2dConfig::new([4, 4], [3, 3]).with_groups(4).with_stride([2, 2]).init::<Flex>(&device);
        assert!(depthwise_conv_3x3(x.clone(), &strided).is_err());
        let dense = Conv2dConfig::new([4, 4], [3, 3]).with_padding(PaddingConfig2d::Same).init::<Flex>(&device);
        assert!(depthwise_conv_3x3(x.clone(), &dense).is_err());
        let five = Conv2dConfig::new([4, 4], [5, 5]).with_groups(4).with_padding(PaddingConfig2d::Same).init::<Flex>(&device);
        assert!(depthwise_conv_3x3(x, &five).is_err());

        // Training runs on Autodiff<Flex>: the kernels have no backward pass, so Burn's ops run.
        let x = Tensor::<Autodiff<Flex>, 4>::random([1, 4, 6, 6], Distribution::Default, &device);
        let depthwise = Conv2dConfig::new([4, 4], [3, 3])
            .with_groups(4)
            .with_padding(PaddingConfig2d::Same)
            .init::<Autodiff<Flex>>(&device);
        assert!(same_max_pool_3x3_stride2(x.clone()).is_err());
        assert!(depthwise_conv_3x3(x, &depthwise).is_err());
    }

    #[test]
    fn same_padding_follows_tensorflow() {
        assert_eq!(same_padding(109, 3, 2), (1, 1));
        assert_eq!(same_padding(28, 3, 2), (0, 1));
        assert_eq!(same_padding(14, 3, 2), (0, 1));
        assert_eq!(same_padding(14, 3, 1), (1, 1));
        assert_eq!(same_padding(1, 3, 2), (1, 1));
    }
}
