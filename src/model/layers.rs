//! Building blocks shared by the Xception backbone: Keras-style convolutions with
//! batch normalisation and TensorFlow "same" padding.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;

/// Keras' BatchNormalization epsilon.
pub const KERAS_BN_EPSILON: f64 = 1e-3;
/// Keras' running-average momentum 0.99, expressed as Burn's update weight `1 - 0.99`.
pub const KERAS_BN_MOMENTUM: f64 = 0.01;

/// A Keras-style BatchNormalization (epsilon 0.001, momentum 0.99).
pub fn keras_batch_norm<B: Backend>(channels: usize, device: &B::Device) -> BatchNorm<B> {
    BatchNormConfig::new(channels)
        .with_epsilon(KERAS_BN_EPSILON)
        .with_momentum(KERAS_BN_MOMENTUM)
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
}

/// A bias-free convolution followed by batch normalisation (Keras `Conv2D(use_bias=False)` + BN).
#[derive(Module, Debug)]
pub struct ConvBn<B: Backend> {
    /// The convolution, weight `[out, in, k, k]`.
    pub conv: Conv2d<B>,
    /// The batch normalisation over the output channels.
    pub bn: BatchNorm<B>,
}

impl ConvBnConfig {
    /// Builds the layer on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ConvBn<B> {
        let conv = Conv2dConfig::new(self.channels, [self.kernel_size; 2])
            .with_stride([self.stride; 2])
            .with_padding(padding(self.same))
            .with_bias(false)
            .init(device);
        ConvBn {
            conv,
            bn: keras_batch_norm(self.channels[1], device),
        }
    }
}

impl<B: Backend> ConvBn<B> {
    /// `[batch, in, h, w]` -> `[batch, out, h', w']`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.bn.forward(self.conv.forward(x))
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
}

/// A depthwise 3x3 convolution (one filter per channel, "same" padding), a pointwise 1x1
/// convolution, then batch normalisation. No biases, as in Keras' Xception.
#[derive(Module, Debug)]
pub struct SeparableConvBn<B: Backend> {
    /// Depthwise convolution, weight `[in, 1, k, k]`, groups = in.
    pub depthwise: Conv2d<B>,
    /// Pointwise convolution, weight `[out, in, 1, 1]`.
    pub pointwise: Conv2d<B>,
    /// Batch normalisation over the output channels.
    pub bn: BatchNorm<B>,
}

impl SeparableConvBnConfig {
    /// Builds the layer on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> SeparableConvBn<B> {
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
            bn: keras_batch_norm(c_out, device),
        }
    }
}

impl<B: Backend> SeparableConvBn<B> {
    /// `[batch, in, h, w]` -> `[batch, out, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.bn
            .forward(self.pointwise.forward(self.depthwise.forward(x)))
    }
}

fn padding(same: bool) -> PaddingConfig2d {
    if same {
        PaddingConfig2d::Same
    } else {
        PaddingConfig2d::Valid
    }
}
