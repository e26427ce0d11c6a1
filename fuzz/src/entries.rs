//! What each fuzz target feeds to adcorre: shared by the fuzz targets (`fuzz/fuzz_targets/`)
//! and by `tests/fuzz_regressions.rs`, which replays the saved inputs in `cargo test`.
//!
//! Each function takes arbitrary bytes and drives one parser of untrusted files the way
//! adcorre's users do; any error is fine, a panic, an abort or a hang is a bug.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use adcorre::backend::{cpu_device, Cpu};
use adcorre::data::npy::{read_npy, read_npy_f32, NpzFile};
use adcorre::data::{load_dataset, prepare, DatasetName, DatasetType};
use adcorre::detect::{FaceDetector, FaceDetectorConfig, Mtcnn};
use adcorre::infer::preprocess::{decode_image, image_to_chw, images_to_tensor, ImageLimits};

/// A scratch folder of this process (parsers that read paths get their input there).
fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adcorre-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// Writes `data` to `name` in the scratch folder (sub-folders created), returning its path.
fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("scratch sub-folder");
    }
    std::fs::write(&path, data).expect("scratch file");
    path
}

const SPLITS: [DatasetType; 3] = [DatasetType::Train, DatasetType::Eval, DatasetType::Test];

/// Loads every split of `name` from `root`; where samples load, decodes a few of them.
fn load_splits(name: DatasetName, root: &Path) {
    for kind in SPLITS {
        if let Ok(mut dataset) = load_dataset(name, kind, root) {
            dataset.samples.truncate(4);
            let _ = prepare(&dataset, 48, 1, &|_| {});
        }
    }
}

/// A Keras `.h5` model, imported as `adcorre import-keras` and `TestModels::new` do.
pub fn keras_h5(data: &[u8]) {
    let path = scratch_file("model.h5", data);
    let _ = adcorre::import::keras::import_keras::<Cpu>(&path, &cpu_device());
}

/// An adcorre `.mpk` model file.
pub fn model_mpk(data: &[u8]) {
    let _ = adcorre::model::checkpoint::model_from_bytes::<Cpu>(data.to_vec(), &cpu_device());
}

/// A `.npy` array: as a prediction batch (float32/float64) and as prepared images and labels.
pub fn npy(data: &[u8]) {
    let path = scratch_file("array.npy", data);
    let _ = read_npy_f32(&path);
    let _ = read_npy::<u8>(&path);
    let _ = read_npy::<i64>(&path);
}

/// A `.npz` archive: every array read, and the archive tried as MTCNN weights.
pub fn npz(data: &[u8]) {
    let Ok(mut archive) = NpzFile::new(Path::new("fuzz.npz"), Cursor::new(data)) else {
        return;
    };
    for name in archive.names().unwrap_or_default().into_iter().take(16) {
        let _ = archive.array::<f32>(&name);
        let _ = archive.scalar_f64(&name);
    }
    let _ = Mtcnn::<Cpu>::from_npz(&mut archive, &cpu_device());
}

/// The original FER-2013 CSV.
pub fn fer2013_csv(data: &[u8]) {
    load_splits(DatasetName::Fer2013, &scratch_file("fer2013.csv", data));
}

/// FER+'s vote file (`fer2013new.csv`), with the image folders present and empty.
pub fn ferplus_votes(data: &[u8]) {
    let root = scratch_dir().join("ferplus");
    for folder in ["FER2013Train", "FER2013Valid", "FER2013Test"] {
        std::fs::create_dir_all(root.join(folder)).expect("FER+ image folder");
    }
    scratch_file("ferplus/fer2013new.csv", data);
    load_splits(DatasetName::FerPlus, &root);
}

/// RAF-DB's label list (`list_patition_label.txt`).
pub fn rafdb_list(data: &[u8]) {
    scratch_file("rafdb/list_patition_label.txt", data);
    load_splits(DatasetName::RafDb, &scratch_dir().join("rafdb"));
}

/// AffectNet's `training.csv` / `validation.csv` (the same bytes in both).
pub fn affectnet_csv(data: &[u8]) {
    scratch_file("affectnet/training.csv", data);
    scratch_file("affectnet/validation.csv", data);
    load_splits(DatasetName::AffectNet, &scratch_dir().join("affectnet"));
}

/// Limits that keep one fuzz input cheap (the defaults allow 50-megapixel photos).
fn fuzz_limits(max_pixels: u64) -> ImageLimits {
    ImageLimits {
        max_file_bytes: 1 << 20,
        max_pixels,
        max_decoder_bytes: 64 << 20,
    }
}

/// An image file through decoding and the model's preprocessing (RGB and grayscale).
pub fn image_preprocess(data: &[u8]) {
    let Ok(image) = decode_image(data, "fuzz-image", &fuzz_limits(1 << 20)) else {
        return;
    };
    let _ = image_to_chw(&image, 48);
    let _ = images_to_tensor::<Cpu>(std::slice::from_ref(&image), 32, true, &cpu_device());
}

/// An image file through the face detector (MTCNN), as `adcorre faces` reads it.
pub fn face_detector(data: &[u8]) {
    static DETECTOR: std::sync::OnceLock<FaceDetector<Cpu>> = std::sync::OnceLock::new();
    let detector = DETECTOR.get_or_init(|| FaceDetector::new(FaceDetectorConfig::new(), &cpu_device()).expect("shipped MTCNN weights"));
    if let Ok(image) = decode_image(data, "fuzz-photo", &fuzz_limits(96 * 96)) {
        let _ = detector.detect(&image);
    }
}

/// A training config (JSON), parsed, validated and asked for its learning rates.
pub fn train_config(data: &[u8]) {
    let Ok(config) = serde_json::from_slice::<adcorre::train::TrainConfig>(data) else {
        return;
    };
    if config.validate().is_ok() {
        for step in [0, 1, 100, usize::MAX / 2] {
            let _ = config.learning_rate_at(step, 1000);
        }
    }
}
