//! A generic image folder: `<root>/<class>/*`, class folders named like the expressions
//! (neutral, happy/happiness, sad/sadness, surprise, fear, disgust, anger/angry, contempt;
//! case-insensitive). Optional `train/`, `val/` or `test/` sub-roots select the split.

use std::path::Path;

use super::dataset::{is_image_name, sorted_entries, DatasetType, FerDataset, ImageSource, Sample};
use crate::error::{AdCorreError, Result};

/// The label of a class folder name, if it names an expression.
pub fn label_of_folder(name: &str) -> Option<usize> {
    Some(match name.to_ascii_lowercase().as_str() {
        "neutral" => 0,
        "happy" | "happiness" => 1,
        "sad" | "sadness" => 2,
        "surprise" | "surprised" => 3,
        "fear" | "fearful" => 4,
        "disgust" | "disgusted" => 5,
        "anger" | "angry" => 6,
        "contempt" => 7,
        _ => return None,
    })
}

/// Loads the folder (or its `train/` / `val/` / `test/` part for the split).
pub fn load(root: &Path, kind: DatasetType) -> Result<FerDataset> {
    let candidates: &[&str] = match kind {
        DatasetType::Train | DatasetType::Train7 => &["train", "training"],
        DatasetType::Eval | DatasetType::Eval7 => &["val", "valid", "validation", "eval"],
        DatasetType::Test => &["test"],
    };
    let dir = candidates
        .iter()
        .map(|c| root.join(c))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| root.to_path_buf());
    let mut dataset = FerDataset {
        description: format!("image folder {}", dir.display()),
        ..Default::default()
    };
    let mut max_label = 0;
    for class_dir in sorted_entries(&dir)? {
        let name = class_dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if !class_dir.is_dir() {
            dataset.skip("file outside class folders");
            continue;
        }
        let Some(label) = label_of_folder(&name) else {
            if candidates.contains(&name.as_str()) || ["train", "val", "valid", "test"].contains(&name.as_str()) {
                continue;
            }
            return Err(AdCorreError::Config(format!(
                "{}: class folder '{name}' is not an expression name",
                dir.display()
            )));
        };
        if label == 7 && kind.seven_classes() {
            dataset.skip("contempt (7-class split)");
            continue;
        }
        for file in sorted_entries(&class_dir)? {
            let file_name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if !is_image_name(file_name) {
                dataset.skip("not an image file");
                continue;
            }
            max_label = max_label.max(label);
            dataset.samples.push(Sample { image: ImageSource::File { path: file, crop: None }, label });
        }
    }
    dataset.num_classes = if max_label == 7 { 8 } else { 7 };
    Ok(dataset)
}
