//! AffectNet (Mollahosseini et al. 2017): `training.csv` / `validation.csv` with columns
//! subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks,
//! expression, valence, arousal; images under `Manually_Annotated_Images/` (or `root`).
//!
//! The face box is cropped. Expressions 0..7 are kept (Train/Eval), 0..6 for Train7/Eval7;
//! 8 None, 9 Uncertain and 10 No-Face are skipped and counted. Splits: Train = training.csv,
//! Eval/Test = validation.csv (AffectNet's test set is not public).

use std::path::{Path, PathBuf};

use super::dataset::{malformed, read_text, split_csv_line, DatasetType, FerDataset, ImageSource, Sample};
use crate::error::{AdCorreError, Result};

const SKIPPED: [&str; 3] = ["none (8)", "uncertain (9)", "no face (10)"];

/// Loads a split; every kept row's image must exist.
pub fn load(root: &Path, kind: DatasetType) -> Result<FerDataset> {
    let file = if kind.is_train() { "training.csv" } else { "validation.csv" };
    let csv = [root.join(file), root.join("Manually_Annotated_file_lists").join(file)]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            AdCorreError::io(
                root.join(file),
                std::io::Error::new(std::io::ErrorKind::NotFound, "AffectNet annotation file not found"),
            )
        })?;
    let images = [root.join("Manually_Annotated_Images"), root.join("Manually_Annotated/Manually_Annotated_Images")]
        .into_iter()
        .find(|p| p.is_dir())
        .unwrap_or_else(|| root.to_path_buf());
    let max_label = if kind.seven_classes() { 6 } else { 7 };
    let mut dataset = FerDataset {
        description: format!("AffectNet {}", csv.display()),
        num_classes: max_label + 1,
        ..Default::default()
    };
    let text = read_text(&csv)?;
    let mut lines = text.lines().enumerate();
    let header = lines.next().map(|(_, h)| split_csv_line(h)).unwrap_or_default();
    let column = |name: &str| {
        header
            .iter()
            .position(|c| c.trim() == name)
            .ok_or_else(|| malformed(&csv, 1, format!("no '{name}' column")))
    };
    let cols = [
        column("subDirectory_filePath")?,
        column("face_x")?,
        column("face_y")?,
        column("face_width")?,
        column("face_height")?,
        column("expression")?,
    ];
    for (index, line) in lines {
        let line_number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields = split_csv_line(line);
        if fields.len() != header.len() {
            return Err(malformed(&csv, line_number, format!("{} fields, expected {}", fields.len(), header.len())));
        }
        let number = |col: usize, what: &str| -> Result<i64> {
            fields[col].trim().parse::<f64>().map(|v| v as i64).map_err(|_| {
                malformed(&csv, line_number, format!("{what} '{}' is not a number", fields[col]))
            })
        };
        let expression = number(cols[5], "expression")?;
        let label = match expression {
            0..=7 if expression as usize <= max_label => expression as usize,
            7 => {
                dataset.skip("contempt (7-class split)");
                continue;
            }
            8..=10 => {
                dataset.skip(SKIPPED[(expression - 8) as usize]);
                continue;
            }
            _ => return Err(malformed(&csv, line_number, format!("unknown expression {expression} (0-10)"))),
        };
        let [x, y, w, h] = [cols[1], cols[2], cols[3], cols[4]].map(|c| number(c, "face box"));
        let (x, y, w, h) = (x?, y?, w?, h?);
        if w <= 0 || h <= 0 {
            dataset.skip("empty face box");
            continue;
        }
        let path: PathBuf = images.join(fields[cols[0]].trim());
        if !path.is_file() {
            return Err(AdCorreError::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("image of {} line {line_number}", csv.display())),
            ));
        }
        dataset.samples.push(Sample {
            image: ImageSource::File {
                path,
                crop: Some([x.max(0) as u32, y.max(0) as u32, w as u32, h as u32]),
            },
            label,
        });
    }
    Ok(dataset)
}
