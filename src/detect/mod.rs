//! Face detection: MTCNN (Zhang et al., "Joint Face Detection and Alignment using Multi-task
//! Cascaded Convolutional Networks", IEEE SPL 2016) with facenet-pytorch's weights, which ship
//! with the crate (MIT licence, `src/detect/weights/LICENSE`), so detection needs no download.
//!
//! The three networks ([`networks`]) run on any Burn backend; the cascade around them (image
//! pyramid, thresholds, box regression, non-maximum suppression, squaring, crops) is plain
//! host code ([`cascade`]) that follows facenet-pytorch's `detect_face` step by step, so the
//! boxes, probabilities and landmarks match that package's. [`align`] turns a detection into
//! the crop a recognition model expects.
//!
//! ```no_run
//! use adcorre::backend::{cpu_device, Cpu};
//! use adcorre::detect::{FaceDetector, FaceDetectorConfig};
//!
//! let detector = FaceDetector::<Cpu>::new(FaceDetectorConfig::new(), &cpu_device())?;
//! for face in detector.detect_file("group.jpg")? {
//!     println!("{:?} p={:.3} eyes at {:?} {:?}", face.bbox, face.probability, face.landmarks[0], face.landmarks[1]);
//! }
//! # Ok::<(), adcorre::AdCorreError>(())
//! ```

pub mod align;
pub mod annotate;
pub mod cascade;
pub mod networks;

use std::path::Path;

use burn::prelude::*;
use image::DynamicImage;
use serde::{Deserialize, Serialize};

use crate::data::npy::NpzFile;
use crate::backend::AdCorreBackend;
use crate::error::AdCorreError;
use crate::infer::host_values;
use cascade::{
    apply_proposal_regression, apply_regression, crop_rectangle, level_size, nms_min, nms_union, proposals,
    pyramid_scales, square, Candidate, RgbPlanes,
};
use networks::{ONet, ONetConfig, PNet, PNetConfig, RNet, RNetConfig};

/// facenet-pytorch 2.6.0's MTCNN weights (P-Net, R-Net, O-Net; 495,850 float32 parameters in
/// PyTorch layouts), MIT licence, copyright 2019 Timothy Esler (`weights/LICENSE`).
const SHIPPED_WEIGHTS: &[u8] = include_bytes!("weights/mtcnn_weights.npz");

/// The three MTCNN networks.
#[derive(Module, Debug)]
pub struct Mtcnn<B: AdCorreBackend> {
    /// Proposal network (image pyramid).
    pub pnet: PNet<B>,
    /// Refinement network (24x24 crops).
    pub rnet: RNet<B>,
    /// Output network (48x48 crops): score, box, landmarks.
    pub onet: ONet<B>,
}

impl<B: AdCorreBackend> Mtcnn<B> {
    /// The networks with the weights that ship with the crate.
    pub fn shipped(device: &B::Device) -> crate::Result<Self> {
        let mut npz = NpzFile::embedded("src/detect/weights/mtcnn_weights.npz", SHIPPED_WEIGHTS)?;
        Self::from_npz(&mut npz, device)
    }

    /// The networks with weights from an `.npz` archive in facenet-pytorch's `state_dict`
    /// names and layouts (`pnet.conv1.weight`, ...).
    pub fn from_npz<R: std::io::Read + std::io::Seek>(npz: &mut NpzFile<R>, device: &B::Device) -> crate::Result<Self> {
        use crate::import::mtcnn::load_network;
        Ok(Self {
            pnet: load_network(PNetConfig::new().init(device), npz, "pnet")?,
            rnet: load_network(RNetConfig::new().init(device), npz, "rnet")?,
            onet: load_network(ONetConfig::new().init(device), npz, "onet")?,
        })
    }
}

/// Settings of the detector; the defaults are facenet-pytorch's (and the original MTCNN's).
#[derive(Config, Debug, PartialEq)]
pub struct FaceDetectorConfig {
    /// Smallest face side to find, in pixels (sets the pyramid's first scale, 12 / this).
    #[config(default = 20.0)]
    pub min_face_size: f64,
    /// Ratio between successive pyramid scales.
    #[config(default = 0.709)]
    pub scale_factor: f64,
    /// Face-probability thresholds of P-Net, R-Net and O-Net.
    #[config(default = "[0.6, 0.7, 0.7]")]
    pub thresholds: [f64; 3],
    /// Largest image accepted, in pixels (P-Net's first pyramid level holds about
    /// `pixels * (12 / min_face_size)^2 * 10` floats): larger images are a typed error.
    #[config(default = 50_000_000)]
    pub max_pixels: usize,
}

impl FaceDetectorConfig {
    /// Checks that the settings describe a detector that can run.
    pub fn validate(&self) -> crate::Result<()> {
        if !(self.min_face_size.is_finite() && self.min_face_size >= 1.0) {
            return Err(AdCorreError::Config(format!("min_face_size must be at least 1, got {}", self.min_face_size)));
        }
        if !(self.scale_factor > 0.05 && self.scale_factor < 0.95) {
            return Err(AdCorreError::Config(format!("scale_factor must be in (0.05, 0.95), got {}", self.scale_factor)));
        }
        if self.thresholds.iter().any(|t| !(0.0..=1.0).contains(t)) {
            return Err(AdCorreError::Config(format!("thresholds must be in [0, 1], got {:?}", self.thresholds)));
        }
        Ok(())
    }
}

/// A face found in an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectedFace {
    /// `[x1, y1, x2, y2]` in image pixels (may reach past the image's edges).
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// O-Net's face probability.
    pub probability: f32,
    /// `[x, y]` of the left eye, right eye, nose, left and right mouth corner (left and right
    /// as seen in the image).
    pub landmarks: [[f32; 2]; 5],
}

/// MTCNN on a backend: [`FaceDetector::detect`] finds every face of an image.
#[derive(Debug)]
pub struct FaceDetector<B: AdCorreBackend> {
    networks: Mtcnn<B>,
    config: FaceDetectorConfig,
    device: B::Device,
}

impl<B: AdCorreBackend> FaceDetector<B> {
    /// A detector with the shipped weights.
    pub fn new(config: FaceDetectorConfig, device: &B::Device) -> crate::Result<Self> {
        Self::with_networks(Mtcnn::shipped(device)?, config, device)
    }

    /// A detector with the given networks.
    pub fn with_networks(networks: Mtcnn<B>, config: FaceDetectorConfig, device: &B::Device) -> crate::Result<Self> {
        config.validate()?;
        Ok(Self { networks, config, device: device.clone() })
    }

    /// The settings.
    pub fn config(&self) -> &FaceDetectorConfig {
        &self.config
    }

    /// The networks.
    pub fn networks(&self) -> &Mtcnn<B> {
        &self.networks
    }

    /// The faces of an image file (see [`FaceDetector::detect`]).
    pub fn detect_file(&self, path: impl AsRef<Path>) -> crate::Result<Vec<DetectedFace>> {
        self.detect(&crate::infer::preprocess::open_image(path.as_ref())?)
    }

    /// The faces of an image (any pixel format; converted to 8-bit RGB first), largest box
    /// first; an image without faces (or smaller than the smallest face) gives an empty list.
    pub fn detect(&self, image: &DynamicImage) -> crate::Result<Vec<DetectedFace>> {
        let (width, height) = (image.width() as usize, image.height() as usize);
        if width * height > self.config.max_pixels {
            return Err(AdCorreError::Shape {
                what: "image for face detection".into(),
                expected: format!("at most {} pixels (FaceDetectorConfig::max_pixels)", self.config.max_pixels),
                got: vec![height, width],
            });
        }
        let planes = RgbPlanes::from_rgb8(&image.to_rgb8());
        let [t1, t2, t3] = self.config.thresholds.map(|t| t as f32);

        // Stage 1: P-Net over the pyramid; suppression within each scale, then across scales.
        let mut candidates = Vec::new();
        for scale in pyramid_scales(width, height, self.config.min_face_size, self.config.scale_factor) {
            let [h, w] = level_size(width, height, scale);
            let mut level = Vec::with_capacity(3 * h * w);
            planes.area_resize_into([0, 0, width, height], [h, w], &mut level);
            let (regression, probability) = self.networks.pnet.forward(self.tensor(level, [1, 3, h, w]));
            let [_, _, oh, ow] = probability.dims();
            let probability = host_values(probability)?;
            let found = proposals(&host_values(regression)?, &probability[oh * ow..], [oh, ow], scale, t1);
            candidates.extend(nms_union(&found, 0.5));
        }
        let boxes: Vec<[f32; 4]> = nms_union(&candidates, 0.7)
            .iter()
            .map(|candidate| square(apply_proposal_regression(candidate)))
            .collect();

        // Stage 2: R-Net on 24x24 crops.
        let (boxes, crops) = self.crops(&planes, &boxes, 24);
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let (regression, probability) = self.networks.rnet.forward(self.tensor(crops, [boxes.len(), 3, 24, 24]));
        let (regression, probability) = (host_values(regression)?, host_values(probability)?);
        let passed: Vec<Candidate> = boxes
            .iter()
            .enumerate()
            .filter(|&(i, _)| probability[2 * i + 1] > t2)
            .map(|(i, &bbox)| Candidate {
                bbox,
                score: probability[2 * i + 1],
                regression: std::array::from_fn(|c| regression[4 * i + c]),
            })
            .collect();
        let boxes: Vec<[f32; 4]> = nms_union(&passed, 0.7)
            .iter()
            .map(|candidate| square(apply_regression(candidate.bbox, candidate.regression)))
            .collect();

        // Stage 3: O-Net on 48x48 crops: score, landmarks, final box; "Min" suppression.
        let (boxes, crops) = self.crops(&planes, &boxes, 48);
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let output = self.networks.onet.forward(self.tensor(crops, [boxes.len(), 3, 48, 48]));
        let regression = host_values(output.regression)?;
        let landmarks = host_values(output.landmarks)?;
        let probability = host_values(output.probabilities)?;
        let mut faces = Vec::new();
        for (i, &bbox) in boxes.iter().enumerate() {
            let score = probability[2 * i + 1];
            if score <= t3 {
                continue;
            }
            let [x1, y1, x2, y2] = bbox;
            let (w, h) = (x2 - x1 + 1.0, y2 - y1 + 1.0);
            let points = &landmarks[10 * i..][..10];
            faces.push(DetectedFace {
                bbox: apply_regression(bbox, std::array::from_fn(|c| regression[4 * i + c])),
                probability: score,
                landmarks: std::array::from_fn(|p| [w * points[p] + x1 - 1.0, h * points[5 + p] + y1 - 1.0]),
            });
        }
        let kept = nms_min(
            &faces.iter().map(|f| f.bbox).collect::<Vec<_>>(),
            &faces.iter().map(|f| f.probability).collect::<Vec<_>>(),
            0.7,
        );
        let mut faces: Vec<DetectedFace> = kept.into_iter().map(|i| faces[i].clone()).collect();
        let area = |f: &DetectedFace| (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]);
        faces.sort_by(|a, b| area(b).total_cmp(&area(a)));
        Ok(faces)
    }

    /// The boxes that overlap the image and their crops, each resized to `side x side`.
    fn crops(&self, planes: &RgbPlanes, boxes: &[[f32; 4]], side: usize) -> (Vec<[f32; 4]>, Vec<f32>) {
        let mut kept = Vec::with_capacity(boxes.len());
        let mut crops = Vec::with_capacity(boxes.len() * 3 * side * side);
        for &bbox in boxes {
            if let Some(rectangle) = crop_rectangle(bbox, planes.width, planes.height) {
                planes.area_resize_into(rectangle, [side, side], &mut crops);
                kept.push(bbox);
            }
        }
        (kept, crops)
    }

    fn tensor(&self, values: Vec<f32>, shape: [usize; 4]) -> Tensor<B, 4> {
        Tensor::from_data(TensorData::new(values, shape), &self.device)
    }
}
