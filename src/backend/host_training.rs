//! Host kernels of the training operations on `flex` (NCHW `f32` slices), each spread over
//! every core with rayon: the depthwise convolution's backward pass, the 1x1 convolution and
//! its backward pass as matrix products over the whole batch, batch normalisation with batch
//! statistics and its backward pass, max pooling's backward pass and the Adam update.

use rayon::prelude::*;

use super::generic::same_pool_padding;
use super::host_kernels::InputRead;
use super::host_matmul::{matmul, MatRef};
use super::ops::AdamStep;

/// Pixels per image from which a stride-1 1x1 convolution multiplies image by image (each
/// product long enough for the matrix kernels) instead of gathering the batch into one matrix.
const PER_IMAGE_COLUMNS: usize = 256;

/// Gradients of the depthwise 3x3 convolution (stride 1, padding 1) of `relu(x)` or `x`: of the input (if `input_grad`; masked by the ReLU) and
/// of the weight `[c, 9]`. Each plane's output gradient is copied into a zero-bordered buffer
/// once; the input gradient is the convolution of that buffer with the filter turned by 180
/// degrees, and the nine weight-gradient sums are dot products of it with the shifted
/// (zero-bordered) input, per plane, summed over the batch afterwards.
pub(crate) fn depthwise_backward(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    weight: &[f32],
    grad: &[f32],
    relu_input: bool,
    input_grad: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let plane = h * w;
    let row = w + 2;
    let run = h * row;
    let padded_len = (h + 2) * row + 2;
    let mut x_grad = if input_grad { vec![0.0f32; n * c * plane] } else { Vec::new() };
    let mut partial = vec![0.0f32; n * c * 9];
    let read = InputRead { bias: None, relu: relu_input };
    let body = |(padded_x, padded_g, sums): &mut (Vec<f32>, Vec<f32>, Vec<f32>), index: usize, out: Option<&mut [f32]>, taps: &mut [f32]| {
        let channel = index % c;
        let x_plane = &x[index * plane..][..plane];
        let g_plane = &grad[index * plane..][..plane];
        for r in 0..h {
            let start = (r + 1) * row + 1;
            read.copy(channel, x_plane[r * w..(r + 1) * w].iter(), &mut padded_x[start..start + w]);
            padded_g[start..start + w].copy_from_slice(&g_plane[r * w..(r + 1) * w]);
        }
        // The output gradient at run position p (= y * row + x, x < w) is padded_g[p + row + 1];
        // the two positions per row past w read the zero border.
        let g_run = &padded_g[row + 1..row + 1 + run];
        for (tap, sum) in taps.iter_mut().enumerate() {
            let shifted = &padded_x[(tap / 3) * row + tap % 3..][..run];
            *sum = dot(g_run, shifted);
        }
        if let Some(out) = out {
            let k: [f32; 9] = std::array::from_fn(|i| weight[channel * 9 + 8 - i]);
            let (t0, t1, t2) = (&padded_g[..run + 2], &padded_g[row..row + run + 2], &padded_g[2 * row..2 * row + run + 2]);
            for (p, sum) in sums[..run].iter_mut().enumerate() {
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
            for (r, out_row) in out.chunks_mut(w).enumerate() {
                let sums_row = &sums[r * row..r * row + w];
                if relu_input {
                    let x_row = &x_plane[r * w..(r + 1) * w];
                    for ((o, &s), &v) in out_row.iter_mut().zip(sums_row).zip(x_row) {
                        *o = if v > 0.0 { s } else { 0.0 };
                    }
                } else {
                    out_row.copy_from_slice(sums_row);
                }
            }
        }
    };
    let init = || (vec![0.0f32; padded_len], vec![0.0f32; padded_len], vec![0.0f32; run]);
    if input_grad {
        x_grad
            .par_chunks_mut(plane)
            .zip(partial.par_chunks_mut(9))
            .enumerate()
            .for_each_init(init, |scratch, (index, (out, taps))| body(scratch, index, Some(out), taps));
    } else {
        partial
            .par_chunks_mut(9)
            .enumerate()
            .for_each_init(init, |scratch, (index, taps)| body(scratch, index, None, taps));
    }
    let mut weight_grad = vec![0.0f32; c * 9];
    for image in partial.chunks(c * 9) {
        weight_grad.iter_mut().zip(image).for_each(|(total, &v)| *total += v);
    }
    (input_grad.then_some(x_grad), weight_grad)
}

/// `sum a_i b_i` in 16 f32 lanes (vectorised; the lanes are added at the end).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(&x, &y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for ((l, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *l += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Shape of a 1x1 convolution's operands: input `[n, ci, h, w]`, `co` outputs, `stride`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PointwiseShape {
    pub n: usize,
    pub ci: usize,
    pub co: usize,
    pub h: usize,
    pub w: usize,
    pub stride: usize,
}

impl PointwiseShape {
    fn out_hw(&self) -> (usize, usize) {
        (self.h.div_ceil(self.stride), self.w.div_ceil(self.stride))
    }

    /// Output pixels per image.
    fn pixels(&self) -> usize {
        let (ho, wo) = self.out_hw();
        ho * wo
    }

    /// Whether the products run image by image on the NCHW data as it is.
    fn per_image(&self) -> bool {
        self.stride == 1 && self.pixels() >= PER_IMAGE_COLUMNS
    }
}

/// The strided pixels of every `[n, c, h, w]` plane as one `[c, n * pixels]` matrix (channel
/// rows, images side by side).
fn gather(x: &[f32], [n, c, h, w]: [usize; 4], stride: usize) -> Vec<f32> {
    let (ho, wo) = (h.div_ceil(stride), w.div_ceil(stride));
    let pixels = ho * wo;
    let mut rows = vec![0.0f32; c * n * pixels];
    rows.par_chunks_mut(pixels).enumerate().for_each(|(index, out)| {
        let (channel, image) = (index / n, index % n);
        let source = &x[(image * c + channel) * h * w..][..h * w];
        if stride == 1 {
            out.copy_from_slice(source);
        } else {
            for (y, out_row) in out.chunks_mut(wo).enumerate() {
                let row = &source[y * stride * w..][..w];
                out_row.iter_mut().zip(row.iter().step_by(stride)).for_each(|(o, &v)| *o = v);
            }
        }
    });
    rows
}

/// The inverse of [`gather`]: a `[c, n * pixels]` matrix into `[n, c, h, w]` planes at the
/// strided pixels (the others zero).
fn scatter(rows: &[f32], [n, c, h, w]: [usize; 4], stride: usize) -> Vec<f32> {
    let (ho, wo) = (h.div_ceil(stride), w.div_ceil(stride));
    let pixels = ho * wo;
    let mut x = vec![0.0f32; n * c * h * w];
    x.par_chunks_mut(h * w).enumerate().for_each(|(index, out)| {
        let (image, channel) = (index / c, index % c);
        let source = &rows[(channel * n + image) * pixels..][..pixels];
        if stride == 1 {
            out.copy_from_slice(source);
        } else {
            for (y, source_row) in source.chunks(wo).enumerate() {
                let row = &mut out[y * stride * w..][..w];
                row.iter_mut().step_by(stride).zip(source_row).for_each(|(o, &v)| *o = v);
            }
        }
    });
    x
}

/// The 1x1 convolution `y_n = W x_n` at the strided pixels: `weight [co, ci]`.
pub(crate) fn pointwise_forward(x: &[f32], shape: PointwiseShape, weight: &[f32]) -> Vec<f32> {
    let PointwiseShape { n, ci, co, h, w, stride } = shape;
    let pixels = shape.pixels();
    let (ho, wo) = shape.out_hw();
    let lhs = MatRef::rows(weight, ci);
    if shape.per_image() {
        let mut y = vec![0.0f32; n * co * pixels];
        for (image, out) in y.chunks_mut(co * pixels).enumerate() {
            let input = MatRef::rows(&x[image * ci * pixels..][..ci * pixels], pixels);
            matmul(out, pixels, [co, ci, pixels], lhs, input, false);
        }
        return y;
    }
    let columns = n * pixels;
    let rows = gather(x, [n, ci, h, w], stride);
    let mut product = vec![0.0f32; co * columns];
    matmul(&mut product, columns, [co, ci, columns], lhs, MatRef::rows(&rows, columns), false);
    scatter(&product, [n, co, ho, wo], 1)
}

/// Gradients of [`pointwise_forward`]: of the input (if `input_grad`) and of the weight
/// `[co, ci]`, from the output gradient `[n, co, ho, wo]`: `dW = sum_n dY_n x_n^T`,
/// `dx_n = W^T dY_n` at the strided pixels.
pub(crate) fn pointwise_backward(x: &[f32], shape: PointwiseShape, weight: &[f32], grad: &[f32], input_grad: bool) -> (Option<Vec<f32>>, Vec<f32>) {
    let PointwiseShape { n, ci, co, h, w, stride } = shape;
    let pixels = shape.pixels();
    let (ho, wo) = shape.out_hw();
    let mut weight_grad = vec![0.0f32; co * ci];
    let weight_t = MatRef::transposed(weight, ci);
    if shape.per_image() {
        for image in 0..n {
            let g = MatRef::rows(&grad[image * co * pixels..][..co * pixels], pixels);
            let x_t = MatRef::transposed(&x[image * ci * pixels..][..ci * pixels], pixels);
            matmul(&mut weight_grad, ci, [co, pixels, ci], g, x_t, image > 0);
        }
        let x_grad = input_grad.then(|| {
            let mut x_grad = vec![0.0f32; n * ci * pixels];
            for (image, out) in x_grad.chunks_mut(ci * pixels).enumerate() {
                let g = MatRef::rows(&grad[image * co * pixels..][..co * pixels], pixels);
                matmul(out, pixels, [ci, co, pixels], weight_t, g, false);
            }
            x_grad
        });
        return (x_grad, weight_grad);
    }
    let columns = n * pixels;
    let grad_rows = gather(grad, [n, co, ho, wo], 1);
    let x_rows = gather(x, [n, ci, h, w], stride);
    matmul(&mut weight_grad, ci, [co, columns, ci], MatRef::rows(&grad_rows, columns), MatRef::transposed(&x_rows, columns), false);
    let x_grad = input_grad.then(|| {
        let mut product = vec![0.0f32; ci * columns];
        matmul(&mut product, columns, [ci, co, columns], weight_t, MatRef::rows(&grad_rows, columns), false);
        scatter(&product, [n, ci, h, w], stride)
    });
    (x_grad, weight_grad)
}

/// Shape of a dense 3x3 convolution without padding: input `[n, ci, h, w]`, `co` outputs,
/// `stride`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conv3x3Shape {
    pub n: usize,
    pub ci: usize,
    pub co: usize,
    pub h: usize,
    pub w: usize,
    pub stride: usize,
}

impl Conv3x3Shape {
    /// Output height and width.
    pub fn out_hw(&self) -> (usize, usize) {
        ((self.h - 3) / self.stride + 1, (self.w - 3) / self.stride + 1)
    }
}

/// The `[ci * 9, ho * wo]` im2col matrix of one image (rows in the weight's `(ci, ky, kx)`
/// order) into `cols`.
fn im2col(image: &[f32], shape: Conv3x3Shape, cols: &mut [f32]) {
    let Conv3x3Shape { h, w, stride, .. } = shape;
    let (ho, wo) = shape.out_hw();
    cols.par_chunks_mut(ho * wo).enumerate().for_each(|(row, col)| {
        let (channel, ky, kx) = (row / 9, row / 3 % 3, row % 3);
        let plane = &image[channel * h * w..][..h * w];
        for (y, out) in col.chunks_mut(wo).enumerate() {
            let source = &plane[(y * stride + ky) * w + kx..][..(wo - 1) * stride + 1];
            out.iter_mut().zip(source.iter().step_by(stride)).for_each(|(o, &v)| *o = v);
        }
    });
}

/// The dense 3x3 convolution without padding, image by image as `y_n = W im2col(x_n)`:
/// `weight [co, ci * 9]`.
pub(crate) fn conv3x3_forward(x: &[f32], shape: Conv3x3Shape, weight: &[f32]) -> Vec<f32> {
    let Conv3x3Shape { n, ci, co, h, w, .. } = shape;
    let (ho, wo) = shape.out_hw();
    let (depth, pixels) = (ci * 9, ho * wo);
    let mut y = vec![0.0f32; n * co * pixels];
    let mut cols = vec![0.0f32; depth * pixels];
    for (image, out) in y.chunks_mut(co * pixels).enumerate() {
        im2col(&x[image * ci * h * w..][..ci * h * w], shape, &mut cols);
        matmul(out, pixels, [co, depth, pixels], MatRef::rows(weight, depth), MatRef::rows(&cols, pixels), false);
    }
    y
}

/// Gradients of [`conv3x3_forward`]: of the input (if `input_grad`: `W^T dY_n` folded back
/// onto the pixels each column came from) and of the weight (`sum_n dY_n im2col(x_n)^T`).
pub(crate) fn conv3x3_backward(x: &[f32], shape: Conv3x3Shape, weight: &[f32], grad: &[f32], input_grad: bool) -> (Option<Vec<f32>>, Vec<f32>) {
    let Conv3x3Shape { n, ci, co, h, w, stride } = shape;
    let (ho, wo) = shape.out_hw();
    let (depth, pixels) = (ci * 9, ho * wo);
    let mut weight_grad = vec![0.0f32; co * depth];
    let mut cols = vec![0.0f32; depth * pixels];
    let mut x_grad = if input_grad { vec![0.0f32; n * ci * h * w] } else { Vec::new() };
    for image in 0..n {
        let g = MatRef::rows(&grad[image * co * pixels..][..co * pixels], pixels);
        im2col(&x[image * ci * h * w..][..ci * h * w], shape, &mut cols);
        matmul(&mut weight_grad, depth, [co, pixels, depth], g, MatRef::transposed(&cols, pixels), image > 0);
        if input_grad {
            matmul(&mut cols, pixels, [depth, co, pixels], MatRef::transposed(weight, depth), g, false);
            let planes = &mut x_grad[image * ci * h * w..][..ci * h * w];
            planes.par_chunks_mut(h * w).zip(cols.par_chunks(9 * pixels)).for_each(|(plane, rows)| {
                for (tap, col) in rows.chunks(pixels).enumerate() {
                    let (ky, kx) = (tap / 3, tap % 3);
                    for (y, values) in col.chunks(wo).enumerate() {
                        let target = &mut plane[(y * stride + ky) * w + kx..][..(wo - 1) * stride + 1];
                        target.iter_mut().step_by(stride).zip(values).for_each(|(t, &v)| *t += v);
                    }
                }
            });
        }
    }
    (input_grad.then_some(x_grad), weight_grad)
}

/// Per-channel sums of `f(value, channel)` over the `n` planes of `[n, c, plane]` data, in f64.
fn channel_sums(x: &[f32], [n, c, plane]: [usize; 3], f: impl Fn(usize, &[f32], usize) -> f64 + Sync) -> Vec<f64> {
    (0..c)
        .into_par_iter()
        .map(|channel| (0..n).map(|image| f(channel, &x[(image * c + channel) * plane..][..plane], image)).sum())
        .collect()
}

/// Sum of a slice in f64, accumulated in f32 lanes of 8 (exact enough per plane, and fast).
fn sum_f64(values: &[f32]) -> f64 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| v as f64).sum();
    for chunk in chunks {
        lanes.iter_mut().zip(chunk).for_each(|(l, &v)| *l += v);
    }
    lanes.iter().map(|&l| l as f64).sum::<f64>() + tail
}

/// Batch normalisation with batch statistics: returns the output, the mean and the (biased)
/// variance per channel. Two passes for the statistics (mean, then squared deviations).
pub(crate) fn batch_norm_forward(x: &[f32], [n, c, h, w]: [usize; 4], gamma: &[f32], beta: &[f32], epsilon: f64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let plane = h * w;
    let count = (n * plane) as f64;
    let means: Vec<f64> = channel_sums(x, [n, c, plane], |_, values, _| sum_f64(values)).into_iter().map(|s| s / count).collect();
    let variances: Vec<f64> = channel_sums(x, [n, c, plane], |channel, values, _| {
        let mean = means[channel] as f32;
        let mut lanes = [0.0f32; 8];
        let chunks = values.chunks_exact(8);
        let tail: f64 = chunks.remainder().iter().map(|&v| ((v - mean) as f64).powi(2)).sum();
        for chunk in chunks {
            lanes.iter_mut().zip(chunk).for_each(|(l, &v)| *l += (v - mean) * (v - mean));
        }
        lanes.iter().map(|&l| l as f64).sum::<f64>() + tail
    })
    .into_iter()
    .map(|s| s / count)
    .collect();
    let scale: Vec<f32> = (0..c).map(|i| (gamma[i] as f64 / (variances[i] + epsilon).sqrt()) as f32).collect();
    let shift: Vec<f32> = (0..c).map(|i| (beta[i] as f64 - means[i] * scale[i] as f64) as f32).collect();
    let mut output = vec![0.0f32; x.len()];
    output.par_chunks_mut(plane).zip(x.par_chunks(plane)).enumerate().for_each(|(index, (out, values))| {
        let (a, b) = (scale[index % c], shift[index % c]);
        out.iter_mut().zip(values).for_each(|(o, &v)| *o = v * a + b);
    });
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    (output, to_f32(means), to_f32(variances))
}

/// Gradients of [`batch_norm_forward`] (input, gamma, beta) from its input, the statistics it
/// returned and the output gradient. The input gradient is `a dy + b x + c` per channel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_norm_backward(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    gamma: &[f32],
    mean: &[f32],
    variance: &[f32],
    epsilon: f64,
    grad: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let plane = h * w;
    let count = (n * plane) as f64;
    let beta_grad = channel_sums(grad, [n, c, plane], |_, values, _| sum_f64(values));
    let centered_dot = channel_sums(grad, [n, c, plane], |channel, g, image| {
        let values = &x[(image * c + channel) * plane..][..plane];
        let m = mean[channel];
        let mut lanes = [0.0f32; 8];
        let (gc, vc) = (g.chunks_exact(8), values.chunks_exact(8));
        let tail: f64 = gc.remainder().iter().zip(vc.remainder()).map(|(&g, &v)| g as f64 * (v - m) as f64).sum();
        for (gs, vs) in gc.zip(vc) {
            for ((l, &g), &v) in lanes.iter_mut().zip(gs).zip(vs) {
                *l += g * (v - m);
            }
        }
        lanes.iter().map(|&l| l as f64).sum::<f64>() + tail
    });
    let mut coefficients = Vec::with_capacity(c);
    let mut gamma_grad = Vec::with_capacity(c);
    for i in 0..c {
        let inv_std = 1.0 / (variance[i] as f64 + epsilon).sqrt();
        let dgamma = centered_dot[i] * inv_std;
        let scale = gamma[i] as f64 * inv_std;
        let slope = -scale * inv_std * dgamma / count;
        let offset = -scale * beta_grad[i] / count - slope * mean[i] as f64;
        coefficients.push((scale as f32, slope as f32, offset as f32));
        gamma_grad.push(dgamma as f32);
    }
    let mut x_grad = vec![0.0f32; x.len()];
    x_grad.par_chunks_mut(plane).enumerate().for_each(|(index, out)| {
        let (a, b, o) = coefficients[index % c];
        let values = &x[index * plane..][..plane];
        let g = &grad[index * plane..][..plane];
        for ((out, &g), &v) in out.iter_mut().zip(g).zip(values) {
            *out = a * g + b * v + o;
        }
    });
    (x_grad, gamma_grad, beta_grad.into_iter().map(|v| v as f32).collect())
}

/// Gradient of 3x3 / stride 2 "same" max pooling: each output's gradient added at the first
/// maximum (row-major) of its window, Burn's choice among equal values.
pub(crate) fn max_pool_backward(x: &[f32], [n, c, h, w]: [usize; 4], grad: &[f32]) -> Vec<f32> {
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let (top, _) = same_pool_padding(h);
    let (left, _) = same_pool_padding(w);
    let mut x_grad = vec![0.0f32; n * c * h * w];
    x_grad.par_chunks_mut(h * w).enumerate().for_each(|(index, out)| {
        let plane = &x[index * h * w..][..h * w];
        let g_plane = &grad[index * ho * wo..][..ho * wo];
        for (oy, g_row) in g_plane.chunks(wo).enumerate() {
            let r0 = (2 * oy).saturating_sub(top);
            let r1 = (2 * oy + 3 - top).min(h);
            for (ox, &g) in g_row.iter().enumerate() {
                let c0 = (2 * ox).saturating_sub(left);
                let c1 = (2 * ox + 3 - left).min(w);
                let mut best = r0 * w + c0;
                let mut best_value = plane[best];
                for r in r0..r1 {
                    let row = &plane[r * w + c0..r * w + c1];
                    for (i, &v) in row.iter().enumerate() {
                        if v > best_value {
                            best_value = v;
                            best = r * w + c0 + i;
                        }
                    }
                }
                out[best] += g;
            }
        }
    });
    x_grad
}

/// Elements per parallel chunk of the Adam update.
const ADAM_CHUNK: usize = 1 << 14;

/// One Adam update in place, element for element with Burn's `Adam` arithmetic (the same f32
/// operations in the same order). `moments` are `None` at the first step: then they are
/// written from zero.
pub(crate) fn adam_update(param: &mut [f32], grad: &[f32], moment_1: &mut [f32], moment_2: &mut [f32], first: bool, step: AdamStep) {
    let (b1, b2) = (step.beta_1, step.beta_2);
    let (f1, f2) = (1.0 - b1, 1.0 - b2);
    let time = step.time as i32;
    let correction_2_sqrt = (1.0 - b2.powi(time)).sqrt();
    let factor = correction_2_sqrt / (1.0 - b1.powi(time));
    let epsilon = step.epsilon * correction_2_sqrt;
    let lr = step.learning_rate as f32;
    param
        .par_chunks_mut(ADAM_CHUNK)
        .zip(grad.par_chunks(ADAM_CHUNK))
        .zip(moment_1.par_chunks_mut(ADAM_CHUNK))
        .zip(moment_2.par_chunks_mut(ADAM_CHUNK))
        .for_each(|(((p, g), m1), m2)| {
            for (((p, &g), m1), m2) in p.iter_mut().zip(g).zip(m1).zip(m2) {
                if first {
                    *m1 = g * f1;
                    *m2 = (g * g) * f2;
                } else {
                    *m1 = *m1 * b1 + g * f1;
                    *m2 = *m2 * b2 + (g * g) * f2;
                }
                let update = (*m1 * factor) / (m2.sqrt() + epsilon);
                *p -= update * lr;
            }
        });
}
