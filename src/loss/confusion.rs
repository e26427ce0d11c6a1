//! A sliding window of recent (label, prediction) pairs: the confusion statistics that drive
//! the Feature Discriminator's adaptive weights.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::metrics::check_label_pairs;

/// The last `capacity` (label, prediction) pairs seen on the training stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionWindow {
    num_classes: usize,
    capacity: usize,
    pairs: VecDeque<(usize, usize)>,
}

impl ConfusionWindow {
    /// An empty window over `num_classes` classes keeping the last `capacity` pairs
    /// (the release keeps 1000).
    pub fn new(num_classes: usize, capacity: usize) -> Self {
        Self {
            num_classes,
            capacity: capacity.max(1),
            pairs: VecDeque::with_capacity(capacity.max(1)),
        }
    }

    /// Adds a batch of labels and predictions, dropping the oldest pairs beyond capacity.
    pub fn update(&mut self, labels: &[usize], predictions: &[usize]) -> Result<()> {
        check_label_pairs(labels, predictions, self.num_classes)?;
        for pair in labels.iter().copied().zip(predictions.iter().copied()) {
            if self.pairs.len() == self.capacity {
                self.pairs.pop_front();
            }
            self.pairs.push_back(pair);
        }
        Ok(())
    }

    /// Number of pairs held.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Row-normalised confusion matrix, row-major `C x C`: entry `(t, p)` is the fraction of
    /// the window's samples of true class t predicted as p. Rows of unseen classes are zero.
    pub fn matrix(&self) -> Vec<f32> {
        let c = self.num_classes;
        let mut counts = vec![0u32; c * c];
        for &(label, prediction) in &self.pairs {
            counts[label * c + prediction] += 1;
        }
        let mut matrix = vec![0f32; c * c];
        for t in 0..c {
            let row = &counts[t * c..(t + 1) * c];
            let total: u32 = row.iter().sum();
            if total > 0 {
                for p in 0..c {
                    matrix[t * c + p] = row[p] as f32 / total as f32;
                }
            }
        }
        matrix
    }
}

/// The paper's adaptive Feature Discriminator weights for a batch, row-major `bs x bs`:
/// `w_ij = (1 - delta_ij) * (1 + (1 - c[y_i, y_i]) + (1 - c[y_j, y_j]))` for a row-normalised
/// confusion matrix `c` (`C x C`, row-major). Poorly recognised classes weigh more.
pub fn adaptive_weights(labels: &[usize], confusion: &[f32], num_classes: usize) -> Vec<f32> {
    let miss = |label: usize| 1.0 - confusion[label * num_classes + label];
    let n = labels.len();
    let mut weights = vec![0f32; n * n];
    for (i, &yi) in labels.iter().enumerate() {
        for (j, &yj) in labels.iter().enumerate() {
            if i != j {
                weights[i * n + j] = 1.0 + miss(yi) + miss(yj);
            }
        }
    }
    weights
}
