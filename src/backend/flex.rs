//! [`AdCorreBackend`] on Burn's `flex` CPU backend: host kernels on every core for `f32`
//! tensors (`host_kernels`, `host_training`, `host_xception`); other float types take the
//! generic formulations.

use burn::backend::flex::FlexTensor;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorData, TensorMetadata};

use super::generic;
use super::host_kernels::{depthwise_conv_3x3_same, max_pool_3x3_stride2_same};
use super::host_training::{
    adam_update, batch_norm_backward, batch_norm_forward, conv3x3_backward, conv3x3_forward, depthwise_backward, max_pool_backward,
    pointwise_backward, pointwise_forward, Conv3x3Shape, PointwiseShape,
};
use super::ops::{AdCorreBackend, AdamStep, AdamUpdate, BatchNormGrads, BatchNormTrain, ConvGrads};
use super::Flex;
use crate::model::xception::Xception;

/// The tensor's values, contiguous (copied once if it is a strided or offset view), when it is
/// `f32`.
fn values(x: FlexTensor) -> Option<(FlexTensor, Vec<usize>)> {
    if x.dtype() != DType::F32 {
        return None;
    }
    let dims = x.shape().to_vec();
    let exact = |t: &FlexTensor| t.as_slice::<f32>().is_some_and(|v| v.len() == t.storage::<f32>().len());
    let x = if exact(&x) { x } else { x.to_contiguous() };
    Some((x, dims))
}

fn slice(x: &FlexTensor) -> &[f32] {
    x.storage::<f32>()
}

fn dims4(dims: &[usize]) -> Option<[usize; 4]> {
    dims.try_into().ok()
}

fn flex(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

impl AdCorreBackend for Flex {
    fn depthwise_conv3x3(x: FloatTensor<Self>, weight: FloatTensor<Self>, relu_input: bool) -> FloatTensor<Self> {
        match (values(x.clone()), values(weight.clone())) {
            (Some((x, dims)), Some((weight, _))) if dims.len() == 4 => {
                flex(depthwise_conv_3x3_same(slice(&x), dims4(&dims).expect("rank 4"), slice(&weight), relu_input), &dims)
            }
            _ => generic::depthwise_conv3x3::<Self>(x, weight, relu_input),
        }
    }

    fn depthwise_conv3x3_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        relu_input: bool,
        input_grad: bool,
    ) -> ConvGrads<Self> {
        match (values(x.clone()), values(weight.clone()), values(output_grad.clone())) {
            (Some((xv, dims)), Some((wv, w_dims)), Some((gv, _))) if dims.len() == 4 => {
                let (x_grad, weight_grad) =
                    depthwise_backward(slice(&xv), dims4(&dims).expect("rank 4"), slice(&wv), slice(&gv), relu_input, input_grad);
                ConvGrads { input: x_grad.map(|g| flex(g, &dims)), weight: flex(weight_grad, &w_dims) }
            }
            _ => generic::depthwise_conv3x3_backward::<Self>(x, weight, output_grad, relu_input, input_grad),
        }
    }

    fn pointwise_conv(x: FloatTensor<Self>, weight: FloatTensor<Self>, stride: usize) -> FloatTensor<Self> {
        match (values(x.clone()), values(weight.clone())) {
            (Some((xv, dims)), Some((wv, w_dims))) if dims.len() == 4 && stride > 0 => {
                let [n, ci, h, w] = dims4(&dims).expect("rank 4");
                let shape = PointwiseShape { n, ci, co: w_dims[0], h, w, stride };
                let out = [n, w_dims[0], h.div_ceil(stride), w.div_ceil(stride)];
                flex(pointwise_forward(slice(&xv), shape, slice(&wv)), &out)
            }
            _ => generic::dense_conv::<Self>(x, weight, stride),
        }
    }

    fn pointwise_conv_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        stride: usize,
        input_grad: bool,
    ) -> ConvGrads<Self> {
        match (values(x.clone()), values(weight.clone()), values(output_grad.clone())) {
            (Some((xv, dims)), Some((wv, w_dims)), Some((gv, _))) if dims.len() == 4 && stride > 0 => {
                let [n, ci, h, w] = dims4(&dims).expect("rank 4");
                let shape = PointwiseShape { n, ci, co: w_dims[0], h, w, stride };
                let (x_grad, weight_grad) = pointwise_backward(slice(&xv), shape, slice(&wv), slice(&gv), input_grad);
                ConvGrads { input: x_grad.map(|g| flex(g, &dims)), weight: flex(weight_grad, &w_dims) }
            }
            _ => generic::pointwise_conv_backward::<Self>(x, weight, output_grad, stride, input_grad),
        }
    }

    fn conv3x3(x: FloatTensor<Self>, weight: FloatTensor<Self>, stride: usize) -> FloatTensor<Self> {
        match (values(x.clone()), values(weight.clone())) {
            (Some((xv, dims)), Some((wv, w_dims))) if dims.len() == 4 && stride > 0 && dims[2] >= 3 && dims[3] >= 3 => {
                let [n, ci, h, w] = dims4(&dims).expect("rank 4");
                let shape = Conv3x3Shape { n, ci, co: w_dims[0], h, w, stride };
                let (ho, wo) = shape.out_hw();
                flex(conv3x3_forward(slice(&xv), shape, slice(&wv)), &[n, w_dims[0], ho, wo])
            }
            _ => generic::dense_conv::<Self>(x, weight, stride),
        }
    }

    fn conv3x3_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        stride: usize,
        input_grad: bool,
    ) -> ConvGrads<Self> {
        match (values(x.clone()), values(weight.clone()), values(output_grad.clone())) {
            (Some((xv, dims)), Some((wv, w_dims)), Some((gv, _))) if dims.len() == 4 && stride > 0 && dims[2] >= 3 && dims[3] >= 3 => {
                let [n, ci, h, w] = dims4(&dims).expect("rank 4");
                let shape = Conv3x3Shape { n, ci, co: w_dims[0], h, w, stride };
                let (x_grad, weight_grad) = conv3x3_backward(slice(&xv), shape, slice(&wv), slice(&gv), input_grad);
                ConvGrads { input: x_grad.map(|g| flex(g, &dims)), weight: flex(weight_grad, &w_dims) }
            }
            _ => generic::dense_conv_backward::<Self>(x, weight, output_grad, stride, input_grad),
        }
    }

    fn batch_norm_train(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, epsilon: f64) -> BatchNormTrain<Self> {
        match (values(x.clone()), values(gamma.clone()), values(beta.clone())) {
            (Some((xv, dims)), Some((gv, c_dims)), Some((bv, _))) if dims.len() == 4 => {
                let (output, mean, variance) = batch_norm_forward(slice(&xv), dims4(&dims).expect("rank 4"), slice(&gv), slice(&bv), epsilon);
                BatchNormTrain { output: flex(output, &dims), mean: flex(mean, &c_dims), variance: flex(variance, &c_dims) }
            }
            _ => generic::batch_norm_train::<Self>(x, gamma, beta, epsilon),
        }
    }

    fn batch_norm_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output_grad: FloatTensor<Self>,
    ) -> BatchNormGrads<Self> {
        let all = [&x, &gamma, &mean, &variance, &output_grad].map(|t| values(t.clone()));
        match all {
            [Some((xv, dims)), Some((gv, c_dims)), Some((mv, _)), Some((vv, _)), Some((dv, _))] if dims.len() == 4 => {
                let (input, gamma_grad, beta_grad) =
                    batch_norm_backward(slice(&xv), dims4(&dims).expect("rank 4"), slice(&gv), slice(&mv), slice(&vv), epsilon, slice(&dv));
                BatchNormGrads { input: flex(input, &dims), gamma: flex(gamma_grad, &c_dims), beta: flex(beta_grad, &c_dims) }
            }
            _ => generic::batch_norm_train_backward::<Self>(x, gamma, mean, variance, epsilon, output_grad),
        }
    }

    fn max_pool3x3_stride2_same(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match values(x.clone()) {
            Some((xv, dims)) if dims.len() == 4 => {
                let (output, shape) = max_pool_3x3_stride2_same(slice(&xv), dims4(&dims).expect("rank 4"));
                flex(output, &shape)
            }
            _ => generic::max_pool3x3_stride2_same::<Self>(x),
        }
    }

    fn max_pool3x3_stride2_same_backward(x: FloatTensor<Self>, output_grad: FloatTensor<Self>) -> FloatTensor<Self> {
        match (values(x.clone()), values(output_grad.clone())) {
            (Some((xv, dims)), Some((gv, _))) if dims.len() == 4 => {
                flex(max_pool_backward(slice(&xv), dims4(&dims).expect("rank 4"), slice(&gv)), &dims)
            }
            _ => generic::max_pool3x3_stride2_same_backward::<Self>(x, output_grad),
        }
    }

    fn adam_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moments: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        step: AdamStep,
    ) -> AdamUpdate<Self> {
        let f32_tensors = [Some(&param), Some(&grad), moments.as_ref().map(|m| &m.0), moments.as_ref().map(|m| &m.1)]
            .iter()
            .all(|t| t.is_none_or(|t| t.dtype() == DType::F32));
        if !f32_tensors {
            return generic::adam_step::<Self>(param, grad, moments, step);
        }
        let (Some((mut param, dims)), Some((grad, _))) = (values(param), values(grad)) else {
            unreachable!("f32 tensors")
        };
        let len = param.shape().num_elements();
        let (mut moment_1, mut moment_2, first) = match moments {
            Some((m1, m2)) => (values(m1).expect("f32").0, values(m2).expect("f32").0, false),
            None => (flex(vec![0.0; len], &dims), flex(vec![0.0; len], &dims), true),
        };
        // Updated in place where the tensor is not shared (copied once otherwise).
        adam_update(
            param.storage_mut::<f32>(),
            slice(&grad),
            moment_1.storage_mut::<f32>(),
            moment_2.storage_mut::<f32>(),
            first,
            step,
        );
        AdamUpdate { param, moment_1, moment_2 }
    }

    fn run_step<R: Send>(task: impl FnOnce() -> R + Send) -> R {
        // From outside the pool, `join` runs on a worker (the caller waits once).
        rayon::join(task, || ()).0
    }

    fn folded_xception(net: &Xception<Self>, x: &FloatTensor<Self>, pooled: bool) -> Option<FloatTensor<Self>> {
        if x.dtype() != DType::F32 {
            return None;
        }
        super::host_xception::folded_xception(net, x, pooled)
    }
}
