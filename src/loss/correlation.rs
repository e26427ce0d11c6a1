//! Differentiable Pearson correlation between row vectors.

use burn::prelude::*;

/// Added to squared norms before the square root, so that constant rows (zero after centring)
/// give zero correlation and finite gradients instead of NaN.
pub const CORRELATION_EPSILON: f64 = 1e-12;

/// Pearson correlation matrices of groups of row vectors: `[groups, n, d]` -> `[groups, n, n]`,
/// entry `(g, i, j)` the correlation between rows i and j of group g (like `numpy.corrcoef`
/// per group: centre each row over its features, then cosine similarity). Differentiable.
pub fn pearson_correlation<B: Backend>(rows: Tensor<B, 3>) -> Tensor<B, 3> {
    let normalized = centre_and_normalize(rows);
    normalized.clone().matmul(normalized.swap_dims(1, 2))
}

/// Centres each row over its last axis and scales it to unit L2 norm.
pub fn centre_and_normalize<B: Backend>(rows: Tensor<B, 3>) -> Tensor<B, 3> {
    let centred = rows.clone() - rows.mean_dim(2);
    let norm = (centred.clone().square().sum_dim(2) + CORRELATION_EPSILON).sqrt();
    centred / norm
}

/// `1 - I` for an `n x n` matrix, shaped `[1, n, n]` to broadcast over groups.
pub fn off_diagonal_mask<B: Backend>(n: usize, device: &B::Device) -> Tensor<B, 3> {
    let ones = Tensor::<B, 2>::ones([n, n], device);
    (ones - Tensor::eye(n, device)).unsqueeze_dim(0)
}
