//! FER+ (Barsoum et al. 2016): FER-2013's images relabelled by 10 annotators each, 8 classes.
//!
//! `root` holds `fer2013new.csv` (Usage, Image name, votes for neutral, happiness, surprise,
//! sadness, anger, disgust, fear, contempt, unknown, NF) and the images: either FER+'s
//! generated folders `FER2013Train/`, `FER2013Valid/`, `FER2013Test/` with the named PNGs, or
//! the original `fer2013.csv`, whose rows are FER+'s rows in the same order.
//!
//! The label is the majority vote; ties, and majorities for "unknown" or "not a face", are
//! skipped and counted. Splits: Train = Training, Eval = PublicTest, Test = PrivateTest;
//! Train7/Eval7 also skip Contempt.

use std::path::Path;

use super::dataset::{malformed, read_text, split_csv_line, DatasetType, FerDataset, ImageSource, Sample};
use super::fer2013;
use crate::error::{AdCorreError, Result};

/// FER+'s vote columns mapped to the release's labels (`None` for unknown and NF).
pub const VOTE_LABELS: [Option<usize>; 10] =
    [Some(0), Some(1), Some(3), Some(2), Some(6), Some(5), Some(4), Some(7), None, None];

/// Why a FER+ row has no usable majority label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoMajority {
    /// Two or more columns share the highest count.
    Tie,
    /// The majority says the expression is unknown.
    Unknown,
    /// The majority says the image is not a face.
    NotAFace,
    /// Nobody voted.
    NoVotes,
}

impl NoMajority {
    fn reason(self) -> &'static str {
        match self {
            NoMajority::Tie => "tied vote",
            NoMajority::Unknown => "majority unknown",
            NoMajority::NotAFace => "majority not a face",
            NoMajority::NoVotes => "no votes",
        }
    }
}

/// The majority label of one row's 10 vote counts, in the release's label order.
pub fn majority_label(votes: &[u32; 10]) -> std::result::Result<usize, NoMajority> {
    let best = *votes.iter().max().unwrap_or(&0);
    if best == 0 {
        return Err(NoMajority::NoVotes);
    }
    let winners: Vec<usize> = (0..10).filter(|&i| votes[i] == best).collect();
    if winners.len() > 1 {
        return Err(NoMajority::Tie);
    }
    match winners[0] {
        8 => Err(NoMajority::Unknown),
        9 => Err(NoMajority::NotAFace),
        column => Ok(VOTE_LABELS[column].unwrap_or_default()),
    }
}

/// Loads a split (see the module documentation for the layout).
pub fn load(root: &Path, kind: DatasetType) -> Result<FerDataset> {
    let votes_path = root.join("fer2013new.csv");
    let text = read_text(&votes_path)?;
    let wanted = fer2013::usage(kind);
    let folder = match kind {
        DatasetType::Train | DatasetType::Train7 => "FER2013Train",
        DatasetType::Eval | DatasetType::Eval7 => "FER2013Valid",
        DatasetType::Test => "FER2013Test",
    };
    let image_dir = root.join(folder);
    let pixels_source = if image_dir.is_dir() {
        None
    } else {
        let csv = root.join("fer2013.csv");
        if !csv.is_file() {
            return Err(AdCorreError::Config(format!(
                "{}: FER+ needs its images: a {folder}/ folder or the original fer2013.csv",
                root.display()
            )));
        }
        Some(all_rows(&csv)?)
    };
    let mut dataset = FerDataset {
        description: format!("FER+ {} ({wanted})", root.display()),
        num_classes: if kind.seven_classes() { 7 } else { 8 },
        ..Default::default()
    };
    for (index, line) in text.lines().enumerate().skip(1) {
        let line_number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields = split_csv_line(line);
        if fields.len() != 12 {
            return Err(malformed(&votes_path, line_number, format!("{} fields, expected 12", fields.len())));
        }
        let mut votes = [0u32; 10];
        for (vote, field) in votes.iter_mut().zip(&fields[2..]) {
            *vote = field
                .trim()
                .parse()
                .map_err(|_| malformed(&votes_path, line_number, format!("vote count '{field}' is not a number")))?;
        }
        if fields[0].trim() != wanted {
            dataset.other_split(fields[0].trim());
            continue;
        }
        let label = match majority_label(&votes) {
            Ok(label) => label,
            Err(reason) => {
                dataset.skip(reason.reason());
                continue;
            }
        };
        if label == 7 && kind.seven_classes() {
            dataset.skip("contempt (7-class split)");
            continue;
        }
        let name = fields[1].trim();
        let image = match &pixels_source {
            None if name.is_empty() => {
                dataset.skip("no image name");
                continue;
            }
            None => ImageSource::File { path: image_dir.join(name), crop: None },
            Some(rows) => match rows.get(index - 1) {
                Some(source) => source.clone(),
                None => {
                    return Err(malformed(&votes_path, line_number, "no matching row in fer2013.csv"));
                }
            },
        };
        dataset.samples.push(Sample { image, label });
    }
    Ok(dataset)
}

/// Every row of the original CSV as an image, in file order.
fn all_rows(csv: &Path) -> Result<Vec<ImageSource>> {
    let mut rows = Vec::new();
    let text = read_text(csv)?;
    for (index, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let fields = split_csv_line(line);
        let pixels = fields
            .get(1)
            .ok_or_else(|| "expected emotion,pixels,Usage".to_string())
            .and_then(|p| fer2013::parse_pixels(p))
            .map_err(|reason| malformed(csv, index + 1, reason))?;
        rows.push(ImageSource::Gray {
            width: fer2013::SIDE,
            height: fer2013::SIDE,
            pixels,
        });
    }
    Ok(rows)
}
