//! The Xception backbone and the Ad-Corre network: shapes, parameter count, TF "same"
//! max-pooling, cross-backend agreement and save/load.
#![cfg(feature = "train")]

mod common;

use adcorre::backend::AdCorreBackend;
use adcorre::model::checkpoint::{model_to_bytes, parameter_shapes};
use adcorre::model::xception::same_max_pool;
use adcorre::model::{
    load_model, parameter_count, save_model, AdCorreNet, AdCorreNetConfig, ModelCard,
    XceptionConfig,
};
use adcorre::AdCorreError;
use burn::prelude::*;
use common::{max_abs_diff, test_images, values};

/// A reduced network that keeps every kind of layer, for fast tests.
fn small_config() -> AdCorreNetConfig {
    AdCorreNetConfig::new()
        .with_backbone(XceptionConfig::new().with_width(0.125).with_middle_blocks(2))
        .with_num_heads(3)
        .with_embedding_dim(16)
        .with_num_classes(8)
}

fn spatial_sizes_at_224<B: AdCorreBackend>(device: &B::Device) {
    let net = AdCorreNetConfig::new().init::<B>(device);
    let mut sizes = Vec::new();
    let features = net.backbone.forward_with_taps(
        test_images::<B>([1, 3, 224, 224], 1, device),
        &mut |name, x| {
            let [_, c, h, w] = x.dims();
            assert_eq!(h, w, "{name} is not square");
            sizes.push((name.to_string(), c, h));
        },
    );
    let expected = [
        ("block1_conv1_act", 32, 111),
        ("block1_conv2_act", 64, 109),
        ("block2_pool", 128, 55),
        ("block3_pool", 256, 28),
        ("block4_pool", 728, 14),
        ("block13_pool", 1024, 7),
        ("block14_sepconv2_act", 2048, 7),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(n, c, h)| (n.to_string(), *c, *h))
        .collect();
    assert_eq!(sizes, expected);
    assert_eq!(features.dims(), [1, 2048, 7, 7]);
}

/// `x[i][j] = -(i * side + j) - 1`: all negative, so zero padding would show up as 0.
fn ramp<B: Backend>(side: usize, device: &B::Device) -> Tensor<B, 4> {
    let data: Vec<f32> = (0..side * side).map(|v| -(v as f32) - 1.0).collect();
    Tensor::from_data(TensorData::new(data, [1, 1, side, side]), device)
}

fn same_max_pool_matches_hand_computed<B: Backend>(device: &B::Device) {
    let pool = same_max_pool();
    // 4x4 -> 2x2: total padding 1, all of it after (bottom/right), as TensorFlow.
    // Windows: rows/cols {0,1,2} and {2,3,pad}.
    let out = values(pool.forward(ramp::<B>(4, device)));
    assert_eq!(out, vec![-1.0, -3.0, -9.0, -11.0]);
    // 5x5 -> 3x3: total padding 2, one each side; windows start at -1, 1, 3.
    let out = values(pool.forward(ramp::<B>(5, device)));
    assert_eq!(
        out,
        vec![-1.0, -2.0, -4.0, -6.0, -7.0, -9.0, -16.0, -17.0, -19.0]
    );
}

fn output_shapes_and_probabilities<B: AdCorreBackend>(device: &B::Device) {
    let net = small_config().init::<B>(device);
    let out = net.forward(test_images::<B>([2, 3, 64, 64], 3, device));
    assert_eq!(out.logits.dims(), [2, 8]);
    assert_eq!(out.embeddings.dims(), [3, 2, 16]);
    let probs = values(out.probabilities());
    for row in probs.chunks(8) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    let embeddings = values(out.embeddings);
    for embedding in embeddings.chunks(16) {
        let norm: f32 = embedding.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "embedding norm {norm}");
    }
}

fn save_load_round_trip_is_bit_identical<B: AdCorreBackend>(device: &B::Device) {
    let config = small_config();
    let net = config.init::<B>(device);
    let card = ModelCard::new(config.clone()).with_input_size(64).with_source("test");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.mpk");
    save_model(&net, &card, &path).unwrap();
    let (loaded, loaded_card) = load_model::<B>(&path, device).unwrap();
    assert_eq!(loaded_card, card);
    assert_eq!(loaded_card.class_names.last().unwrap(), "Contempt");
    let images = test_images::<B>([2, 3, 64, 64], 5, device);
    let before = net.forward(images.clone());
    let after = loaded.forward(images);
    assert_eq!(values(before.logits), values(after.logits));
    assert_eq!(values(before.embeddings), values(after.embeddings));
}

macro_rules! backend_tests {
    ($module:ident, $backend:ty) => {
        mod $module {
            type B = $backend;

            #[test]
            fn spatial_sizes_at_224() {
                super::spatial_sizes_at_224::<B>(&Default::default());
            }

            #[test]
            fn same_max_pool_matches_hand_computed() {
                super::same_max_pool_matches_hand_computed::<B>(&Default::default());
            }

            #[test]
            fn output_shapes_and_probabilities() {
                super::output_shapes_and_probabilities::<B>(&Default::default());
            }

            #[test]
            fn save_load_round_trip_is_bit_identical() {
                super::save_load_round_trip_is_bit_identical::<B>(&Default::default());
            }
        }
    };
}

#[cfg(feature = "flex")]
backend_tests!(flex, adcorre::backend::Flex);
#[cfg(feature = "ndarray")]
backend_tests!(ndarray, adcorre::backend::NdArray);

type B = adcorre::backend::Cpu;

#[test]
fn default_network_has_the_keras_parameter_count() {
    let net = AdCorreNetConfig::new().init::<B>(&Default::default());
    // Keras model.count_params() of the published architecture (k = 7, 7 classes).
    assert_eq!(parameter_count(&net), 24_545_839);
}

#[test]
fn parameter_count_follows_heads_and_classes() {
    let device = Default::default();
    let k7 = parameter_count(&AdCorreNetConfig::new().init::<B>(&device));
    let k10 = parameter_count(&AdCorreNetConfig::new().with_num_heads(10).init::<B>(&device));
    // Three more Linear(2048, 256) heads and 3 * 256 more classifier inputs for 7 classes.
    assert_eq!(k10 - k7, 3 * (2048 * 256 + 256) + 3 * 256 * 7);
    let c8 = parameter_count(&AdCorreNetConfig::new().with_num_classes(8).init::<B>(&device));
    assert_eq!(c8 - k7, 7 * 256 + 1);
}

#[test]
fn invalid_configurations_are_typed_errors() {
    let device = Default::default();
    let bad = [
        AdCorreNetConfig::new().with_num_heads(0),
        AdCorreNetConfig::new().with_num_classes(1),
        AdCorreNetConfig::new().with_dropout(1.0),
        AdCorreNetConfig::new().with_backbone(XceptionConfig::new().with_width(0.0)),
    ];
    for config in bad {
        assert!(matches!(
            config.try_init::<B>(&device),
            Err(AdCorreError::Config(_))
        ));
    }
}

#[test]
fn check_input_rejects_wrong_shapes() {
    let net: AdCorreNet<B> = small_config().init(&Default::default());
    assert!(net.check_input([1, 3, 224, 224]).is_ok());
    assert!(net.check_input([1, 3, 7, 7]).is_ok());
    for dims in [[0, 3, 224, 224], [1, 1, 224, 224], [1, 3, 6, 224], [1, 3, 224, 4]] {
        let err = net.check_input(dims).unwrap_err();
        assert!(matches!(err, AdCorreError::Shape { .. }), "{err}");
    }
}

#[test]
fn loading_bad_files_gives_typed_errors() {
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("missing.mpk");
    let err = load_model::<B>(&missing, &device).unwrap_err();
    assert!(matches!(err, AdCorreError::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing.mpk"));

    let garbage = dir.path().join("garbage.mpk");
    std::fs::write(&garbage, b"definitely not a model").unwrap();
    let err = load_model::<B>(&garbage, &device).unwrap_err();
    assert!(matches!(err, AdCorreError::InvalidModelFile { .. }), "{err}");

    let config = small_config();
    let bytes = model_to_bytes(&config.init::<B>(&device), &ModelCard::new(config)).unwrap();
    let truncated = dir.path().join("truncated.mpk");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_model::<B>(&truncated, &device).unwrap_err();
    assert!(matches!(err, AdCorreError::InvalidModelFile { .. }), "{err}");
    assert!(err.to_string().contains("truncated.mpk"));
}

#[test]
fn a_card_that_contradicts_the_weights_is_rejected() {
    let device = Default::default();
    let config = small_config();
    let net = config.init::<B>(&device);
    // Weights of a 3-head network under a card claiming 4 heads.
    let lying_card = ModelCard::new(config.clone().with_num_heads(4));
    let record = (
        adcorre::model::checkpoint::MODEL_FORMAT.to_string(),
        serde_json::to_string(&lying_card).unwrap(),
        burn::module::Module::into_record(net),
    );
    let bytes = burn::record::Recorder::<B>::record(
        &burn::record::NamedMpkBytesRecorder::<burn::record::FullPrecisionSettings>::default(),
        record,
        (),
    )
    .unwrap();
    let err = adcorre::model::checkpoint::model_from_bytes::<B>(bytes, &device).unwrap_err();
    assert!(err.contains("shape"), "{err}");
}

#[test]
fn parameter_paths_name_the_layers() {
    let net = small_config().init::<B>(&Default::default());
    let shapes = parameter_shapes(&net);
    assert!(shapes.iter().any(|(path, dims)| path.contains("block2")
        && path.contains("depthwise")
        && dims == &vec![8, 1, 3, 3]));
}

#[cfg(all(feature = "flex", feature = "ndarray"))]
#[test]
fn flex_and_ndarray_agree_on_the_same_weights() {
    use adcorre::backend::{Flex, NdArray};
    use adcorre::model::checkpoint::model_from_bytes;

    let config = AdCorreNetConfig::new();
    let flex_net = common::calibrate(config.init::<Flex>(&Default::default()), 7);
    let bytes = model_to_bytes(&flex_net, &ModelCard::new(config)).unwrap();
    let (ndarray_net, _) = model_from_bytes::<NdArray>(bytes, &Default::default()).unwrap();

    // A bright noise image and a dark one: noise images of equal statistics pool alike.
    fn inputs<B: AdCorreBackend>() -> Tensor<B, 4> {
        let noise = test_images::<B>([1, 3, 224, 224], 11, &Default::default());
        Tensor::cat(vec![noise.clone(), noise * 0.2], 0)
    }
    let flex_out = flex_net.forward(inputs::<Flex>());
    let nd_out = ndarray_net.forward(inputs::<NdArray>());
    let diff_probs = max_abs_diff(
        &values(flex_out.probabilities()),
        &values(nd_out.probabilities()),
    );
    let flex_embeddings = values(flex_out.embeddings);
    let diff_embeddings = max_abs_diff(&flex_embeddings, &values(nd_out.embeddings));
    // The comparison means something only if the output depends on the input.
    let [first, second] = [0, 1].map(|item| {
        flex_embeddings
            .chunks(256)
            .skip(item)
            .step_by(2)
            .flatten()
            .copied()
            .collect::<Vec<f32>>()
    });
    let input_effect = max_abs_diff(&first, &second);
    eprintln!("flex vs ndarray: probs {diff_probs:e}, embeddings {diff_embeddings:e}; between images {input_effect:e}");
    assert!(input_effect > 1e-2, "embeddings barely depend on the input ({input_effect})");
    assert!(diff_probs <= 1e-4, "probabilities differ by {diff_probs}");
    assert!(diff_embeddings <= 1e-4, "embeddings differ by {diff_embeddings}");
}

#[test]
fn folding_batch_norm_keeps_outputs_and_cannot_be_saved() {
    let device = Default::default();
    let config = small_config();
    let net = common::calibrate(config.init::<B>(&device), 3);
    let folded = net.clone().fold_batch_norm();
    let images = test_images::<B>([2, 3, 64, 64], 9, &device);
    let a = values(net.forward(images.clone()).embeddings);
    let b = values(folded.forward(images).embeddings);
    let diff = max_abs_diff(&a, &b);
    assert!(diff < 1e-5, "folded differs by {diff}");
    assert!(parameter_shapes(&folded).iter().all(|(path, _)| !path.contains("bn")));
    let err = model_to_bytes(&folded, &ModelCard::new(config)).unwrap_err();
    assert!(matches!(err, AdCorreError::Config(_)), "{err}");
}

/// A model file's bytes with the card `card` as written (for cards of older versions).
fn model_bytes_with_card(net: AdCorreNet<B>, card: &serde_json::Value) -> Vec<u8> {
    let record = (
        adcorre::model::checkpoint::MODEL_FORMAT.to_string(),
        card.to_string(),
        burn::module::Module::into_record(net),
    );
    burn::record::Recorder::<B>::record(
        &burn::record::NamedMpkBytesRecorder::<burn::record::FullPrecisionSettings>::default(),
        record,
        (),
    )
    .unwrap()
}

#[test]
fn cards_written_before_a_field_existed_still_load() {
    let device = Default::default();
    let config = small_config();
    let net = config.init::<B>(&device);
    // A card as written before `bn_momentum` existed.
    let mut card = serde_json::to_value(ModelCard::new(config.clone())).unwrap();
    card["network"]["backbone"].as_object_mut().unwrap().remove("bn_momentum");
    let bytes = model_bytes_with_card(net, &card);
    let (_, loaded) = adcorre::model::checkpoint::model_from_bytes::<B>(bytes, &device).unwrap();
    assert_eq!(loaded.network, config, "missing field takes its default");
}

/// A card written before `stem_stride` and `grayscale` existed loads as the Keras stem on RGB.
#[test]
fn cards_without_stem_stride_or_grayscale_load_as_keras() {
    let device = Default::default();
    let config = small_config();
    let net = config.init::<B>(&device);
    let mut card = serde_json::to_value(ModelCard::new(config.clone()).with_grayscale(true)).unwrap();
    card["network"]["backbone"].as_object_mut().unwrap().remove("stem_stride");
    card.as_object_mut().unwrap().remove("grayscale");
    let bytes = model_bytes_with_card(net, &card);
    let (net, loaded) = adcorre::model::checkpoint::model_from_bytes::<B>(bytes, &device).unwrap();
    assert_eq!(loaded.network.backbone.stem_stride, 2);
    assert!(!loaded.grayscale);
    assert_eq!(net.backbone.block1_conv1.conv.stride, [2, 2]);
}

/// A stem stride of 1 keeps twice the resolution through the network; other strides are a
/// typed error.
#[test]
fn stem_stride_one_keeps_the_resolution() {
    let device = Default::default();
    let backbone = XceptionConfig::new().with_width(0.125).with_middle_blocks(1);
    let mut sides = Vec::new();
    for stride in [2, 1] {
        let net = AdCorreNetConfig::new().with_backbone(backbone.clone().with_stem_stride(stride)).init::<B>(&device);
        let maps = net.backbone.forward(test_images::<B>([1, 3, 48, 48], 1, &device));
        sides.push(maps.dims()[2]);
    }
    assert_eq!(sides, [2, 3], "48 -> 23 -> ... -> 2 with stride 2, 48 -> 46 -> ... -> 3 with stride 1");
    for stride in [0, 3] {
        let err = backbone.clone().with_stem_stride(stride).validate().unwrap_err().to_string();
        assert!(err.contains("stem_stride"), "{err}");
    }
}

/// Held by the tests that switch adcorre's operations off or need them on (the switch is
/// global and tests run in parallel).
#[cfg(feature = "flex")]
static OPS_SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// adcorre's operations (flex host kernels) give the results of Burn's layers: the whole folded
/// network run layer by layer, operations on and off (the depthwise and pooling kernels are
/// bit-identical to Burn's; the 1x1 products sum in another order).
#[cfg(feature = "flex")]
#[test]
fn adcorre_ops_give_burns_layer_results() {
    use adcorre::backend::ops::set_enabled;
    use adcorre::backend::Flex;
    let device = Default::default();
    let net = common::calibrate(
        AdCorreNetConfig::new()
            .with_backbone(XceptionConfig::new().with_width(0.25).with_middle_blocks(2))
            .init::<Flex>(&device),
        5,
    )
    .fold_batch_norm();
    let images = test_images::<Flex>([2, 3, 75, 75], 3, &device);
    let _switch = OPS_SWITCH.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let layer_by_layer = |images| values(net.backbone.forward_with_taps(images, &mut |_, _| {}));
    let ours = layer_by_layer(images.clone());
    set_enabled(false);
    let burn = layer_by_layer(images);
    set_enabled(true);
    let scale = burn.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0);
    let error = max_abs_diff(&ours, &burn) / scale;
    assert!(error <= 1e-5, "relative error {error:e}");
}

/// The host pass of `flex` (`AdCorreBackend::folded_xception`) on tensors.
#[cfg(feature = "flex")]
fn host_pass<B: AdCorreBackend>(net: &adcorre::model::Xception<B>, images: &Tensor<B, 4>, pooled: bool) -> Option<Tensor<B, 4>> {
    let input = images.clone().into_primitive().tensor();
    B::folded_xception(net, &input, pooled).map(|out| Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(out)))
}

/// The one-pass host backbone (flex, folded batch norms) equals the layer-by-layer network up
/// to float rounding: batch 1 and 3 (one matrix product over the batch), square, non-square
/// and odd sizes down to the smallest input, both stem strides, with non-zero biases from
/// folding.
#[cfg(feature = "flex")]
#[test]
fn host_backbone_pass_matches_the_layers() {
    use adcorre::backend::Flex;
    use adcorre::model::global_average_pool;
    let device = Default::default();
    let backbone = XceptionConfig::new().with_width(0.25).with_middle_blocks(2);
    let cases = [
        (2, [1, 3, 75, 75], 1),
        (2, [3, 3, 71, 96], 2),
        (2, [2, 3, 7, 7], 3),
        (2, [1, 3, 8, 11], 4),
        (1, [2, 3, 48, 48], 5),
        (1, [1, 3, 7, 9], 6),
    ];
    for (stem_stride, shape, seed) in cases {
        let config = AdCorreNetConfig::new().with_backbone(backbone.clone().with_stem_stride(stem_stride));
        let net = common::calibrate(config.init::<Flex>(&device), 11).fold_batch_norm();
        let images = test_images::<Flex>(shape, seed, &device);
        let layers = net.backbone.forward_with_taps(images.clone(), &mut |_, _| {});
        let pooled_layers = global_average_pool(layers.clone());
        let host = host_pass(&net.backbone, &images, false).expect("a folded backbone on flex runs on the host");
        let pooled = host_pass(&net.backbone, &images, true).expect("and so does its pooled variant").flatten::<2>(1, 3);
        assert_eq!(host.dims(), layers.dims(), "{shape:?}");
        assert_eq!(pooled.dims(), pooled_layers.dims(), "{shape:?}");
        for (what, host, layers) in [("maps", values(host), values(layers)), ("pooled", values(pooled), values(pooled_layers))] {
            let scale = layers.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "{shape:?} {what}: the features must not vanish");
            let error = max_abs_diff(&host, &layers) / scale;
            assert!(error <= 1e-5, "{shape:?} {what}: relative error {error:e}");
        }
    }
}

/// The host pass runs one pass per thread over its share of the images when the batch has an
/// image per thread, else one pass over the whole batch: on 1 to 5 threads (batch 4 as one
/// pass, 2+2, 2+2 on 3 threads, 1+1+1+1 and whole again on 5) every image gets the bits of the
/// single-threaded pass, and the layers' results. (The last maps here are 2x2: a product of a
/// single column, one image's 1x1 map, would take `gemm`'s matrix-vector order instead.)
#[cfg(feature = "flex")]
#[test]
fn host_pass_gives_every_image_the_same_bits_however_the_batch_is_split() {
    use adcorre::backend::Flex;
    let device = Default::default();
    let backbone = XceptionConfig::new().with_width(0.25).with_middle_blocks(1);
    let net = common::calibrate(AdCorreNetConfig::new().with_backbone(backbone).init::<Flex>(&device), 3).fold_batch_norm();
    let images = test_images::<Flex>([4, 3, 40, 52], 7, &device);
    let layers = values(net.backbone.forward_with_taps(images.clone(), &mut |_, _| {}));
    let scale = layers.iter().fold(0f32, |m, v| m.max(v.abs()));
    let on_threads = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| values(host_pass(&net.backbone, &images, false).expect("a folded backbone on flex runs on the host")))
    };
    let single = on_threads(1);
    assert!(max_abs_diff(&single, &layers) / scale <= 1e-5);
    for threads in 2..=5 {
        let split = on_threads(threads);
        assert!(split.iter().zip(&single).all(|(a, b)| a.to_bits() == b.to_bits()), "{threads} threads");
    }
}

/// The host pass declines what it does not compute: batch norms not folded (training
/// statistics), and autodiff tensors (no backward pass); Burn's layers run those.
#[cfg(feature = "flex")]
#[test]
fn host_backbone_pass_declines_unfolded_and_autodiff_networks() {
    use adcorre::backend::{Autodiff, Flex};
    let device = Default::default();
    let config = small_config();
    let unfolded = config.init::<Flex>(&device);
    assert!(host_pass(&unfolded.backbone, &test_images::<Flex>([1, 3, 32, 32], 1, &device), false).is_none());
    let folded = unfolded.fold_batch_norm();
    assert!(host_pass(&folded.backbone, &test_images::<Flex>([1, 3, 32, 32], 1, &device), false).is_some());
    let autodiff = config.init::<Autodiff<Flex>>(&device).no_grad().fold_batch_norm();
    let images = test_images::<Autodiff<Flex>>([1, 3, 32, 32], 1, &device);
    assert!(host_pass(&autodiff.backbone, &images, false).is_none());
}
