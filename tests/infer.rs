//! Recognising expressions: TestModels on real images, preprocessing, bad inputs, the CLI.
#![cfg(feature = "cli")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use adcorre::backend::{cpu_device, Cpu};
use adcorre::infer::preprocess::image_to_chw;
use adcorre::infer::TestModels;
use adcorre::model::{save_model, AdCorreNetConfig, ModelCard, TestTimeViews, XceptionConfig};
use adcorre::AdCorreError;
use image::{DynamicImage, GrayImage, ImageBuffer, Luma, Rgb, Rgba, RgbaImage};

fn fer_image(class: &str) -> PathBuf {
    let dir = Path::new("../shared/data/fer2013/test").join(class);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.remove(0)
}

/// A small 8-class model saved to a temporary .mpk.
fn small_model(dir: &Path) -> PathBuf {
    let config = AdCorreNetConfig::new()
        .with_backbone(XceptionConfig::new().with_width(0.125).with_middle_blocks(1))
        .with_num_heads(3)
        .with_embedding_dim(16)
        .with_num_classes(8);
    let net = config.init::<Cpu>(&cpu_device());
    let path = dir.join("small.mpk");
    save_model(&net, &ModelCard::new(config).with_input_size(64), &path).unwrap();
    path
}

#[test]
fn recognize_fer_on_a_fer2013_image_with_the_published_architecture() {
    let models = TestModels::new("../shared/fixtures/keras/adcorre_xcp7.h5").unwrap();
    let recognition = models.recognize_fer(fer_image("happy")).unwrap();
    assert_eq!(recognition.probabilities.len(), 7);
    let total: f32 = recognition.probabilities.iter().map(|c| c.probability).sum();
    assert!((total - 1.0).abs() < 1e-5, "probabilities sum to {total}");
    let names: Vec<&str> = recognition.probabilities.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger"]);
    assert_eq!(recognition.embeddings.len(), 7);
    for embedding in &recognition.embeddings {
        assert_eq!(embedding.len(), 256);
        let norm: f32 = embedding.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    let best = recognition
        .probabilities
        .iter()
        .map(|c| c.probability)
        .fold(0f32, f32::max);
    assert_eq!(recognition.confidence(), best);
    assert_eq!(recognition.expression().map(|e| e.name()), Some(recognition.expression.as_str()));
}

#[test]
fn batch_and_single_recognition_agree() {
    let dir = tempfile::tempdir().unwrap();
    let models = TestModels::new(small_model(dir.path())).unwrap().with_batch_size(2);
    let files = [fer_image("angry"), fer_image("sad"), fer_image("surprise")];
    let batch = models.recognize_files(&files).unwrap();
    assert_eq!(batch.len(), 3);
    for (file, from_batch) in files.iter().zip(&batch) {
        let single = models.recognize_fer(file).unwrap();
        assert_eq!(single.label, from_batch.label);
        for (a, b) in single.probabilities.iter().zip(&from_batch.probabilities) {
            assert!((a.probability - b.probability).abs() < 1e-5);
        }
    }
    assert_eq!(batch[0].probabilities.len(), 8);
    assert_eq!(batch[0].probabilities[7].name, "Contempt");
}

/// A model whose card says grayscale sees a colour photo as its luma: the same answer as for
/// the photo converted to gray first; a colour model sees the colours.
#[test]
fn grayscale_models_are_fed_luma() {
    let config = common::two_head_config();
    let device = cpu_device();
    let net = common::calibrate(config.init::<Cpu>(&device), 3);
    let colour = DynamicImage::ImageRgb8(ImageBuffer::from_fn(40, 40, |x, y| {
        Rgb([(x * 6) as u8, (y * 6) as u8, ((x + y) * 3) as u8])
    }));
    let gray = colour.grayscale();
    assert!(matches!(gray, DynamicImage::ImageLuma8(_)));
    let probabilities = |grayscale: bool, image: &DynamicImage| {
        let card = ModelCard::new(config.clone()).with_input_size(32).with_grayscale(grayscale);
        let models = TestModels::from_model(net.clone(), card, &device);
        let recognition = models.recognize_image(image).unwrap();
        recognition.probabilities.iter().map(|c| c.probability).collect::<Vec<f32>>()
    };
    assert_eq!(probabilities(true, &colour), probabilities(true, &gray));
    assert_eq!(probabilities(false, &gray), probabilities(true, &gray));
    let colour_seen = probabilities(false, &colour);
    let luma_seen = probabilities(true, &colour);
    let difference = colour_seen.iter().zip(&luma_seen).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("colour vs luma input, largest probability difference {difference:e}");
    // Luma input gives the same bits whichever way it arrives (above), so any difference shows
    // the colours reached the network. The size of the difference depends on the unseeded
    // initialisation (1e-3 to 7e-3 in five runs, once 8.4e-5), so no margin is asserted.
    assert!(difference > 0.0, "colour and luma input must differ for a colour model: {difference}");
}

/// The test-time flip averages the probabilities of an image and its mirror image, so a model
/// that uses it gives a photo and its mirror image the same answer; a model card turns it on.
#[test]
fn test_time_flip_averages_an_image_and_its_mirror() {
    let config = common::two_head_config();
    let device = cpu_device();
    let net = common::calibrate(config.init::<Cpu>(&device), 5).fold_batch_norm();
    let images = common::test_images::<Cpu>([3, 3, 33, 29], 7, &device);
    let mirrored = images.clone().flip([3]);
    let expected: Vec<f32> = common::values(net.probabilities(images.clone()))
        .iter()
        .zip(common::values(net.probabilities(mirrored.clone())))
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    let flip = TestTimeViews { flip: true, crop: None };
    let flipped = net.forward_test_time(images.clone(), flip);
    let averaged = common::values(flipped.probabilities());
    assert!(common::max_abs_diff(&averaged, &expected) < 1e-6);
    let of_mirror = common::values(net.forward_test_time(mirrored.clone(), flip).probabilities());
    assert!(common::max_abs_diff(&averaged, &of_mirror) < 1e-6, "mirror-invariant");
    // The embeddings are the plain images' (a mirror's differ by ~0.1), up to rounding: the
    // host pass may group the 6 views and the 3 images differently across threads, and a
    // product of one column (a single image's 1x1 map) takes another summation order.
    let embeddings = common::values(flipped.embeddings);
    assert!(common::max_abs_diff(&embeddings, &common::values(net.forward(images.clone()).embeddings)) < 1e-5);
    assert!(common::max_abs_diff(&embeddings, &common::values(net.forward(mirrored.clone()).embeddings)) > 1e-3);
    let plain = common::values(net.probabilities(images.clone()));
    assert!(common::max_abs_diff(&plain, &averaged) > 1e-4, "the flip must change something");

    let card = ModelCard::new(config).with_input_size(33).with_test_time_flip(true);
    assert!(common::max_abs_diff(&recognised_probabilities(net, card, images), &averaged) < 1e-6);
}

/// The probabilities `TestModels` gives for `images` with `net` and `card`, image by image.
fn recognised_probabilities(net: adcorre::model::AdCorreNet<Cpu>, card: ModelCard, images: burn::tensor::Tensor<Cpu, 4>) -> Vec<f32> {
    let models = TestModels::from_model(net, card, &cpu_device());
    let recognitions = models.recognize_tensor(images).unwrap();
    recognitions.iter().flat_map(|r| r.probabilities.iter().map(|c| c.probability)).collect()
}

/// The test-time crop adds the centred crop (resized back to full size) to the averaged views,
/// and its mirror image with the flip: four views, each weighed the same; a card asks for it,
/// and a crop outside (0, 1] is a configuration error.
#[test]
fn test_time_crop_averages_the_centred_crop_and_its_mirror() {
    use burn::tensor::module::interpolate;
    use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
    let config = common::two_head_config();
    let device = cpu_device();
    let net = common::calibrate(config.init::<Cpu>(&device), 5).fold_batch_norm();
    let images = common::test_images::<Cpu>([2, 3, 40, 40], 11, &device);
    // 0.9 x 40 = 36: the crop starts 2 pixels in from each side.
    let crop = interpolate(
        images.clone().slice([0..2, 0..3, 2..38, 2..38]),
        [40, 40],
        InterpolateOptions { mode: InterpolateMode::Bilinear, align_corners: false },
    );
    let views = [images.clone(), crop.clone(), images.clone().flip([3]), crop.flip([3])];
    let probabilities: Vec<Vec<f32>> = views.into_iter().map(|view| common::values(net.probabilities(view))).collect();
    let mean = |count: usize| -> Vec<f32> {
        (0..probabilities[0].len()).map(|i| probabilities[..count].iter().map(|p| p[i]).sum::<f32>() / count as f32).collect()
    };
    let crop_only = common::values(net.forward_test_time(images.clone(), TestTimeViews { flip: false, crop: Some(0.9) }).probabilities());
    assert!(common::max_abs_diff(&crop_only, &mean(2)) < 1e-6);
    let both = TestTimeViews { flip: true, crop: Some(0.9) };
    assert_eq!(both.count(), 4);
    let four = net.forward_test_time(images.clone(), both);
    let averaged = common::values(four.probabilities());
    // The views are ordered image, crop, their mirrors: the mean of all four.
    let expected: Vec<f32> = (0..averaged.len()).map(|i| probabilities.iter().map(|p| p[i]).sum::<f32>() / 4.0).collect();
    assert!(common::max_abs_diff(&averaged, &expected) < 1e-6);
    assert!(common::max_abs_diff(&averaged, &mean(2)) > 1e-5, "the mirrors must count");
    // The plain images' embeddings, up to rounding (see `test_time_flip_averages_...`).
    assert!(common::max_abs_diff(&common::values(four.embeddings), &common::values(net.forward(images.clone()).embeddings)) < 1e-5);

    let card = ModelCard::new(config.clone()).with_input_size(40).with_test_time_flip(true).with_test_time_crop(Some(0.9));
    assert_eq!(card.test_time_views(), both);
    assert!(common::max_abs_diff(&recognised_probabilities(net, card, images), &averaged) < 1e-6);
    for bad in [0.0, 1.5, f32::NAN] {
        let card = ModelCard::new(config.clone()).with_test_time_crop(Some(bad));
        assert!(matches!(card.validate(), Err(AdCorreError::Config(_))), "crop {bad}");
    }
}

#[test]
fn any_pixel_format_becomes_rgb_in_unit_range() {
    let gray = DynamicImage::ImageLuma8(GrayImage::from_pixel(10, 6, Luma([255])));
    let chw = image_to_chw(&gray, 4);
    assert_eq!(chw.len(), 3 * 16);
    assert!(chw.iter().all(|&v| (v - 1.0).abs() < 1e-6));

    let rgba = DynamicImage::ImageRgba8(RgbaImage::from_pixel(5, 5, Rgba([255, 0, 0, 10])));
    let chw = image_to_chw(&rgba, 5);
    assert!(chw[..25].iter().all(|&v| (v - 1.0).abs() < 1e-6));
    assert!(chw[25..].iter().all(|&v| v.abs() < 1e-6));

    let sixteen: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_pixel(3, 3, Rgb([65535, 32768, 0]));
    let chw = image_to_chw(&DynamicImage::ImageRgb16(sixteen), 3);
    assert!((chw[0] - 1.0).abs() < 1e-6 && (chw[9] - 0.5).abs() < 1e-3 && chw[18].abs() < 1e-6);

    // Downscaling is anti-aliased: a one-pixel checkerboard averages to grey.
    let checker = GrayImage::from_fn(64, 64, |x, y| Luma([if (x + y) % 2 == 0 { 255 } else { 0 }]));
    let chw = image_to_chw(&DynamicImage::ImageLuma8(checker), 8);
    assert!(chw.iter().all(|&v| (v - 0.5).abs() < 0.1), "aliased: {:?}", &chw[..8]);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let models = TestModels::new(small_model(dir.path())).unwrap();

    let err = models.recognize_fer(dir.path().join("absent.jpg")).unwrap_err();
    assert!(matches!(err, AdCorreError::Io { .. }), "{err}");

    let corrupt = dir.path().join("corrupt.jpg");
    std::fs::write(&corrupt, b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    let err = models.recognize_fer(&corrupt).unwrap_err();
    assert!(matches!(err, AdCorreError::Image { .. }), "{err}");
    assert!(err.to_string().contains("corrupt.jpg"));

    let wrong = burn::tensor::Tensor::<Cpu, 4>::zeros([1, 1, 64, 64], &cpu_device());
    let err = models.recognize_tensor(wrong).unwrap_err();
    assert!(matches!(err, AdCorreError::Shape { .. }), "{err}");

    let err = TestModels::new(&corrupt).map(|_| ()).unwrap_err();
    assert!(matches!(err, AdCorreError::InvalidModelFile { .. }), "{err}");
}

fn adcorre(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_adcorre")).args(args).output().unwrap()
}

/// The JSON lines `adcorre predict --json` printed, after asserting that it succeeded.
#[cfg(feature = "keras")]
fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[cfg(feature = "keras")]
#[test]
fn cli_imports_keras_and_predicts() {
    let dir = tempfile::tempdir().unwrap();
    let mpk = dir.path().join("xcp7.mpk");
    let mpk = mpk.to_str().unwrap();
    let out = adcorre(&["import-keras", "../shared/fixtures/keras/adcorre_xcp7.h5", mpk]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("k = 7 heads") && text.contains("7 classes") && text.contains("24545839"), "{text}");

    let image = fer_image("happy");
    let out = adcorre(&[
        "predict", "--model", mpk, "--json", "--embeddings",
        "--input-npy", "../shared/fixtures/keras/input.npy", image.to_str().unwrap(),
    ]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 5, "4 fixture inputs and 1 image");
    // The fixture inputs give Keras' probabilities.
    let keras = adcorre::data::npy::read_npy::<f32>("../shared/fixtures/keras/probs.npy".as_ref()).unwrap();
    for (item, line) in lines[..4].iter().enumerate() {
        let probs = line["probabilities"].as_object().unwrap();
        assert_eq!(probs.keys().next().unwrap(), "Neutral", "class order kept");
        for (class, value) in probs.values().enumerate() {
            assert!((value.as_f64().unwrap() as f32 - keras[[item, class]]).abs() < 1e-5);
        }
        assert_eq!(line["embeddings"].as_array().unwrap().len(), 7);
    }

    // `--backend` picks the backend (flex above, the default): Keras' probabilities on ndarray
    // too, and a clear error for a backend that is not compiled in.
    #[cfg(feature = "ndarray")]
    {
        let out = adcorre(&["predict", "--backend", "ndarray", "--model", mpk, "--json", "--input-npy", "../shared/fixtures/keras/input.npy"]);
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 4);
        for (item, line) in lines.iter().enumerate() {
            for (class, value) in line["probabilities"].as_object().unwrap().values().enumerate() {
                let error = (value.as_f64().unwrap() as f32 - keras[[item, class]]).abs();
                assert!(error < 1e-5, "--backend ndarray, input {item}, class {class}: {error:e} from Keras");
            }
        }
    }
    let out = adcorre(&["predict", "--backend", "tpu", "--model", mpk, image.to_str().unwrap()]);
    assert!(!out.status.success());
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(message.contains("backend 'tpu' is not compiled in") && message.contains("flex"), "{message}");

    let out = adcorre(&["predict", "--model", mpk, "README.md"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("README.md"));
}

/// The model that ships with the crate recognises FER-2013 faces as a user would feed them
/// (JPEG files through `recognize_files`): at least 50 % of 350 PublicTest faces (50 per
/// class), far above the 14 % of chance; wrong class order, colour handling or input size
/// would fail this.
#[cfg(feature = "shipped-model")]
#[test]
fn the_shipped_model_recognises_fer2013_faces() {
    let models = TestModels::shipped().unwrap().with_batch_size(64);
    let card = models.card();
    assert_eq!((card.input_size, card.grayscale, card.network.num_classes), (48, true, 7));
    let folders = [
        ("angry", "Anger"),
        ("disgust", "Disgust"),
        ("fear", "Fear"),
        ("happy", "Happy"),
        ("neutral", "Neutral"),
        ("sad", "Sad"),
        ("surprise", "Surprise"),
    ];
    let (mut files, mut expected) = (Vec::new(), Vec::new());
    for (folder, name) in folders {
        let dir = Path::new("../shared/data/fer2013/test").join(folder);
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("PublicTest_"))
            .collect();
        found.sort();
        for file in found.into_iter().take(50) {
            files.push(file);
            expected.push(name);
        }
    }
    let recognitions = models.recognize_files(&files).unwrap();
    let correct = recognitions.iter().zip(&expected).filter(|(r, name)| r.expression == **name).count();
    let accuracy = correct as f64 / files.len() as f64;
    println!("shipped model: {correct} of {} PublicTest faces ({:.1} %)", files.len(), 100.0 * accuracy);
    assert!(accuracy >= 0.5, "accuracy {accuracy}");
}

/// `adcorre predict` without --model uses the shipped model; `adcorre card` shows a card and
/// writes a copy with changed entries.
#[cfg(feature = "shipped-model")]
#[test]
fn cli_predicts_with_the_shipped_model_and_edits_cards() {
    let face = fer_image("happy");
    let out = adcorre(&["predict", "--json", face.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let shipped = TestModels::shipped().unwrap().recognize_fer(&face).unwrap();
    assert_eq!(printed["expression"], shipped.expression.as_str());

    let dir = tempfile::tempdir().unwrap();
    let model = small_model(dir.path());
    let changed = dir.path().join("changed.mpk");
    let out = adcorre(&[
        "card",
        model.to_str().unwrap(),
        "--set-test-time-flip",
        "true",
        "--set-test-time-crop",
        "0.85",
        "--set-face-crop",
        "aligned:0.25",
        "--out",
        changed.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let card = TestModels::new(&changed).unwrap().card().clone();
    assert!(card.test_time_flip);
    assert_eq!(card.test_time_crop, Some(0.85));
    assert_eq!(card.face_crop, adcorre::detect::align::FaceCrop::Aligned { margin: 0.25 });
    let out = adcorre(&["card", model.to_str().unwrap(), "--set-face-crop", "square:1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("box:MARGIN"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = adcorre(&["card", model.to_str().unwrap(), "--set-test-time-crop", "1.5", "--out", changed.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fraction in (0, 1]"), "{}", String::from_utf8_lossy(&out.stderr));
    let shipped_card = TestModels::shipped().unwrap().card().clone();
    assert_eq!((shipped_card.test_time_flip, shipped_card.test_time_crop), (true, Some(0.9)), "the shipped card's views");
}
