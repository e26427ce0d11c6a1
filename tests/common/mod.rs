//! Helpers shared by the integration tests.
#![allow(dead_code)]

use burn::prelude::*;

/// A tensor's values as a flat `Vec<f32>`.
pub fn values<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A deterministic pseudo-random image batch in [0, 1] (no dependence on backend RNGs).
pub fn test_images<B: Backend>(shape: [usize; 4], seed: u64, device: &B::Device) -> Tensor<B, 4> {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32) / ((1u64 << 24) as f32)
        })
        .collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// Gives a freshly initialised network non-trivial batch-norm statistics and larger conv
/// weights, so that its outputs depend clearly on its input (Burn's default initialisation
/// shrinks the signal through Xception's 36 convolutions). Deterministic for a seed.
pub fn calibrate<B: Backend, M: burn::module::Module<B>>(module: M, seed: u64) -> M {
    let mut mapper = Calibrator {
        path: Vec::new(),
        state: seed,
    };
    module.map(&mut mapper)
}

struct Calibrator {
    path: Vec<String>,
    state: u64,
}

impl Calibrator {
    fn uniform(&mut self, low: f32, high: f32) -> f32 {
        self.state = self
            .state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        low + (high - low) * ((self.state >> 40) as f32) / ((1u64 << 24) as f32)
    }
}

impl<B: Backend> burn::module::ModuleMapper<B> for Calibrator {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<B, D>>,
    ) -> burn::module::Param<Tensor<B, D>> {
        let in_bn = self.path.iter().any(|p| p == "bn");
        let range = match self.path.last().map(String::as_str) {
            Some("gamma") if in_bn => Some((0.5, 1.5)),
            Some("beta") if in_bn => Some((-0.2, 0.2)),
            Some("running_mean") if in_bn => Some((-0.1, 0.1)),
            Some("running_var") if in_bn => Some((0.5, 1.5)),
            _ => None,
        };
        match range {
            Some((low, high)) => param.map(|tensor| {
                let shape = tensor.shape();
                let data: Vec<f32> = (0..shape.num_elements())
                    .map(|_| self.uniform(low, high))
                    .collect();
                Tensor::from_data(TensorData::new(data, shape), &tensor.device())
            }),
            None if D == 4 => param.map(|tensor| tensor * 2.0),
            None => param,
        }
    }
}
