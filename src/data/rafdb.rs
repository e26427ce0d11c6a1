//! RAF-DB basic (Li et al. 2017): `EmoLabel/list_patition_label.txt` (or `list_patition_label.txt` directly in `root`)
//! with lines `train_00001.jpg 5`, labels 1..7 = Surprise, Fear, Disgust, Happiness, Sadness,
//! Anger, Neutral; aligned images `Image/aligned/train_00001_aligned.jpg`.
//!
//! Splits: Train/Train7 = `train_*`, Eval/Eval7/Test = `test_*` (RAF-DB has no other split).

use std::path::{Path, PathBuf};

use super::dataset::{malformed, read_text, DatasetType, FerDataset, ImageSource, Sample};
use crate::error::{AdCorreError, Result};

/// RAF-DB's labels 1..=7 in the release's order.
pub const RAF_TO_LABEL: [usize; 7] = [3, 4, 5, 1, 2, 6, 0];

/// Loads a split; every listed image must exist.
pub fn load(root: &Path, kind: DatasetType) -> Result<FerDataset> {
    let list = [
        root.join("EmoLabel/list_patition_label.txt"),
        root.join("list_patition_label.txt"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .ok_or_else(|| {
        AdCorreError::io(
            root.join("EmoLabel/list_patition_label.txt"),
            std::io::Error::new(std::io::ErrorKind::NotFound, "RAF-DB label list not found"),
        )
    })?;
    let prefix = if kind.is_train() { "train_" } else { "test_" };
    let mut dataset = FerDataset {
        description: format!("RAF-DB {} ({})", root.display(), prefix.trim_end_matches('_')),
        num_classes: 7,
        ..Default::default()
    };
    for (index, line) in read_text(&list)?.lines().enumerate() {
        let line_number = index + 1;
        let mut parts = line.split_whitespace();
        let (Some(name), Some(label), None) = (parts.next(), parts.next(), parts.next()) else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(malformed(&list, line_number, "expected '<image name> <label 1-7>'"));
        };
        let label: usize = label
            .parse()
            .ok()
            .filter(|l| (1..=7).contains(l))
            .ok_or_else(|| malformed(&list, line_number, format!("unknown label '{label}' (RAF-DB labels are 1-7)")))?;
        if !name.starts_with(prefix) {
            dataset.other_split(name.split('_').next().unwrap_or_default());
            continue;
        }
        let path = image_path(root, name).ok_or_else(|| {
            AdCorreError::io(
                root.join("Image/aligned").join(aligned_name(name)),
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("image for {name} (line {line_number}) not found")),
            )
        })?;
        dataset.samples.push(Sample {
            image: ImageSource::File { path, crop: None },
            label: RAF_TO_LABEL[label - 1],
        });
    }
    Ok(dataset)
}

/// `train_00001.jpg` -> `train_00001_aligned.jpg`.
fn aligned_name(name: &str) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}_aligned.{ext}"),
        None => format!("{name}_aligned"),
    }
}

/// The aligned image if present, else the original.
fn image_path(root: &Path, name: &str) -> Option<PathBuf> {
    let aligned = aligned_name(name);
    [
        root.join("Image/aligned").join(&aligned),
        root.join("aligned").join(&aligned),
        root.join("Image/original").join(name),
        root.join("original").join(name),
        root.join(name),
    ]
    .into_iter()
    .find(|p| p.is_file())
}
