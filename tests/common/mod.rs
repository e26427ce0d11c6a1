//! Helpers shared by the integration tests.
#![allow(dead_code)]

use adcorre::backend::Autodiff;
use adcorre::model::{AdCorreNet, AdCorreNetConfig, XceptionConfig};
use burn::module::{Module, ModuleVisitor, Param};
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

/// Values in [-1, 1), deterministic.
pub fn signed<B: Backend, const D: usize>(shape: [usize; D], seed: u64, device: &B::Device) -> Tensor<B, D> {
    let len: usize = shape.iter().product();
    let flat = test_images::<B>([1, 1, 1, len], seed, device).reshape(shape);
    flat * 2.0 - 1.0
}

/// Every parameter's values (or, with gradients, their gradients) in visiting order.
pub struct Collect<'a, B: burn::tensor::backend::AutodiffBackend> {
    grads: Option<&'a B::Gradients>,
    out: Vec<(String, Vec<f32>)>,
    path: Vec<String>,
}

impl<B: burn::tensor::backend::AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let name = self.path.join(".");
        let data = match self.grads {
            Some(grads) => match param.grad(grads) {
                Some(grad) => values(grad),
                None => return,
            },
            None => values(param.val()),
        };
        self.out.push((name, data));
    }
}

pub fn collect<B: burn::tensor::backend::AutodiffBackend, M: Module<B>>(module: &M, grads: Option<&B::Gradients>) -> Vec<(String, Vec<f32>)> {
    let mut visitor = Collect::<B> { grads, out: Vec::new(), path: Vec::new() };
    module.visit(&mut visitor);
    visitor.out
}

/// The reduced network of the whole-network tests: Xception at 1/8 width, one middle block,
/// three heads of 16, no dropout (so two runs see the same function).
pub fn reduced_network() -> AdCorreNetConfig {
    AdCorreNetConfig::new()
        .with_backbone(XceptionConfig::new().with_width(0.125).with_middle_blocks(1).with_bn_momentum(0.1))
        .with_num_heads(3)
        .with_embedding_dim(16)
        .with_dropout(0.0)
}

/// A calibrated network (`calibrate`) from a seeded initialisation, as model bytes:
/// each load is an independent trainable copy (every parameter a leaf, its own running
/// statistics) on any backend.
pub fn network_bytes(config: &AdCorreNetConfig, seed: u64) -> Vec<u8> {
    use adcorre::model::checkpoint::model_to_bytes;
    type Init = adcorre::backend::Cpu;
    let device = Default::default();
    Init::seed(&device, seed);
    let net = calibrate(config.init::<Init>(&device), seed);
    model_to_bytes(&net, &adcorre::model::ModelCard::new(config.clone())).unwrap()
}

/// A trainable copy of the network in `bytes` on `B`'s default device.
pub fn load<B: adcorre::backend::AdCorreBackend>(bytes: &[u8]) -> AdCorreNet<Autodiff<B>> {
    adcorre::model::checkpoint::model_from_bytes::<Autodiff<B>>(bytes.to_vec(), &Default::default()).unwrap().0
}


/// `per_class` FER-2013 images of each class, 48x48 gray.
pub fn fer_subset(kind: adcorre::data::DatasetType, per_class: usize) -> adcorre::data::PackedImages {
    let mut data = adcorre::data::load_dataset(adcorre::data::DatasetName::Fer2013, kind, std::path::Path::new("../shared/data/fer2013")).unwrap();
    let mut taken = [0usize; 7];
    data.samples.retain(|s| {
        taken[s.label] += 1;
        taken[s.label] <= per_class
    });
    adcorre::data::prepare(&data, 48, 1, &|_| {}).unwrap()
}

/// A training config small enough for tests: the reduced network at 40x40, batch 14, no workers.
pub fn tiny_config(epochs: usize) -> adcorre::train::TrainConfig {
    adcorre::train::TrainConfig {
        network: AdCorreNetConfig::new()
            .with_backbone(XceptionConfig::new().with_width(0.125).with_middle_blocks(1).with_bn_momentum(0.1))
            .with_num_heads(3)
            .with_embedding_dim(16),
        epochs,
        batch_size: 14,
        input_size: 40,
        workers: 0,
        seed: 5,
        eval_batch_size: 16,
        ..adcorre::train::TrainConfig::default()
    }
}

/// A reduced 7-class network with two embedding heads of 8, for inference tests.
pub fn two_head_config() -> AdCorreNetConfig {
    AdCorreNetConfig::new()
        .with_backbone(XceptionConfig::new().with_width(0.125).with_middle_blocks(1))
        .with_num_heads(2)
        .with_embedding_dim(8)
}

/// A PNG declaring `width x height` 8-bit RGB: signature, IHDR, an empty IDAT, IEND.
pub fn png_header(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= byte as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    let mut header = width.to_be_bytes().to_vec();
    header.extend(height.to_be_bytes());
    header.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(b"IHDR", header), (b"IDAT", Vec::new()), (b"IEND", Vec::new())] {
        let mut chunk = kind.to_vec();
        chunk.extend(&data);
        png.extend((data.len() as u32).to_be_bytes());
        png.extend(&chunk);
        png.extend(crc32(&chunk).to_be_bytes());
    }
    png
}
