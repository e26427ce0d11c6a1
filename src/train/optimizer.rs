//! The training optimizer: Adam as one backend operation per parameter
//! ([`AdCorreBackend::adam_step`]; on `flex` a single pass over each parameter, its gradient
//! and moments, in place) instead of Burn's `Adam`, about ten tensor operations per parameter.
//! Same arithmetic, same state (`burn::optim::AdamState`), so optimizer files written by either
//! load into the other.

use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Adam, AdamConfig, AdamState, AdaptiveMomentumState, LearningRate, SimpleOptimizer};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;

use crate::backend::ops::{self, AdamStep, AdamUpdate};
use crate::backend::{AdCorreAutodiffBackend, AdCorreBackend};
use crate::model::AdCorreNet;

/// Adam (no weight decay, no AMSGrad) on [`AdCorreBackend::adam_step`]; with adcorre's
/// operations switched off ([`ops::set_enabled`]) it runs Burn's `Adam`.
#[derive(Clone)]
pub struct FusedAdam {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    burn: Adam,
}

impl FusedAdam {
    /// Adam with Burn's default moments (0.9, 0.999) and this epsilon.
    pub fn new(epsilon: f32) -> Self {
        let config = AdamConfig::new().with_epsilon(epsilon);
        FusedAdam { beta_1: 0.9, beta_2: 0.999, epsilon, burn: config.build() }
    }
}

/// The optimizer of a model's training: [`FusedAdam`] over every parameter.
pub type ModelOptimizer<B> = OptimizerAdaptor<FusedAdam, AdCorreNet<B>, B>;

/// Adam with this epsilon for training an [`AdCorreNet`].
pub fn model_optimizer<B: AdCorreAutodiffBackend>(epsilon: f32) -> ModelOptimizer<B> {
    OptimizerAdaptor::from(FusedAdam::new(epsilon))
}

fn primitive<B: Backend, const D: usize>(x: Tensor<B, D>) -> burn::tensor::ops::FloatTensor<B> {
    x.into_primitive().tensor()
}

fn tensor<B: Backend, const D: usize>(x: burn::tensor::ops::FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

impl<B: AdCorreBackend> SimpleOptimizer<B> for FusedAdam {
    type State<const D: usize> = AdamState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        if !ops::enabled() {
            return SimpleOptimizer::<B>::step(&self.burn, lr, param, grad, state);
        }
        let time = state.as_ref().map_or(1, |state| state.momentum.time + 1);
        let moments = state.map(|state| (primitive(state.momentum.moment_1), primitive(state.momentum.moment_2)));
        let step = AdamStep { learning_rate: lr, beta_1: self.beta_1, beta_2: self.beta_2, epsilon: self.epsilon, time };
        let AdamUpdate { param, moment_1, moment_2 } = B::adam_step(primitive(param), primitive(grad), moments, step);
        let momentum = AdaptiveMomentumState::new(time, tensor(moment_1), tensor(moment_2));
        (tensor(param), Some(AdamState::new(momentum)))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        AdamState::new(state.momentum.to_device(device))
    }
}
