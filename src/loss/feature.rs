//! Feature Discriminator (FD): within a head, embeddings of the same class should correlate
//! (+1) and embeddings of different classes anti-correlate (-1).

use burn::prelude::*;

use super::correlation::pearson_correlation;

/// The Feature Discriminator: for each of the k heads, `Phi` = the `bs x bs` correlation of the
/// batch's embeddings, `Omega_ij` = +1 for equal labels and -1 otherwise; the loss is the mean
/// over heads and all `bs * bs` entries of `w_ij * |Omega_ij - Phi_ij|`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FeatureDiscriminator;

impl FeatureDiscriminator {
    /// `embeddings` `[k, bs, d]`, `labels` (bs), optional weights `[bs, bs]` (the adaptive
    /// weights; `None` means all ones, the release's trained variant) -> scalar `[1]`.
    pub fn forward<B: Backend>(
        &self,
        embeddings: Tensor<B, 3>,
        labels: &[usize],
        weights: Option<Tensor<B, 2>>,
    ) -> Tensor<B, 1> {
        let device = embeddings.device();
        let phi = pearson_correlation(embeddings);
        let omega = same_class_signs::<B>(labels, &device).unsqueeze_dim::<3>(0);
        let distance = (omega - phi).abs();
        match weights {
            Some(weights) => (distance * weights.unsqueeze_dim::<3>(0)).mean(),
            None => distance.mean(),
        }
    }
}

/// `Omega`: `[bs, bs]` with +1 where labels are equal, -1 elsewhere.
pub fn same_class_signs<B: Backend>(labels: &[usize], device: &B::Device) -> Tensor<B, 2> {
    let n = labels.len();
    let signs: Vec<f32> = labels
        .iter()
        .flat_map(|yi| labels.iter().map(move |yj| if yi == yj { 1.0 } else { -1.0 }))
        .collect();
    Tensor::from_data(TensorData::new(signs, [n, n]), device)
}
