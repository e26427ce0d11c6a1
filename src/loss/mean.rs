//! Mean Discriminator (MD): the mean embeddings of different classes should be decorrelated.

use burn::prelude::*;

use super::correlation::{off_diagonal_mask, pearson_correlation};

/// The Mean Discriminator: per head, the mean embedding of each class present in the batch,
/// the `C' x C'` correlation between those means, and the loss
/// `mean((1 - I) * (1 + corr))` averaged over heads.
///
/// Difference from the release: classes absent from the batch are left out. The release gave
/// every non-member a weight of 1e-7, so an absent class's "mean" silently became the mean of
/// the whole batch; with every class present both agree.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeanDiscriminator;

impl MeanDiscriminator {
    /// `embeddings` `[k, bs, d]`, `labels` (bs) -> scalar `[1]` (zero if one class only).
    pub fn forward<B: Backend>(&self, embeddings: Tensor<B, 3>, labels: &[usize]) -> Tensor<B, 1> {
        let [k, bs, _] = embeddings.dims();
        let device = embeddings.device();
        let mut present: Vec<usize> = labels.to_vec();
        present.sort_unstable();
        present.dedup();
        let c = present.len();
        // Averaging matrix [C', bs]: row r holds 1/count for the members of class present[r].
        let mut averaging = vec![0f32; c * bs];
        for (row, class) in present.iter().enumerate() {
            let members: Vec<usize> = (0..bs).filter(|&i| labels[i] == *class).collect();
            for i in &members {
                averaging[row * bs + i] = 1.0 / members.len() as f32;
            }
        }
        let averaging = Tensor::<B, 2>::from_data(TensorData::new(averaging, [c, bs]), &device)
            .unsqueeze_dim::<3>(0)
            .repeat_dim(0, k);
        let means = averaging.matmul(embeddings);
        let corr = pearson_correlation(means);
        ((corr + 1.0) * off_diagonal_mask::<B>(c, &device)).mean()
    }
}
