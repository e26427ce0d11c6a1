//! The Ad-Corre embedding heads: k independent Linear(2048, 256) projections, each
//! L2-normalised.

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

/// Norm floor of the L2 normalisation, as `tf.math.l2_normalize` (1e-12 on the squared sum).
pub const L2_EPSILON: f64 = 1e-12;

/// Configuration of [`EmbeddingHeads`].
#[derive(Config, Debug, PartialEq)]
pub struct EmbeddingHeadsConfig {
    /// Input features (the backbone's pooled width, 2048 for Xception).
    pub in_features: usize,
    /// Number of heads k (7 in the published models).
    #[config(default = 7)]
    pub num_heads: usize,
    /// Width of each embedding (256 in the paper).
    #[config(default = 256)]
    pub embedding_dim: usize,
}

/// k embedding heads computed as one `Linear(in, k * dim)` (one matrix product instead of k;
/// columns `[i*dim, (i+1)*dim)` are head i, Keras layer `dense_i`), each head L2-normalised.
#[derive(Module, Debug)]
pub struct EmbeddingHeads<B: Backend> {
    /// The stacked head projections, weight `[in, k * dim]`, bias `[k * dim]`.
    pub projection: Linear<B>,
    /// Number of heads k.
    pub num_heads: usize,
    /// Width of each embedding.
    pub embedding_dim: usize,
}

impl EmbeddingHeadsConfig {
    /// Builds the heads on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> EmbeddingHeads<B> {
        EmbeddingHeads {
            projection: LinearConfig::new(self.in_features, self.num_heads * self.embedding_dim)
                .init(device),
            num_heads: self.num_heads,
            embedding_dim: self.embedding_dim,
        }
    }
}

impl<B: Backend> EmbeddingHeads<B> {
    /// Pooled features `[batch, in]` -> unit-norm embeddings `[k, batch, dim]`.
    pub fn forward(&self, features: Tensor<B, 2>) -> Tensor<B, 3> {
        let [batch, _] = features.dims();
        let stacked = self
            .projection
            .forward(features)
            .reshape([batch, self.num_heads, self.embedding_dim]);
        l2_normalize(stacked).swap_dims(0, 1)
    }
}

/// `x / sqrt(max(sum(x^2), 1e-12))` along the last axis, like `tf.math.l2_normalize`.
pub fn l2_normalize<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let squared_norm = x.clone().square().sum_dim(D - 1);
    x / squared_norm.clamp_min(L2_EPSILON).sqrt()
}

/// Embeddings `[k, batch, dim]` -> the concatenation of the heads `[batch, k * dim]`
/// (Keras' `Concatenate(axis=1)` of `lambda, lambda_1, ...`).
pub fn concat_heads<B: Backend>(embeddings: Tensor<B, 3>) -> Tensor<B, 2> {
    let [k, batch, dim] = embeddings.dims();
    embeddings.swap_dims(0, 1).reshape([batch, k * dim])
}
