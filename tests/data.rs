//! Dataset loaders on the real FER-2013 / FER+ data and on generated RAF-DB / AffectNet
//! trees; preparation round trips; the input pipeline.
#![cfg(feature = "train")]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use adcorre::backend::{cpu_device, Cpu};
use adcorre::data::ferplus::{majority_label, NoMajority};
use adcorre::data::pipeline::{face_loader, FaceDataset, FaceDatasetConfig};
use adcorre::data::prepared::{load_release_layout, save_release_layout};
use adcorre::data::{load_dataset, prepare, DatasetName, DatasetType, PackedImages};
use adcorre::infer::preprocess::image_to_chw;
use adcorre::AdCorreError;
use burn::data::dataset::Dataset;
use image::{Rgb, RgbImage};
use rayon::prelude::*;

const FER: &str = "../shared/data/fer2013";
const FER_CSV: &str = "../shared/data/fer2013_sample.csv";

fn no_progress(_: usize) {}

#[test]
fn fer2013_folders_have_the_documented_counts() {
    let train = load_dataset(DatasetName::Fer2013, DatasetType::Train, Path::new(FER)).unwrap();
    // Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger (angry 3995, disgust 436, fear 4097,
    // happy 7215, neutral 4965, sad 4830, surprise 3171).
    assert_eq!(train.class_counts(), vec![4965, 7215, 4830, 3171, 4097, 436, 3995]);
    assert_eq!(train.len(), 28_709);
    assert!(train.skipped.is_empty(), "{:?}", train.skipped);
    let test = load_dataset(DatasetName::Fer2013, DatasetType::Eval, Path::new(FER)).unwrap();
    assert_eq!(test.class_counts(), vec![607, 895, 653, 415, 496, 56, 467]);
    assert_eq!(test.len(), 3_589);
    // The PrivateTest split is not in the shared copy: an error saying what is there instead.
    let err = load_dataset(DatasetName::Fer2013, DatasetType::Test, Path::new(FER)).unwrap_err();
    assert!(err.to_string().ends_with("the Test split is empty; it holds 3589 PublicTest, 28709 Training"), "{err}");
}

#[test]
fn fer2013_csv_sample_has_1000_training_and_400_public_test_rows() {
    let train = load_dataset(DatasetName::Fer2013, DatasetType::Train, Path::new(FER_CSV)).unwrap();
    assert_eq!(train.len(), 1000);
    // Codes 0..6 (Angry..Neutral) counted 159, 26, 149, 226, 148, 100, 192 in the file.
    assert_eq!(train.class_counts(), vec![192, 226, 148, 100, 149, 26, 159]);
    let test = load_dataset(DatasetName::Fer2013, DatasetType::Eval, Path::new(FER_CSV)).unwrap();
    assert_eq!(test.len(), 400);
}

/// Each of the first CSV rows is found among the folder images (JPEG re-encodings of the same
/// pixels) and carries the same label there: both loaders map labels alike.
#[test]
fn fer2013_csv_and_folder_loaders_agree_on_labels() {
    let csv = load_dataset(DatasetName::Fer2013, DatasetType::Train, Path::new(FER_CSV)).unwrap();
    let folders = load_dataset(DatasetName::Fer2013, DatasetType::Train, Path::new(FER)).unwrap();
    let decoded: Vec<Vec<u8>> = folders
        .samples
        .par_iter()
        .map(|s| s.image.load().unwrap().to_luma8().into_raw())
        .collect();
    let mut matched = 0;
    for row in csv.samples.iter().take(12) {
        let pixels = row.image.load().unwrap().to_luma8().into_raw();
        let distance = |other: &Vec<u8>| -> f64 {
            let sum: f64 = pixels.iter().zip(other).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
            (sum / pixels.len() as f64).sqrt()
        };
        let (best, rms) = decoded
            .par_iter()
            .enumerate()
            .map(|(i, other)| (i, distance(other)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        // JPEG re-encoding is about 1.75/255 RMS away; other faces are tens away.
        if rms < 6.0 {
            matched += 1;
            assert_eq!(folders.samples[best].label, row.label, "row pixels matched {:?}", folders.samples[best].image);
        }
    }
    assert!(matched >= 10, "only {matched} of 12 CSV rows found among the folder images");
}

#[test]
fn fer2013_csv_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fer2013.csv");
    let good = format!("3,{},Training", vec!["7"; 2304].join(" "));
    std::fs::write(&path, format!("emotion,pixels,Usage\n{good}\n3,1 2 3,Training\n")).unwrap();
    let err = load_dataset(DatasetName::Fer2013, DatasetType::Train, &path).unwrap_err();
    assert!(matches!(err, AdCorreError::MalformedLine { line: 3, .. }), "{err}");
    std::fs::write(&path, format!("emotion,pixels,Usage\n{good}\n9,{},Training\n", vec!["7"; 2304].join(" "))).unwrap();
    let err = load_dataset(DatasetName::Fer2013, DatasetType::Train, &path).unwrap_err();
    assert!(matches!(err, AdCorreError::MalformedLine { line: 3, ref reason, .. } if reason.contains("emotion")), "{err}");
}

#[test]
fn ferplus_majority_votes_on_hand_checked_rows() {
    // Rows of fer2013new.csv: neutral, happiness, surprise, sadness, anger, disgust, fear,
    // contempt, unknown, NF.
    assert_eq!(majority_label(&[4, 0, 0, 1, 3, 2, 0, 0, 0, 0]), Ok(0)); // row 0: Neutral
    assert_eq!(majority_label(&[4, 0, 0, 4, 1, 0, 0, 0, 1, 0]), Err(NoMajority::Tie)); // row 3
    assert_eq!(majority_label(&[2, 0, 0, 8, 0, 0, 0, 0, 0, 0]), Ok(2)); // row 6: Sad
    assert_eq!(majority_label(&[0, 10, 0, 0, 0, 0, 0, 0, 0, 0]), Ok(1)); // row 7: Happy
    assert_eq!(majority_label(&[0, 0, 6, 0, 0, 0, 4, 0, 0, 0]), Ok(3)); // row 9: Surprise
    assert_eq!(majority_label(&[2, 0, 0, 0, 8, 0, 0, 0, 0, 0]), Ok(6)); // row 10: Anger
    assert_eq!(majority_label(&[3, 0, 0, 1, 0, 1, 0, 5, 0, 0]), Ok(7)); // row 496: Contempt
    assert_eq!(majority_label(&[0, 0, 2, 0, 2, 1, 0, 0, 5, 0]), Err(NoMajority::Unknown)); // row 1119
    assert_eq!(majority_label(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 10]), Err(NoMajority::NotAFace)); // row 17
}

#[test]
fn ferplus_loader_pairs_votes_with_image_files() {
    let dir = tempfile::tempdir().unwrap();
    let votes = std::fs::read_to_string("../shared/data/ferplus/fer2013new.csv").unwrap();
    let head: Vec<&str> = votes.lines().take(21).collect();
    std::fs::write(dir.path().join("fer2013new.csv"), head.join("\n")).unwrap();
    let images = dir.path().join("FER2013Train");
    std::fs::create_dir(&images).unwrap();
    for line in &head[1..] {
        let name = line.split(',').nth(1).unwrap();
        if !name.is_empty() {
            RgbImage::from_pixel(48, 48, Rgb([9, 9, 9])).save(images.join(name)).unwrap();
        }
    }
    let train = load_dataset(DatasetName::FerPlus, DatasetType::Train, dir.path()).unwrap();
    let skipped: usize = train.skipped.values().sum();
    assert_eq!(train.len() + skipped, 20, "every row is loaded or counted");
    assert_eq!(train.samples[0].label, 0);
    assert_eq!(train.skipped.get("tied vote"), Some(&1));
    assert_eq!(train.skipped.get("majority not a face"), Some(&1), "row 17 of the file");
    assert_eq!(train.num_classes, 8);
    train.samples[0].image.load().unwrap();
}

fn write_image(path: &Path, value: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_fn(20, 16, |x, _| Rgb([value, (x * 10) as u8, 0])).save(path).unwrap();
}

fn raf_tree(list: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("EmoLabel")).unwrap();
    std::fs::write(dir.path().join("EmoLabel/list_patition_label.txt"), list).unwrap();
    for name in ["train_00001", "train_00002", "test_0001"] {
        write_image(&dir.path().join(format!("Image/aligned/{name}_aligned.jpg")), 100);
    }
    dir
}

#[test]
fn rafdb_maps_labels_and_splits() {
    let dir = raf_tree("train_00001.jpg 1\ntrain_00002.jpg 7\ntest_0001.jpg 4\n");
    let train = load_dataset(DatasetName::RafDb, DatasetType::Train, dir.path()).unwrap();
    assert_eq!(train.labels(), vec![3, 0], "1 = Surprise, 7 = Neutral");
    let test = load_dataset(DatasetName::RafDb, DatasetType::Eval, dir.path()).unwrap();
    assert_eq!(test.labels(), vec![1], "4 = Happiness");
    assert_eq!(test.samples[0].image.load().unwrap().width(), 20);
}

#[test]
fn rafdb_bad_lines_are_errors() {
    let dir = raf_tree("train_00001.jpg 1\ntrain_00002.jpg 8\n");
    let err = load_dataset(DatasetName::RafDb, DatasetType::Train, dir.path()).unwrap_err();
    assert!(matches!(err, AdCorreError::MalformedLine { line: 2, .. }), "{err}");
    let dir = raf_tree("train_00001.jpg\n");
    let err = load_dataset(DatasetName::RafDb, DatasetType::Train, dir.path()).unwrap_err();
    assert!(matches!(err, AdCorreError::MalformedLine { line: 1, .. }), "{err}");
    let dir = raf_tree("train_09999.jpg 2\n");
    let err = load_dataset(DatasetName::RafDb, DatasetType::Train, dir.path()).unwrap_err();
    assert!(matches!(err, AdCorreError::Io { .. }), "{err}");
}

const AFFECTNET_HEADER: &str =
    "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal";

fn affectnet_tree(rows: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut text = vec![AFFECTNET_HEADER.to_string()];
    text.extend(rows.iter().map(|r| r.to_string()));
    std::fs::write(dir.path().join("training.csv"), text.join("\n")).unwrap();
    for i in 0..6 {
        write_image(&dir.path().join(format!("Manually_Annotated_Images/1/{i}.jpg")), 40 * i as u8);
    }
    dir
}

#[test]
fn affectnet_crops_faces_and_counts_what_it_drops() {
    let dir = affectnet_tree(&[
        "1/0.jpg,2,3,10,8,\"1.0;2.0;3.0\",1,0.5,0.2",
        "1/1.jpg,0,0,20,16,1;2,7,0.1,0.1",
        "1/2.jpg,0,0,20,16,1;2,8,0,0",
        "1/3.jpg,0,0,20,16,1;2,9,0,0",
        "1/4.jpg,0,0,20,16,1;2,10,-2,-2",
        "1/5.jpg,0,0,20,16,1;2,3,0,0",
    ]);
    let train = load_dataset(DatasetName::AffectNet, DatasetType::Train, dir.path()).unwrap();
    assert_eq!(train.labels(), vec![1, 7, 3]);
    assert_eq!(train.num_classes, 8);
    let face = train.samples[0].image.load().unwrap();
    assert_eq!((face.width(), face.height()), (10, 8), "face box cropped");
    for reason in ["none (8)", "uncertain (9)", "no face (10)"] {
        assert_eq!(train.skipped.get(reason), Some(&1), "{reason}");
    }
    let train7 = load_dataset(DatasetName::AffectNet, DatasetType::Train7, dir.path()).unwrap();
    assert_eq!(train7.labels(), vec![1, 3]);
    assert_eq!(train7.skipped.get("contempt (7-class split)"), Some(&1));
}

#[test]
fn affectnet_malformed_rows_are_errors() {
    let dir = affectnet_tree(&["1/0.jpg,2,3,10,8,x,1,0,0", "1/1.jpg,0,0,20,16,x,12,0,0"]);
    let err = load_dataset(DatasetName::AffectNet, DatasetType::Train, dir.path()).unwrap_err();
    assert!(matches!(err, AdCorreError::MalformedLine { line: 3, .. }), "{err}");
    let dir = affectnet_tree(&["1/0.jpg,2,3,10,8,x,1,0"]);
    let err = load_dataset(DatasetName::AffectNet, DatasetType::Train, dir.path()).unwrap_err();
    assert!(matches!(err, AdCorreError::MalformedLine { line: 2, .. }), "{err}");
    let dir = affectnet_tree(&["1/missing.jpg,2,3,10,8,x,1,0,0"]);
    let err = load_dataset(DatasetName::AffectNet, DatasetType::Train, dir.path()).unwrap_err();
    assert!(matches!(err, AdCorreError::Io { .. }), "{err}");
}

#[test]
fn image_folders_and_undecodable_images() {
    let dir = tempfile::tempdir().unwrap();
    write_image(&dir.path().join("Happy/a.png"), 1);
    write_image(&dir.path().join("angry/b.png"), 2);
    std::fs::write(dir.path().join("angry/notes.txt"), "x").unwrap();
    std::fs::write(dir.path().join("angry/broken.jpg"), "not a jpeg").unwrap();
    let data = load_dataset(DatasetName::ImageFolder, DatasetType::Train, dir.path()).unwrap();
    assert_eq!(data.labels(), vec![1, 6, 6], "folders in name order: Happy, angry");
    assert_eq!(data.skipped.get("not an image file"), Some(&1));
    let err = prepare(&data, 8, 3, &no_progress).unwrap_err();
    assert!(matches!(err, AdCorreError::Image { ref path, .. } if path.ends_with("broken.jpg")), "{err}");
    std::fs::create_dir(dir.path().join("bored")).unwrap();
    let err = load_dataset(DatasetName::ImageFolder, DatasetType::Train, dir.path()).unwrap_err();
    assert!(matches!(err, AdCorreError::Config(_)), "{err}");
}

fn fer_eval_subset(n: usize) -> adcorre::data::FerDataset {
    let mut data = load_dataset(DatasetName::Fer2013, DatasetType::Eval, Path::new(FER)).unwrap();
    data.samples.truncate(n);
    data
}

#[test]
fn prepared_data_round_trips() {
    let data = fer_eval_subset(40);
    let packed = prepare(&data, 48, 1, &no_progress).unwrap();
    assert_eq!(packed.len(), 40);
    // 48x48 grayscale is stored as decoded, without resampling.
    assert_eq!(packed.image(0), data.samples[0].image.load().unwrap().to_luma8().as_raw().as_slice());
    let dir = tempfile::tempdir().unwrap();
    packed.save(dir.path()).unwrap();
    assert_eq!(PackedImages::load(dir.path()).unwrap(), packed);

    let release: PathBuf = dir.path().join("release");
    save_release_layout(&packed, &release).unwrap();
    let reloaded = load_release_layout(&release, 7).unwrap();
    assert_eq!(reloaded.labels(), packed.labels);
    let again = prepare(&reloaded, 48, 1, &no_progress).unwrap();
    assert_eq!(again.pixels, packed.pixels);

    std::fs::write(dir.path().join("labels.npy"), b"garbage").unwrap();
    assert!(PackedImages::load(dir.path()).is_err());
}

#[test]
fn pipeline_batches_are_reproducible_and_eval_matches_inference_preprocessing() {
    let packed = Arc::new(prepare(&fer_eval_subset(24), 48, 1, &no_progress).unwrap());
    let device = cpu_device();
    let batches = |seed: u64, workers: usize| -> Vec<(Vec<f32>, Vec<usize>)> {
        let dataset = FaceDataset::new(packed.clone(), FaceDatasetConfig::train(64, seed));
        dataset.set_epoch(3);
        face_loader::<Cpu>(dataset, 10, workers, &device)
            .iter()
            .map(|b| (b.images.into_data().to_vec::<f32>().unwrap(), b.labels))
            .collect()
    };
    let first = batches(7, 0);
    assert_eq!(first.len(), 3);
    assert_eq!(first[0].0.len(), 10 * 3 * 64 * 64);
    assert!(first.iter().flat_map(|b| &b.0).all(|v| (0.0..=1.0).contains(v)));
    let mut first_batches = first.clone();
    let mut threaded = batches(7, 2);
    first_batches.sort_by(|a, b| a.1.cmp(&b.1));
    threaded.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(first_batches, threaded, "same seed, same batches, with or without workers");
    assert_ne!(first, batches(8, 0), "another seed changes order or augmentation");

    let eval = FaceDataset::new(packed.clone(), FaceDatasetConfig::eval(64));
    let item = eval.get(5).unwrap();
    assert_eq!(item.label, packed.labels[5]);
    assert_eq!(item.pixels, image_to_chw(&packed.to_image(5), 64));
}

#[test]
fn class_balanced_sampling_evens_out_classes() {
    let data = load_dataset(DatasetName::Fer2013, DatasetType::Eval, Path::new(FER)).unwrap();
    // Disgust is 56 of 3589 images (1.6%).
    let packed = PackedImages {
        side: 1,
        channels: 1,
        pixels: vec![0; data.len()],
        labels: data.labels(),
        num_classes: 7,
        info: Default::default(),
    };
    let mut config = FaceDatasetConfig::train(1, 3);
    config.class_balanced = true;
    let dataset = FaceDataset::new(Arc::new(packed), config);
    let mut counts = [0usize; 7];
    for label in dataset.labels() {
        counts[label] += 1;
    }
    for count in counts {
        let share = count as f64 / data.len() as f64;
        assert!((share - 1.0 / 7.0).abs() < 0.03, "class share {share} in {counts:?}");
    }
}

#[test]
fn class_subsets_are_balanced_reproducible_and_in_file_order() {
    let root = Path::new("../shared/data/fer2013");
    let full = load_dataset(DatasetName::Fer2013, DatasetType::Train, root).unwrap();
    let subset = full.class_subset(400, 1);
    // Disgust has 436 training images, every class at least 400.
    assert_eq!(subset.class_counts(), vec![400; 7]);
    let position = |s: &adcorre::data::Sample| full.samples.iter().position(|f| f == s).unwrap();
    let positions: Vec<usize> = subset.samples.iter().map(position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "not in file order");
    assert_eq!(subset.samples, full.class_subset(400, 1).samples, "same seed, other subset");
    assert_ne!(subset.samples, full.class_subset(400, 2).samples, "the seed is ignored");
    // Classes with fewer images keep all of them (Disgust is label 5).
    assert_eq!(full.class_subset(500, 1).class_counts(), vec![500, 500, 500, 500, 500, 436, 500]);
}
