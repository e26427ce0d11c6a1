//! The Ad-Corre loss: cross-entropy jointly with the Feature, Mean and Embedding
//! Discriminators, all differentiable (the release computed the discriminators in NumPy, so
//! they never sent a gradient to the network).
//!
//! ```
//! use adcorre::backend::{cpu_device, Cpu};
//! use adcorre::loss::AdCorreLossConfig;
//! use adcorre::model::l2_normalize;
//! use burn::tensor::{Distribution, Tensor};
//!
//! let device = cpu_device();
//! let mut loss = AdCorreLossConfig::default().init(7)?; // the paper's weights, 7 classes
//! let logits = Tensor::<Cpu, 2>::random([4, 7], Distribution::Normal(0.0, 1.0), &device);
//! let embeddings = l2_normalize(Tensor::<Cpu, 3>::random([2, 4, 16], Distribution::Normal(0.0, 1.0), &device));
//! let terms = loss.forward(logits, embeddings, &[0, 1, 1, 3])?;
//! let values = terms.values()?;
//! assert!(values.total.is_finite() && values.ce > 0.0);
//! # Ok::<(), adcorre::AdCorreError>(())
//! ```

pub mod case;
pub mod confusion;
pub mod correlation;
pub mod cross_entropy;
pub mod embedding;
pub mod feature;
pub mod mean;

pub use confusion::{adaptive_weights, ConfusionWindow};
pub use correlation::pearson_correlation;
pub use cross_entropy::{cross_entropy, smoothed_cross_entropy, CrossEntropyScale};
pub use embedding::EmbeddingDiscriminator;
pub use feature::FeatureDiscriminator;
pub use mean::MeanDiscriminator;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{AdCorreError, Result};

/// Weights and options of the Ad-Corre loss. Defaults are the paper's method with the
/// release's balance: CE x 50 (per-entry scaling), FD, MD, ED x 1, adaptive FD weights from a
/// 1000-sample confusion window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdCorreLossConfig {
    /// Weight of the cross-entropy.
    pub ce_weight: f64,
    /// Scaling of the cross-entropy.
    pub ce_scale: CrossEntropyScale,
    /// Weight of the Feature Discriminator.
    pub fd_weight: f64,
    /// Weight of the Mean Discriminator.
    pub md_weight: f64,
    /// Weight of the Embedding Discriminator.
    pub ed_weight: f64,
    /// Adaptive Feature Discriminator weights from the confusion window (the paper); off
    /// means all weights 1 (the release's trained variant).
    pub adaptive: bool,
    /// Number of recent (label, prediction) pairs in the confusion window.
    pub window: usize,
    /// Label smoothing of the cross-entropy's targets (0 = one-hot, the release).
    pub label_smoothing: f64,
}

impl Default for AdCorreLossConfig {
    fn default() -> Self {
        Self {
            ce_weight: 50.0,
            ce_scale: CrossEntropyScale::PerEntry,
            fd_weight: 1.0,
            md_weight: 1.0,
            ed_weight: 1.0,
            adaptive: true,
            window: 1000,
            label_smoothing: 0.0,
        }
    }
}

impl AdCorreLossConfig {
    /// Cross-entropy alone (the ablation baseline), with the same CE scaling and weight.
    pub fn cross_entropy_only() -> Self {
        Self::default().without_discriminators()
    }

    /// This loss with the Feature, Mean and Embedding Discriminators off, everything else
    /// (cross-entropy weight, scaling, label smoothing) kept: the ablation's other arm.
    pub fn without_discriminators(self) -> Self {
        Self {
            fd_weight: 0.0,
            md_weight: 0.0,
            ed_weight: 0.0,
            ..self
        }
    }

    /// Checks that weights are finite and non-negative and the window is not empty.
    pub fn validate(&self) -> Result<()> {
        for (name, weight) in [
            ("ce_weight", self.ce_weight),
            ("fd_weight", self.fd_weight),
            ("md_weight", self.md_weight),
            ("ed_weight", self.ed_weight),
        ] {
            if !(weight.is_finite() && weight >= 0.0) {
                return Err(AdCorreError::Config(format!(
                    "{name} must be a finite non-negative number, got {weight}"
                )));
            }
        }
        if self.window == 0 {
            return Err(AdCorreError::Config("window must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(AdCorreError::Config(format!(
                "label_smoothing must be in [0, 1), got {}",
                self.label_smoothing
            )));
        }
        Ok(())
    }

    /// The loss for a `num_classes`-class problem, with an empty confusion window.
    pub fn init(&self, num_classes: usize) -> Result<AdCorreLoss> {
        self.validate()?;
        Ok(AdCorreLoss {
            config: self.clone(),
            window: ConfusionWindow::new(num_classes, self.window),
        })
    }
}

/// The Ad-Corre loss with its state (the confusion window of the training stream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdCorreLoss {
    config: AdCorreLossConfig,
    window: ConfusionWindow,
}

/// Every term of the loss for one batch, as tensors (scalars `[1]`) for backpropagation.
#[derive(Debug, Clone)]
pub struct AdCorreLossTerms<B: Backend> {
    /// The weighted sum to minimise.
    pub total: Tensor<B, 1>,
    /// Cross-entropy (unweighted).
    pub ce: Tensor<B, 1>,
    /// Feature Discriminator (unweighted).
    pub fd: Tensor<B, 1>,
    /// Mean Discriminator (unweighted).
    pub md: Tensor<B, 1>,
    /// Embedding Discriminator (unweighted).
    pub ed: Tensor<B, 1>,
    /// The batch's predicted classes (argmax of the logits), as fed to the confusion window.
    pub predictions: Vec<usize>,
}

/// The loss terms of a batch as numbers, for logging.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossValues {
    /// The weighted total.
    pub total: f64,
    /// Cross-entropy.
    pub ce: f64,
    /// Feature Discriminator.
    pub fd: f64,
    /// Mean Discriminator.
    pub md: f64,
    /// Embedding Discriminator.
    pub ed: f64,
}

impl<B: Backend> AdCorreLossTerms<B> {
    /// Reads the terms back to the host; a NaN or infinite term is an error naming it.
    pub fn values(&self) -> Result<LossValues> {
        let read = |name: &str, t: &Tensor<B, 1>| -> Result<f64> {
            let value = t.clone().into_scalar().to_f64();
            if value.is_finite() {
                Ok(value)
            } else {
                Err(AdCorreError::NonFinite(format!("loss term {name} = {value}")))
            }
        };
        Ok(LossValues {
            ce: read("ce", &self.ce)?,
            fd: read("fd", &self.fd)?,
            md: read("md", &self.md)?,
            ed: read("ed", &self.ed)?,
            total: read("total", &self.total)?,
        })
    }
}

impl AdCorreLoss {
    /// The configuration.
    pub fn config(&self) -> &AdCorreLossConfig {
        &self.config
    }

    /// The confusion window of the training stream.
    pub fn window(&self) -> &ConfusionWindow {
        &self.window
    }

    /// Loss of a batch: `logits` `[bs, C]`, `embeddings` `[k, bs, d]`, `labels` (bs).
    ///
    /// Updates the confusion window with the batch's predictions first (as the release does),
    /// then computes the adaptive weights from it. Terms with weight 0 are not computed.
    pub fn forward<B: Backend>(
        &mut self,
        logits: Tensor<B, 2>,
        embeddings: Tensor<B, 3>,
        labels: &[usize],
    ) -> Result<AdCorreLossTerms<B>> {
        let [bs, num_classes] = logits.dims();
        let [_, embedding_bs, _] = embeddings.dims();
        check_batch(bs, embedding_bs, num_classes, labels, self.window.num_classes())?;
        let device = logits.device();
        let predictions = argmax_rows(logits.clone());
        self.window.update(labels, &predictions)?;

        let zero = || Tensor::<B, 1>::zeros([1], &device);
        let config = &self.config;
        let ce = smoothed_cross_entropy(logits, labels, config.ce_scale, config.label_smoothing);
        let fd = if config.fd_weight > 0.0 {
            let weights = config.adaptive.then(|| {
                let w = adaptive_weights(labels, &self.window.matrix(), num_classes);
                Tensor::<B, 2>::from_data(TensorData::new(w, [bs, bs]), &device)
            });
            FeatureDiscriminator.forward(embeddings.clone(), labels, weights)
        } else {
            zero()
        };
        let md = if config.md_weight > 0.0 {
            MeanDiscriminator.forward(embeddings.clone(), labels)
        } else {
            zero()
        };
        let ed = if config.ed_weight > 0.0 {
            EmbeddingDiscriminator.forward(embeddings)
        } else {
            zero()
        };
        let total = ce.clone() * config.ce_weight
            + fd.clone() * config.fd_weight
            + md.clone() * config.md_weight
            + ed.clone() * config.ed_weight;
        Ok(AdCorreLossTerms {
            total,
            ce,
            fd,
            md,
            ed,
            predictions,
        })
    }
}

fn check_batch(
    bs: usize,
    embedding_bs: usize,
    num_classes: usize,
    labels: &[usize],
    window_classes: usize,
) -> Result<()> {
    if bs == 0 || labels.len() != bs || embedding_bs != bs {
        return Err(AdCorreError::Shape {
            what: "loss inputs".into(),
            expected: format!(
                "a non-empty batch with as many labels ({}) as logits rows and embeddings",
                labels.len()
            ),
            got: vec![bs, embedding_bs],
        });
    }
    if num_classes != window_classes {
        return Err(AdCorreError::Shape {
            what: "logits".into(),
            expected: format!("[batch, {window_classes}] (the loss's class count)"),
            got: vec![bs, num_classes],
        });
    }
    if let Some(&label) = labels.iter().find(|&&label| label >= num_classes) {
        return Err(AdCorreError::UnknownLabel {
            label: label as i64,
            num_classes,
        });
    }
    Ok(())
}

/// Index of the largest entry of each row of `[n, C]`.
pub fn argmax_rows<B: Backend>(scores: Tensor<B, 2>) -> Vec<usize> {
    scores
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .unwrap_or_default()
        .into_iter()
        .map(|index| index as usize)
        .collect()
}
