//! Keras import: numerical parity with the fixture model, layouts, and bad files.
#![cfg(feature = "keras")]

mod common;

use std::path::Path;

use adcorre::data::npy::read_npy;
use adcorre::import::keras::import_keras;
use adcorre::model::{load_model, parameter_count, save_model};
use adcorre::AdCorreError;
use burn::prelude::*;
use common::{max_abs_diff, values};

const FIXTURES: &str = "../shared/fixtures/keras";

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(FIXTURES).join(name)
}

/// The fixture input (4, 224, 224, 3) NHWC as an NCHW tensor.
fn input<B: Backend>(device: &B::Device) -> Tensor<B, 4> {
    let array = read_npy::<f32>(&fixture("input.npy")).unwrap();
    let shape: [usize; 4] = array.shape().try_into().unwrap();
    let values: Vec<f32> = array.iter().copied().collect();
    Tensor::<B, 4>::from_data(TensorData::new(values, shape), device).permute([0, 3, 1, 2])
}

fn reference(name: &str) -> Vec<f32> {
    read_npy::<f32>(&fixture(name)).unwrap().iter().copied().collect()
}

/// max |ours - keras| / max |keras|.
fn relative_error(ours: &[f32], keras: &[f32]) -> f32 {
    let scale = keras.iter().fold(0f32, |m, v| m.max(v.abs()));
    max_abs_diff(ours, keras) / scale
}

fn matches_keras<B: Backend>() {
    let device = B::Device::default();
    let (net, card) = import_keras::<B>(&fixture("adcorre_xcp7.h5"), &device).unwrap();
    assert_eq!(card.network.num_heads, 7);
    assert_eq!(card.network.num_classes, 7);
    assert_eq!(card.input_size, 224);
    assert_eq!(parameter_count(&net), 24_545_839);

    let mut activations = Vec::new();
    let features = net.backbone.forward_with_taps(input::<B>(&device), &mut |name, x| {
        if ["block1_conv1_act", "block4_pool", "block13_pool", "block14_sepconv2_act"].contains(&name) {
            activations.push((name.to_string(), values(x.clone().permute([0, 2, 3, 1]))));
        }
    });
    assert_eq!(activations.len(), 4);
    for (name, ours) in &activations {
        let error = relative_error(ours, &reference(&format!("act_{name}.npy")));
        assert!(error <= 1e-4, "{name}: relative error {error:e}");
    }
    let pooled = values(adcorre::model::global_average_pool(features));
    let error = relative_error(&pooled, &reference("act_global_average_pooling2d.npy"));
    assert!(error <= 1e-4, "global_average_pooling2d: relative error {error:e}");

    let out = net.forward(input::<B>(&device));
    let probs = max_abs_diff(&values(out.probabilities()), &reference("probs.npy"));
    let embeddings = max_abs_diff(&values(out.embeddings), &reference("embeddings.npy"));
    eprintln!("keras parity: probs {probs:e}, embeddings {embeddings:e}");
    assert!(probs <= 1e-5, "probabilities differ by {probs:e}");
    assert!(embeddings <= 1e-5, "embeddings differ by {embeddings:e}");

    // The converted model reloads to identical outputs.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adcorre_xcp7.mpk");
    save_model(&net, &card, &path).unwrap();
    let (reloaded, reloaded_card) = load_model::<B>(&path, &device).unwrap();
    assert_eq!(reloaded_card, card);
    let again = reloaded.forward(input::<B>(&device));
    assert_eq!(values(again.logits), values(out.logits));
}

#[cfg(feature = "flex")]
#[test]
fn imported_model_matches_keras_on_flex() {
    matches_keras::<adcorre::backend::Flex>();
}

#[cfg(feature = "ndarray")]
#[test]
fn imported_model_matches_keras_on_ndarray() {
    matches_keras::<adcorre::backend::NdArray>();
}

type B = adcorre::backend::Cpu;

#[test]
fn a_missing_file_is_an_io_error() {
    let err = import_keras::<B>(Path::new("no/such/model.h5"), &Default::default()).unwrap_err();
    assert!(matches!(err, AdCorreError::Io { .. }), "{err}");
}

#[test]
fn a_file_that_is_not_hdf5_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.h5");
    std::fs::write(&path, b"this is not an HDF5 file at all").unwrap();
    let err = import_keras::<B>(&path, &Default::default()).unwrap_err();
    assert!(matches!(err, AdCorreError::NotKerasModel { .. }), "{err}");
    assert!(err.to_string().contains("model.h5"));
}
