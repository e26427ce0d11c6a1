//! The Ad-Corre network: Xception, global average pooling, k L2-normalised embedding heads,
//! concatenation, dropout and a linear classifier.

use burn::module::{ModuleVisitor, Param};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use super::heads::{concat_heads, EmbeddingHeads, EmbeddingHeadsConfig};
use super::xception::{Xception, XceptionConfig, MIN_INPUT_SIZE};
use crate::backend::AdCorreBackend;
use crate::error::AdCorreError;

/// The views a prediction averages besides the image itself (test-time augmentation, see
/// [`AdCorreNet::forward_test_time`]); a model card says which its model was measured with.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TestTimeViews {
    /// Also the mirror image of every view (twice the views).
    pub flip: bool,
    /// Also the centred crop of this fraction of the image's side, resized back to the full
    /// side (a model trained on random crops sees faces at that scale on average).
    pub crop: Option<f32>,
}

impl TestTimeViews {
    /// Views per image, the image itself included (the compute a prediction costs, in passes).
    pub fn count(&self) -> usize {
        (1 + usize::from(self.crop.is_some())) * (1 + usize::from(self.flip))
    }
}

/// Configuration of [`AdCorreNet`]. Defaults are the published models: Keras Xception,
/// k = 7 heads of 256, 7 classes, dropout 0.5.
#[derive(Config, Debug, PartialEq)]
pub struct AdCorreNetConfig {
    /// The backbone.
    #[config(default = "XceptionConfig::new()")]
    pub backbone: XceptionConfig,
    /// Number of embedding heads k (7 published; the release's config says 10).
    #[config(default = 7)]
    pub num_heads: usize,
    /// Width of each embedding.
    #[config(default = 256)]
    pub embedding_dim: usize,
    /// Number of expression classes (7, or 8 for AffectNet-8 with Contempt).
    #[config(default = 7)]
    pub num_classes: usize,
    /// Dropout probability on the concatenated embeddings (training only).
    #[config(default = 0.5)]
    pub dropout: f64,
}

impl AdCorreNetConfig {
    /// Checks that the configuration describes a buildable network.
    pub fn validate(&self) -> crate::Result<()> {
        self.backbone.validate()?;
        if self.num_heads == 0 || self.embedding_dim == 0 {
            return Err(AdCorreError::Config(format!(
                "need at least one head of at least one feature, got {} heads of {}",
                self.num_heads, self.embedding_dim
            )));
        }
        if !(2..=10_000).contains(&self.num_classes) {
            return Err(AdCorreError::Config(format!(
                "need 2 to 10000 classes, got {}",
                self.num_classes
            )));
        }
        if self.num_heads > 1024 || self.embedding_dim > 65_536 {
            return Err(AdCorreError::Config(format!(
                "at most 1024 heads of at most 65536 features, got {} heads of {}",
                self.num_heads, self.embedding_dim
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(AdCorreError::Config(format!(
                "dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        Ok(())
    }

    /// Builds the network on `device` after validating the configuration.
    pub fn try_init<B: AdCorreBackend>(&self, device: &B::Device) -> crate::Result<AdCorreNet<B>> {
        self.validate()?;
        Ok(self.init(device))
    }

    /// Builds the network on `device` with freshly initialised weights (panics on an invalid
    /// configuration; see [`AdCorreNetConfig::try_init`]).
    ///
    /// The weights are materialised here: Burn initialises parameters lazily, and clones of a
    /// lazy module would each draw their own random weights.
    pub fn init<B: AdCorreBackend>(&self, device: &B::Device) -> AdCorreNet<B> {
        let net = self.init_lazy(device);
        materialize(&net);
        net
    }

    /// Builds the network with lazily initialised parameters, for loading weights into it.
    pub(crate) fn init_lazy<B: AdCorreBackend>(&self, device: &B::Device) -> AdCorreNet<B> {
        let backbone = self.backbone.init(device);
        let heads = EmbeddingHeadsConfig::new(self.backbone.out_features())
            .with_num_heads(self.num_heads)
            .with_embedding_dim(self.embedding_dim)
            .init(device);
        AdCorreNet {
            backbone,
            heads,
            dropout: DropoutConfig::new(self.dropout).init(),
            classifier: LinearConfig::new(self.num_heads * self.embedding_dim, self.num_classes)
                .init(device),
            in_channels: self.backbone.in_channels,
        }
    }
}

/// The Ad-Corre network.
#[derive(Module, Debug)]
pub struct AdCorreNet<B: AdCorreBackend> {
    /// Xception feature extractor.
    pub backbone: Xception<B>,
    /// The k L2-normalised embedding heads.
    pub heads: EmbeddingHeads<B>,
    /// Dropout on the concatenated embeddings (active only on autodiff backends).
    pub dropout: Dropout,
    /// Linear classifier `[k * dim] -> [classes]` (Keras layer `out`, softmax applied apart).
    pub classifier: Linear<B>,
    /// Expected input channels.
    pub in_channels: usize,
}

/// What the network computes for a batch.
#[derive(Debug, Clone)]
pub struct AdCorreOutput<B: Backend> {
    /// Class scores before softmax, `[batch, classes]`.
    pub logits: Tensor<B, 2>,
    /// The k unit-norm embeddings, `[k, batch, dim]` (head-major, as the loss consumes them).
    pub embeddings: Tensor<B, 3>,
}

impl<B: Backend> AdCorreOutput<B> {
    /// Softmax class probabilities, `[batch, classes]`.
    pub fn probabilities(&self) -> Tensor<B, 2> {
        softmax(self.logits.clone(), 1)
    }
}

impl<B: AdCorreBackend> AdCorreNet<B> {
    /// Images `[batch, 3, h, w]`, RGB in [0, 1] (the release feeds [0, 1], not Xception's
    /// [-1, 1]) -> logits `[batch, classes]` and embeddings `[k, batch, dim]`.
    ///
    /// Panics (inside Burn) on a wrong channel count or an image smaller than 7x7; use
    /// [`AdCorreNet::check_input`] first where the input comes from outside.
    pub fn forward(&self, images: Tensor<B, 4>) -> AdCorreOutput<B> {
        let embeddings = self.embed(images);
        let features = self.dropout.forward(concat_heads(embeddings.clone()));
        AdCorreOutput {
            logits: self.classifier.forward(features),
            embeddings,
        }
    }

    /// Images `[batch, 3, h, w]` -> unit-norm embeddings `[k, batch, dim]`.
    pub fn embed(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        self.heads.forward(self.pooled_features(images))
    }

    /// Images `[batch, 3, h, w]` -> globally average-pooled backbone features `[batch, 2048]`.
    pub fn pooled_features(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.backbone.forward_pooled(images)
    }

    /// Test-time augmentation: the images and the other views `views` asks for (mirror
    /// images, centred crops resized back to full size) run as one batch; logits are the log
    /// of the views' mean softmax output (so their softmax is that mean), embeddings those of
    /// the images themselves. With no extra view this is [`AdCorreNet::forward`].
    /// `[batch, 3, h, w]` -> logits `[batch, classes]`, embeddings `[k, batch, dim]`.
    pub fn forward_test_time(&self, images: Tensor<B, 4>, views: TestTimeViews) -> AdCorreOutput<B> {
        let [batch, channels, height, width] = images.dims();
        let mut all = vec![images.clone()];
        if let Some(fraction) = views.crop {
            let side = |full: usize| ((full as f32 * fraction).round() as usize).clamp(1, full);
            let (crop_h, crop_w) = (side(height), side(width));
            let (top, left) = ((height - crop_h) / 2, (width - crop_w) / 2);
            let crop = images.clone().slice([0..batch, 0..channels, top..top + crop_h, left..left + crop_w]);
            let options = InterpolateOptions { mode: InterpolateMode::Bilinear, align_corners: false };
            all.push(interpolate(crop, [height, width], options));
        }
        if views.flip {
            let mirrors: Vec<_> = all.iter().map(|view| view.clone().flip([3])).collect();
            all.extend(mirrors);
        }
        if all.len() == 1 {
            return self.forward(images);
        }
        let count = all.len();
        let output = self.forward(Tensor::cat(all, 0));
        let probabilities = output.probabilities();
        let [_, classes] = probabilities.dims();
        let mean = (1..count).fold(probabilities.clone().slice([0..batch, 0..classes]), |sum, view| {
            sum + probabilities.clone().slice([view * batch..(view + 1) * batch, 0..classes])
        }) / count as f32;
        let [k, _, dim] = output.embeddings.dims();
        AdCorreOutput {
            logits: mean.log(),
            embeddings: output.embeddings.slice([0..k, 0..batch, 0..dim]),
        }
    }

    /// Images `[batch, 3, h, w]` -> softmax probabilities `[batch, classes]`.
    pub fn probabilities(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward(images).probabilities()
    }

    /// Checks an input shape `[batch, channels, h, w]` before [`AdCorreNet::forward`].
    pub fn check_input(&self, dims: [usize; 4]) -> crate::Result<()> {
        let [batch, channels, height, width] = dims;
        if batch == 0
            || channels != self.in_channels
            || height < MIN_INPUT_SIZE
            || width < MIN_INPUT_SIZE
        {
            return Err(AdCorreError::Shape {
                what: "network input".into(),
                expected: format!(
                    "[batch >= 1, {}, h >= {MIN_INPUT_SIZE}, w >= {MIN_INPUT_SIZE}]",
                    self.in_channels
                ),
                got: dims.to_vec(),
            });
        }
        Ok(())
    }

    /// The same network for inference: every batch normalisation folded into the convolution
    /// before it. Outputs equal the original's up to float rounding; use it only for inference
    /// (the folded network no longer normalises with batch statistics, and is not saved).
    pub fn fold_batch_norm(self) -> Self {
        AdCorreNet {
            backbone: self.backbone.fold_batch_norm(),
            ..self
        }
    }

    /// Number of heads k.
    pub fn num_heads(&self) -> usize {
        self.heads.num_heads
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classifier.weight.dims()[1]
    }
}

/// Forces every lazily initialised parameter of `module` to take its value now.
pub fn materialize<B: Backend, M: Module<B>>(module: &M) {
    struct Materializer;
    impl<B: Backend> ModuleVisitor<B> for Materializer {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Materializer);
}

/// `[batch, c, h, w]` -> `[batch, c]`, the mean over the spatial positions.
pub fn global_average_pool<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [batch, channels, height, width] = x.dims();
    x.reshape([batch, channels, height * width])
        .mean_dim(2)
        .reshape([batch, channels])
}

/// Deserialises an [`AdCorreNetConfig`] in which fields that files written before they
/// existed lack take their defaults (Burn's config derive would reject a missing field);
/// for `#[serde(deserialize_with)]` in model cards and training configs.
pub fn network_with_defaults<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<AdCorreNetConfig, D::Error> {
    use serde::Deserialize;
    let written = serde_json::Value::deserialize(deserializer)?;
    let mut merged = serde_json::to_value(AdCorreNetConfig::new()).map_err(serde::de::Error::custom)?;
    merge_json(&mut merged, written);
    serde_json::from_value(merged).map_err(serde::de::Error::custom)
}

/// Overwrites `base` with every value present in `update`, recursing into objects.
fn merge_json(base: &mut serde_json::Value, update: serde_json::Value) {
    match (base, update) {
        (serde_json::Value::Object(base), serde_json::Value::Object(update)) => {
            for (key, value) in update {
                match base.get_mut(&key) {
                    Some(slot) => merge_json(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (slot, value) => *slot = value,
    }
}
