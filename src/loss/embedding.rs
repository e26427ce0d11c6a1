//! Embedding Discriminator (ED): a sample's k embeddings should carry different information.

use burn::prelude::*;

use super::correlation::{off_diagonal_mask, pearson_correlation};

/// The Embedding Discriminator: per sample, the `k x k` correlation between its k embeddings;
/// the loss is the mean over samples and all `k * k` entries of `(1 - I) * (1 + corr)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbeddingDiscriminator;

impl EmbeddingDiscriminator {
    /// `embeddings` `[k, bs, d]` -> scalar `[1]`.
    pub fn forward<B: Backend>(&self, embeddings: Tensor<B, 3>) -> Tensor<B, 1> {
        let [k, _, _] = embeddings.dims();
        let device = embeddings.device();
        let corr = pearson_correlation(embeddings.swap_dims(0, 1));
        ((corr + 1.0) * off_diagonal_mask::<B>(k, &device)).mean()
    }
}
