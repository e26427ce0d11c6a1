//! What every loader produces: labelled samples whose images are decoded on demand, with a
//! count of everything skipped and why (a loader never drops data silently).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{DynamicImage, GrayImage};
use serde::{Deserialize, Serialize};

use crate::error::{AdCorreError, Result};
use crate::infer::preprocess::open_image;

/// The datasets the paper uses, and generic image folders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DatasetName {
    /// AffectNet (Mollahosseini et al.): `training.csv` / `validation.csv` + images.
    AffectNet,
    /// RAF-DB basic: `list_patition_label.txt` + aligned images.
    RafDb,
    /// FER-2013: the original CSV or the image-folder release.
    Fer2013,
    /// FER+ relabelling of FER-2013 (8 classes, majority vote).
    FerPlus,
    /// `<root>/<class name>/*` folders named like the expressions.
    ImageFolder,
}

/// Which part of a dataset, as the release names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DatasetType {
    /// Training split, all classes of the dataset (8 for AffectNet and FER+).
    Train,
    /// Training split, the 7 basic classes (no Contempt).
    Train7,
    /// Evaluation split (AffectNet validation, RAF-DB test, FER-2013 PublicTest), all classes.
    Eval,
    /// Evaluation split, 7 classes.
    Eval7,
    /// Held-out test split where the dataset has one (FER-2013 PrivateTest).
    Test,
}

impl DatasetType {
    /// Whether this is a training split.
    pub fn is_train(self) -> bool {
        matches!(self, DatasetType::Train | DatasetType::Train7)
    }

    /// Whether only the 7 basic classes are kept.
    pub fn seven_classes(self) -> bool {
        matches!(self, DatasetType::Train7 | DatasetType::Eval7)
    }
}

impl DatasetName {
    /// Side and channels to prepare this dataset's images at: FER-2013 and FER+ keep their
    /// native 48x48 grayscale (resized to the network input in the pipeline), the others are
    /// stored as RGB at the network's input size.
    pub fn prepared_format(self, input_size: usize) -> (usize, usize) {
        match self {
            DatasetName::Fer2013 | DatasetName::FerPlus => (48, 1),
            _ => (input_size, 3),
        }
    }
}

impl std::str::FromStr for DatasetName {
    type Err = AdCorreError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace(['-', '_', '+'], "").as_str() {
            "affectnet" => Ok(Self::AffectNet),
            "rafdb" | "raf" => Ok(Self::RafDb),
            "fer2013" | "fer" => Ok(Self::Fer2013),
            "ferplus" | "fer2013plus" => Ok(Self::FerPlus),
            "imagefolder" | "folder" => Ok(Self::ImageFolder),
            _ => Err(AdCorreError::Config(format!(
                "unknown dataset '{s}' (valid: affectnet, rafdb, fer2013, ferplus, imagefolder)"
            ))),
        }
    }
}

impl std::str::FromStr for DatasetType {
    type Err = AdCorreError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Self::Train),
            "train7" => Ok(Self::Train7),
            "eval" | "val" | "validation" => Ok(Self::Eval),
            "eval7" => Ok(Self::Eval7),
            "test" => Ok(Self::Test),
            _ => Err(AdCorreError::Config(format!(
                "unknown split '{s}' (valid: train, train7, eval, eval7, test)"
            ))),
        }
    }
}

/// Where a sample's pixels come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// An image file, optionally cropped to a face box `[x, y, width, height]` (clamped to the
    /// image).
    File {
        /// The image file.
        path: PathBuf,
        /// Face box to crop, in pixels.
        crop: Option<[u32; 4]>,
    },
    /// 8-bit grayscale pixels held in memory (FER-2013's CSV rows).
    Gray {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Row-major pixels.
        pixels: Arc<[u8]>,
    },
}

impl ImageSource {
    /// Decodes (and crops) the image.
    pub fn load(&self) -> Result<DynamicImage> {
        match self {
            ImageSource::File { path, crop } => {
                let image = open_image(path)?;
                Ok(match crop {
                    Some([x, y, w, h]) => {
                        let x = (*x).min(image.width().saturating_sub(1));
                        let y = (*y).min(image.height().saturating_sub(1));
                        let w = (*w).clamp(1, image.width() - x);
                        let h = (*h).clamp(1, image.height() - y);
                        image.crop_imm(x, y, w, h)
                    }
                    None => image,
                })
            }
            ImageSource::Gray {
                width,
                height,
                pixels,
            } => GrayImage::from_raw(*width, *height, pixels.to_vec())
                .map(DynamicImage::ImageLuma8)
                .ok_or_else(|| AdCorreError::Image {
                    path: PathBuf::from("<in-memory pixels>"),
                    reason: format!("{} pixels for {width}x{height}", pixels.len()),
                }),
        }
    }

    /// A short description for error messages and reports.
    pub fn describe(&self) -> String {
        match self {
            ImageSource::File { path, .. } => path.display().to_string(),
            ImageSource::Gray { width, height, .. } => format!("{width}x{height} gray pixels"),
        }
    }
}

/// One labelled face.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The pixels.
    pub image: ImageSource,
    /// Label in the release's order (0 Neutral .. 7 Contempt).
    pub label: usize,
}

/// A loaded dataset split.
#[derive(Debug, Clone, Default)]
pub struct FerDataset {
    /// What was loaded, e.g. "fer2013 folders train".
    pub description: String,
    /// The samples, in file order.
    pub samples: Vec<Sample>,
    /// Number of classes (7 or 8).
    pub num_classes: usize,
    /// Entries not loaded, by reason (e.g. "label 8 (none)" -> count).
    pub skipped: BTreeMap<String, usize>,
    /// Entries passed over because they belong to another split, by split (e.g. "PrivateTest"
    /// -> count): what an empty split's error says the dataset holds instead.
    pub other_splits: BTreeMap<String, usize>,
}

impl FerDataset {
    /// Samples per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for sample in &self.samples {
            counts[sample.label] += 1;
        }
        counts
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Counts one skipped entry under `reason`.
    pub(crate) fn skip(&mut self, reason: impl Into<String>) {
        *self.skipped.entry(reason.into()).or_default() += 1;
    }

    /// Counts one entry of another split.
    pub(crate) fn other_split(&mut self, split: &str) {
        *self.other_splits.entry(split.to_string()).or_default() += 1;
    }

    /// The labels of all samples, in order.
    pub fn labels(&self) -> Vec<usize> {
        self.samples.iter().map(|s| s.label).collect()
    }

    /// A class-balanced subset: at most `per_class` samples of each class, drawn at random
    /// (reproducibly from `seed`) and kept in file order. Classes with fewer samples keep all.
    pub fn class_subset(&self, per_class: usize, seed: u64) -> FerDataset {
        let mut keys: Vec<(u64, usize)> = (0..self.samples.len())
            .map(|index| (crate::data::augment::SplitMix64::for_sample(seed, 0, index as u64).next_u64(), index))
            .collect();
        keys.sort_unstable();
        let mut taken = vec![0usize; self.num_classes];
        let mut chosen: Vec<usize> = keys
            .into_iter()
            .filter_map(|(_, index)| {
                let count = &mut taken[self.samples[index].label];
                (*count < per_class).then(|| {
                    *count += 1;
                    index
                })
            })
            .collect();
        chosen.sort_unstable();
        FerDataset {
            description: format!("{} (at most {per_class} per class, seed {seed})", self.description),
            samples: chosen.into_iter().map(|index| self.samples[index].clone()).collect(),
            num_classes: self.num_classes,
            skipped: self.skipped.clone(),
            other_splits: self.other_splits.clone(),
        }
    }
}

/// Loads a split of a dataset from `root` (see each format's module for the layout expected).
pub fn load_dataset(name: DatasetName, kind: DatasetType, root: &Path) -> Result<FerDataset> {
    if !root.exists() {
        return Err(AdCorreError::io(
            root,
            std::io::Error::new(std::io::ErrorKind::NotFound, "dataset root does not exist"),
        ));
    }
    let dataset = match name {
        DatasetName::Fer2013 => super::fer2013::load(root, kind),
        DatasetName::FerPlus => super::ferplus::load(root, kind),
        DatasetName::RafDb => super::rafdb::load(root, kind),
        DatasetName::AffectNet => super::affectnet::load(root, kind),
        DatasetName::ImageFolder => super::image_folder::load(root, kind),
    }?;
    if dataset.samples.is_empty() {
        let counts = |map: &BTreeMap<String, usize>, what: &str| {
            map.iter().map(|(key, n)| format!("{n} {what}{key}")).collect::<Vec<_>>()
        };
        let mut held = counts(&dataset.other_splits, "");
        held.extend(counts(&dataset.skipped, "skipped: "));
        let holds = match held.len() {
            0 => "nothing of any split was found there".to_string(),
            1..=8 => format!("it holds {}", held.join(", ")),
            n => format!("it holds {}, ... ({n} kinds)", held[..8].join(", ")),
        };
        return Err(AdCorreError::EmptySplit {
            dataset: dataset.description,
            split: format!("{kind:?}"),
            holds,
        });
    }
    Ok(dataset)
}

/// Splits one CSV line into fields, honouring double quotes (`"a,b"` is one field, `""` an
/// escaped quote).
pub(crate) fn split_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.trim_end_matches(['\r', '\n']).chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// A malformed line of a text file, as an error naming the file and line.
pub(crate) fn malformed(path: &Path, line: usize, reason: impl std::fmt::Display) -> AdCorreError {
    AdCorreError::MalformedLine {
        path: path.to_path_buf(),
        line,
        reason: reason.to_string(),
    }
}

/// Reads a text file, with the path in the error.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|err| AdCorreError::io(path, err))
}

/// Entries of a directory, sorted by name.
pub(crate) fn sorted_entries(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|err| AdCorreError::io(dir, err))?
        .map(|entry| entry.map(|e| e.path()).map_err(|err| AdCorreError::io(dir, err)))
        .collect::<Result<Vec<_>>>()?;
    entries.sort();
    Ok(entries)
}

/// Whether a file name has a common image extension.
pub(crate) fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}
