//! The generic formulations of [`super::ops::AdCorreBackend`]'s operations, in Burn's tensor
//! operations: what every backend without its own kernels runs (`ndarray`, CUDA). Each one is
//! a fixed handful of operations per layer, whatever the channel count: the depthwise weight
//! gradient is nine multiply-and-reduce passes, not a convolution per channel.

use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, FloatTensor, PadMode};
use burn::tensor::{s, Shape, TensorMetadata, TensorPrimitive};

use super::ops::{AdamStep, AdamUpdate, BatchNormGrads, BatchNormTrain, ConvGrads};

fn tensor<B: Backend, const D: usize>(x: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

fn primitive<B: Backend, const D: usize>(x: Tensor<B, D>) -> FloatTensor<B> {
    x.into_primitive().tensor()
}

/// Per-channel sums over batch and space: `[n, c, h, w]` -> `[c]`, as two reductions (pixels,
/// then images) of the tensor seen as `[n, c, h * w]`, which needs no copy when it is
/// contiguous (three reductions, one per dimension, otherwise).
fn channel_sums<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 1> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h * w]).sum_dim(2).sum_dim(0).reshape([c])
}

/// One filter per channel, 3x3, stride 1, padding 1.
fn depthwise_options(channels: usize) -> ConvOptions<2> {
    ConvOptions::new([1, 1], [1, 1], [1, 1], channels)
}

/// Burn's grouped convolution (one kernel on the GPU backends).
pub fn depthwise_conv3x3<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>, relu_input: bool) -> FloatTensor<B> {
    let x: Tensor<B, 4> = tensor(x);
    let channels = x.dims()[1];
    let x = if relu_input { relu(x) } else { x };
    primitive(conv2d(x, tensor(weight), None, depthwise_options(channels)))
}

/// Input gradient: the same depthwise convolution of the output gradient with each filter
/// turned by 180 degrees (masked by the ReLU). Weight gradient: for each of the nine taps, the
/// output gradient times the shifted input, summed over batch and space.
pub fn depthwise_conv3x3_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    relu_input: bool,
    input_grad: bool,
) -> ConvGrads<B> {
    let x: Tensor<B, 4> = tensor(x);
    let grad: Tensor<B, 4> = tensor(output_grad);
    let [n, c, h, w] = x.dims();
    let input = if relu_input { relu(x.clone()) } else { x.clone() };
    let x_grad = input_grad.then(|| {
        let flipped = tensor::<B, 4>(weight).flip([2, 3]);
        let x_grad = conv2d(grad.clone(), flipped, None, depthwise_options(c));
        let x_grad = if relu_input { x_grad.mask_fill(x.lower_equal_elem(0.0), 0.0) } else { x_grad };
        primitive(x_grad)
    });
    let padded = input.pad((1, 1, 1, 1), PadMode::Constant(0.0));
    let taps: Vec<Tensor<B, 1>> = (0..9)
        .map(|tap| {
            let (ky, kx) = (tap / 3, tap % 3);
            let shifted = padded.clone().slice(s![0..n, 0..c, ky..ky + h, kx..kx + w]);
            channel_sums(shifted * grad.clone())
        })
        .collect();
    let weight_grad = Tensor::stack::<2>(taps, 1).reshape([c, 1, 3, 3]);
    ConvGrads { input: x_grad, weight: primitive(weight_grad) }
}

/// Options of an ungrouped convolution without padding at `stride`.
fn unpadded(stride: usize) -> ConvOptions<2> {
    ConvOptions::new([stride; 2], [0, 0], [1, 1], 1)
}

/// Burn's convolution without padding (the 1x1 products and the stem's "valid" 3x3
/// convolutions, at stride 1 or 2).
pub fn dense_conv<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>, stride: usize) -> FloatTensor<B> {
    B::conv2d(x, weight, None, unpadded(stride))
}

/// Burn's gradients of `dense_conv` (on CubeCL, implicit matrix products: a few kernels per
/// layer). Not explicit `matmul`s of transposed views, which went wrong on wgpu at inner sizes
/// k = 200, 296, 520, 536, ... (cubek 0.2's double-buffered matmuls at an odd number of stages;
/// README, "Backends").
pub fn dense_conv_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    stride: usize,
    input_grad: bool,
) -> ConvGrads<B> {
    let options = unpadded(stride);
    let x_grad = input_grad.then(|| B::conv2d_x_backward(x.clone(), weight.clone(), output_grad.clone(), options.clone()));
    ConvGrads { input: x_grad, weight: B::conv2d_weight_backward(x, weight, output_grad, options) }
}

/// Gradients of a 1x1 convolution: `dense_conv_backward`, except the input gradient at
/// stride 2, which burn-cubecl 0.21's `conv2d_x_backward` gets wrong for a 1x1 kernel (README,
/// "Backends"): here a 1x1 convolution of the output gradient with the transposed weight gives
/// the gradient at the sampled pixels, which are then placed in a zero gradient.
pub fn pointwise_conv_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    stride: usize,
    input_grad: bool,
) -> ConvGrads<B> {
    if stride == 1 || !input_grad {
        return dense_conv_backward::<B>(x, weight, output_grad, stride, input_grad);
    }
    let [n, ci, h, w] = tensor::<B, 4>(x.clone()).dims();
    let weight_t = tensor::<B, 4>(weight.clone()).swap_dims(0, 1);
    let sampled = conv2d(tensor::<B, 4>(output_grad.clone()), weight_t, None, unpadded(1));
    let x_grad = Tensor::<B, 4>::zeros([n, ci, h, w], &sampled.device()).slice_assign(s![.., .., 0..;stride, 0..;stride], sampled);
    ConvGrads { input: Some(primitive(x_grad)), ..dense_conv_backward::<B>(x, weight, output_grad, stride, false) }
}

/// Per-channel mean, then the mean of squared deviations (Burn's `BatchNorm` order), and the
/// normalisation as one scale and one shift per channel.
pub fn batch_norm_train<B: Backend>(x: FloatTensor<B>, gamma: FloatTensor<B>, beta: FloatTensor<B>, epsilon: f64) -> BatchNormTrain<B> {
    let x: Tensor<B, 4> = tensor(x);
    let [n, c, h, w] = x.dims();
    let count = (n * h * w) as f64;
    let mean = (channel_sums(x.clone()) / count).reshape([1, c, 1, 1]);
    let centered = x - mean.clone();
    let variance = (channel_sums(centered.clone().square()) / count).reshape([1, c, 1, 1]);
    // Divisions rather than `recip`: ndarray's reciprocal is an approximate SIMD instruction.
    let scale = tensor::<B, 1>(gamma).reshape([1, c, 1, 1]) / (variance.clone() + epsilon).sqrt();
    let output = centered * scale + tensor::<B, 1>(beta).reshape([1, c, 1, 1]);
    BatchNormTrain { output: primitive(output), mean: primitive(mean.reshape([c])), variance: primitive(variance.reshape([c])) }
}

/// `dbeta = sum dy`, `dgamma = sum dy * x_hat`, `dx = gamma / sigma * (dy - (dbeta + x_hat
/// dgamma) / m)` over the `m = n h w` values of each channel.
pub fn batch_norm_train_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    mean: FloatTensor<B>,
    variance: FloatTensor<B>,
    epsilon: f64,
    output_grad: FloatTensor<B>,
) -> BatchNormGrads<B> {
    let x: Tensor<B, 4> = tensor(x);
    let grad: Tensor<B, 4> = tensor(output_grad);
    let [n, c, h, w] = x.dims();
    let count = (n * h * w) as f64;
    let per_channel = |t: FloatTensor<B>| tensor::<B, 1>(t).reshape([1, c, 1, 1]);
    let std = (per_channel(variance) + epsilon).sqrt();
    let x_hat = (x - per_channel(mean)) / std.clone();
    let beta_grad = channel_sums(grad.clone());
    let gamma_grad = channel_sums(grad.clone() * x_hat.clone());
    let scale = per_channel(gamma) / std;
    let shift = (beta_grad.clone().reshape([1, c, 1, 1]) + x_hat * gamma_grad.clone().reshape([1, c, 1, 1])) / count;
    let x_grad = (grad - shift) * scale;
    BatchNormGrads { input: primitive(x_grad), gamma: primitive(gamma_grad), beta: primitive(beta_grad) }
}

/// TensorFlow's "same" pads of one axis for a 3x3 window with stride 2: `(before, after)`.
pub(crate) fn same_pool_padding(size: usize) -> (usize, usize) {
    let out = size.div_ceil(2);
    let total = ((out.max(1) - 1) * 2 + 3).saturating_sub(size);
    (total / 2, total - total / 2)
}

fn pad_for_pool<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let (top, bottom) = same_pool_padding(h);
    let (left, right) = same_pool_padding(w);
    x.pad((left, right, top, bottom), PadMode::Constant(f32::NEG_INFINITY))
}

/// Burn's pooling of the input padded with `-inf`.
pub fn max_pool3x3_stride2_same<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    primitive(max_pool2d(pad_for_pool(tensor::<B, 4>(x)), [3, 3], [2, 2], [0, 0], [1, 1], false))
}

/// Burn's pooling backward on the padded input, cropped.
pub fn max_pool3x3_stride2_same_backward<B: Backend>(x: FloatTensor<B>, output_grad: FloatTensor<B>) -> FloatTensor<B> {
    let x: Tensor<B, 4> = tensor(x);
    let [n, c, h, w] = x.dims();
    let (top, _) = same_pool_padding(h);
    let (left, _) = same_pool_padding(w);
    let padded = primitive(pad_for_pool(x));
    let pooled = B::max_pool2d_with_indices(padded.clone(), [3, 3], [2, 2], [0, 0], [1, 1], false);
    let padded_grad = B::max_pool2d_with_indices_backward(padded, [3, 3], [2, 2], [0, 0], [1, 1], false, output_grad, pooled.indices).x_grad;
    primitive(tensor::<B, 4>(padded_grad).slice(s![0..n, 0..c, top..top + h, left..left + w]))
}

/// A tensor of any rank as a vector (the optimizer's arithmetic is element by element).
fn flat<B: Backend>(x: FloatTensor<B>) -> Tensor<B, 1> {
    let len = x.shape().num_elements();
    tensor::<B, 1>(B::float_reshape(x, Shape::new([len])))
}

/// Burn's `Adam` (no weight decay, no AMSGrad), operation for operation.
pub fn adam_step<B: Backend>(param: FloatTensor<B>, grad: FloatTensor<B>, moments: Option<(FloatTensor<B>, FloatTensor<B>)>, step: AdamStep) -> AdamUpdate<B> {
    let shape = param.shape();
    let grad = flat::<B>(grad);
    let (moment_1, moment_2) = match moments {
        Some((m1, m2)) => (
            flat::<B>(m1).mul_scalar(step.beta_1).add(grad.clone().mul_scalar(1.0 - step.beta_1)),
            flat::<B>(m2).mul_scalar(step.beta_2).add(grad.square().mul_scalar(1.0 - step.beta_2)),
        ),
        None => (grad.clone().mul_scalar(1.0 - step.beta_1), grad.square().mul_scalar(1.0 - step.beta_2)),
    };
    let time = step.time as i32;
    let correction_2_sqrt = (1.0 - step.beta_2.powi(time)).sqrt();
    let factor = correction_2_sqrt / (1.0 - step.beta_1.powi(time));
    let update = moment_1
        .clone()
        .mul_scalar(factor)
        .div(moment_2.clone().sqrt().add_scalar(step.epsilon * correction_2_sqrt));
    let param = flat::<B>(param) - update.mul_scalar(step.learning_rate);
    let shaped = |x: Tensor<B, 1>| B::float_reshape(primitive(x), shape.clone());
    AdamUpdate { param: shaped(param), moment_1: shaped(moment_1), moment_2: shaped(moment_2) }
}
