//! Loss inputs stored as NumPy arrays (the format of the reference fixtures), and the terms
//! computed on them — for checking this implementation against the original.

use std::path::Path;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    adaptive_weights, cross_entropy, CrossEntropyScale, EmbeddingDiscriminator,
    FeatureDiscriminator, MeanDiscriminator,
};
use crate::data::npy::NpzFile;
use crate::error::{AdCorreError, Result};

/// One batch of loss inputs: `embeddings` (k, bs, d), `labels` (bs), softmax `probs` (bs, C)
/// and a row-normalised `confusion` matrix (C, C).
#[derive(Debug, Clone)]
pub struct LossCase {
    /// Embeddings, row-major `[k, bs, d]`.
    pub embeddings: Vec<f32>,
    /// `[k, bs, d]`.
    pub embeddings_shape: [usize; 3],
    /// Labels, one per sample.
    pub labels: Vec<usize>,
    /// Softmax probabilities, row-major `[bs, C]`.
    pub probs: Vec<f32>,
    /// Number of classes C.
    pub num_classes: usize,
    /// Row-normalised confusion matrix, row-major `[C, C]`.
    pub confusion: Vec<f32>,
}

/// The terms of the Ad-Corre loss on a [`LossCase`], unweighted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CaseTerms {
    /// Cross-entropy from `log(probs)`, per-entry scaling (the release's).
    pub ce: f64,
    /// Embedding Discriminator.
    pub ed: f64,
    /// Feature Discriminator, unit weights.
    pub fd: f64,
    /// Mean Discriminator.
    pub md: f64,
    /// Feature Discriminator with the adaptive weights of the stored confusion matrix.
    pub fd_adaptive: f64,
}

impl LossCase {
    /// Reads `embeddings`, `labels`, `probs` and `confusion` from an `.npz` archive.
    pub fn from_npz(path: &Path) -> Result<Self> {
        let mut npz = NpzFile::open(path)?;
        let embeddings = npz.array::<f32>("embeddings")?;
        let labels = npz.array::<i64>("labels")?;
        let probs = npz.array::<f32>("probs")?;
        let confusion = npz.array::<f32>("confusion")?;
        let shape_error = |what: &str, expected: &str, got: &[usize]| AdCorreError::Shape {
            what: format!("{}: {what}", path.display()),
            expected: expected.into(),
            got: got.to_vec(),
        };
        let &[k, bs, d] = embeddings.shape() else {
            return Err(shape_error("embeddings", "(k, bs, d)", embeddings.shape()));
        };
        let &[probs_bs, num_classes] = probs.shape() else {
            return Err(shape_error("probs", "(bs, C)", probs.shape()));
        };
        if labels.shape() != [bs] || probs_bs != bs {
            return Err(shape_error("labels / probs", &format!("({bs},) / ({bs}, C)"), labels.shape()));
        }
        if confusion.shape() != [num_classes, num_classes] {
            return Err(shape_error("confusion", &format!("({num_classes}, {num_classes})"), confusion.shape()));
        }
        let labels = labels
            .iter()
            .map(|&label| {
                usize::try_from(label)
                    .ok()
                    .filter(|&l| l < num_classes)
                    .ok_or(AdCorreError::UnknownLabel { label, num_classes })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: embeddings.iter().copied().collect(),
            embeddings_shape: [k, bs, d],
            labels,
            probs: probs.iter().copied().collect(),
            num_classes,
            confusion: confusion.iter().copied().collect(),
        })
    }

    /// Computes every term on `device`.
    pub fn evaluate<B: Backend>(&self, device: &B::Device) -> Result<CaseTerms> {
        let [_, bs, _] = self.embeddings_shape;
        let embeddings = Tensor::<B, 3>::from_data(
            TensorData::new(self.embeddings.clone(), self.embeddings_shape),
            device,
        );
        let logits = Tensor::<B, 2>::from_data(
            TensorData::new(self.probs.clone(), [bs, self.num_classes]),
            device,
        )
        .clamp_min(1e-7)
        .log();
        let weights = adaptive_weights(&self.labels, &self.confusion, self.num_classes);
        let weights = Tensor::<B, 2>::from_data(TensorData::new(weights, [bs, bs]), device);
        let scalar = |t: Tensor<B, 1>| t.into_scalar().to_f64();
        Ok(CaseTerms {
            ce: scalar(cross_entropy(logits, &self.labels, CrossEntropyScale::PerEntry)),
            ed: scalar(EmbeddingDiscriminator.forward(embeddings.clone())),
            fd: scalar(FeatureDiscriminator.forward(embeddings.clone(), &self.labels, None)),
            md: scalar(MeanDiscriminator.forward(embeddings.clone(), &self.labels)),
            fd_adaptive: scalar(FeatureDiscriminator.forward(
                embeddings,
                &self.labels,
                Some(weights),
            )),
        })
    }
}
