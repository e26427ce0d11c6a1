//! Import of facenet-pytorch's MTCNN weights (PyTorch `state_dict` layouts, as arrays of an
//! `.npz` archive named `pnet.conv1.weight`, `rnet.dense4.bias`, `onet.prelu5.weight`, ...)
//! into the [`crate::detect`] networks.

use std::io::{Read, Seek};

use burn::module::Module;
use burn::prelude::*;

use super::{assign_tensors, NamedTensors};
use crate::data::npy::NpzFile;
use crate::error::{AdCorreError, Result};

/// The tensors of network `net` ("pnet", "rnet" or "onet") in Burn's layout, by parameter path:
/// PReLU slopes (`weight` in PyTorch) become `alpha`, dense weights `[out, in]` are transposed
/// to Burn's `[in, out]`; convolutions keep PyTorch's `[out, in, kh, kw]`.
pub fn network_tensors<R: Read + Seek>(npz: &mut NpzFile<R>, net: &str) -> Result<NamedTensors> {
    let prefix = format!("{net}.");
    let mut tensors = NamedTensors::new();
    for name in npz.names()? {
        let Some(path) = name.strip_prefix(&prefix) else { continue };
        let array = npz.array::<f32>(&name)?;
        let shape = array.shape().to_vec();
        let values: Vec<f32> = array.iter().copied().collect();
        let (path, shape, values) = match (path.split_once('.'), shape.as_slice()) {
            (Some((layer, "weight")), _) if layer.starts_with("prelu") => (format!("{layer}.alpha"), shape, values),
            (Some((layer, "weight")), &[out, inputs]) if layer.starts_with("dense") => {
                let transposed = (0..inputs * out).map(|i| values[(i % out) * inputs + i / out]).collect();
                (path.to_string(), vec![inputs, out], transposed)
            }
            _ => (path.to_string(), shape, values),
        };
        tensors.insert(path, (shape, values));
    }
    Ok(tensors)
}

/// Places the tensors of `net` from `npz` into `module`; every parameter of the module must be
/// found with the shape the module has.
pub fn load_network<B: Backend, M: Module<B>, R: Read + Seek>(module: M, npz: &mut NpzFile<R>, net: &str) -> Result<M> {
    let tensors = network_tensors(npz, net)?;
    let expected = crate::model::checkpoint::parameter_shapes(&module);
    for (path, shape) in &expected {
        match tensors.get(path) {
            Some((found, _)) if found == shape => {}
            found => {
                return Err(AdCorreError::Shape {
                    what: format!("MTCNN weight {net}.{path}"),
                    expected: format!("{shape:?}"),
                    got: found.map(|(found, _)| found.clone()).unwrap_or_default(),
                })
            }
        }
    }
    let (module, missing) = assign_tensors(module, &tensors);
    debug_assert!(missing.is_empty(), "checked above: {missing:?}");
    Ok(module)
}
