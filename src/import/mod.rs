//! Import of weights trained elsewhere (the authors' Keras models, facenet-pytorch's MTCNN),
//! kept apart from the models.
//!
//! ```no_run
//! # #[cfg(feature = "keras")] {
//! use adcorre::backend::{cpu_device, Cpu};
//! use adcorre::import::keras::import_keras;
//! use adcorre::model::save_model;
//!
//! // The authors' AffectNet model (CC BY-NC-ND 4.0: not for commercial use).
//! let (net, card) = import_keras::<Cpu>("AffectNet_6336.h5".as_ref(), &cpu_device())?;
//! save_model(&net, &card, "AffectNet_6336.mpk".as_ref())?;
//! # }
//! # Ok::<(), adcorre::AdCorreError>(())
//! ```

#[cfg(feature = "keras")]
pub mod keras;
pub mod mtcnn;

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;

/// Tensors by parameter path (as [`crate::model::checkpoint::parameter_shapes`] names them),
/// in Burn's layout, ready to be placed into a module.
pub type NamedTensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Replaces every float tensor of `module` by the entry of `tensors` at its path. Returns the
/// module and the paths that had no entry (the caller decides whether that is an error).
pub fn assign_tensors<B: Backend, M: Module<B>>(
    module: M,
    tensors: &NamedTensors,
) -> (M, Vec<String>) {
    let mut assigner = Assigner {
        path: Vec::new(),
        tensors,
        missing: Vec::new(),
    };
    let module = module.map(&mut assigner);
    (module, assigner.missing)
}

struct Assigner<'a> {
    path: Vec<String>,
    tensors: &'a NamedTensors,
    missing: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for Assigner<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let path = self.path.join(".");
        match self.tensors.get(&path) {
            Some((shape, values)) if shape.len() == D => {
                let device = param.lazy_device();
                let shape: [usize; D] = std::array::from_fn(|i| shape[i]);
                let tensor = Tensor::from_data(TensorData::new(values.clone(), shape), &device);
                // Like loading a record: no lazy initialisation is run for a replaced tensor.
                Param::initialized(param.id, tensor.require_grad())
            }
            _ => {
                self.missing.push(path);
                param
            }
        }
    }
}
