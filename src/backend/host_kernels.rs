//! Host-memory kernels for the two layers that Burn's CPU backend runs slowest in Xception:
//! 3x3 max pooling with stride 2 (Burn's is a scalar loop that also writes indices) and the
//! 3x3 depthwise convolution (short per-plane rows), on `f32` slices. `flex` runs them for
//! [`crate::backend::ops::AdCorreBackend`]'s operations, and the inference pass
//! (`host_xception`) inside its own loop. Both reproduce Burn's results: the pooling takes the
//! maximum of the same elements, the convolution adds the same products in the same order
//! (checked against Burn in `tests/training_ops.rs`).

use rayon::prelude::*;

use super::generic::same_pool_padding;

/// 3x3 max pooling, stride 2, TensorFlow "same" padding (padded cells never win), on NCHW
/// data of shape `dims`: returns `[n, c, ceil(h/2), ceil(w/2)]`.
pub(crate) fn max_pool_3x3_stride2_same(input: &[f32], dims: [usize; 4]) -> (Vec<f32>, [usize; 4]) {
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
    let (top, _) = same_pool_padding(h);
    let (left, _) = same_pool_padding(w);
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
/// kernel), of `max(x, 0)` if `relu_input` else `x`, on NCHW data of shape `dims` with weights
/// `[c, 1, 3, 3]`. Each output is `((0 + w00 x00) + w01 x01) + ... + w22 x22`: Burn's order.
pub(crate) fn depthwise_conv_3x3_same(input: &[f32], dims: [usize; 4], weight: &[f32], relu_input: bool) -> Vec<f32> {
    let [_, c, h, w] = dims;
    let mut output = vec![0.0f32; input.len()];
    depthwise_planes(input, &mut output, [h, w], weight, None, |plane| plane % c, InputRead { bias: None, relu: relu_input });
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
