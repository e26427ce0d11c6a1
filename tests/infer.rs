//! Recognising expressions: TestModels on real images, preprocessing, bad inputs, the CLI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use adcorre::backend::{cpu_device, Cpu};
use adcorre::infer::preprocess::image_to_chw;
use adcorre::infer::TestModels;
use adcorre::model::{save_model, AdCorreNetConfig, ModelCard, XceptionConfig};
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
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
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

    let out = adcorre(&["predict", "--model", mpk, "README.md"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("README.md"));
}
