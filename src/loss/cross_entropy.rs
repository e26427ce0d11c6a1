//! Cross-entropy on logits, computed stably through log-softmax.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

/// How the summed cross-entropy of a batch is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CrossEntropyScale {
    /// Mean over all `bs * C` entries of `-onehot * log p`, i.e. the usual batch-mean
    /// cross-entropy divided by C: the release's scaling, which its weight of 50 balances.
    #[default]
    PerEntry,
    /// The usual mean over the batch.
    PerSample,
}

/// Cross-entropy of `logits` `[bs, C]` against `labels` -> scalar `[1]`.
pub fn cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    labels: &[usize],
    scale: CrossEntropyScale,
) -> Tensor<B, 1> {
    smoothed_cross_entropy(logits, labels, scale, 0.0)
}

/// Cross-entropy against smoothed targets: `1 - smoothing + smoothing / C` on the label,
/// `smoothing / C` elsewhere (Szegedy et al. 2016); `smoothing = 0` is [`cross_entropy`].
pub fn smoothed_cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    labels: &[usize],
    scale: CrossEntropyScale,
    smoothing: f64,
) -> Tensor<B, 1> {
    let [bs, c] = logits.dims();
    let device = logits.device();
    let log_probs = log_softmax(logits, 1);
    let mut targets = one_hot::<B>(labels, c, &device);
    if smoothing > 0.0 {
        targets = targets * (1.0 - smoothing) + smoothing / c as f64;
    }
    let summed = (log_probs * targets).sum().neg();
    let denominator = match scale {
        CrossEntropyScale::PerEntry => bs * c,
        CrossEntropyScale::PerSample => bs,
    };
    summed / denominator as f64
}

/// One-hot rows `[bs, C]` for labels below C.
pub fn one_hot<B: Backend>(labels: &[usize], num_classes: usize, device: &B::Device) -> Tensor<B, 2> {
    let mut data = vec![0f32; labels.len() * num_classes];
    for (row, &label) in labels.iter().enumerate() {
        data[row * num_classes + label] = 1.0;
    }
    Tensor::from_data(TensorData::new(data, [labels.len(), num_classes]), device)
}
