//! adcorre's own backend operations: the layers of the network that Burn 0.21 runs slowly,
//! as one Burn backend extension ([`AdCorreBackend`]).
//!
//! Every operation has a generic default in Burn's tensor operations (`backend::generic`),
//! which any backend runs as a handful of kernels whose number does not grow with the channel
//! count (Burn's own weight gradient of a grouped convolution is one convolution per channel,
//! about 23,000 per training step of Xception). A backend can override an operation: `flex`
//! runs host kernels on every core (`backend::flex`). `Autodiff<B>` implements the extension
//! with a backward step per operation that calls the inner backend's backward operation
//! (`backend::autodiff`), so training gets the same kernels as inference.
//!
//! The model calls the tensor-level functions of this module ([`depthwise_conv3x3`],
//! [`pointwise_conv`], [`conv3x3`], [`batch_norm_train`], [`max_pool3x3_stride2_same`]) and, for inference
//! with folded batch norms, [`AdCorreBackend::folded_xception`]; the optimizer calls
//! [`AdCorreBackend::adam_step`]. [`set_enabled`]`(false)` makes the model run Burn's own
//! layers instead (the reference the tests and benchmarks compare with).

use std::sync::atomic::{AtomicBool, Ordering};

use burn::prelude::*;
#[cfg(feature = "train")]
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorPrimitive;

use super::generic;
use crate::model::xception::Xception;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Switches adcorre's own operations on or off for the whole process (on by default). Off, the
/// model runs Burn's own layers (convolutions, batch norm, pooling) and Burn's Adam, as before
/// these operations existed: to measure what they bring (`adcorre bench --burn-ops`) or to rule
/// them out when results differ.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether adcorre's own operations are switched on (see [`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Gradients of a convolution's input (when asked for) and weight.
#[derive(Debug)]
pub struct ConvGrads<B: Backend> {
    /// Gradient of the input, same shape.
    pub input: Option<FloatTensor<B>>,
    /// Gradient of the weight, same shape.
    pub weight: FloatTensor<B>,
}

/// What batch normalisation in training mode returns.
#[derive(Debug)]
pub struct BatchNormTrain<B: Backend> {
    /// The normalised, scaled and shifted input, `[n, c, h, w]`.
    pub output: FloatTensor<B>,
    /// Batch mean per channel, `[c]`.
    pub mean: FloatTensor<B>,
    /// Batch variance per channel (biased, as Burn's running average uses it), `[c]`.
    pub variance: FloatTensor<B>,
}

/// Gradients of batch normalisation in training mode.
#[derive(Debug)]
pub struct BatchNormGrads<B: Backend> {
    /// Of the input, `[n, c, h, w]`.
    pub input: FloatTensor<B>,
    /// Of the scale, `[c]`.
    pub gamma: FloatTensor<B>,
    /// Of the shift, `[c]`.
    pub beta: FloatTensor<B>,
}

/// The constants of one Adam step (Burn's `Adam` without weight decay or AMSGrad).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    /// Learning rate.
    pub learning_rate: f64,
    /// First-moment decay.
    pub beta_1: f32,
    /// Second-moment decay.
    pub beta_2: f32,
    /// Added to the root of the second moment.
    pub epsilon: f32,
    /// The step's number, from 1 (for bias correction).
    pub time: usize,
}

/// An Adam update: the new parameter and moments.
#[derive(Debug)]
pub struct AdamUpdate<B: Backend> {
    /// The updated parameter.
    pub param: FloatTensor<B>,
    /// The updated first moment.
    pub moment_1: FloatTensor<B>,
    /// The updated second moment.
    pub moment_2: FloatTensor<B>,
}

/// The operations adcorre adds to a Burn backend. Shapes are NCHW; every method has a generic
/// default (see the module docs), which a backend overrides where it has faster kernels.
pub trait AdCorreBackend: Backend {
    /// Depthwise 3x3 convolution, stride 1, zero padding 1, no bias, of `max(x, 0)` if
    /// `relu_input` else `x`: `x [n, c, h, w]`, `weight [c, 1, 3, 3]` -> `[n, c, h, w]`.
    fn depthwise_conv3x3(x: FloatTensor<Self>, weight: FloatTensor<Self>, relu_input: bool) -> FloatTensor<Self> {
        generic::depthwise_conv3x3::<Self>(x, weight, relu_input)
    }

    /// Gradients of [`AdCorreBackend::depthwise_conv3x3`] given the output's gradient (the
    /// input's only if `input_grad`).
    fn depthwise_conv3x3_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        relu_input: bool,
        input_grad: bool,
    ) -> ConvGrads<Self> {
        generic::depthwise_conv3x3_backward::<Self>(x, weight, output_grad, relu_input, input_grad)
    }

    /// 1x1 convolution without bias at `stride` (the pixels at multiples of the stride; a 1x1
    /// "same" convolution pads nothing): `x [n, ci, h, w]`, `weight [co, ci, 1, 1]` ->
    /// `[n, co, ceil(h / stride), ceil(w / stride)]`.
    fn pointwise_conv(x: FloatTensor<Self>, weight: FloatTensor<Self>, stride: usize) -> FloatTensor<Self> {
        generic::dense_conv::<Self>(x, weight, stride)
    }

    /// Gradients of [`AdCorreBackend::pointwise_conv`] (the input's only if `input_grad`).
    fn pointwise_conv_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        stride: usize,
        input_grad: bool,
    ) -> ConvGrads<Self> {
        generic::pointwise_conv_backward::<Self>(x, weight, output_grad, stride, input_grad)
    }

    /// Dense 3x3 convolution without padding or bias (Xception's two stem convolutions):
    /// `x [n, ci, h, w]`, `weight [co, ci, 3, 3]` -> `[n, co, (h - 3) / stride + 1, (w - 3) /
    /// stride + 1]`.
    fn conv3x3(x: FloatTensor<Self>, weight: FloatTensor<Self>, stride: usize) -> FloatTensor<Self> {
        generic::dense_conv::<Self>(x, weight, stride)
    }

    /// Gradients of [`AdCorreBackend::conv3x3`] (the input's only if `input_grad`).
    fn conv3x3_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        stride: usize,
        input_grad: bool,
    ) -> ConvGrads<Self> {
        generic::dense_conv_backward::<Self>(x, weight, output_grad, stride, input_grad)
    }

    /// Batch normalisation with the batch's statistics: `(x - mean) / sqrt(var + epsilon) *
    /// gamma + beta` per channel over `n, h, w`; `gamma`, `beta` `[c]`.
    fn batch_norm_train(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, epsilon: f64) -> BatchNormTrain<Self> {
        generic::batch_norm_train::<Self>(x, gamma, beta, epsilon)
    }

    /// Gradients of [`AdCorreBackend::batch_norm_train`], from the input, scale and the batch
    /// statistics of the forward pass.
    fn batch_norm_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output_grad: FloatTensor<Self>,
    ) -> BatchNormGrads<Self> {
        generic::batch_norm_train_backward::<Self>(x, gamma, mean, variance, epsilon, output_grad)
    }

    /// 3x3 max pooling with stride 2 and TensorFlow "same" padding (padded cells never win; the
    /// odd extra row or column at the bottom or right): `[n, c, h, w]` ->
    /// `[n, c, ceil(h / 2), ceil(w / 2)]`.
    fn max_pool3x3_stride2_same(x: FloatTensor<Self>) -> FloatTensor<Self> {
        generic::max_pool3x3_stride2_same::<Self>(x)
    }

    /// Gradient of [`AdCorreBackend::max_pool3x3_stride2_same`]'s input: each output's gradient
    /// goes to the first maximum of its window (row-major order, as Burn's pooling picks it).
    fn max_pool3x3_stride2_same_backward(x: FloatTensor<Self>, output_grad: FloatTensor<Self>) -> FloatTensor<Self> {
        generic::max_pool3x3_stride2_same_backward::<Self>(x, output_grad)
    }

    /// One Adam update of a parameter from its gradient and moments (`None` at the first step),
    /// with Burn's `Adam` arithmetic.
    fn adam_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moments: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        step: AdamStep,
    ) -> AdamUpdate<Self> {
        generic::adam_step::<Self>(param, grad, moments, step)
    }

    /// Runs `task` (a training or inference step) where this backend's kernels run best. On
    /// `flex`, on a thread of the rayon pool its kernels use: each parallel kernel then starts
    /// on the calling worker instead of handing the work to the pool and putting the caller to
    /// sleep, about 1,200 times per training step. Elsewhere, here.
    fn run_step<R: Send>(task: impl FnOnce() -> R + Send) -> R {
        task()
    }

    /// Whether tensors can move between two devices of this backend (what data-parallel
    /// training does with every batch and every gradient). Not on wgpu: cubecl-wgpu 0.10 leaves
    /// the device-to-device transfer that Burn's `to_device` uses unimplemented.
    const MOVES_TENSORS_BETWEEN_DEVICES: bool = true;

    /// The whole backbone for inference, when every batch norm is folded and the backend has
    /// a pass for it: `[n, c, h, w]` -> the feature maps, or their spatial means when `pooled`
    /// (`[n, features]`, as a rank-4 tensor `[n, features, 1, 1]`). `None` (the default) runs
    /// the layers one by one.
    fn folded_xception(net: &Xception<Self>, x: &FloatTensor<Self>, pooled: bool) -> Option<FloatTensor<Self>> {
        let _ = (net, x, pooled);
        None
    }
}

/// An autodiff backend whose inner backend also has adcorre's operations: what training needs.
#[cfg(feature = "train")]
pub trait AdCorreAutodiffBackend: AdCorreBackend + AutodiffBackend<InnerBackend: AdCorreBackend> {}

#[cfg(feature = "train")]
impl<B> AdCorreAutodiffBackend for B
where
    B: AdCorreBackend + AutodiffBackend,
    B::InnerBackend: AdCorreBackend,
{
}

fn primitive<B: Backend, const D: usize>(x: Tensor<B, D>) -> FloatTensor<B> {
    x.into_primitive().tensor()
}

fn tensor<B: Backend, const D: usize>(x: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

/// [`AdCorreBackend::depthwise_conv3x3`] on tensors.
pub fn depthwise_conv3x3<B: AdCorreBackend>(x: Tensor<B, 4>, weight: Tensor<B, 4>, relu_input: bool) -> Tensor<B, 4> {
    tensor(B::depthwise_conv3x3(primitive(x), primitive(weight), relu_input))
}

/// [`AdCorreBackend::pointwise_conv`] on tensors.
pub fn pointwise_conv<B: AdCorreBackend>(x: Tensor<B, 4>, weight: Tensor<B, 4>, stride: usize) -> Tensor<B, 4> {
    tensor(B::pointwise_conv(primitive(x), primitive(weight), stride))
}

/// [`AdCorreBackend::conv3x3`] on tensors.
pub fn conv3x3<B: AdCorreBackend>(x: Tensor<B, 4>, weight: Tensor<B, 4>, stride: usize) -> Tensor<B, 4> {
    tensor(B::conv3x3(primitive(x), primitive(weight), stride))
}

/// [`AdCorreBackend::batch_norm_train`] on tensors: `(output, mean, variance)`.
pub fn batch_norm_train<B: AdCorreBackend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    epsilon: f64,
) -> (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>) {
    let out = B::batch_norm_train(primitive(x), primitive(gamma), primitive(beta), epsilon);
    (tensor(out.output), tensor(out.mean), tensor(out.variance))
}

/// [`AdCorreBackend::max_pool3x3_stride2_same`] on tensors.
pub fn max_pool3x3_stride2_same<B: AdCorreBackend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    tensor(B::max_pool3x3_stride2_same(primitive(x)))
}

/// [`AdCorreBackend::folded_xception`] on tensors: the feature maps, or `None` when the
/// backend has no such pass, declines, or the operations are switched off.
pub(crate) fn folded_xception_maps<B: AdCorreBackend>(net: &Xception<B>, x: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
    folded_xception(net, x, false)
}

/// Like [`folded_xception_maps`], pooled: `[n, features]`.
pub(crate) fn folded_xception_pooled<B: AdCorreBackend>(net: &Xception<B>, x: &Tensor<B, 4>) -> Option<Tensor<B, 2>> {
    folded_xception(net, x, true).map(|pooled| pooled.flatten(1, 3))
}

fn folded_xception<B: AdCorreBackend>(net: &Xception<B>, x: &Tensor<B, 4>, pooled: bool) -> Option<Tensor<B, 4>> {
    if !enabled() {
        return None;
    }
    let TensorPrimitive::Float(input) = x.clone().into_primitive() else {
        return None;
    };
    B::folded_xception(net, &input, pooled).map(tensor)
}
