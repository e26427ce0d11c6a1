//! Xception (Chollet 2017) exactly as `tf.keras.applications.Xception(include_top=False)`.
//!
//! Entry flow (block 1 plain convs, blocks 2-4 separable residual blocks with 1x1 stride-2
//! projection shortcuts), middle flow (8 identity-shortcut blocks of 3 separable convs), exit
//! flow (block 13 residual block, block 14 two separable convs). TensorFlow "same" padding,
//! including the asymmetric max-pool padding at 28x28 and 14x14 (0 before, 1 after).

use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::adcorre_net::global_average_pool;
use super::layers::{ConvBn, ConvBnConfig, SeparableConvBn, SeparableConvBnConfig, KERAS_BN_MOMENTUM};
use crate::backend::ops::{self, AdCorreBackend};
use crate::error::AdCorreError;

/// Smallest input side the network accepts (two valid 3x3 convs, the first with stride 2).
pub const MIN_INPUT_SIZE: usize = 7;

/// Configuration of the [`Xception`] backbone. Defaults reproduce Keras' Xception.
#[derive(Config, Debug, PartialEq)]
pub struct XceptionConfig {
    /// Input channels (3 for RGB).
    #[config(default = 3)]
    pub in_channels: usize,
    /// Multiplier on every channel count (1.0 = Keras); smaller values give small models
    /// for quick experiments and tests.
    #[config(default = 1.0)]
    pub width: f64,
    /// Number of middle-flow blocks (8 = Keras).
    #[config(default = 8)]
    pub middle_blocks: usize,
    /// How far batch-norm running statistics move per training step (Keras' momentum 0.99 is
    /// 0.01 here). Short trainings need more (e.g. 0.1) for inference statistics to catch up.
    #[config(default = "KERAS_BN_MOMENTUM")]
    pub bn_momentum: f64,
    /// Stride of the first convolution (2 = Keras). 1 keeps the full resolution of small
    /// inputs such as FER-2013's 48x48 faces, at four times the compute of every later layer.
    #[config(default = 2)]
    pub stem_stride: usize,
}

/// Channel counts of Keras' Xception, before the width multiplier.
const STEM: [usize; 2] = [32, 64];
const ENTRY: [usize; 3] = [128, 256, 728];
const MIDDLE: usize = 728;
const EXIT_BLOCK: usize = 1024;
const EXIT_CONVS: [usize; 2] = [1536, 2048];

impl XceptionConfig {
    /// A channel count scaled by the width multiplier (at least 1).
    pub fn channels(&self, keras_channels: usize) -> usize {
        ((keras_channels as f64 * self.width).round() as usize).max(1)
    }

    /// Number of output features (channels of the last layer; 2048 for Keras' Xception).
    pub fn out_features(&self) -> usize {
        self.channels(EXIT_CONVS[1])
    }

    /// Checks that the configuration describes a buildable network.
    pub fn validate(&self) -> crate::Result<()> {
        if !(1..=64).contains(&self.in_channels) {
            return Err(AdCorreError::Config(format!("in_channels must be 1 to 64, got {}", self.in_channels)));
        }
        if self.middle_blocks > 256 {
            return Err(AdCorreError::Config(format!("at most 256 middle blocks, got {}", self.middle_blocks)));
        }
        if !(0.0..=1.0).contains(&self.bn_momentum) {
            return Err(AdCorreError::Config(format!(
                "bn_momentum must be in [0, 1], got {}",
                self.bn_momentum
            )));
        }
        if !(1..=2).contains(&self.stem_stride) {
            return Err(AdCorreError::Config(format!(
                "stem_stride must be 1 or 2, got {}",
                self.stem_stride
            )));
        }
        if !(self.width.is_finite() && self.width > 0.0 && self.width <= 64.0) {
            return Err(AdCorreError::Config(format!(
                "width must be a positive number up to 64, got {}",
                self.width
            )));
        }
        Ok(())
    }

    /// Builds the backbone on `device`. Call [`XceptionConfig::validate`] first for a typed
    /// error instead of a panic on a nonsensical configuration.
    pub fn init<B: AdCorreBackend>(&self, device: &B::Device) -> Xception<B> {
        let c = |n| self.channels(n);
        let m = self.bn_momentum;
        let block1_conv1 = ConvBnConfig::new([self.in_channels, c(STEM[0])], 3)
            .with_stride(self.stem_stride)
            .with_bn_momentum(m)
            .init(device);
        let block1_conv2 = ConvBnConfig::new([c(STEM[0]), c(STEM[1])], 3)
            .with_bn_momentum(m)
            .init(device);
        let entry = |i, mid, o| EntryBlockConfig::new(i, mid, o).with_bn_momentum(m);
        let block2 = entry(c(STEM[1]), c(ENTRY[0]), c(ENTRY[0]))
            .with_relu_first(false)
            .init(device);
        let block3 = entry(c(ENTRY[0]), c(ENTRY[1]), c(ENTRY[1])).init(device);
        let block4 = entry(c(ENTRY[1]), c(ENTRY[2]), c(ENTRY[2])).init(device);
        let middle = (0..self.middle_blocks)
            .map(|_| MiddleBlockConfig::new(c(MIDDLE)).with_bn_momentum(m).init(device))
            .collect();
        let block13 = entry(c(ENTRY[2]), c(MIDDLE), c(EXIT_BLOCK)).init(device);
        let block14_sepconv1 = SeparableConvBnConfig::new([c(EXIT_BLOCK), c(EXIT_CONVS[0])])
            .with_bn_momentum(m)
            .init(device);
        let block14_sepconv2 = SeparableConvBnConfig::new([c(EXIT_CONVS[0]), c(EXIT_CONVS[1])])
            .with_bn_momentum(m)
            .init(device);
        Xception {
            block1_conv1,
            block1_conv2,
            block2,
            block3,
            block4,
            middle,
            block13,
            block14_sepconv1,
            block14_sepconv2,
        }
    }
}

/// The Xception backbone without its classifier: `[batch, 3, h, w]` -> `[batch, 2048, h/32, w/32]`.
#[derive(Module, Debug)]
pub struct Xception<B: AdCorreBackend> {
    /// 3x3 stride-2 valid conv + BN (Keras `block1_conv1`, `block1_conv1_bn`).
    pub block1_conv1: ConvBn<B>,
    /// 3x3 valid conv + BN (Keras `block1_conv2`, `block1_conv2_bn`).
    pub block1_conv2: ConvBn<B>,
    /// Entry residual block 2 (no ReLU before its first separable conv).
    pub block2: EntryBlock<B>,
    /// Entry residual block 3.
    pub block3: EntryBlock<B>,
    /// Entry residual block 4.
    pub block4: EntryBlock<B>,
    /// Middle-flow blocks 5..=12.
    pub middle: Vec<MiddleBlock<B>>,
    /// Exit residual block 13.
    pub block13: EntryBlock<B>,
    /// Exit separable conv 1 (`block14_sepconv1`).
    pub block14_sepconv1: SeparableConvBn<B>,
    /// Exit separable conv 2 (`block14_sepconv2`).
    pub block14_sepconv2: SeparableConvBn<B>,
}

impl<B: AdCorreBackend> Xception<B> {
    /// Feature maps: `[batch, in_channels, h, w]` -> `[batch, out_features, h', w']`
    /// (224 -> 7).
    ///
    /// With folded batch norms, a backend with a pass for the whole backbone runs it
    /// ([`AdCorreBackend::folded_xception`]; on `flex`, `backend::host_xception`); otherwise
    /// the layers run one by one.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match ops::folded_xception_maps(self, &x) {
            Some(y) => y,
            None => self.forward_with_taps(x, &mut |_, _| {}),
        }
    }

    /// The feature maps' spatial means: `[batch, in_channels, h, w]` -> `[batch, out_features]`
    /// (global average pooling). The backbone pass of [`Xception::forward`] pools its last map
    /// directly, without writing the feature maps out.
    pub fn forward_pooled(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        match ops::folded_xception_pooled(self, &x) {
            Some(y) => y,
            None => global_average_pool(self.forward_with_taps(x, &mut |_, _| {})),
        }
    }

    /// Like [`Xception::forward`], and hands `tap` the activations of the Keras layers
    /// `block1_conv1_act`, `block1_conv2_act`, `block2_pool`, `block3_pool`, `block4_pool`,
    /// `block13_pool` (each pool before its residual addition) and `block14_sepconv2_act`,
    /// by those names, for locating numerical differences against Keras.
    pub fn forward_with_taps(
        &self,
        x: Tensor<B, 4>,
        tap: &mut dyn FnMut(&str, &Tensor<B, 4>),
    ) -> Tensor<B, 4> {
        let x = relu(self.block1_conv1.forward(x));
        tap("block1_conv1_act", &x);
        let x = relu(self.block1_conv2.forward(x));
        tap("block1_conv2_act", &x);
        let x = self.block2.forward_with_tap(x, "block2_pool", tap);
        let x = self.block3.forward_with_tap(x, "block3_pool", tap);
        let mut x = self.block4.forward_with_tap(x, "block4_pool", tap);
        for block in &self.middle {
            x = block.forward(x);
        }
        let x = self.block13.forward_with_tap(x, "block13_pool", tap);
        let x = self.block14_sepconv1.forward(x);
        let x = relu(self.block14_sepconv2.forward_after_relu(x));
        tap("block14_sepconv2_act", &x);
        x
    }

    /// The same backbone for inference, every batch normalisation folded into the
    /// convolution before it (fewer passes over memory; equal up to float rounding).
    pub fn fold_batch_norm(self) -> Self {
        Xception {
            block1_conv1: self.block1_conv1.fold_batch_norm(),
            block1_conv2: self.block1_conv2.fold_batch_norm(),
            block2: self.block2.fold_batch_norm(),
            block3: self.block3.fold_batch_norm(),
            block4: self.block4.fold_batch_norm(),
            middle: self.middle.into_iter().map(MiddleBlock::fold_batch_norm).collect(),
            block13: self.block13.fold_batch_norm(),
            block14_sepconv1: self.block14_sepconv1.fold_batch_norm(),
            block14_sepconv2: self.block14_sepconv2.fold_batch_norm(),
        }
    }
}

/// Configuration of an [`EntryBlock`].
#[derive(Config, Debug)]
pub struct EntryBlockConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels of the first separable conv.
    pub mid_channels: usize,
    /// Output channels of the block.
    pub out_channels: usize,
    /// Whether a ReLU precedes the first separable conv (false only for Keras' block 2).
    #[config(default = true)]
    pub relu_first: bool,
    /// Running-statistics update weight of the batch norms.
    #[config(default = "KERAS_BN_MOMENTUM")]
    pub bn_momentum: f64,
}

/// A downsampling residual block (Keras blocks 2, 3, 4 and 13):
/// `[relu] sepconv-bn, relu, sepconv-bn, maxpool 3x3/2 same` plus a 1x1 stride-2 conv-bn shortcut.
#[derive(Module, Debug)]
pub struct EntryBlock<B: AdCorreBackend> {
    /// 1x1 stride-2 projection of the shortcut (Keras `conv2d*` + `batch_normalization*`).
    pub shortcut: ConvBn<B>,
    /// First separable conv + BN.
    pub sepconv1: SeparableConvBn<B>,
    /// Second separable conv + BN.
    pub sepconv2: SeparableConvBn<B>,
    /// 3x3 stride-2 max pool with TensorFlow "same" padding.
    pub pool: MaxPool2d,
    /// Whether a ReLU precedes the first separable conv.
    pub relu_first: bool,
}

impl EntryBlockConfig {
    /// Builds the block on `device`.
    pub fn init<B: AdCorreBackend>(&self, device: &B::Device) -> EntryBlock<B> {
        EntryBlock {
            shortcut: ConvBnConfig::new([self.in_channels, self.out_channels], 1)
                .with_stride(2)
                .with_same(true)
                .with_bn_momentum(self.bn_momentum)
                .init(device),
            sepconv1: SeparableConvBnConfig::new([self.in_channels, self.mid_channels])
                .with_bn_momentum(self.bn_momentum)
                .init(device),
            sepconv2: SeparableConvBnConfig::new([self.mid_channels, self.out_channels])
                .with_bn_momentum(self.bn_momentum)
                .init(device),
            pool: same_max_pool(),
            relu_first: self.relu_first,
        }
    }
}

impl<B: AdCorreBackend> EntryBlock<B> {
    /// `[batch, in, h, w]` -> `[batch, out, ceil(h/2), ceil(w/2)]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_with_tap(x, "", &mut |_, _| {})
    }

    fn forward_with_tap(
        &self,
        x: Tensor<B, 4>,
        pool_name: &str,
        tap: &mut dyn FnMut(&str, &Tensor<B, 4>),
    ) -> Tensor<B, 4> {
        let residual = self.shortcut.forward(x.clone());
        let x = if self.relu_first { self.sepconv1.forward_after_relu(x) } else { self.sepconv1.forward(x) };
        let x = self.sepconv2.forward_after_relu(x);
        let x = if ops::enabled() { ops::max_pool3x3_stride2_same(x) } else { self.pool.forward(x) };
        tap(pool_name, &x);
        x + residual
    }

    /// See [`Xception::fold_batch_norm`].
    pub fn fold_batch_norm(self) -> Self {
        EntryBlock {
            shortcut: self.shortcut.fold_batch_norm(),
            sepconv1: self.sepconv1.fold_batch_norm(),
            sepconv2: self.sepconv2.fold_batch_norm(),
            ..self
        }
    }
}

/// Configuration of a [`MiddleBlock`].
#[derive(Config, Debug)]
pub struct MiddleBlockConfig {
    /// Channels (in = out).
    pub channels: usize,
    /// Running-statistics update weight of the batch norms.
    #[config(default = "KERAS_BN_MOMENTUM")]
    pub bn_momentum: f64,
}

/// A middle-flow block: three `relu, sepconv-bn` with an identity shortcut.
#[derive(Module, Debug)]
pub struct MiddleBlock<B: AdCorreBackend> {
    /// The three separable convs (Keras `blockN_sepconv1..3`).
    pub sepconvs: Vec<SeparableConvBn<B>>,
}

impl MiddleBlockConfig {
    /// Builds the block on `device`.
    pub fn init<B: AdCorreBackend>(&self, device: &B::Device) -> MiddleBlock<B> {
        MiddleBlock {
            sepconvs: (0..3)
                .map(|_| {
                    SeparableConvBnConfig::new([self.channels; 2])
                        .with_bn_momentum(self.bn_momentum)
                        .init(device)
                })
                .collect(),
        }
    }
}

impl<B: AdCorreBackend> MiddleBlock<B> {
    /// `[batch, c, h, w]` -> `[batch, c, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let residual = x.clone();
        let x = self
            .sepconvs
            .iter()
            .fold(x, |x, sepconv| sepconv.forward_after_relu(x));
        x + residual
    }

    /// See [`Xception::fold_batch_norm`].
    pub fn fold_batch_norm(self) -> Self {
        MiddleBlock {
            sepconvs: self
                .sepconvs
                .into_iter()
                .map(SeparableConvBn::fold_batch_norm)
                .collect(),
        }
    }
}

/// Keras `MaxPooling2D(3, strides=2, padding='same')`: -inf padding, the odd extra row/column
/// at the bottom/right. The blocks run [`ops::max_pool3x3_stride2_same`], the same pooling;
/// this module is Burn's, for when adcorre's operations are switched off.
pub fn same_max_pool() -> MaxPool2d {
    MaxPool2dConfig::new([3, 3])
        .with_strides([2, 2])
        .with_padding(PaddingConfig2d::Same)
        .init()
}
