//! Prepared datasets: decoded, cropped and resized once, then loaded much faster than the
//! original files. Two on-disk forms:
//! - packed (default): `images.npy` (n, side, side, channels) uint8, `labels.npy` (n,) int64
//!   and `prepared.json` (sizes, class count, provenance, what was skipped);
//! - the release's layout: `images/<index>.png` and `annotations/<index>_exp.npy` (int64 label).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayImage, RgbImage};
use ndarray::{Array1, Array4};
use ndarray_npy::WriteNpyExt;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::dataset::{FerDataset, ImageSource, Sample};
use super::npy::read_npy;
use crate::atomic_file::write_atomically;
use crate::error::{AdCorreError, Result};

/// Decoded faces of one split, all `side x side x channels` uint8 (HWC, row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedImages {
    /// Side of every image.
    pub side: usize,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// All pixels, image after image.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<usize>,
    /// Number of classes.
    pub num_classes: usize,
    /// Provenance and skip counts.
    pub info: PreparedInfo,
}

/// What `prepared.json` records.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PreparedInfo {
    /// The dataset description of the loader.
    pub source: String,
    /// Entries the loader skipped, by reason.
    pub skipped: BTreeMap<String, usize>,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: String,
    count: usize,
    side: usize,
    channels: usize,
    num_classes: usize,
    info: PreparedInfo,
}

const FORMAT: &str = "adcorre-prepared/1";

impl PackedImages {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of image `index`.
    pub fn image(&self, index: usize) -> &[u8] {
        let size = self.side * self.side * self.channels;
        &self.pixels[index * size..(index + 1) * size]
    }

    /// Writes `images.npy`, `labels.npy` and `prepared.json` into `dir` (each atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|err| AdCorreError::io(dir, err))?;
        let images = Array4::from_shape_vec(
            (self.len(), self.side, self.side, self.channels),
            self.pixels.clone(),
        )
        .map_err(|err| AdCorreError::Config(format!("inconsistent packed images: {err}")))?;
        let labels = Array1::from_iter(self.labels.iter().map(|&l| l as i64));
        write_atomically(&dir.join("images.npy"), &npy_bytes(&images)?)?;
        write_atomically(&dir.join("labels.npy"), &npy_bytes(&labels)?)?;
        let manifest = Manifest {
            format: FORMAT.into(),
            count: self.len(),
            side: self.side,
            channels: self.channels,
            num_classes: self.num_classes,
            info: self.info.clone(),
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("plain data serialises");
        write_atomically(&dir.join("prepared.json"), &json)
    }

    /// Loads what [`PackedImages::save`] wrote.
    pub fn load(dir: &Path) -> Result<Self> {
        let manifest_path = dir.join("prepared.json");
        let manifest: Manifest = serde_json::from_str(
            &std::fs::read_to_string(&manifest_path).map_err(|err| AdCorreError::io(&manifest_path, err))?,
        )
        .map_err(|err| AdCorreError::Config(format!("{}: {err}", manifest_path.display())))?;
        if manifest.format != FORMAT {
            return Err(AdCorreError::Config(format!(
                "{}: format '{}', expected '{FORMAT}'",
                manifest_path.display(),
                manifest.format
            )));
        }
        let images = read_npy::<u8>(&dir.join("images.npy"))?;
        let labels = read_npy::<i64>(&dir.join("labels.npy"))?;
        let expected = [manifest.count, manifest.side, manifest.side, manifest.channels];
        if images.shape() != expected || labels.shape() != [manifest.count] {
            return Err(AdCorreError::Shape {
                what: format!("{}/images.npy", dir.display()),
                expected: format!("{expected:?} as prepared.json says"),
                got: images.shape().to_vec(),
            });
        }
        let labels = labels
            .iter()
            .map(|&label| {
                usize::try_from(label)
                    .ok()
                    .filter(|&l| l < manifest.num_classes)
                    .ok_or(AdCorreError::UnknownLabel { label, num_classes: manifest.num_classes })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            side: manifest.side,
            channels: manifest.channels,
            pixels: images.iter().copied().collect(),
            labels,
            num_classes: manifest.num_classes,
            info: manifest.info,
        })
    }

    /// The images as decoded `DynamicImage`s (grayscale or RGB), for inspection or export.
    pub fn to_image(&self, index: usize) -> DynamicImage {
        let (side, pixels) = (self.side as u32, self.image(index).to_vec());
        if self.channels == 1 {
            DynamicImage::ImageLuma8(GrayImage::from_raw(side, side, pixels).expect("sized"))
        } else {
            DynamicImage::ImageRgb8(RgbImage::from_raw(side, side, pixels).expect("sized"))
        }
    }
}

fn npy_bytes<T: WriteNpyExt>(array: &T) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    array
        .write_npy(&mut bytes)
        .map_err(|err| AdCorreError::Config(format!("cannot encode .npy: {err}")))?;
    Ok(bytes)
}

/// Decodes, crops and resizes every sample of `dataset` to `side x side` (`channels` 1 keeps
/// grayscale, 3 converts to RGB), in parallel. The first image that does not decode is an
/// error naming it. `progress` is called with the number of images done so far.
pub fn prepare(
    dataset: &FerDataset,
    side: usize,
    channels: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<PackedImages> {
    if side == 0 || !(channels == 1 || channels == 3) {
        return Err(AdCorreError::Config(format!(
            "prepared images need a positive side and 1 or 3 channels, got {side} and {channels}"
        )));
    }
    let done = std::sync::atomic::AtomicUsize::new(0);
    let images = dataset
        .samples
        .par_iter()
        .map(|sample| {
            let pixels = decode_resized(&sample.image, side, channels);
            let count = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if count % 256 == 0 || count == dataset.len() {
                progress(count);
            }
            pixels
        })
        .collect::<Result<Vec<Vec<u8>>>>()?;
    Ok(PackedImages {
        side,
        channels,
        pixels: images.concat(),
        labels: dataset.labels(),
        num_classes: dataset.num_classes,
        info: PreparedInfo {
            source: dataset.description.clone(),
            skipped: dataset.skipped.clone(),
        },
    })
}

/// One image decoded and resized (anti-aliased when shrinking) to `side x side x channels`.
pub fn decode_resized(source: &ImageSource, side: usize, channels: usize) -> Result<Vec<u8>> {
    let image = source.load()?;
    let side = side as u32;
    let resize = |w: u32, h: u32| w != side || h != side;
    Ok(if channels == 1 {
        let gray = image.to_luma8();
        if resize(gray.width(), gray.height()) {
            imageops::resize(&gray, side, side, FilterType::Triangle).into_raw()
        } else {
            gray.into_raw()
        }
    } else {
        let rgb = image.to_rgb8();
        if resize(rgb.width(), rgb.height()) {
            imageops::resize(&rgb, side, side, FilterType::Triangle).into_raw()
        } else {
            rgb.into_raw()
        }
    })
}

/// Writes the release's layout: `images/<index>.png` and `annotations/<index>_exp.npy`.
pub fn save_release_layout(packed: &PackedImages, dir: &Path) -> Result<()> {
    let (images, annotations) = (dir.join("images"), dir.join("annotations"));
    for d in [&images, &annotations] {
        std::fs::create_dir_all(d).map_err(|err| AdCorreError::io(d, err))?;
    }
    (0..packed.len()).into_par_iter().try_for_each(|index| {
        let path = images.join(format!("{index}.png"));
        let file = File::create(&path).map_err(|err| AdCorreError::io(&path, err))?;
        packed
            .to_image(index)
            .write_to(&mut BufWriter::new(file), image::ImageFormat::Png)
            .map_err(|err| AdCorreError::Image { path: path.clone(), reason: err.to_string() })?;
        let label = ndarray::arr0(packed.labels[index] as i64);
        write_atomically(&annotations.join(format!("{index}_exp.npy")), &npy_bytes(&label)?)
    })
}

/// Reads the release's layout back as a dataset (images decoded on demand).
pub fn load_release_layout(dir: &Path, num_classes: usize) -> Result<FerDataset> {
    let annotations = dir.join("annotations");
    let mut dataset = FerDataset {
        description: format!("release layout {}", dir.display()),
        num_classes,
        ..Default::default()
    };
    let mut entries: Vec<(usize, std::path::PathBuf)> = std::fs::read_dir(&annotations)
        .map_err(|err| AdCorreError::io(&annotations, err))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let index = name.strip_suffix("_exp.npy")?.parse().ok()?;
            Some((index, p))
        })
        .collect();
    entries.sort();
    for (index, path) in entries {
        let label = read_npy::<i64>(&path)?;
        let label = *label.iter().next().ok_or_else(|| AdCorreError::Shape {
            what: path.display().to_string(),
            expected: "one label".into(),
            got: label.shape().to_vec(),
        })?;
        let label = usize::try_from(label)
            .ok()
            .filter(|&l| l < num_classes)
            .ok_or(AdCorreError::UnknownLabel { label, num_classes })?;
        dataset.samples.push(Sample {
            image: ImageSource::File { path: dir.join("images").join(format!("{index}.png")), crop: None },
            label,
        });
    }
    Ok(dataset)
}
