//! Saving and loading a network together with everything needed to use it right: its
//! architecture, the input size and value range it expects, and its class order.

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use serde::{Deserialize, Serialize};

use super::adcorre_net::{network_with_defaults, AdCorreNet, AdCorreNetConfig, AdCorreNetRecord, TestTimeViews};
use crate::atomic_file::write_atomically;
use crate::backend::AdCorreBackend;
use crate::data::Expression;
use crate::detect::align::FaceCrop;
use crate::error::{AdCorreError, Result};
use crate::model::xception::MIN_INPUT_SIZE;

/// Identifies the file format; bumped on incompatible changes.
pub const MODEL_FORMAT: &str = "adcorre-model/1";

/// What a saved model carries besides its weights (like timm's per-checkpoint config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// The architecture, enough to rebuild the network.
    #[serde(deserialize_with = "network_with_defaults")]
    pub network: AdCorreNetConfig,
    /// Side of the square input images, in pixels (224 for the published models).
    pub input_size: usize,
    /// Range of the input values (the release feeds [0, 1]).
    pub value_range: [f32; 2],
    /// Channel order of the input ("RGB").
    pub channel_order: String,
    /// Trained on grayscale faces (FER-2013): colour input is converted to luma, replicated to
    /// the three channels, before it is fed.
    #[serde(default)]
    pub grayscale: bool,
    /// Predictions average the image's and its mirror image's probabilities (test-time flip;
    /// twice the compute).
    #[serde(default)]
    pub test_time_flip: bool,
    /// Predictions also average the centred crop of this fraction of the side, resized back
    /// (and its mirror image with the flip): twice the compute again. `None`: no crop.
    #[serde(default)]
    pub test_time_crop: Option<f32>,
    /// How a detected face becomes this model's input (the crop it was trained on), for
    /// [`crate::infer::TestModels::recognize_faces`].
    #[serde(default)]
    pub face_crop: FaceCrop,
    /// Class names in label order.
    pub class_names: Vec<String>,
    /// Where the weights came from (training run, imported file, ...), free text.
    pub source: String,
}

impl ModelCard {
    /// A card with the release's conventions: 224x224 RGB in [0, 1], the release's class order.
    pub fn new(network: AdCorreNetConfig) -> Self {
        let class_names = (0..network.num_classes)
            .map(|label| match Expression::from_label(label) {
                Some(expression) => expression.name().to_string(),
                None => format!("class_{label}"),
            })
            .collect();
        Self {
            network,
            input_size: 224,
            value_range: [0.0, 1.0],
            channel_order: "RGB".to_string(),
            grayscale: false,
            test_time_flip: false,
            test_time_crop: None,
            face_crop: FaceCrop::default(),
            class_names,
            source: String::new(),
        }
    }

    /// Sets the input size.
    pub fn with_input_size(mut self, input_size: usize) -> Self {
        self.input_size = input_size;
        self
    }

    /// Marks the model as trained on grayscale input.
    pub fn with_grayscale(mut self, grayscale: bool) -> Self {
        self.grayscale = grayscale;
        self
    }

    /// Sets whether predictions use the test-time flip.
    pub fn with_test_time_flip(mut self, test_time_flip: bool) -> Self {
        self.test_time_flip = test_time_flip;
        self
    }

    /// Sets the centred crop predictions also average (`None`: none).
    pub fn with_test_time_crop(mut self, test_time_crop: Option<f32>) -> Self {
        self.test_time_crop = test_time_crop;
        self
    }

    /// The views predictions average, as the card says.
    pub fn test_time_views(&self) -> TestTimeViews {
        TestTimeViews { flip: self.test_time_flip, crop: self.test_time_crop }
    }

    /// Sets the face crop the model expects.
    pub fn with_face_crop(mut self, face_crop: FaceCrop) -> Self {
        self.face_crop = face_crop;
        self
    }

    /// Sets the provenance text.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Checks that the card describes a usable model (architecture, sizes, class names).
    pub fn validate(&self) -> Result<()> {
        self.network.validate()?;
        self.face_crop.validate()?;
        if !(MIN_INPUT_SIZE..=MAX_INPUT_SIZE).contains(&self.input_size) {
            return Err(AdCorreError::Config(format!(
                "input_size {} is outside {MIN_INPUT_SIZE}..={MAX_INPUT_SIZE}",
                self.input_size
            )));
        }
        if let Some(fraction) = self.test_time_crop {
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Err(AdCorreError::Config(format!("test_time_crop {fraction} is not in (0, 1]")));
            }
        }
        let [low, high] = self.value_range;
        if !(low.is_finite() && high.is_finite() && low < high) {
            return Err(AdCorreError::Config(format!("value_range [{low}, {high}] is not an interval")));
        }
        if self.class_names.len() != self.network.num_classes {
            return Err(AdCorreError::Config(format!(
                "{} class names for {} classes",
                self.class_names.len(),
                self.network.num_classes
            )));
        }
        Ok(())
    }
}

/// Largest input side a model card may ask for (images are resized to it before recognition).
pub const MAX_INPUT_SIZE: usize = 4096;

/// The serialised form: format tag, card as JSON, weights.
type FileRecord<B> = (String, String, AdCorreNetRecord<B>);

type ModelRecorder = NamedMpkBytesRecorder<FullPrecisionSettings>;

/// Serialises a network and its card to bytes (named MessagePack, f32).
pub fn model_to_bytes<B: AdCorreBackend>(model: &AdCorreNet<B>, card: &ModelCard) -> Result<Vec<u8>> {
    card.validate()?;
    let expected = parameter_shapes(&card.network.init_lazy::<B>(&model.devices()[0]));
    if parameter_shapes(model) != expected {
        return Err(AdCorreError::Config(
            "the network does not match its card's architecture (a network with folded batch \
             norm cannot be saved: save the original)"
                .into(),
        ));
    }
    let card_json = serde_json::to_string(card)
        .map_err(|err| AdCorreError::Config(format!("cannot serialise model card: {err}")))?;
    let record: FileRecord<B> = (MODEL_FORMAT.to_string(), card_json, model.clone().into_record());
    Recorder::<B>::record(&ModelRecorder::default(), record, ())
        .map_err(|err| AdCorreError::Config(format!("cannot serialise model: {err}")))
}

/// Saves a network and its card to `path` (conventionally `.mpk`), atomically.
pub fn save_model<B: AdCorreBackend>(model: &AdCorreNet<B>, card: &ModelCard, path: &Path) -> Result<()> {
    write_atomically(path, &model_to_bytes(model, card)?)
}

/// Loads a network saved by [`save_model`] from `path`; needs nothing but the file.
pub fn load_model<B: AdCorreBackend>(path: &Path, device: &B::Device) -> Result<(AdCorreNet<B>, ModelCard)> {
    let bytes = std::fs::read(path).map_err(|err| AdCorreError::io(path, err))?;
    model_from_bytes(bytes, device).map_err(|reason| AdCorreError::InvalidModelFile {
        path: path.to_path_buf(),
        reason,
    })
}

/// Decodes a named-MessagePack record (model or optimizer state) after
/// [`super::record_check`] has walked it; the error is the reason in words, the decoder's first
/// line only (Burn appends advice about old record formats that does not apply here).
pub(crate) fn decode_record<B: Backend, R: burn::record::Record<B>>(
    bytes: Vec<u8>,
    device: &B::Device,
) -> std::result::Result<R, String> {
    use burn::record::RecorderError;
    super::record_check::check_record(&bytes).map_err(|reason| format!("cannot decode: {reason}"))?;
    Recorder::<B>::load(&ModelRecorder::default(), bytes, device).map_err(|err| {
        let message = match err {
            RecorderError::FileNotFound(message)
            | RecorderError::DeserializeError(message)
            | RecorderError::Unknown(message) => message,
        };
        format!("cannot decode: {}", super::record_check::describe_failure(message.lines().next().unwrap_or_default().trim()))
    })
}

/// Decodes a network from the bytes of [`model_to_bytes`]; the error is the reason in words.
pub fn model_from_bytes<B: AdCorreBackend>(
    bytes: Vec<u8>,
    device: &B::Device,
) -> std::result::Result<(AdCorreNet<B>, ModelCard), String> {
    let (format, card_json, record): FileRecord<B> = decode_record(bytes, device)?;
    if format != MODEL_FORMAT {
        return Err(format!("format '{format}', expected '{MODEL_FORMAT}'"));
    }
    let card = parse_card(&card_json)?;
    card.validate().map_err(|err| err.to_string())?;
    let fresh = card.network.init_lazy::<B>(device);
    let expected = parameter_shapes(&fresh);
    let model = fresh.load_record(record);
    let found = parameter_shapes(&model);
    if expected.len() != found.len() {
        return Err(format!(
            "{} tensors stored, the architecture in the card has {}",
            found.len(),
            expected.len()
        ));
    }
    for ((name, want), (_, got)) in expected.iter().zip(&found) {
        if want != got {
            return Err(format!("tensor {name} has shape {got:?}, the card's architecture needs {want:?}"));
        }
    }
    Ok((model, card))
}

/// Reads a card (architecture fields missing from files written before they existed take
/// their defaults, see [`network_with_defaults`]).
fn parse_card(json: &str) -> std::result::Result<ModelCard, String> {
    serde_json::from_str(json).map_err(|err| format!("bad model card: {err}"))
}

/// The number of values in the network's tensors, trainable and running statistics alike
/// (Keras' "Total params").
pub fn parameter_count<B: AdCorreBackend>(model: &AdCorreNet<B>) -> usize {
    parameter_shapes(model)
        .iter()
        .map(|(_, shape)| shape.iter().product::<usize>())
        .sum()
}

/// Every float tensor of a module with its path, without forcing lazy initialisation.
pub fn parameter_shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    let mut collector = ShapeCollector {
        path: Vec::new(),
        shapes: Vec::new(),
    };
    module.visit(&mut collector);
    collector.shapes
}

struct ShapeCollector {
    path: Vec<String>,
    shapes: Vec<(String, Vec<usize>)>,
}

impl<B: Backend> ModuleVisitor<B> for ShapeCollector {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.shapes
            .push((self.path.join("."), param.lazy_shape().dims::<D>().to_vec()));
    }

    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
}
