//! FER-2013 (ICML 2013 challenge): 48x48 grayscale faces, 7 classes, in either of its two
//! common layouts:
//! - the original CSV, `emotion,pixels,Usage` with `Usage` in Training / PublicTest /
//!   PrivateTest (`root` is the CSV or a folder holding `fer2013.csv`);
//! - the image-folder release, `{train,test}/<class>/<Usage>_<id>.jpg`.
//!
//! Splits: Train/Train7 = Training, Eval/Eval7 = PublicTest, Test = PrivateTest.

use std::path::Path;
use std::sync::Arc;

use super::dataset::{
    is_image_name, malformed, read_text, sorted_entries, split_csv_line, DatasetType, FerDataset,
    ImageSource, Sample,
};
use crate::error::{AdCorreError, Result};

/// FER-2013's emotion codes (0 Angry .. 6 Neutral) in the release's label order.
pub const CODE_TO_LABEL: [usize; 7] = [6, 5, 4, 1, 2, 3, 0];

/// Folder names of the image-folder release with their labels in the release's order.
pub const FOLDER_LABELS: [(&str, usize); 7] = [
    ("angry", 6),
    ("disgust", 5),
    ("fear", 4),
    ("happy", 1),
    ("neutral", 0),
    ("sad", 2),
    ("surprise", 3),
];

/// Side of FER-2013's square images.
pub const SIDE: u32 = 48;

/// The `Usage` value of a split.
pub fn usage(kind: DatasetType) -> &'static str {
    match kind {
        DatasetType::Train | DatasetType::Train7 => "Training",
        DatasetType::Eval | DatasetType::Eval7 => "PublicTest",
        DatasetType::Test => "PrivateTest",
    }
}

/// Loads a split from the CSV or from the folders, whichever `root` holds.
pub fn load(root: &Path, kind: DatasetType) -> Result<FerDataset> {
    if root.is_file() {
        return load_csv(root, kind);
    }
    let csv = root.join("fer2013.csv");
    if csv.is_file() {
        return load_csv(&csv, kind);
    }
    load_folders(root, kind)
}

/// Loads a split of the original CSV.
pub fn load_csv(path: &Path, kind: DatasetType) -> Result<FerDataset> {
    let text = read_text(path)?;
    let mut lines = text.lines().enumerate();
    let (_, header) = lines
        .next()
        .ok_or_else(|| malformed(path, 1, "empty file, expected the header emotion,pixels,Usage"))?;
    let columns = split_csv_line(header);
    let column = |name: &str| {
        columns
            .iter()
            .position(|c| c.trim() == name)
            .ok_or_else(|| malformed(path, 1, format!("no '{name}' column in header '{header}'")))
    };
    let (emotion_col, pixels_col, usage_col) = (column("emotion")?, column("pixels")?, column("Usage")?);
    let wanted = usage(kind);
    let mut dataset = FerDataset {
        description: format!("FER-2013 CSV {} ({wanted})", path.display()),
        num_classes: 7,
        ..Default::default()
    };
    for (index, line) in lines {
        let line_number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields = split_csv_line(line);
        let field = |col: usize| {
            fields
                .get(col)
                .map(|f| f.trim())
                .ok_or_else(|| malformed(path, line_number, format!("{} fields, expected 3", fields.len())))
        };
        let usage_value = field(usage_col)?;
        if !["Training", "PublicTest", "PrivateTest"].contains(&usage_value) {
            return Err(malformed(path, line_number, format!("unknown Usage '{usage_value}'")));
        }
        let code: usize = field(emotion_col)?
            .parse()
            .ok()
            .filter(|&c| c < 7)
            .ok_or_else(|| malformed(path, line_number, format!("unknown emotion code '{}'", fields[emotion_col])))?;
        if usage_value != wanted {
            dataset.other_split(usage_value);
            continue;
        }
        let pixels = parse_pixels(field(pixels_col)?)
            .map_err(|reason| malformed(path, line_number, reason))?;
        dataset.samples.push(Sample {
            image: ImageSource::Gray {
                width: SIDE,
                height: SIDE,
                pixels: pixels.into(),
            },
            label: CODE_TO_LABEL[code],
        });
    }
    Ok(dataset)
}

/// Parses 2,304 space-separated 0-255 values.
pub(crate) fn parse_pixels(text: &str) -> std::result::Result<Arc<[u8]>, String> {
    let pixels = text
        .split_ascii_whitespace()
        .map(|v| v.parse::<u8>().map_err(|_| format!("pixel value '{v}' is not in 0-255")))
        .collect::<std::result::Result<Vec<u8>, String>>()?;
    if pixels.len() != (SIDE * SIDE) as usize {
        return Err(format!("{} pixel values, expected {}", pixels.len(), SIDE * SIDE));
    }
    Ok(pixels.into())
}

/// Loads a split of the image-folder release: files named `<Usage>_<id>.<ext>` under
/// `train/` and `test/`; a file without a Usage prefix counts as Training under `train/` and
/// PublicTest under `test/`.
pub fn load_folders(root: &Path, kind: DatasetType) -> Result<FerDataset> {
    let wanted = usage(kind);
    let mut dataset = FerDataset {
        description: format!("FER-2013 folders {} ({wanted})", root.display()),
        num_classes: 7,
        ..Default::default()
    };
    let mut found_any = false;
    for (split_dir, default_usage) in [("train", "Training"), ("test", "PublicTest")] {
        let dir = root.join(split_dir);
        if !dir.is_dir() {
            continue;
        }
        found_any = true;
        for entry in sorted_entries(&dir)? {
            let Some(class) = entry.file_name().and_then(|n| n.to_str()).map(str::to_ascii_lowercase) else {
                continue;
            };
            if !entry.is_dir() {
                dataset.skip(format!("not a class folder: {split_dir}/{class}"));
                continue;
            }
            let Some(&(_, label)) = FOLDER_LABELS.iter().find(|(name, _)| *name == class) else {
                return Err(AdCorreError::Config(format!(
                    "{}: unknown class folder '{class}' (expected {})",
                    dir.display(),
                    FOLDER_LABELS.map(|(n, _)| n).join(", ")
                )));
            };
            for file in sorted_entries(&entry)? {
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if !is_image_name(name) {
                    dataset.skip("not an image file");
                    continue;
                }
                let file_usage = ["Training", "PublicTest", "PrivateTest"]
                    .into_iter()
                    .find(|u| name.starts_with(&format!("{u}_")))
                    .unwrap_or(default_usage);
                if file_usage == wanted {
                    dataset.samples.push(Sample {
                        image: ImageSource::File { path: file, crop: None },
                        label,
                    });
                } else {
                    dataset.other_split(file_usage);
                }
            }
        }
    }
    if !found_any {
        return Err(AdCorreError::Config(format!(
            "{}: neither fer2013.csv nor train/ or test/ folders found",
            root.display()
        )));
    }
    Ok(dataset)
}
