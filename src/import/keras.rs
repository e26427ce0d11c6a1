//! Import of the authors' Keras 2 HDF5 models (`AffectNet_6336.h5`, `RafDB_8696.h5`,
//! `Fer2013_7203.h5`): whole-model files as written by TF 2.4 and by later tf-keras, and
//! weights-only files.
//!
//! Weights live at `/model_weights/<layer>/<layer>/<weight>:0` (or at the root for weights-only
//! files); each layer group lists its weights in a `weight_names` attribute, and the weights
//! group lists the layers in `layer_names` (fixed- or variable-length strings). The number of
//! heads k and of classes are read from the file. The `Lambda` layers' marshalled Python code is
//! never executed or decoded: they are known to be `tf.math.l2_normalize`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hdf5_pure::{AttrValue, File};

use super::{assign_tensors, NamedTensors};
use crate::backend::AdCorreBackend;
use crate::error::{AdCorreError, Result};
use crate::model::checkpoint::parameter_shapes;
use crate::model::xception::XceptionConfig;
use crate::model::{AdCorreNet, AdCorreNetConfig, ModelCard};

/// Most parameters an imported network may have (2 GB of float32), checked on the shapes the
/// file declares before any weight is read.
pub const MAX_PARAMETERS: u64 = 500_000_000;

/// Keras' BatchNormalization epsilon, the only one this importer accepts.
const KERAS_EPSILON: f64 = 1e-3;

/// Imports a Keras `.h5` Ad-Corre model: the network with the file's weights and a card
/// (k and the class count read from the file, 224x224 RGB input in [0, 1]).
pub fn import_keras<B: AdCorreBackend>(path: &Path, device: &B::Device) -> Result<(AdCorreNet<B>, ModelCard)> {
    let file = KerasFile::open(path)?;
    let config = file.network_config()?;
    config
        .validate()
        .map_err(|err| file.format_error(format!("the architecture its weights describe: {err}")))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let card = ModelCard::new(config.clone())
        .with_input_size(file.input_size().unwrap_or(224))
        .with_source(format!("Keras import of {name}"));
    card.validate()
        .map_err(|err| file.format_error(format!("the model its weights and config describe: {err}")))?;
    let fresh = config.init_lazy::<B>(device);
    let expected: HashMap<String, Vec<usize>> = parameter_shapes(&fresh).into_iter().collect();
    let parameters: u64 = expected.values().map(|shape| shape.iter().map(|&d| d as u64).product::<u64>()).sum();
    if parameters > MAX_PARAMETERS {
        return Err(AdCorreError::LimitExceeded {
            path: path.to_path_buf(),
            what: format!("a network of {parameters} parameters (from the shapes its weights declare)"),
            limit: format!("{MAX_PARAMETERS} parameters"),
            how_to_raise: "adcorre::import::keras::MAX_PARAMETERS; the published Ad-Corre models have about 21 million".into(),
        });
    }
    let tensors = file.tensors(&config, &expected)?;
    let (model, missing) = assign_tensors(fresh, &tensors);
    if let Some(path_in_model) = missing.first() {
        return Err(file.format_error(format!("no weight for parameter {path_in_model}")));
    }
    Ok((model, card))
}

/// How a Keras weight maps onto Burn's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Conv2D kernel `(kh, kw, in, out)` -> `(out, in, kh, kw)`; also pointwise kernels.
    ConvKernel,
    /// Depthwise kernel `(kh, kw, in, 1)` -> `(in, 1, kh, kw)`.
    DepthwiseKernel,
    /// Same layout in both (vectors, Dense kernels `(in, out)`).
    Same,
}

impl Layout {
    /// The Keras shape of a weight whose Burn shape is `burn`.
    fn keras_shape(self, burn: &[usize]) -> Vec<usize> {
        match (self, burn) {
            (Layout::ConvKernel, &[o, i, kh, kw]) => vec![kh, kw, i, o],
            (Layout::DepthwiseKernel, &[c, 1, kh, kw]) => vec![kh, kw, c, 1],
            _ => burn.to_vec(),
        }
    }

    /// Converts Keras-ordered values of Keras shape `keras` to Burn's order.
    fn convert(self, keras: &[usize], values: Vec<f32>) -> Vec<f32> {
        match (self, keras) {
            (Layout::ConvKernel, &[kh, kw, i, o]) | (Layout::DepthwiseKernel, &[kh, kw, i, o]) => {
                // (kh, kw, i, o) -> (o, i, kh, kw); for depthwise o = 1 and the channel is i,
                // giving (1, c, kh, kw), which has the same memory order as (c, 1, kh, kw).
                let mut out = vec![0f32; values.len()];
                for h in 0..kh {
                    for w in 0..kw {
                        for c_in in 0..i {
                            for c_out in 0..o {
                                out[((c_out * i + c_in) * kh + h) * kw + w] =
                                    values[((h * kw + w) * i + c_in) * o + c_out];
                            }
                        }
                    }
                }
                out
            }
            _ => values,
        }
    }
}

struct KerasFile {
    path: PathBuf,
    file: File,
    /// Prefix of the weights group ("model_weights/" for whole-model files, "" otherwise).
    prefix: String,
    layers: Vec<String>,
    model_config: Option<serde_json::Value>,
}

impl KerasFile {
    fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(AdCorreError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        let not_keras = |reason: String| AdCorreError::NotKerasModel {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|err| not_keras(format!("not readable as HDF5 ({err})")))?;
        let root_attrs = file
            .root()
            .attrs()
            .map_err(|err| not_keras(format!("cannot read root attributes ({err})")))?;
        let model_config = match root_attrs.get("model_config").and_then(AttrValue::as_str) {
            Some(json) => Some(
                serde_json::from_str(json)
                    .map_err(|err| not_keras(format!("model_config is not JSON ({err})")))?,
            ),
            None => None,
        };
        let (prefix, layer_attrs) = match file.group("model_weights") {
            Ok(group) => (
                "model_weights/".to_string(),
                group
                    .attrs()
                    .map_err(|err| not_keras(format!("cannot read /model_weights attributes ({err})")))?,
            ),
            Err(_) => (String::new(), root_attrs),
        };
        let layers = layer_attrs
            .get("layer_names")
            .and_then(strings)
            .ok_or_else(|| not_keras("no layer_names attribute (not written by Keras)".into()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            prefix,
            layers,
            model_config,
        })
    }

    fn format_error(&self, reason: String) -> AdCorreError {
        AdCorreError::NotKerasModel {
            path: self.path.clone(),
            reason,
        }
    }

    fn layer_error(&self, layer: &str, problem: String) -> AdCorreError {
        AdCorreError::KerasLayer {
            path: self.path.clone(),
            layer: layer.to_string(),
            problem,
        }
    }

    fn has_layer(&self, layer: &str) -> bool {
        self.layers.iter().any(|l| l == layer)
    }

    /// Layers named `prefix`, `prefix_1`, `prefix_2`, ... in the order of their number
    /// (Keras numbers layers of a kind in creation order).
    fn numbered_layers(&self, prefix: &str) -> Vec<String> {
        let mut numbered: Vec<(usize, String)> = self
            .layers
            .iter()
            .filter_map(|name| {
                let number = if name == prefix {
                    Some(0)
                } else {
                    name.strip_prefix(prefix)?.strip_prefix('_')?.parse::<usize>().ok()
                };
                number.map(|n| (n, name.clone()))
            })
            .collect();
        numbered.sort();
        numbered.into_iter().map(|(_, name)| name).collect()
    }

    /// Architecture from the file: middle blocks, width, k heads of 256, classes.
    fn network_config(&self) -> Result<AdCorreNetConfig> {
        if let Some(config) = &self.model_config {
            self.check_batch_norm_epsilon(config)?;
        }
        let middle_blocks = (5..=12)
            .take_while(|n| self.has_layer(&format!("block{n}_sepconv1")))
            .count();
        let stem = self.weight_shape("block1_conv1", "kernel")?;
        let (in_channels, stem_channels) = match stem.as_slice() {
            &[3, 3, i, o] => (i, o),
            other => {
                return Err(AdCorreError::KerasShape {
                    path: self.path.clone(),
                    weight: "block1_conv1/kernel".into(),
                    expected: vec![3, 3, 3, 32],
                    got: other.to_vec(),
                })
            }
        };
        let heads = self.numbered_layers("dense");
        if heads.is_empty() {
            return Err(self.layer_error("dense", "missing: no embedding heads (dense, dense_1, ...)".into()));
        }
        let head_shape = self.weight_shape(&heads[0], "kernel")?;
        let out_shape = self.weight_shape("out", "kernel")?;
        let (&[_, embedding_dim], &[_, num_classes]) = (head_shape.as_slice(), out_shape.as_slice())
        else {
            return Err(self.layer_error("out", format!("kernel of shape {out_shape:?} is not a Dense kernel")));
        };
        Ok(AdCorreNetConfig::new()
            .with_backbone(
                XceptionConfig::new()
                    .with_in_channels(in_channels)
                    .with_width(stem_channels as f64 / 32.0)
                    .with_middle_blocks(middle_blocks),
            )
            .with_num_heads(heads.len())
            .with_embedding_dim(embedding_dim)
            .with_num_classes(num_classes))
    }

    fn check_batch_norm_epsilon(&self, config: &serde_json::Value) -> Result<()> {
        let layers = config
            .pointer("/config/layers")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        for layer in layers {
            if layer.get("class_name").and_then(|v| v.as_str()) != Some("BatchNormalization") {
                continue;
            }
            let epsilon = layer.pointer("/config/epsilon").and_then(|v| v.as_f64());
            if let Some(epsilon) = epsilon.filter(|e| (e - KERAS_EPSILON).abs() > 1e-12) {
                let name = layer.pointer("/config/name").and_then(|v| v.as_str()).unwrap_or("?");
                return Err(self.layer_error(
                    name,
                    format!("BatchNormalization epsilon {epsilon}, only {KERAS_EPSILON} is supported"),
                ));
            }
        }
        Ok(())
    }

    /// Input side from the model config's input layer, if recorded.
    fn input_size(&self) -> Option<usize> {
        let layers = self.model_config.as_ref()?.pointer("/config/layers")?.as_array()?;
        let input = layers
            .iter()
            .find(|l| l.get("class_name").and_then(|v| v.as_str()) == Some("InputLayer"))?;
        let shape = input.pointer("/config/batch_input_shape")?.as_array()?;
        shape.get(1)?.as_u64().map(|s| s as usize)
    }

    /// Dataset path of weight `name` (e.g. "kernel") of `layer`.
    fn weight_path(&self, layer: &str, name: &str) -> Result<String> {
        if !self.has_layer(layer) {
            return Err(self.layer_error(layer, "missing from the file".into()));
        }
        let group_path = format!("{}{layer}", self.prefix);
        let group = self
            .file
            .group(&group_path)
            .map_err(|err| self.layer_error(layer, format!("no group /{group_path} ({err})")))?;
        let attrs = group
            .attrs()
            .map_err(|err| self.layer_error(layer, format!("cannot read attributes ({err})")))?;
        let listed = attrs.get("weight_names").and_then(strings).unwrap_or_default();
        let found = listed.iter().find(|full| {
            let leaf = full.rsplit('/').next().unwrap_or(full);
            leaf.strip_suffix(":0").unwrap_or(leaf) == name
        });
        Ok(match found {
            Some(full) => format!("{group_path}/{full}"),
            None => format!("{group_path}/{layer}/{name}:0"),
        })
    }

    /// The dataset of weight `name` of `layer`, with its shape.
    fn weight_dataset(&self, layer: &str, name: &str) -> Result<(hdf5_pure::Dataset, Vec<usize>)> {
        let path = self.weight_path(layer, name)?;
        let dataset = self
            .file
            .dataset(&path)
            .map_err(|err| self.layer_error(layer, format!("weight '{name}' missing ({err})")))?;
        let shape = dataset
            .shape()
            .map_err(|err| self.layer_error(layer, format!("weight '{name}' unreadable ({err})")))?;
        Ok((dataset, shape.into_iter().map(|d| d as usize).collect()))
    }

    fn weight_shape(&self, layer: &str, name: &str) -> Result<Vec<usize>> {
        Ok(self.weight_dataset(layer, name)?.1)
    }

    /// Reads weight `name` of `layer`, checking its Keras shape.
    fn weight(&self, layer: &str, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let (dataset, shape) = self.weight_dataset(layer, name)?;
        if shape != expected {
            return Err(AdCorreError::KerasShape {
                path: self.path.clone(),
                weight: format!("{layer}/{name}"),
                expected: expected.to_vec(),
                got: shape,
            });
        }
        dataset
            .read_f32()
            .or_else(|_| dataset.read_f64().map(|v| v.into_iter().map(|x| x as f32).collect()))
            .map_err(|err| self.layer_error(layer, format!("weight '{name}' unreadable ({err})")))
    }

    /// All tensors of the network, by parameter path, in Burn's layout.
    fn tensors(
        &self,
        config: &AdCorreNetConfig,
        expected: &HashMap<String, Vec<usize>>,
    ) -> Result<NamedTensors> {
        let mut collector = Collector {
            file: self,
            expected,
            tensors: NamedTensors::new(),
        };
        for conv in ["block1_conv1", "block1_conv2"] {
            collector.conv_bn(&format!("backbone.{conv}"), conv, &format!("{conv}_bn"))?;
        }
        let shortcuts = self.numbered_layers("conv2d");
        let shortcut_bns = self.numbered_layers("batch_normalization");
        if shortcuts.len() != 4 || shortcut_bns.len() != 4 {
            return Err(self.layer_error(
                "conv2d",
                format!(
                    "expected 4 shortcut convolutions and batch norms (conv2d.., \
                     batch_normalization..), found {} and {}",
                    shortcuts.len(),
                    shortcut_bns.len()
                ),
            ));
        }
        for (index, block) in ["block2", "block3", "block4", "block13"].iter().enumerate() {
            let target = format!("backbone.{block}");
            collector.conv_bn(&format!("{target}.shortcut"), &shortcuts[index], &shortcut_bns[index])?;
            for conv in ["sepconv1", "sepconv2"] {
                collector.separable(&format!("{target}.{conv}"), &format!("{block}_{conv}"))?;
            }
        }
        for middle in 0..config.backbone.middle_blocks {
            for conv in 0..3 {
                collector.separable(
                    &format!("backbone.middle.{middle}.sepconvs.{conv}"),
                    &format!("block{}_sepconv{}", middle + 5, conv + 1),
                )?;
            }
        }
        for conv in ["block14_sepconv1", "block14_sepconv2"] {
            collector.separable(&format!("backbone.{conv}"), conv)?;
        }
        collector.put("classifier.weight", "out", "kernel", Layout::Same)?;
        collector.put("classifier.bias", "out", "bias", Layout::Same)?;
        let mut tensors = collector.tensors;

        // The k heads, stacked: columns [i*dim, (i+1)*dim) of the projection are dense_i.
        let heads = self.numbered_layers("dense");
        let features = config.backbone.out_features();
        let dim = config.embedding_dim;
        let k = heads.len();
        let mut kernel = vec![0f32; features * k * dim];
        let mut bias = Vec::with_capacity(k * dim);
        for (i, head) in heads.iter().enumerate() {
            let head_kernel = self.weight(head, "kernel", &[features, dim])?;
            for row in 0..features {
                kernel[row * k * dim + i * dim..row * k * dim + (i + 1) * dim]
                    .copy_from_slice(&head_kernel[row * dim..(row + 1) * dim]);
            }
            bias.extend(self.weight(head, "bias", &[dim])?);
        }
        tensors.insert("heads.projection.weight".into(), (vec![features, k * dim], kernel));
        tensors.insert("heads.projection.bias".into(), (vec![k * dim], bias));
        Ok(tensors)
    }
}

/// Gathers converted Keras weights under the parameter paths of the Burn network.
struct Collector<'a> {
    file: &'a KerasFile,
    expected: &'a HashMap<String, Vec<usize>>,
    tensors: NamedTensors,
}

impl Collector<'_> {
    /// Reads `layer`'s weight `name` into parameter `target`.
    fn put(&mut self, target: &str, layer: &str, name: &str, layout: Layout) -> Result<()> {
        let burn_shape = self
            .expected
            .get(target)
            .ok_or_else(|| self.file.format_error(format!("internal: no parameter {target}")))?;
        let keras_shape = layout.keras_shape(burn_shape);
        let values = self.file.weight(layer, name, &keras_shape)?;
        self.tensors.insert(
            target.to_string(),
            (burn_shape.clone(), layout.convert(&keras_shape, values)),
        );
        Ok(())
    }

    /// A Keras BatchNormalization into `<target>.bn`.
    fn batch_norm(&mut self, target: &str, layer: &str) -> Result<()> {
        for (ours, theirs) in [
            ("gamma", "gamma"),
            ("beta", "beta"),
            ("running_mean", "moving_mean"),
            ("running_var", "moving_variance"),
        ] {
            self.put(&format!("{target}.bn.{ours}"), layer, theirs, Layout::Same)?;
        }
        Ok(())
    }

    /// A Conv2D and its BatchNormalization into a `ConvBn` at `target`.
    fn conv_bn(&mut self, target: &str, conv: &str, bn: &str) -> Result<()> {
        self.put(&format!("{target}.conv.weight"), conv, "kernel", Layout::ConvKernel)?;
        self.batch_norm(target, bn)
    }

    /// A SeparableConv2D and its `<layer>_bn` into a `SeparableConvBn` at `target`.
    fn separable(&mut self, target: &str, layer: &str) -> Result<()> {
        let depthwise = format!("{target}.depthwise.weight");
        self.put(&depthwise, layer, "depthwise_kernel", Layout::DepthwiseKernel)?;
        let pointwise = format!("{target}.pointwise.weight");
        self.put(&pointwise, layer, "pointwise_kernel", Layout::ConvKernel)?;
        self.batch_norm(target, &format!("{layer}_bn"))
    }
}

/// The strings of a string attribute (fixed- or variable-length, ASCII or UTF-8); an empty
/// numeric array (Keras' `weight_names` of weightless layers) is an empty list.
fn strings(value: &AttrValue) -> Option<Vec<String>> {
    if let Some(strings) = value.as_strings() {
        return Some(
            strings
                .iter()
                .map(|s| s.trim_end_matches('\0').to_string())
                .collect(),
        );
    }
    match value {
        AttrValue::F64Array(v) if v.is_empty() => Some(Vec::new()),
        AttrValue::F32Array(v) if v.is_empty() => Some(Vec::new()),
        _ => None,
    }
}
