//! Classification metrics: confusion matrix, accuracy, average per-class accuracy, and
//! per-class precision, recall and F1; a picture of the confusion matrix.
//!
//! ```
//! use adcorre::metrics::ConfusionMatrix;
//!
//! let mut confusion = ConfusionMatrix::new(3);
//! confusion.add(&[0, 0, 1, 2], &[0, 1, 1, 2])?; // true labels, predictions
//! let metrics = confusion.metrics();
//! assert_eq!(metrics.accuracy, 0.75);
//! assert_eq!(metrics.recall, vec![0.5, 1.0, 1.0]);
//! # Ok::<(), adcorre::AdCorreError>(())
//! ```

pub mod plot;

use serde::{Deserialize, Serialize};

use crate::error::{AdCorreError, Result};

/// Counts of (true class, predicted class).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    /// Number of classes.
    pub num_classes: usize,
    /// Row-major counts: `counts[t * C + p]` samples of class t predicted as p.
    pub counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// An empty matrix.
    pub fn new(num_classes: usize) -> Self {
        Self {
            num_classes,
            counts: vec![0; num_classes * num_classes],
        }
    }

    /// Adds labels and predictions.
    pub fn add(&mut self, labels: &[usize], predictions: &[usize]) -> Result<()> {
        check_label_pairs(labels, predictions, self.num_classes)?;
        for (&t, &p) in labels.iter().zip(predictions) {
            self.counts[t * self.num_classes + p] += 1;
        }
        Ok(())
    }

    /// Count of class `t` predicted as `p`.
    pub fn get(&self, t: usize, p: usize) -> u64 {
        self.counts[t * self.num_classes + p]
    }

    /// Number of samples.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The metrics of these counts.
    pub fn metrics(&self) -> EvalMetrics {
        let c = self.num_classes;
        let total = self.total();
        let correct: u64 = (0..c).map(|k| self.get(k, k)).sum();
        let support: Vec<u64> = (0..c).map(|t| (0..c).map(|p| self.get(t, p)).sum()).collect();
        let predicted: Vec<u64> = (0..c).map(|p| (0..c).map(|t| self.get(t, p)).sum()).collect();
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let recall: Vec<f64> = (0..c).map(|k| ratio(self.get(k, k), support[k])).collect();
        let precision: Vec<f64> = (0..c).map(|k| ratio(self.get(k, k), predicted[k])).collect();
        let f1 = precision
            .iter()
            .zip(&recall)
            .map(|(p, r)| if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) })
            .collect();
        let present: Vec<usize> = (0..c).filter(|&k| support[k] > 0).collect();
        let average_class_accuracy = if present.is_empty() {
            0.0
        } else {
            present.iter().map(|&k| recall[k]).sum::<f64>() / present.len() as f64
        };
        EvalMetrics {
            samples: total,
            accuracy: ratio(correct, total),
            average_class_accuracy,
            precision,
            recall,
            f1,
            support,
            confusion: self.clone(),
        }
    }
}

/// Checks that labels and predictions pair up and are all below `num_classes`.
pub fn check_label_pairs(labels: &[usize], predictions: &[usize], num_classes: usize) -> Result<()> {
    if labels.len() != predictions.len() {
        return Err(AdCorreError::Shape {
            what: "predictions".into(),
            expected: format!("{} entries, one per label", labels.len()),
            got: vec![predictions.len()],
        });
    }
    match labels.iter().chain(predictions).find(|&&class| class >= num_classes) {
        Some(&class) => Err(AdCorreError::UnknownLabel {
            label: class as i64,
            num_classes,
        }),
        None => Ok(()),
    }
}

/// Evaluation results of a model on a split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Number of samples evaluated.
    pub samples: u64,
    /// Fraction classified correctly.
    pub accuracy: f64,
    /// Mean over the classes present of their recall (robust to class imbalance).
    pub average_class_accuracy: f64,
    /// Per-class precision (0 for a class never predicted).
    pub precision: Vec<f64>,
    /// Per-class recall = per-class accuracy (0 for an absent class).
    pub recall: Vec<f64>,
    /// Per-class F1.
    pub f1: Vec<f64>,
    /// Samples per class.
    pub support: Vec<u64>,
    /// The counts.
    pub confusion: ConfusionMatrix,
}
