//! The Ad-Corre loss: parity with the original's values, gradients, and edge cases.
#![cfg(feature = "train")]

mod common;

use adcorre::backend::{Autodiff, Cpu};
use adcorre::loss::case::LossCase;
use adcorre::loss::{
    adaptive_weights, pearson_correlation, AdCorreLossConfig, ConfusionWindow,
    EmbeddingDiscriminator, FeatureDiscriminator, MeanDiscriminator,
};
use adcorre::data::npy::NpzFile;
use adcorre::AdCorreError;
use burn::prelude::*;
use common::values;
use std::path::Path;

const CASES: [&str; 4] = [
    "bs12_k7_d16_c7",
    "bs50_k7_d256_c7",
    "bs50_k10_d256_c7",
    "bs24_k7_d32_c8",
];

fn fixture(case: &str) -> std::path::PathBuf {
    Path::new("../shared/fixtures/loss").join(format!("{case}.npz"))
}

fn matches_the_original_on_every_case<B: Backend>() {
    let device = B::Device::default();
    for case in CASES {
        let path = fixture(case);
        let terms = LossCase::from_npz(&path).unwrap().evaluate::<B>(&device).unwrap();
        let mut npz = NpzFile::open(&path).unwrap();
        for (name, ours) in [
            ("ce", terms.ce),
            ("ed", terms.ed),
            ("fd", terms.fd),
            ("md", terms.md),
            ("fd_adaptive", terms.fd_adaptive),
        ] {
            let reference = npz.scalar_f64(name).unwrap();
            let relative = (ours - reference).abs() / reference.abs();
            assert!(
                relative <= 1e-5,
                "{case} {name}: ours {ours}, original {reference}, relative {relative:e}"
            );
        }
    }
}

#[cfg(feature = "flex")]
#[test]
fn matches_the_original_on_every_case_flex() {
    matches_the_original_on_every_case::<adcorre::backend::Flex>();
}

#[cfg(feature = "ndarray")]
#[test]
fn matches_the_original_on_every_case_ndarray() {
    matches_the_original_on_every_case::<adcorre::backend::NdArray>();
}

#[test]
fn adaptive_weights_match_the_fixture() {
    let path = fixture("bs24_k7_d32_c8");
    let case = LossCase::from_npz(&path).unwrap();
    let ours = adaptive_weights(&case.labels, &case.confusion, case.num_classes);
    let reference = NpzFile::open(&path).unwrap().array::<f32>("adaptive_weights").unwrap();
    let reference: Vec<f32> = reference.iter().copied().collect();
    assert!(common::max_abs_diff(&ours, &reference) < 1e-6);
}

type B = Cpu;
type AD = Autodiff<Cpu>;

/// Deterministic values in [-1, 1).
fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32) / ((1u64 << 23) as f32) - 1.0
        })
        .collect()
}

const K: usize = 3;
const BS: usize = 6;
const D: usize = 5;
const LABELS: [usize; BS] = [0, 1, 0, 2, 1, 0];

fn terms(kind: &str, x: Tensor<AD, 3>) -> Tensor<AD, 1> {
    match kind {
        "fd" => FeatureDiscriminator.forward(x, &LABELS, None),
        "fd_adaptive" => {
            let confusion = [0.5, 0.25, 0.25, 0.0, 1.0, 0.0, 0.1, 0.3, 0.6];
            let w = adaptive_weights(&LABELS, &confusion, 3);
            let w = Tensor::from_data(TensorData::new(w, [BS, BS]), &x.device());
            FeatureDiscriminator.forward(x, &LABELS, Some(w))
        }
        "md" => MeanDiscriminator.forward(x, &LABELS),
        "ed" => EmbeddingDiscriminator.forward(x),
        _ => unreachable!(),
    }
}

fn gradient_matches_finite_differences(kind: &str) {
    let device = Default::default();
    let data = pseudo_random(K * BS * D, 42);
    let x = Tensor::<AD, 3>::from_data(TensorData::new(data.clone(), [K, BS, D]), &device)
        .require_grad();
    let grads = terms(kind, x.clone()).backward();
    let analytic = values(x.grad(&grads).expect("the loss reaches the embeddings"));
    let norm = |v: &[f32]| v.iter().map(|g| g * g).sum::<f32>().sqrt();
    assert!(norm(&analytic) > 1e-3, "{kind}: gradient is (almost) zero");

    let loss_at = |values: Vec<f32>| -> f64 {
        let x = Tensor::<AD, 3>::from_data(TensorData::new(values, [K, BS, D]), &device);
        terms(kind, x).into_scalar().to_f64()
    };
    let h = 1e-3f32;
    let numeric: Vec<f32> = (0..data.len())
        .map(|i| {
            let mut plus = data.clone();
            plus[i] += h;
            let mut minus = data.clone();
            minus[i] -= h;
            ((loss_at(plus) - loss_at(minus)) / (2.0 * h as f64)) as f32
        })
        .collect();
    let difference: Vec<f32> = analytic.iter().zip(&numeric).map(|(a, n)| a - n).collect();
    let relative = norm(&difference) / norm(&numeric);
    assert!(relative <= 1e-2, "{kind}: relative gradient error {relative}");
}

#[test]
fn feature_discriminator_gradient_matches_finite_differences() {
    gradient_matches_finite_differences("fd");
}

#[test]
fn adaptive_feature_discriminator_gradient_matches_finite_differences() {
    gradient_matches_finite_differences("fd_adaptive");
}

#[test]
fn mean_discriminator_gradient_matches_finite_differences() {
    gradient_matches_finite_differences("md");
}

#[test]
fn embedding_discriminator_gradient_matches_finite_differences() {
    gradient_matches_finite_differences("ed");
}

/// Mean correlation within classes and between classes of one head `[1, bs, d]`.
fn class_correlations(x: Tensor<B, 3>, labels: &[usize]) -> (f32, f32) {
    let corr = values(pearson_correlation(x));
    let n = labels.len();
    let (mut within, mut between) = (Vec::new(), Vec::new());
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            let c = corr[i * n + j];
            if labels[i] == labels[j] { within.push(c) } else { between.push(c) }
        }
    }
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    (mean(&within), mean(&between))
}

#[test]
fn one_step_on_the_feature_discriminator_separates_classes() {
    let device = Default::default();
    let labels = [0, 0, 1, 1, 2, 2, 0, 1];
    let d = 16;
    let data = pseudo_random(labels.len() * d, 7);
    let x = Tensor::<AD, 3>::from_data(TensorData::new(data, [1, labels.len(), d]), &device)
        .require_grad();
    let grads = FeatureDiscriminator.forward(x.clone(), &labels, None).backward();
    let step = x.grad(&grads).unwrap() * 0.5;
    let before = x.inner();
    let after = before.clone() - step;
    let (within_before, between_before) = class_correlations(before, &labels);
    let (within_after, between_after) = class_correlations(after, &labels);
    assert!(within_after > within_before, "{within_before} -> {within_after}");
    assert!(between_after < between_before, "{between_before} -> {between_after}");
}

fn all_finite(kind: &str, x: Tensor<AD, 3>, labels: &[usize]) {
    let x = x.require_grad();
    let loss = match kind {
        "fd" => FeatureDiscriminator.forward(x.clone(), labels, None),
        "md" => MeanDiscriminator.forward(x.clone(), labels),
        _ => EmbeddingDiscriminator.forward(x.clone()),
    };
    let value = loss.clone().into_scalar().to_f64();
    assert!(value.is_finite(), "{kind}: loss {value}");
    let grads = loss.backward();
    let gradient = values(x.grad(&grads).unwrap());
    assert!(gradient.iter().all(|g| g.is_finite()), "{kind}: non-finite gradient");
}

#[test]
fn degenerate_batches_stay_finite() {
    let device = Default::default();
    let constant = Tensor::<AD, 3>::ones([2, 4, 8], &device);
    let row = Tensor::<AD, 3>::from_data(TensorData::new(pseudo_random(8, 3), [1, 1, 8]), &device);
    let duplicates = row.clone().repeat_dim(1, 4).repeat_dim(0, 2);
    let single = Tensor::<AD, 3>::from_data(TensorData::new(pseudo_random(16, 5), [2, 1, 8]), &device);
    for kind in ["fd", "md", "ed"] {
        all_finite(kind, constant.clone(), &[0, 1, 0, 1]);
        all_finite(kind, duplicates.clone(), &[0, 1, 2, 3]);
        all_finite(kind, duplicates.clone(), &[2, 2, 2, 2]);
        all_finite(kind, single.clone(), &[4]);
    }
    // One class only: no pair of class means to decorrelate.
    let one_class = MeanDiscriminator.forward(duplicates, &[1, 1, 1, 1]);
    assert_eq!(one_class.into_scalar().to_f64(), 0.0);
}

#[test]
fn confusion_window_slides_and_leaves_unseen_classes_at_zero() {
    let mut window = ConfusionWindow::new(3, 4);
    window.update(&[0, 0, 1], &[0, 1, 1]).unwrap();
    let m = window.matrix();
    assert_eq!(&m[0..3], &[0.5, 0.5, 0.0]);
    assert_eq!(&m[3..6], &[0.0, 1.0, 0.0]);
    assert_eq!(&m[6..9], &[0.0, 0.0, 0.0]);
    // Two more pairs push out the oldest (0 -> 0).
    window.update(&[2, 2], &[2, 0]).unwrap();
    assert_eq!(window.len(), 4);
    let m = window.matrix();
    assert_eq!(&m[0..3], &[0.0, 1.0, 0.0]);
    assert_eq!(&m[6..9], &[0.5, 0.0, 0.5]);
    assert!(matches!(
        window.update(&[3], &[0]),
        Err(AdCorreError::UnknownLabel { label: 3, .. })
    ));
    assert!(matches!(window.update(&[0, 1], &[0]), Err(AdCorreError::Shape { .. })));
}

#[test]
fn adaptive_weights_follow_the_paper() {
    // c = diag(1, 0.5, 0): class 2 never recognised, class 0 always.
    let confusion = [1.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 1.0, 0.0];
    let w = adaptive_weights(&[0, 1, 2], &confusion, 3);
    let expected = [0.0, 1.5, 2.0, 1.5, 0.0, 2.5, 2.0, 2.5, 0.0];
    assert_eq!(w, expected);
}

fn logits_and_embeddings(bs: usize) -> (Tensor<AD, 2>, Tensor<AD, 3>) {
    let device = Default::default();
    let logits = Tensor::from_data(TensorData::new(pseudo_random(bs * 7, 11), [bs, 7]), &device);
    let embeddings =
        Tensor::from_data(TensorData::new(pseudo_random(7 * bs * 16, 12), [7, bs, 16]), &device);
    (logits, embeddings)
}

#[test]
fn ad_corre_loss_combines_the_weighted_terms() {
    let labels = [0, 1, 2, 3, 4, 5, 6, 0];
    let (logits, embeddings) = logits_and_embeddings(labels.len());
    let config = AdCorreLossConfig {
        ce_weight: 2.0,
        fd_weight: 3.0,
        md_weight: 5.0,
        ed_weight: 7.0,
        ..AdCorreLossConfig::default()
    };
    let mut loss = config.init(7).unwrap();
    let terms = loss.forward(logits.clone(), embeddings.clone(), &labels).unwrap();
    let v = terms.values().unwrap();
    let expected = 2.0 * v.ce + 3.0 * v.fd + 5.0 * v.md + 7.0 * v.ed;
    assert!((v.total - expected).abs() < 1e-4 * expected.abs());
    assert_eq!(loss.window().len(), labels.len(), "window updated with the batch");
    assert!(v.fd > 0.0 && v.md > 0.0 && v.ed > 0.0);

    let mut ce_only = AdCorreLossConfig::cross_entropy_only().init(7).unwrap();
    let v = ce_only.forward(logits, embeddings, &labels).unwrap().values().unwrap();
    assert_eq!((v.fd, v.md, v.ed), (0.0, 0.0, 0.0));
    assert!((v.total - 50.0 * v.ce).abs() < 1e-5 * v.total);
}

#[test]
fn ad_corre_loss_rejects_bad_batches() {
    let (logits, embeddings) = logits_and_embeddings(4);
    let mut loss = AdCorreLossConfig::default().init(7).unwrap();
    let err = loss.forward(logits.clone(), embeddings.clone(), &[0, 1, 9, 2]).unwrap_err();
    assert!(matches!(err, AdCorreError::UnknownLabel { label: 9, .. }), "{err}");
    let err = loss.forward(logits.clone(), embeddings.clone(), &[0, 1]).unwrap_err();
    assert!(matches!(err, AdCorreError::Shape { .. }), "{err}");
    let mut eight = AdCorreLossConfig::default().init(8).unwrap();
    let err = eight.forward(logits, embeddings, &[0, 1, 2, 3]).unwrap_err();
    assert!(matches!(err, AdCorreError::Shape { .. }), "{err}");
    let bad = AdCorreLossConfig { md_weight: f64::NAN, ..Default::default() };
    assert!(matches!(bad.init(7), Err(AdCorreError::Config(_))));
}

#[test]
fn a_non_finite_term_is_reported_by_name() {
    let device = Default::default();
    let mut logits = pseudo_random(14, 1);
    logits[3] = f32::NAN;
    let logits = Tensor::<AD, 2>::from_data(TensorData::new(logits, [2, 7]), &device);
    let (_, embeddings) = logits_and_embeddings(2);
    let mut loss = AdCorreLossConfig::default().init(7).unwrap();
    let err = loss.forward(logits, embeddings, &[0, 1]).unwrap().values().unwrap_err();
    assert!(matches!(err, AdCorreError::NonFinite(ref what) if what.contains("ce")), "{err}");
}

#[test]
fn loss_terms_example_reads_a_fixture() {
    let case = LossCase::from_npz(&fixture("bs12_k7_d16_c7")).unwrap();
    assert_eq!(case.embeddings_shape, [7, 12, 16]);
    assert_eq!(case.num_classes, 7);
    let err = LossCase::from_npz(Path::new("../shared/fixtures/loss/missing.npz")).unwrap_err();
    assert!(matches!(err, AdCorreError::Io { .. }));
}

/// Label smoothing: the cross-entropy against `(1 - e) onehot + e / C`, computed by hand from
/// the softmax; 0 gives the plain cross-entropy.
#[test]
fn label_smoothing_mixes_the_uniform_distribution_into_the_targets() {
    use adcorre::loss::{cross_entropy, smoothed_cross_entropy, CrossEntropyScale};
    let device = Default::default();
    let logits = [[2.0f32, -1.0, 0.5], [0.1, 0.3, -0.7]];
    let labels = [0, 2];
    let tensor = || Tensor::<Cpu, 2>::from_data(logits, &device);
    let smoothing = 0.1;
    let mut expected = 0.0;
    for (row, &label) in logits.iter().zip(&labels) {
        let total: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
        for (class, &v) in row.iter().enumerate() {
            let target = if class == label { 1.0 - smoothing } else { 0.0 } + smoothing / 3.0;
            expected -= target * ((v as f64).exp() / total).ln();
        }
    }
    let per_sample = values(smoothed_cross_entropy(tensor(), &labels, CrossEntropyScale::PerSample, smoothing))[0] as f64;
    assert!((per_sample - expected / 2.0).abs() < 1e-6, "{per_sample} vs {}", expected / 2.0);
    let per_entry = values(smoothed_cross_entropy(tensor(), &labels, CrossEntropyScale::PerEntry, smoothing))[0] as f64;
    assert!((per_entry - expected / 6.0).abs() < 1e-6);
    let plain = values(cross_entropy(tensor(), &labels, CrossEntropyScale::PerSample))[0];
    let unsmoothed = values(smoothed_cross_entropy(tensor(), &labels, CrossEntropyScale::PerSample, 0.0))[0];
    assert_eq!(plain, unsmoothed);
    assert!(plain < per_sample as f32, "smoothing raises the loss of confident right answers");
    let bad = AdCorreLossConfig { label_smoothing: 1.0, ..Default::default() };
    assert!(bad.validate().unwrap_err().to_string().contains("label_smoothing"));
}
