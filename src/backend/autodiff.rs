//! adcorre's operations on Burn's autodiff backend: each forward runs the inner backend's
//! operation and registers a backward step that runs the inner backend's backward operation,
//! so a training step uses the same kernels as inference (`flex`'s host kernels, or the
//! generic formulations on the GPU backends).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;

use super::ops::{AdCorreBackend, BatchNormTrain, ConvGrads};

/// Backward step of [`AdCorreBackend::depthwise_conv3x3`]: parents input and weight.
#[derive(Debug)]
struct DepthwiseConvBackward;

impl<B: AdCorreBackend> Backward<B, 2> for DepthwiseConvBackward {
    /// Input, weight, whether the input went through a ReLU first.
    type State = (FloatTensor<B>, FloatTensor<B>, bool);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [input_node, weight_node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight, relu_input) = ops.state;
        let ConvGrads { input, weight } = B::depthwise_conv3x3_backward(x, weight, grad, relu_input, input_node.is_some());
        register!(grads, input_node, input);
        register!(grads, weight_node, Some(weight));
    }
}

/// Backward step of [`AdCorreBackend::pointwise_conv`]: parents input and weight.
#[derive(Debug)]
struct PointwiseConvBackward;

impl<B: AdCorreBackend> Backward<B, 2> for PointwiseConvBackward {
    /// Input, weight, stride.
    type State = (FloatTensor<B>, FloatTensor<B>, usize);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [input_node, weight_node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight, stride) = ops.state;
        let ConvGrads { input, weight } = B::pointwise_conv_backward(x, weight, grad, stride, input_node.is_some());
        register!(grads, input_node, input);
        register!(grads, weight_node, Some(weight));
    }
}

/// Backward step of [`AdCorreBackend::conv3x3`]: parents input and weight.
#[derive(Debug)]
struct Conv3x3Backward;

impl<B: AdCorreBackend> Backward<B, 2> for Conv3x3Backward {
    /// Input, weight, stride.
    type State = (FloatTensor<B>, FloatTensor<B>, usize);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [input_node, weight_node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight, stride) = ops.state;
        let ConvGrads { input, weight } = B::conv3x3_backward(x, weight, grad, stride, input_node.is_some());
        register!(grads, input_node, input);
        register!(grads, weight_node, Some(weight));
    }
}

/// Backward step of [`AdCorreBackend::batch_norm_train`]: parents input, gamma and beta.
#[derive(Debug)]
struct BatchNormBackward;

impl<B: AdCorreBackend> Backward<B, 3> for BatchNormBackward {
    /// Input, gamma, batch mean, batch variance, epsilon.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [input_node, gamma_node, beta_node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, gamma, mean, variance, epsilon) = ops.state;
        let out = B::batch_norm_train_backward(x, gamma, mean, variance, epsilon, grad);
        register!(grads, input_node, Some(out.input));
        register!(grads, gamma_node, Some(out.gamma));
        register!(grads, beta_node, Some(out.beta));
    }
}

/// Backward step of [`AdCorreBackend::max_pool3x3_stride2_same`]: parent the input.
#[derive(Debug)]
struct MaxPoolBackward;

impl<B: AdCorreBackend> Backward<B, 1> for MaxPoolBackward {
    /// The input.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [input_node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if input_node.is_some() {
            let x_grad = B::max_pool3x3_stride2_same_backward(ops.state, grad);
            register!(grads, input_node, Some(x_grad));
        }
    }
}

/// Registers `grad` for `node` when the parent is tracked and a gradient was computed.
macro_rules! register {
    ($grads:expr, $node:expr, $grad:expr) => {
        if let (Some(node), Some(grad)) = ($node, $grad) {
            $grads.register::<B>(node.id, grad);
        }
    };
}
use register;

impl<B: AdCorreBackend, C: CheckpointStrategy> AdCorreBackend for Autodiff<B, C> {
    const MOVES_TENSORS_BETWEEN_DEVICES: bool = B::MOVES_TENSORS_BETWEEN_DEVICES;

    fn run_step<R: Send>(task: impl FnOnce() -> R + Send) -> R {
        B::run_step(task)
    }

    fn depthwise_conv3x3(x: FloatTensor<Self>, weight: FloatTensor<Self>, relu_input: bool) -> FloatTensor<Self> {
        match DepthwiseConvBackward.prepare::<C>([x.node.clone(), weight.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = B::depthwise_conv3x3(x.primitive.clone(), weight.primitive.clone(), relu_input);
                prep.finish((x.primitive, weight.primitive, relu_input), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::depthwise_conv3x3(x.primitive, weight.primitive, relu_input)),
        }
    }

    fn pointwise_conv(x: FloatTensor<Self>, weight: FloatTensor<Self>, stride: usize) -> FloatTensor<Self> {
        match PointwiseConvBackward.prepare::<C>([x.node.clone(), weight.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = B::pointwise_conv(x.primitive.clone(), weight.primitive.clone(), stride);
                prep.finish((x.primitive, weight.primitive, stride), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::pointwise_conv(x.primitive, weight.primitive, stride)),
        }
    }

    fn conv3x3(x: FloatTensor<Self>, weight: FloatTensor<Self>, stride: usize) -> FloatTensor<Self> {
        match Conv3x3Backward.prepare::<C>([x.node.clone(), weight.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = B::conv3x3(x.primitive.clone(), weight.primitive.clone(), stride);
                prep.finish((x.primitive, weight.primitive, stride), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv3x3(x.primitive, weight.primitive, stride)),
        }
    }

    fn batch_norm_train(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, epsilon: f64) -> BatchNormTrain<Self> {
        let nodes = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
        let (output, mean, variance) = match BatchNormBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = B::batch_norm_train(x.primitive.clone(), gamma.primitive.clone(), beta.primitive, epsilon);
                let state = (x.primitive, gamma.primitive, out.mean.clone(), out.variance.clone(), epsilon);
                (prep.finish(state, out.output), out.mean, out.variance)
            }
            OpsKind::UnTracked(prep) => {
                let out = B::batch_norm_train(x.primitive, gamma.primitive, beta.primitive, epsilon);
                (prep.finish(out.output), out.mean, out.variance)
            }
        };
        BatchNormTrain { output, mean: Self::from_inner(mean), variance: Self::from_inner(variance) }
    }

    fn max_pool3x3_stride2_same(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match MaxPoolBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = B::max_pool3x3_stride2_same(x.primitive.clone());
                prep.finish(x.primitive, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::max_pool3x3_stride2_same(x.primitive)),
        }
    }
}
