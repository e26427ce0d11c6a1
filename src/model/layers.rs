//! Building blocks shared by the Xception backbone: Keras-style convolutions with
//! batch normalisation and TensorFlow "same" padding.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::activation::relu;
use burn::tensor::s;

use crate::backend::ops::{self, AdCorreBackend};

/// Keras' BatchNormalization epsilon.
pub const KERAS_BN_EPSILON: f64 = 1e-3;
/// Keras' running-average momentum 0.99, expressed as Burn's update weight `1 - 0.99`.
pub const KERAS_BN_MOMENTUM: f64 = 0.01;

/// A Keras-style BatchNormalization (epsilon 0.001) whose running statistics move by
/// `momentum` per step (Burn's convention; Keras' 0.99 is 0.01 here).
pub fn keras_batch_norm<B: Backend>(channels: usize, momentum: f64, device: &B::Device) -> BatchNorm<B> {
    BatchNormConfig::new(channels)
        .with_epsilon(KERAS_BN_EPSILON)
        .with_momentum(momentum)
        .init(device)
}

/// Configuration of a [`ConvBn`]: a bias-free convolution followed by batch normalisation.
#[derive(Config, Debug)]
pub struct ConvBnConfig {
    /// Input and output channels.
    pub channels: [usize; 2],
    /// Square kernel size.
    pub kernel_size: usize,
    /// Stride in both directions.
    #[config(default = 1)]
    pub stride: usize,
    /// TensorFlow "same" padding (true) or "valid" (false).
    #[config(default = false)]
    pub same: bool,
    /// Running-statistics update weight of the batch norm.
    #[config(default = "KERAS_BN_MOMENTUM")]
    pub bn_momentum: f64,
}

/// A bias-free convolution followed by batch normalisation (Keras `Conv2D(use_bias=False)` + BN).
#[derive(Module, Debug)]
pub struct ConvBn<B: AdCorreBackend> {
    /// The convolution, weight `[out, in, k, k]`.
    pub conv: Conv2d<B>,
    /// The batch normalisation over the output channels; `None` once folded into `conv`.
    pub bn: Option<BatchNorm<B>>,
}

impl ConvBnConfig {
    /// Builds the layer on `device`.
    pub fn init<B: AdCorreBackend>(&self, device: &B::Device) -> ConvBn<B> {
        let conv = Conv2dConfig::new(self.channels, [self.kernel_size; 2])
            .with_stride([self.stride; 2])
            .with_padding(padding(self.same))
            .with_bias(false)
            .init(device);
        ConvBn {
            conv,
            bn: Some(keras_batch_norm(self.channels[1], self.bn_momentum, device)),
        }
    }
}

impl<B: AdCorreBackend> ConvBn<B> {
    /// `[batch, in, h, w]` -> `[batch, out, h', w']`. A 1x1 convolution runs as
    /// [`ops::pointwise_conv`], a 3x3 one without padding as [`ops::conv3x3`], others as Burn's
    /// convolution.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = match (pointwise_stride(&self.conv), dense_3x3_stride(&self.conv)) {
            (Some(stride), _) if ops::enabled() => with_bias(ops::pointwise_conv(x, self.conv.weight.val(), stride), &self.conv),
            (_, Some(stride)) if ops::enabled() => with_bias(ops::conv3x3(x, self.conv.weight.val(), stride), &self.conv),
            _ => conv_forward(&self.conv, x),
        };
        batch_norm(&self.bn, x)
    }

    /// The same function for inference with the batch normalisation folded into the
    /// convolution's weights and bias (see [`fold_batch_norm`]).
    pub fn fold_batch_norm(self) -> Self {
        match self.bn {
            Some(bn) => ConvBn {
                conv: fold_batch_norm(self.conv, &bn),
                bn: None,
            },
            None => self,
        }
    }
}

/// Configuration of a [`SeparableConvBn`]: Keras `SeparableConv2D(use_bias=False)` + BN.
#[derive(Config, Debug)]
pub struct SeparableConvBnConfig {
    /// Input and output channels.
    pub channels: [usize; 2],
    /// Square depthwise kernel size.
    #[config(default = 3)]
    pub kernel_size: usize,
    /// Running-statistics update weight of the batch norm.
    #[config(default = "KERAS_BN_MOMENTUM")]
    pub bn_momentum: f64,
}

/// A depthwise 3x3 convolution (one filter per channel, "same" padding), a pointwise 1x1
/// convolution, then batch normalisation. No biases, as in Keras' Xception. The convolutions
/// run as [`ops::depthwise_conv3x3`] and [`ops::pointwise_conv`] (see [`crate::backend::ops`]).
#[derive(Module, Debug)]
pub struct SeparableConvBn<B: AdCorreBackend> {
    /// Depthwise convolution, weight `[in, 1, k, k]`, groups = in.
    pub depthwise: Conv2d<B>,
    /// Pointwise convolution, weight `[out, in, 1, 1]`.
    pub pointwise: Conv2d<B>,
    /// Batch normalisation over the output channels; `None` once folded into `pointwise`.
    pub bn: Option<BatchNorm<B>>,
}

impl SeparableConvBnConfig {
    /// Builds the layer on `device`.
    pub fn init<B: AdCorreBackend>(&self, device: &B::Device) -> SeparableConvBn<B> {
        let [c_in, c_out] = self.channels;
        let depthwise = Conv2dConfig::new([c_in, c_in], [self.kernel_size; 2])
            .with_groups(c_in)
            .with_padding(PaddingConfig2d::Same)
            .with_bias(false)
            .init(device);
        let pointwise = Conv2dConfig::new([c_in, c_out], [1, 1])
            .with_bias(false)
            .init(device);
        SeparableConvBn {
            depthwise,
            pointwise,
            bn: Some(keras_batch_norm(c_out, self.bn_momentum, device)),
        }
    }
}

impl<B: AdCorreBackend> SeparableConvBn<B> {
    /// `[batch, in, h, w]` -> `[batch, out, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_after(x, false)
    }

    /// The layer applied to `max(x, 0)`: the ReLU that precedes most separable convolutions in
    /// Xception, which the depthwise step applies as it reads its input.
    pub fn forward_after_relu(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_after(x, true)
    }

    fn forward_after(&self, x: Tensor<B, 4>, relu_input: bool) -> Tensor<B, 4> {
        let ours = ops::enabled() && is_depthwise_3x3(&self.depthwise) && pointwise_stride(&self.pointwise) == Some(1);
        if !ours {
            let x = if relu_input { relu(x) } else { x };
            return batch_norm(&self.bn, self.pointwise.forward(self.depthwise.forward(x)));
        }
        let x = with_bias(ops::depthwise_conv3x3(x, self.depthwise.weight.val(), relu_input), &self.depthwise);
        let x = with_bias(ops::pointwise_conv(x, self.pointwise.weight.val(), 1), &self.pointwise);
        batch_norm(&self.bn, x)
    }

    /// The same function for inference with the batch normalisation folded into the pointwise
    /// convolution (see [`fold_batch_norm`]).
    pub fn fold_batch_norm(self) -> Self {
        match self.bn {
            Some(bn) => SeparableConvBn {
                depthwise: self.depthwise,
                pointwise: fold_batch_norm(self.pointwise, &bn),
                bn: None,
            },
            None => self,
        }
    }
}

/// `conv.forward(x)`, except that in inference a strided 1x1 convolution (which never pads)
/// subsamples first and then convolves with stride 1: the same products and sums, but CPU
/// backends run it as one matrix product instead of building an im2col buffer (half the time on
/// `flex`). With autodiff Burn's strided convolution stays: with the strided slice's backward
/// pass a training step at 96x96, batch 2 took 2.16-2.20 s instead of 2.00-2.01 s.
fn conv_forward<B: AdCorreBackend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [_, _, kh, kw] = conv.weight.dims();
    let unpadded = matches!(
        conv.padding,
        PaddingConfig2d::Same | PaddingConfig2d::Valid | PaddingConfig2d::Explicit(0, 0, 0, 0)
    );
    let strided_pointwise = [kh, kw] == [1, 1] && conv.stride != [1, 1] && conv.dilation == [1, 1] && conv.groups == 1;
    if !strided_pointwise || !unpadded || B::ad_enabled(&x.device()) {
        return conv.forward(x);
    }
    let [sh, sw] = conv.stride;
    let subsampled = x.slice(s![.., .., 0..;sh, 0..;sw]);
    conv2d(
        subsampled,
        conv.weight.val(),
        conv.bias.as_ref().map(|bias| bias.val()),
        ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
    )
}

/// The stride of a 1x1 convolution without padding, dilation or groups (what
/// [`ops::pointwise_conv`] computes); `None` for any other convolution.
fn pointwise_stride<B: Backend>(conv: &Conv2d<B>) -> Option<usize> {
    let unpadded = matches!(
        conv.padding,
        PaddingConfig2d::Same | PaddingConfig2d::Valid | PaddingConfig2d::Explicit(0, 0, 0, 0)
    );
    let [sh, sw] = conv.stride;
    let fits = conv.kernel_size == [1, 1] && sh == sw && unpadded && conv.dilation == [1, 1] && conv.groups == 1;
    fits.then_some(sh)
}

/// The stride of a dense 3x3 convolution without padding or dilation (what [`ops::conv3x3`]
/// computes); `None` for any other convolution.
fn dense_3x3_stride<B: Backend>(conv: &Conv2d<B>) -> Option<usize> {
    let unpadded = matches!(conv.padding, PaddingConfig2d::Valid | PaddingConfig2d::Explicit(0, 0, 0, 0));
    let [sh, sw] = conv.stride;
    let fits = conv.kernel_size == [3, 3] && sh == sw && unpadded && conv.dilation == [1, 1] && conv.groups == 1;
    fits.then_some(sh)
}

/// Whether `conv` is what [`ops::depthwise_conv3x3`] computes: one 3x3 filter per channel,
/// stride 1, padding 1.
fn is_depthwise_3x3<B: Backend>(conv: &Conv2d<B>) -> bool {
    let [c_out, c_per_group, _, _] = conv.weight.dims();
    conv.kernel_size == [3, 3]
        && c_per_group == 1
        && conv.groups == c_out
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && matches!(conv.padding, PaddingConfig2d::Same | PaddingConfig2d::Explicit(1, 1, 1, 1))
}

/// `x` plus the convolution's bias per channel, if it has one (a folded batch norm).
fn with_bias<B: Backend>(x: Tensor<B, 4>, conv: &Conv2d<B>) -> Tensor<B, 4> {
    match &conv.bias {
        Some(bias) => {
            let c = bias.dims()[0];
            x + bias.val().reshape([1, c, 1, 1])
        }
        None => x,
    }
}

/// Batch normalisation: in training (an autodiff backend) with the batch's statistics by
/// [`ops::batch_norm_train`], moving the running averages as Burn's `BatchNorm` does;
/// otherwise Burn's `BatchNorm` (running statistics).
fn batch_norm<B: AdCorreBackend>(bn: &Option<BatchNorm<B>>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let Some(bn) = bn else {
        return x;
    };
    if !(ops::enabled() && B::ad_enabled(&x.device())) {
        return bn.forward(x);
    }
    let (output, mean, variance) = ops::batch_norm_train(x, bn.gamma.val(), bn.beta.val(), bn.epsilon);
    let momentum = bn.momentum;
    let device = output.device();
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    bn.running_mean.update(running_mean.mul_scalar(1.0 - momentum).add(mean.detach().mul_scalar(momentum)).detach());
    bn.running_var.update(running_var.mul_scalar(1.0 - momentum).add(variance.detach().mul_scalar(momentum)).detach());
    output
}

/// Folds an inference-mode batch normalisation into the convolution before it:
/// `bn(conv(x)) = conv'(x)` with `W' = W * s` per output channel and `b' = b * s + beta - mean * s`,
/// `s = gamma / sqrt(var + eps)`. Removes four broadcast passes over every feature map.
/// Only for inference: the folded layer no longer normalises with batch statistics.
pub fn fold_batch_norm<B: Backend>(conv: Conv2d<B>, bn: &BatchNorm<B>) -> Conv2d<B> {
    let scale = bn.gamma.val() / (bn.running_var.value() + bn.epsilon).sqrt();
    let shift = bn.beta.val() - bn.running_mean.value() * scale.clone();
    let [out_channels, _, _, _] = conv.weight.dims();
    let weight = conv.weight.val() * scale.clone().reshape([out_channels, 1, 1, 1]);
    let bias = match &conv.bias {
        Some(bias) => bias.val() * scale + shift,
        None => shift,
    };
    Conv2d {
        weight: Param::initialized(conv.weight.id, weight),
        bias: Some(Param::from_tensor(bias)),
        ..conv
    }
}

fn padding(same: bool) -> PaddingConfig2d {
    if same {
        PaddingConfig2d::Same
    } else {
        PaddingConfig2d::Valid
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::backend::Flex;
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn strided_pointwise_convolution_subsamples_then_convolves() {
        let device = Default::default();
        for (stride, padding, [h, w]) in [
            (2, PaddingConfig2d::Same, [109, 109]),
            (2, PaddingConfig2d::Valid, [7, 10]),
            (3, PaddingConfig2d::Same, [8, 5]),
        ] {
            let conv = Conv2dConfig::new([5, 6], [1, 1])
                .with_stride([stride, stride])
                .with_padding(padding)
                .init::<Flex>(&device);
            let x = Tensor::<Flex, 4>::random([2, 5, h, w], Distribution::Default, &device);
            let expected = conv.forward(x.clone());
            let got = conv_forward(&conv, x);
            assert_eq!(got.dims(), expected.dims());
            got.to_data().assert_approx_eq::<f32>(&expected.to_data(), Tolerance::default());
        }
    }
}
