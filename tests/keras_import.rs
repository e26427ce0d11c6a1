//! Keras import: numerical parity with the fixture model, layouts, and bad files.
#![cfg(all(feature = "keras", feature = "train"))]

mod common;

use std::path::Path;

use adcorre::backend::AdCorreBackend;
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

fn matches_keras<B: AdCorreBackend>() {
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

    // Folding batch norm for inference keeps Keras parity.
    let folded = net.clone().fold_batch_norm().forward(input::<B>(&device));
    let probs = max_abs_diff(&values(folded.probabilities()), &reference("probs.npy"));
    let embeddings = max_abs_diff(&values(folded.embeddings), &reference("embeddings.npy"));
    eprintln!("keras parity, folded batch norm: probs {probs:e}, embeddings {embeddings:e}");
    assert!(probs <= 1e-5 && embeddings <= 1e-5, "folded: {probs:e} {embeddings:e}");

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

/// How to rewrite the fixture for a test.
#[derive(Default)]
struct Rewrite<'a> {
    /// Copy only these layers' weights (all if `None`); `layer_names` still lists them all.
    only: Option<&'a [&'a str]>,
    /// Leave these layers out of `layer_names` and the weights.
    drop: &'a [&'a str],
    /// Store this weight (`layer/name`) with a wrong leading dimension.
    corrupt: Option<&'a str>,
}

/// Rewrites the fixture the way TF 2.4 / h5py 2.10 wrote files: fixed-length NULL-padded
/// `layer_names` / `weight_names`, weight names without the `:0` suffix, no `model_config`.
fn rewrite_fixture(dst: &Path, rewrite: &Rewrite) {
    use hdf5_pure::{AttrValue, File, FileBuilder};
    let src = File::open(fixture("adcorre_xcp7.h5")).unwrap();
    let layer_names: Vec<String> = src.group("model_weights").unwrap().attrs().unwrap()["layer_names"]
        .as_strings()
        .unwrap()
        .iter()
        .filter(|name| !rewrite.drop.contains(&name.as_str()))
        .cloned()
        .collect();
    let fixed = |values: Vec<String>| {
        let width = values.iter().map(String::len).max().unwrap_or(1).max(1) as u32;
        AttrValue::ascii_string_array_sized(values, width).unwrap()
    };
    let mut builder = FileBuilder::new();
    let mut weights = builder.create_group("model_weights");
    weights.set_attr("layer_names", fixed(layer_names.clone()));
    weights.set_attr("keras_version", AttrValue::AsciiString("2.4.0".into()));
    for layer in &layer_names {
        let group = src.group(&format!("model_weights/{layer}")).unwrap();
        let names: Vec<String> = group.attrs().unwrap()["weight_names"]
            .as_strings()
            .map(|s| s.to_vec())
            .unwrap_or_default();
        let copy = rewrite.only.is_none_or(|only| only.contains(&layer.as_str()));
        let mut layer_group = weights.create_group(layer);
        let stripped: Vec<String> = names.iter().map(|n| n.trim_end_matches(":0").to_string()).collect();
        if !stripped.is_empty() {
            layer_group.set_attr("weight_names", fixed(stripped.clone()));
        }
        if copy && !names.is_empty() {
            let mut inner = layer_group.create_group(layer);
            for (name, short) in names.iter().zip(&stripped) {
                let dataset = src.dataset(&format!("model_weights/{layer}/{name}")).unwrap();
                let mut shape = dataset.shape().unwrap();
                let mut values = dataset.read_f32().unwrap();
                if rewrite.corrupt == Some(short.as_str()) {
                    let per_row: u64 = shape[1..].iter().product();
                    shape[0] -= 1;
                    values.truncate((shape[0] * per_row) as usize);
                }
                let leaf = short.rsplit('/').next().unwrap();
                inner.create_dataset(leaf).with_f32_data(&values).with_shape(&shape);
            }
            layer_group.add_group(inner.finish());
        }
        weights.add_group(layer_group.finish());
    }
    builder.add_group(weights.finish());
    builder.write(dst).unwrap();
}

#[test]
fn tf24_style_files_with_fixed_length_names_import_identically() {
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tf24.h5");
    rewrite_fixture(&path, &Rewrite::default());
    let (original, _) = import_keras::<B>(&fixture("adcorre_xcp7.h5"), &device).unwrap();
    let (rewritten, card) = import_keras::<B>(&path, &device).unwrap();
    assert_eq!(card.network, adcorre::model::AdCorreNetConfig::new());
    assert_eq!(card.input_size, 224, "224 is the default without a model_config");
    let images = common::test_images::<B>([1, 3, 96, 96], 3, &device);
    assert_eq!(
        values(original.forward(images.clone()).logits),
        values(rewritten.forward(images).logits)
    );
}

const HEADS_AND_STEM: [&str; 10] = [
    "block1_conv1", "dense", "dense_1", "dense_2", "dense_3", "dense_4", "dense_5", "dense_6", "out",
    "block1_conv1_bn",
];

#[test]
fn a_missing_layer_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.h5");
    rewrite_fixture(
        &path,
        &Rewrite { only: Some(&HEADS_AND_STEM), drop: &["block1_conv1_bn"], ..Default::default() },
    );
    let err = import_keras::<B>(&path, &Default::default()).unwrap_err();
    match &err {
        AdCorreError::KerasLayer { layer, path: file, .. } => {
            assert_eq!(layer, "block1_conv1_bn");
            assert!(file.ends_with("missing.h5"));
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn a_weight_of_the_wrong_shape_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad_shape.h5");
    rewrite_fixture(
        &path,
        &Rewrite {
            only: Some(&HEADS_AND_STEM),
            corrupt: Some("block1_conv1_bn/moving_variance"),
            ..Default::default()
        },
    );
    let err = import_keras::<B>(&path, &Default::default()).unwrap_err();
    match &err {
        AdCorreError::KerasShape { weight, expected, got, .. } => {
            assert_eq!(weight, "block1_conv1_bn/moving_variance");
            assert_eq!((expected.as_slice(), got.as_slice()), (&[32][..], &[31][..]));
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn a_weight_missing_from_its_layer_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no_weights.h5");
    // block1_conv2 is listed in layer_names but its weights were not copied.
    rewrite_fixture(&path, &Rewrite { only: Some(&HEADS_AND_STEM), ..Default::default() });
    let err = import_keras::<B>(&path, &Default::default()).unwrap_err();
    assert!(
        matches!(&err, AdCorreError::KerasLayer { layer, .. } if layer == "block1_conv2"),
        "{err}"
    );
}
