//! Recognising expressions with a trained model: [`TestModels`] (the release's name) and its
//! [`Recognition`] results.

pub mod preprocess;

use std::path::Path;

use burn::prelude::*;
use image::DynamicImage;
use serde::{Deserialize, Serialize};

use crate::backend::{cpu_device, AdCorreBackend, Cpu};
use crate::data::Expression;
use crate::error::{AdCorreError, Result};
use crate::detect::align::FaceCrop;
use crate::detect::{DetectedFace, FaceDetector, FaceDetectorConfig};
use crate::model::{load_model, AdCorreNet, ModelCard};
use preprocess::{images_to_tensor, open_image_limited, ImageLimits};

/// The probability of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassProbability {
    /// Class name (e.g. "Happy").
    pub name: String,
    /// Softmax probability.
    pub probability: f32,
}

/// What the model recognised in one face image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recognition {
    /// Name of the most probable class.
    pub expression: String,
    /// Label index of the most probable class.
    pub label: usize,
    /// Every class with its probability, in the model's class order (they sum to 1).
    pub probabilities: Vec<ClassProbability>,
    /// The k L2-normalised embeddings, `k x dim`.
    pub embeddings: Vec<Vec<f32>>,
}

impl Recognition {
    /// The recognised expression, for models with the standard 7 or 8 classes.
    pub fn expression(&self) -> Option<Expression> {
        Expression::from_label(self.label).filter(|e| e.name() == self.expression)
    }

    /// Probability of the recognised class.
    pub fn confidence(&self) -> f32 {
        self.probabilities[self.label].probability
    }

    /// The JSON object `adcorre predict --json` and `adcorre serve` report: `expression`,
    /// `label`, `probabilities` by class name in the model's class order, and the `embeddings`
    /// when asked.
    pub fn to_json(&self, with_embeddings: bool) -> serde_json::Map<String, serde_json::Value> {
        let mut object = serde_json::Map::new();
        object.insert("expression".into(), serde_json::json!(self.expression));
        object.insert("label".into(), serde_json::json!(self.label));
        let probabilities = self
            .probabilities
            .iter()
            .map(|c| (c.name.clone(), serde_json::json!(c.probability)))
            .collect();
        object.insert("probabilities".into(), serde_json::Value::Object(probabilities));
        if with_embeddings {
            object.insert("embeddings".into(), serde_json::json!(self.embeddings));
        }
        object
    }
}

/// A trained Ad-Corre model ready to recognise expressions (the release's `TestModels`).
///
/// On the default CPU backend (flex) the backbone runs as one pass over host memory
/// (`adcorre::backend::host_xception`), which keeps up to 256 MiB of scratch between calls for the
/// next one (`host_xception::release_scratch()` frees it).
///
/// `TestModels` is `Send + Sync`: share one in an `Arc` across threads. Nothing serialises
/// recognitions: a pass that finds the kept scratch in use allocates its own, and the matrix
/// products of all passes share rayon's thread pool; only the first face detection creates the
/// detector, once (`tests/reliability.rs` checks 8 threads x 200 recognitions against one).
///
/// ```no_run
/// use adcorre::infer::TestModels;
/// let models = TestModels::new("AffectNet_6336.mpk")?;
/// let recognition = models.recognize_fer("face.jpg")?;
/// println!("{} ({:.2})", recognition.expression, recognition.confidence());
/// # Ok::<(), adcorre::AdCorreError>(())
/// ```
pub struct TestModels<B: AdCorreBackend = Cpu> {
    model: AdCorreNet<B>,
    card: ModelCard,
    device: B::Device,
    batch_size: usize,
    image_limits: ImageLimits,
    face_detector: std::sync::OnceLock<FaceDetector<B>>,
}

/// One face of a photo: where the detector found it, and what the model recognised in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceRecognition {
    /// Box, probability and landmarks of the face.
    pub face: DetectedFace,
    /// The expression recognised in the face's crop.
    pub recognition: Recognition,
}

impl FaceRecognition {
    /// The JSON object of one face in `adcorre predict --faces --json` and `adcorre serve`:
    /// the detection's fields (`box`, `probability`, `landmarks`) and the recognition's
    /// ([`Recognition::to_json`]).
    pub fn to_json(&self, with_embeddings: bool) -> serde_json::Map<String, serde_json::Value> {
        let mut object = match serde_json::to_value(&self.face) {
            Ok(serde_json::Value::Object(fields)) => fields,
            _ => serde_json::Map::new(),
        };
        object.extend(self.recognition.to_json(with_embeddings));
        object
    }
}

/// The expression model that ships with the crate (feature `shipped-model`): a narrow
/// Xception trained here on FER-2013's 28,709 training faces, 48x48 grayscale, with the
/// Ad-Corre loss; its card and measured accuracy are in `models/README.md`.
#[cfg(feature = "shipped-model")]
pub const SHIPPED_MODEL: &[u8] = include_bytes!("../../models/fer2013_xception_cpu.mpk");

impl TestModels<Cpu> {
    /// Loads a model file (`.mpk`, or a Keras `.h5` with the `keras` feature) on the default
    /// CPU backend.
    pub fn new(path: impl AsRef<Path>) -> Result<Self> {
        Self::load(path, &cpu_device())
    }

    /// The model that ships with the crate ([`SHIPPED_MODEL`]) on the default CPU backend:
    /// recognition with no file to download.
    ///
    /// ```
    /// let models = adcorre::infer::TestModels::shipped()?;
    /// assert_eq!(models.card().input_size, 48);
    /// # Ok::<(), adcorre::AdCorreError>(())
    /// ```
    #[cfg(feature = "shipped-model")]
    pub fn shipped() -> Result<Self> {
        Self::load_shipped(&cpu_device())
    }
}

impl<B: AdCorreBackend> TestModels<B> {
    /// Loads a model file on `device`: an adcorre `.mpk`, or (feature `keras`) a Keras `.h5`,
    /// recognised by its HDF5 signature.
    pub fn load(path: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let (model, card) = load_network(path.as_ref(), device)?;
        Ok(Self::from_model(model, card, device))
    }

    /// The model that ships with the crate ([`SHIPPED_MODEL`]) on `device`.
    #[cfg(feature = "shipped-model")]
    pub fn load_shipped(device: &B::Device) -> Result<Self> {
        let (model, card) = crate::model::checkpoint::model_from_bytes(SHIPPED_MODEL.to_vec(), device).map_err(|reason| {
            AdCorreError::InvalidModelFile { path: "models/fer2013_xception_cpu.mpk (built in)".into(), reason }
        })?;
        Ok(Self::from_model(model, card, device))
    }

    /// Wraps a network already in memory, folding its batch normalisation for inference.
    pub fn from_model(model: AdCorreNet<B>, card: ModelCard, device: &B::Device) -> Self {
        Self {
            model: model.fold_batch_norm(),
            card,
            device: device.clone(),
            batch_size: 8,
            image_limits: ImageLimits::default(),
            face_detector: std::sync::OnceLock::new(),
        }
    }

    /// Uses `detector` for [`TestModels::recognize_faces`] (default: MTCNN with the reference
    /// settings, created on first use).
    pub fn with_face_detector(self, detector: FaceDetector<B>) -> Self {
        let face_detector = std::sync::OnceLock::new();
        let _ = face_detector.set(detector);
        Self { face_detector, ..self }
    }

    /// The face detector of [`TestModels::recognize_faces`].
    pub fn face_detector(&self) -> Result<&FaceDetector<B>> {
        if let Some(detector) = self.face_detector.get() {
            return Ok(detector);
        }
        let detector = FaceDetector::new(FaceDetectorConfig::new(), &self.device)?;
        Ok(self.face_detector.get_or_init(|| detector))
    }

    /// Sets how many images go through the network at once (default 8).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Sets the limits on decoding image files (default [`ImageLimits::default`]: 64 MiB files,
    /// 50 megapixels, 1 GiB of decoder memory).
    pub fn with_image_limits(mut self, limits: ImageLimits) -> Self {
        self.image_limits = limits;
        self
    }

    /// The model's card (architecture, input size, class names).
    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    /// The network (batch normalisation folded: for inference only).
    pub fn model(&self) -> &AdCorreNet<B> {
        &self.model
    }

    /// The limits images are decoded within.
    pub fn image_limits(&self) -> &ImageLimits {
        &self.image_limits
    }

    /// Recognises the expression in an image file.
    pub fn recognize_fer(&self, path: impl AsRef<Path>) -> Result<Recognition> {
        let image = open_image_limited(path.as_ref(), &self.image_limits)?;
        self.recognize_image(&image)
    }

    /// Recognises the expression in a decoded image.
    pub fn recognize_image(&self, image: &DynamicImage) -> Result<Recognition> {
        let mut results = self.recognize_batch(std::slice::from_ref(image))?;
        Ok(results.remove(0))
    }

    /// Recognises a batch of decoded images, in order.
    pub fn recognize_batch(&self, images: &[DynamicImage]) -> Result<Vec<Recognition>> {
        let mut results = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.batch_size) {
            let tensor = images_to_tensor::<B>(chunk, self.card.input_size, self.card.grayscale, &self.device);
            results.extend(self.recognize_tensor(tensor)?);
        }
        Ok(results)
    }

    /// Finds every face of a photo and recognises each one's expression (largest face first;
    /// none found: an empty list). Each face is cropped as the model card says
    /// ([`ModelCard::face_crop`]); all faces of the photo go through the network as one batch.
    /// [`TestModels::recognize_fer`] keeps the release's meaning: the whole image as one face.
    pub fn recognize_faces(&self, path: impl AsRef<Path>) -> Result<Vec<FaceRecognition>> {
        self.recognize_faces_in_image(&open_image_limited(path.as_ref(), &self.image_limits)?)
    }

    /// [`TestModels::recognize_faces`] on a decoded image.
    pub fn recognize_faces_in_image(&self, image: &DynamicImage) -> Result<Vec<FaceRecognition>> {
        let faces = self.face_detector()?.detect(image)?;
        self.recognize_detected(image, &faces)
    }

    /// [`TestModels::recognize_faces`] on several decoded images, in order.
    pub fn recognize_faces_in_images(&self, images: &[DynamicImage]) -> Result<Vec<Vec<FaceRecognition>>> {
        images.iter().map(|image| self.recognize_faces_in_image(image)).collect()
    }

    /// Recognises faces found elsewhere (your own detector, or detections kept from an earlier
    /// call, so nothing is detected twice): each is cropped as the model card says.
    pub fn recognize_detected(&self, image: &DynamicImage, faces: &[DetectedFace]) -> Result<Vec<FaceRecognition>> {
        if faces.is_empty() {
            return Ok(Vec::new());
        }
        let rgb = image.to_rgb8();
        let size = self.card.input_size;
        let crops: Vec<DynamicImage> = faces
            .iter()
            .map(|face| DynamicImage::ImageRgb8(self.card.face_crop.crop(&rgb, face, size)))
            .collect();
        let tensor = images_to_tensor::<B>(&crops, size, self.card.grayscale, &self.device);
        let recognitions = self.recognize_tensor(tensor)?;
        Ok(faces
            .iter()
            .cloned()
            .zip(recognitions)
            .map(|(face, recognition)| FaceRecognition { face, recognition })
            .collect())
    }

    /// Recognises the faces in your own boxes `[x1, y1, x2, y2]` (image pixels), cropped as the
    /// model card's box crop says. A model that expects aligned crops needs landmarks: use
    /// [`TestModels::recognize_detected`].
    pub fn recognize_boxes(&self, image: &DynamicImage, boxes: &[[f32; 4]]) -> Result<Vec<FaceRecognition>> {
        if let FaceCrop::Aligned { .. } = self.card.face_crop {
            return Err(AdCorreError::Config(
                "this model expects aligned face crops, which need landmarks: pass DetectedFace values to recognize_detected".into(),
            ));
        }
        if let Some(bad) = boxes.iter().find(|b| !b.iter().all(|v| v.is_finite()) || b[2] <= b[0] || b[3] <= b[1]) {
            return Err(AdCorreError::Config(format!("face box {bad:?} is not [x1, y1, x2, y2] with x2 > x1 and y2 > y1")));
        }
        let faces: Vec<DetectedFace> = boxes
            .iter()
            .map(|&bbox| {
                let [x1, y1, x2, y2] = bbox;
                let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
                DetectedFace { bbox, probability: 1.0, landmarks: [[cx, cy]; 5] }
            })
            .collect();
        self.recognize_detected(image, &faces)
    }

    /// Recognises image files, in order; the first unreadable file is an error naming it.
    pub fn recognize_files<P: AsRef<Path>>(&self, paths: &[P]) -> Result<Vec<Recognition>> {
        let mut results = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(self.batch_size) {
            let images = chunk
                .iter()
                .map(|p| open_image_limited(p.as_ref(), &self.image_limits))
                .collect::<Result<Vec<_>>>()?;
            results.extend(self.recognize_batch(&images)?);
        }
        Ok(results)
    }

    /// Recognises a prepared batch `[n, 3, h, w]` of RGB values in the card's value range
    /// (`[0, 1]` for every model made here). A NaN, an infinity or a value outside that range
    /// (beyond a rounding margin of 1e-4 of the range) is an [`AdCorreError::InvalidInput`]
    /// naming the first such value, not a prediction.
    pub fn recognize_tensor(&self, images: Tensor<B, 4>) -> Result<Vec<Recognition>> {
        self.model.check_input(images.dims())?;
        self.check_values(&images)?;
        let out = self.model.forward_test_time(images, self.card.test_time_views());
        let [batch, classes] = out.logits.dims();
        let [k, _, dim] = out.embeddings.dims();
        let probabilities = host_values(out.probabilities())?;
        let embeddings = host_values(out.embeddings)?;
        Ok((0..batch)
            .map(|item| {
                let row = &probabilities[item * classes..(item + 1) * classes];
                let label = row
                    .iter()
                    .enumerate()
                    .fold(0, |best, (i, p)| if *p > row[best] { i } else { best });
                Recognition {
                    expression: self.card.class_names[label].clone(),
                    label,
                    probabilities: self
                        .card
                        .class_names
                        .iter()
                        .zip(row)
                        .map(|(name, &probability)| ClassProbability {
                            name: name.clone(),
                            probability,
                        })
                        .collect(),
                    embeddings: (0..k)
                        .map(|head| {
                            let start = (head * batch + item) * dim;
                            embeddings[start..start + dim].to_vec()
                        })
                        .collect(),
                }
            })
            .collect())
    }
}

impl<B: AdCorreBackend> TestModels<B> {
    /// Refuses NaN, infinite and out-of-range input values (element-wise comparisons and one sum
    /// on the device; the host copy is made only to name the first bad value).
    fn check_values(&self, images: &Tensor<B, 4>) -> Result<()> {
        let [low, high] = self.card.value_range;
        let margin = 1e-4 * (high - low).abs();
        let (low, high) = (low - margin, high + margin);
        let outside = images
            .clone()
            .is_nan()
            .bool_or(images.clone().lower_elem(low))
            .bool_or(images.clone().greater_elem(high));
        if outside.int().sum().into_scalar().to_i64() == 0 {
            return Ok(());
        }
        let [_, channels, height, width] = images.dims();
        let values = images.to_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
        let (index, value) = values
            .iter()
            .enumerate()
            .find(|(_, v)| !(low..=high).contains(*v))
            .map(|(i, v)| (i, *v))
            .unwrap_or((0, f32::NAN));
        let plane = height * width;
        Err(AdCorreError::InvalidInput {
            what: "input batch".into(),
            reason: format!(
                "image {}, channel {}, row {}, column {} is {value}; the model takes finite values in [{}, {}] \
                 (its card's value_range)",
                index / (channels * plane),
                index / plane % channels,
                index % plane / width,
                index % width,
                self.card.value_range[0],
                self.card.value_range[1],
            ),
        })
    }
}

/// A network output on the host, every value finite (else a typed error).
pub(crate) fn host_values<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<Vec<f32>> {
    let values = tensor
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|err| AdCorreError::NonFinite(format!("network output unreadable: {err:?}")))?;
    if values.iter().all(|v| v.is_finite()) {
        Ok(values)
    } else {
        Err(AdCorreError::NonFinite("network output".into()))
    }
}

/// Reads a model file, `.mpk` or (feature `keras`) Keras `.h5` recognised by its HDF5
/// signature, as stored (batch normalisation not folded): for saving, fine-tuning or timing.
pub fn load_network<B: AdCorreBackend>(path: &Path, device: &B::Device) -> Result<(AdCorreNet<B>, ModelCard)> {
    if is_hdf5(path)? {
        load_keras(path, device)
    } else {
        load_model::<B>(path, device)
    }
}

/// Whether a file starts with the HDF5 signature.
fn is_hdf5(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut signature = [0u8; 8];
    let mut file = std::fs::File::open(path).map_err(|err| AdCorreError::io(path, err))?;
    let read = file.read(&mut signature).map_err(|err| AdCorreError::io(path, err))?;
    Ok(read == 8 && signature == *b"\x89HDF\r\n\x1a\n")
}

#[cfg(feature = "keras")]
fn load_keras<B: AdCorreBackend>(path: &Path, device: &B::Device) -> Result<(AdCorreNet<B>, ModelCard)> {
    crate::import::keras::import_keras(path, device)
}

#[cfg(not(feature = "keras"))]
fn load_keras<B: AdCorreBackend>(path: &Path, _device: &B::Device) -> Result<(AdCorreNet<B>, ModelCard)> {
    Err(AdCorreError::NotKerasModel {
        path: path.to_path_buf(),
        reason: "this build cannot read Keras files: enable the `keras` feature, or convert \
                 with `adcorre import-keras`"
            .into(),
    })
}
