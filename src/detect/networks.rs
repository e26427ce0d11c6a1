//! The three MTCNN networks (Zhang et al. 2016) as Burn modules, with the layer names and
//! layouts of facenet-pytorch's `PNet`, `RNet` and `ONet`, so that its weights load by name.
//!
//! Every convolution and dense layer is followed by a PReLU with one slope per channel; max
//! pooling rounds its output size up (PyTorch's `ceil_mode`). Convolutions are Burn's: on
//! batches of small crops they are 4-6x faster on `flex` than the expression network's 3x3
//! kernel (`ops::conv3x3`, which works image by image: R-Net's first layer on 400 crops
//! 22 vs 136 ms).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PRelu, PReluConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;

use crate::backend::AdCorreBackend;

fn conv<B: AdCorreBackend>(channels: [usize; 2], kernel: usize, device: &B::Device) -> Conv2d<B> {
    Conv2dConfig::new(channels, [kernel, kernel]).init(device)
}

fn prelu<B: AdCorreBackend>(channels: usize, device: &B::Device) -> PRelu<B> {
    PReluConfig::new().with_num_parameters(channels).init(device)
}

fn pool(kernel: usize) -> MaxPool2d {
    MaxPool2dConfig::new([kernel, kernel]).with_strides([2, 2]).with_ceil_mode(true).init()
}

/// PReLU with one slope per channel (dimension 1): `max(x, 0) + alpha * min(x, 0)`, the same
/// values as Burn's `PRelu::forward` (one of the two terms is exactly 0), in a quarter of its
/// time on `flex` (3.3 million values: 11.7 vs 44.6 ms).
fn prelu_forward<B: AdCorreBackend, const D: usize>(layer: &PRelu<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let mut shape = [1; D];
    shape[1] = layer.alpha.dims()[0];
    let negative = x.clone().min_pair(x.zeros_like());
    burn::tensor::activation::relu(x) + negative * layer.alpha.val().reshape(shape)
}

/// `[n, c, h, w]` -> `[n, w * h * c]` in the order of PyTorch's `permute(0, 3, 2, 1)` then
/// flatten (how facenet-pytorch feeds R-Net's and O-Net's first dense layer).
fn flatten_whc<B: AdCorreBackend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    x.permute([0, 3, 2, 1]).flatten(1, 3)
}

/// Configuration of [`PNet`] (no options: the architecture is fixed by its weights).
#[derive(Config, Debug)]
pub struct PNetConfig {}

/// The proposal network: fully convolutional, run on every level of the image pyramid; each
/// output cell scores a 12x12 window (stride 2) of its level.
#[derive(Module, Debug)]
pub struct PNet<B: AdCorreBackend> {
    conv1: Conv2d<B>,
    prelu1: PRelu<B>,
    pool1: MaxPool2d,
    conv2: Conv2d<B>,
    prelu2: PRelu<B>,
    conv3: Conv2d<B>,
    prelu3: PRelu<B>,
    conv4_1: Conv2d<B>,
    conv4_2: Conv2d<B>,
}

impl PNetConfig {
    /// A P-Net with untrained weights (load the shipped ones with [`super::Mtcnn::shipped`]).
    pub fn init<B: AdCorreBackend>(&self, device: &B::Device) -> PNet<B> {
        PNet {
            conv1: conv([3, 10], 3, device),
            prelu1: prelu(10, device),
            pool1: pool(2),
            conv2: conv([10, 16], 3, device),
            prelu2: prelu(16, device),
            conv3: conv([16, 32], 3, device),
            prelu3: prelu(32, device),
            conv4_1: conv([32, 2], 1, device),
            conv4_2: conv([32, 4], 1, device),
        }
    }
}

impl<B: AdCorreBackend> PNet<B> {
    /// Images `[n, 3, h, w]` (RGB scaled to `(x - 127.5) / 128`, h, w >= 12) -> box
    /// regression `[n, 4, h', w']` and face probability `[n, 2, h', w']` (softmax over
    /// dimension 1: background, face), with `h' = ceil((h - 2) / 2) - 4`.
    pub fn forward(&self, x: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let x = self.pool1.forward(prelu_forward(&self.prelu1, self.conv1.forward(x)));
        let x = prelu_forward(&self.prelu2, self.conv2.forward(x));
        let x = prelu_forward(&self.prelu3, self.conv3.forward(x));
        (self.conv4_2.forward(x.clone()), softmax(self.conv4_1.forward(x), 1))
    }
}

/// Configuration of [`RNet`].
#[derive(Config, Debug)]
pub struct RNetConfig {}

/// The refinement network: rescores and refines P-Net's candidates from 24x24 crops.
#[derive(Module, Debug)]
pub struct RNet<B: AdCorreBackend> {
    conv1: Conv2d<B>,
    prelu1: PRelu<B>,
    pool1: MaxPool2d,
    conv2: Conv2d<B>,
    prelu2: PRelu<B>,
    pool2: MaxPool2d,
    conv3: Conv2d<B>,
    prelu3: PRelu<B>,
    dense4: Linear<B>,
    prelu4: PRelu<B>,
    dense5_1: Linear<B>,
    dense5_2: Linear<B>,
}

impl RNetConfig {
    /// An R-Net with untrained weights.
    pub fn init<B: AdCorreBackend>(&self, device: &B::Device) -> RNet<B> {
        RNet {
            conv1: conv([3, 28], 3, device),
            prelu1: prelu(28, device),
            pool1: pool(3),
            conv2: conv([28, 48], 3, device),
            prelu2: prelu(48, device),
            pool2: pool(3),
            conv3: conv([48, 64], 2, device),
            prelu3: prelu(64, device),
            dense4: LinearConfig::new(576, 128).init(device),
            prelu4: prelu(128, device),
            dense5_1: LinearConfig::new(128, 2).init(device),
            dense5_2: LinearConfig::new(128, 4).init(device),
        }
    }
}

impl<B: AdCorreBackend> RNet<B> {
    /// Crops `[n, 3, 24, 24]` (scaled like P-Net's input) -> box regression `[n, 4]` and
    /// probabilities `[n, 2]` (background, face).
    pub fn forward(&self, x: Tensor<B, 4>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let x = self.pool1.forward(prelu_forward(&self.prelu1, self.conv1.forward(x)));
        let x = self.pool2.forward(prelu_forward(&self.prelu2, self.conv2.forward(x)));
        let x = prelu_forward(&self.prelu3, self.conv3.forward(x));
        let x = prelu_forward(&self.prelu4, self.dense4.forward(flatten_whc(x)));
        (self.dense5_2.forward(x.clone()), softmax(self.dense5_1.forward(x), 1))
    }
}

/// Configuration of [`ONet`].
#[derive(Config, Debug)]
pub struct ONetConfig {}

/// The output network: final score, box refinement and five landmarks from 48x48 crops.
#[derive(Module, Debug)]
pub struct ONet<B: AdCorreBackend> {
    conv1: Conv2d<B>,
    prelu1: PRelu<B>,
    pool1: MaxPool2d,
    conv2: Conv2d<B>,
    prelu2: PRelu<B>,
    pool2: MaxPool2d,
    conv3: Conv2d<B>,
    prelu3: PRelu<B>,
    pool3: MaxPool2d,
    conv4: Conv2d<B>,
    prelu4: PRelu<B>,
    dense5: Linear<B>,
    prelu5: PRelu<B>,
    dense6_1: Linear<B>,
    dense6_2: Linear<B>,
    dense6_3: Linear<B>,
}

impl ONetConfig {
    /// An O-Net with untrained weights.
    pub fn init<B: AdCorreBackend>(&self, device: &B::Device) -> ONet<B> {
        ONet {
            conv1: conv([3, 32], 3, device),
            prelu1: prelu(32, device),
            pool1: pool(3),
            conv2: conv([32, 64], 3, device),
            prelu2: prelu(64, device),
            pool2: pool(3),
            conv3: conv([64, 64], 3, device),
            prelu3: prelu(64, device),
            pool3: pool(2),
            conv4: conv([64, 128], 2, device),
            prelu4: prelu(128, device),
            dense5: LinearConfig::new(1152, 256).init(device),
            prelu5: prelu(256, device),
            dense6_1: LinearConfig::new(256, 2).init(device),
            dense6_2: LinearConfig::new(256, 4).init(device),
            dense6_3: LinearConfig::new(256, 10).init(device),
        }
    }
}

/// What O-Net returns for a batch of crops.
#[derive(Debug, Clone)]
pub struct ONetOutput<B: AdCorreBackend> {
    /// Box regression `[n, 4]` (offsets of x1, y1, x2, y2 in box widths / heights).
    pub regression: Tensor<B, 2>,
    /// Landmarks `[n, 10]`: five x, then five y, as fractions of the box.
    pub landmarks: Tensor<B, 2>,
    /// Probabilities `[n, 2]` (background, face).
    pub probabilities: Tensor<B, 2>,
}

impl<B: AdCorreBackend> ONet<B> {
    /// Crops `[n, 3, 48, 48]` (scaled like P-Net's input) -> regression, landmarks and
    /// probabilities (see [`ONetOutput`]).
    pub fn forward(&self, x: Tensor<B, 4>) -> ONetOutput<B> {
        let x = self.pool1.forward(prelu_forward(&self.prelu1, self.conv1.forward(x)));
        let x = self.pool2.forward(prelu_forward(&self.prelu2, self.conv2.forward(x)));
        let x = self.pool3.forward(prelu_forward(&self.prelu3, self.conv3.forward(x)));
        let x = prelu_forward(&self.prelu4, self.conv4.forward(x));
        let x = prelu_forward(&self.prelu5, self.dense5.forward(flatten_whc(x)));
        ONetOutput {
            regression: self.dense6_2.forward(x.clone()),
            landmarks: self.dense6_3.forward(x.clone()),
            probabilities: softmax(self.dense6_1.forward(x), 1),
        }
    }
}
