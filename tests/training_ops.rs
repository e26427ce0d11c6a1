//! adcorre's backend operations (`adcorre::backend::ops`) against Burn's own operations on the
//! same inputs: values and gradients (of the input and every parameter) within 1e-4 relative,
//! on flex (host kernels) and ndarray (the generic formulations, which CUDA runs too), at odd
//! sizes, batch 1, 1x1 planes and the strides and paddings Xception uses; and a training step of
//! a whole reduced network, adcorre's operations against Burn's layers.
#![cfg(feature = "train")]

mod common;

use adcorre::backend::ops::{self, AdCorreBackend};
use adcorre::backend::Autodiff;
use adcorre::model::xception::same_max_pool;
use burn::module::{Param, ParamId};
use burn::nn::BatchNormConfig;
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use common::{collect, load, max_abs_diff, network_bytes, reduced_network, signed, test_images, values};

/// max |ours - burn| / max |burn|, asserted <= 1e-4 (and the reference must not vanish).
fn assert_close(what: &str, ours: Vec<f32>, burn: Vec<f32>) {
    assert!(ours.iter().chain(&burn).all(|v| v.is_finite()), "{what}: non-finite values");
    let scale = burn.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{what}: the reference is all zero");
    let error = max_abs_diff(&ours, &burn) / scale;
    assert!(error <= 1e-4, "{what}: relative error {error:e}");
}

/// A loss `sum(y * r)` with fixed random `r`, so that every output element gets its own
/// gradient.
fn weighted_sum<B: AdCorreBackend>(y: Tensor<Autodiff<B>, 4>, seed: u64) -> Tensor<Autodiff<B>, 1> {
    let r = signed::<Autodiff<B>, 4>(y.dims(), seed, &y.device());
    (y * r).sum()
}

/// Runs `ours` and `burn` on fresh copies of the same tracked inputs and compares the outputs
/// and every input's gradient.
fn compare<B: AdCorreBackend, const N: usize>(
    what: &str,
    inputs: [Tensor<B, 4>; N],
    ours: impl Fn([Tensor<Autodiff<B>, 4>; N]) -> Tensor<Autodiff<B>, 4>,
    burn: impl Fn([Tensor<Autodiff<B>, 4>; N]) -> Tensor<Autodiff<B>, 4>,
) {
    let run = |f: &dyn Fn([Tensor<Autodiff<B>, 4>; N]) -> Tensor<Autodiff<B>, 4>| {
        let tracked = inputs.clone().map(|x| Tensor::<Autodiff<B>, 4>::from_inner(x).require_grad());
        let y = f(tracked.clone());
        let out = values(y.clone());
        let grads = weighted_sum::<B>(y, 99).backward();
        let input_grads: Vec<Vec<f32>> = tracked.iter().map(|x| values(x.grad(&grads).expect("tracked input has a gradient"))).collect();
        (out, input_grads)
    };
    let (ours_out, ours_grads) = run(&ours);
    let (burn_out, burn_grads) = run(&burn);
    assert_close(&format!("{what}: output"), ours_out, burn_out);
    for (i, (o, b)) in ours_grads.into_iter().zip(burn_grads).enumerate() {
        assert_close(&format!("{what}: gradient of input {i}"), o, b);
    }
}

fn depthwise_matches_burn<B: AdCorreBackend>() {
    let device = Default::default();
    for (n, c, h, w) in [(1, 3, 5, 7), (2, 4, 1, 1), (3, 2, 9, 4), (2, 8, 23, 23), (1, 5, 2, 3)] {
        for relu_input in [false, true] {
            let x = signed::<B, 4>([n, c, h, w], 1 + n as u64, &device);
            let weight = signed::<B, 4>([c, 1, 3, 3], 2, &device);
            compare(
                &format!("depthwise {n}x{c}x{h}x{w} relu {relu_input}"),
                [x, weight],
                |[x, weight]| ops::depthwise_conv3x3(x, weight, relu_input),
                |[x, weight]| {
                    let x = if relu_input { relu(x) } else { x };
                    conv2d(x, weight, None, ConvOptions::new([1, 1], [1, 1], [1, 1], c))
                },
            );
        }
    }
}

fn pointwise_matches_burn<B: AdCorreBackend>() {
    let device = Default::default();
    // Stride 2 at even and odd sizes (Keras' 1x1 "same" shortcut pads nothing), batch 1, images
    // large enough for the per-image products (>= 256 pixels) and small ones.
    for (n, ci, co, h, w, stride) in [(1, 3, 5, 7, 7, 1), (2, 6, 4, 20, 17, 1), (3, 4, 6, 9, 8, 2), (1, 5, 3, 28, 28, 2), (2, 2, 3, 1, 1, 2), (4, 7, 9, 3, 5, 1)] {
        let x = signed::<B, 4>([n, ci, h, w], 3 + h as u64, &device);
        let weight = signed::<B, 4>([co, ci, 1, 1], 4, &device);
        compare(
            &format!("pointwise {n}x{ci}x{h}x{w} -> {co} stride {stride}"),
            [x, weight],
            |[x, weight]| ops::pointwise_conv(x, weight, stride),
            |[x, weight]| conv2d(x, weight, None, ConvOptions::new([stride; 2], [0, 0], [1, 1], 1)),
        );
    }
}

fn conv3x3_matches_burn<B: AdCorreBackend>() {
    let device = Default::default();
    // The stem's strides at odd and even sizes, batch 1, the smallest input (3x3).
    for (n, ci, co, h, w, stride) in [(2, 3, 4, 11, 9, 2), (1, 4, 5, 8, 8, 1), (3, 2, 3, 3, 3, 1), (2, 5, 2, 10, 7, 2), (1, 3, 6, 17, 20, 1)] {
        let x = signed::<B, 4>([n, ci, h, w], 9 + h as u64, &device);
        let weight = signed::<B, 4>([co, ci, 3, 3], 10, &device);
        compare(
            &format!("conv3x3 {n}x{ci}x{h}x{w} -> {co} stride {stride}"),
            [x, weight],
            |[x, weight]| ops::conv3x3(x, weight, stride),
            |[x, weight]| conv2d(x, weight, None, ConvOptions::new([stride; 2], [0, 0], [1, 1], 1)),
        );
    }
}

fn batch_norm_matches_burn<B: AdCorreBackend>() {
    let device = Default::default();
    for (n, c, h, w) in [(1, 3, 5, 7), (4, 2, 1, 1), (2, 6, 11, 9), (3, 16, 6, 6)] {
        let x = signed::<B, 4>([n, c, h, w], 5, &device) * 3.0 + 0.5;
        let gamma = signed::<B, 4>([1, c, 1, 1], 6, &device) + 1.5;
        let beta = signed::<B, 4>([1, c, 1, 1], 7, &device);
        let eps = 1e-3;
        compare(
            &format!("batch norm {n}x{c}x{h}x{w}"),
            [x.clone(), gamma.clone(), beta.clone()],
            |[x, gamma, beta]| ops::batch_norm_train(x, gamma.reshape([c]), beta.reshape([c]), eps).0,
            |[x, gamma, beta]| {
                // Burn's BatchNorm module in training mode with these parameters.
                let mut bn = BatchNormConfig::new(c).with_epsilon(eps).init::<Autodiff<B>>(&device);
                bn.gamma = Param::initialized(ParamId::new(), gamma.reshape([c]));
                bn.beta = Param::initialized(ParamId::new(), beta.reshape([c]));
                bn.forward(x)
            },
        );
        // The batch statistics equal what Burn's module moves its running averages to when it
        // moves them all the way (momentum 1).
        let bn = BatchNormConfig::new(c).with_epsilon(eps).with_momentum(1.0).init::<Autodiff<B>>(&device);
        let tracked = Tensor::<Autodiff<B>, 4>::from_inner(x.clone());
        let _ = bn.forward(tracked.clone());
        let (_, mean, variance) = ops::batch_norm_train(tracked, bn.gamma.val(), bn.beta.val(), eps);
        assert_close("batch mean", values(mean), values(bn.running_mean.value_sync()));
        assert_close("batch variance", values(variance), values(bn.running_var.value_sync()));
    }
}

fn max_pool_matches_burn<B: AdCorreBackend>() {
    let device = Default::default();
    for (n, c, h, w) in [(1, 3, 109, 109), (2, 5, 28, 28), (3, 2, 14, 15), (1, 4, 7, 6), (2, 1, 1, 1), (1, 2, 2, 3)] {
        let x = signed::<B, 4>([n, c, h, w], 8 + w as u64, &device);
        compare(
            &format!("max pool {n}x{c}x{h}x{w}"),
            [x],
            |[x]| ops::max_pool3x3_stride2_same(x),
            |[x]| same_max_pool().forward(x),
        );
    }
}

macro_rules! on_backends {
    ($name:ident, $check:ident) => {
        mod $name {
            #[cfg(feature = "flex")]
            #[test]
            fn flex() {
                super::$check::<adcorre::backend::Flex>();
            }
            #[cfg(feature = "ndarray")]
            #[test]
            fn ndarray() {
                super::$check::<adcorre::backend::NdArray>();
            }
        }
    };
}

on_backends!(depthwise_conv3x3, depthwise_matches_burn);
on_backends!(pointwise_conv, pointwise_matches_burn);
on_backends!(conv3x3, conv3x3_matches_burn);
on_backends!(batch_norm_train, batch_norm_matches_burn);
on_backends!(max_pool3x3_stride2_same, max_pool_matches_burn);
on_backends!(adam, adam_matches_burn);
on_backends!(training_step, training_step_matches_burn_layers);

/// The pooling kernels keep Burn's maxima bit for bit, and the depthwise kernel Burn's sums
/// (same products, same order), forward.
#[cfg(feature = "flex")]
#[test]
fn flex_forward_kernels_equal_burns_bit_for_bit() {
    use adcorre::backend::Flex;
    let device = Default::default();
    for (n, c, h, w) in [(1, 8, 109, 109), (2, 16, 14, 14), (3, 3, 5, 9), (1, 2, 1, 1)] {
        let x = signed::<Flex, 4>([n, c, h, w], 12, &device);
        let weight = signed::<Flex, 4>([c, 1, 3, 3], 13, &device);
        let ours = ops::depthwise_conv3x3(x.clone(), weight.clone(), false);
        let burn = conv2d(x.clone(), weight, None, ConvOptions::new([1, 1], [1, 1], [1, 1], c));
        assert_eq!(values(ours), values(burn), "depthwise {n}x{c}x{h}x{w}");
        assert_eq!(values(ops::max_pool3x3_stride2_same(x.clone())), values(same_max_pool().forward(x)), "pool {n}x{c}x{h}x{w}");
    }
}

/// TensorFlow's "same" pooling pads: 109 -> 1 + 1, even sizes 0 before and 1 after.
#[test]
fn max_pool_padding_follows_tensorflow() {
    let device = Default::default();
    // 4x4 -> 2x2 with windows {0,1,2} and {2,3,pad}; 5x5 -> 3x3 with windows from -1, 1, 3.
    let ramp = |side: usize| {
        let data: Vec<f32> = (0..side * side).map(|v| -(v as f32) - 1.0).collect();
        Tensor::<adcorre::backend::Cpu, 4>::from_data(TensorData::new(data, [1, 1, side, side]), &device)
    };
    assert_eq!(values(ops::max_pool3x3_stride2_same(ramp(4))), vec![-1.0, -3.0, -9.0, -11.0]);
    assert_eq!(values(ops::max_pool3x3_stride2_same(ramp(5))), vec![-1.0, -2.0, -4.0, -6.0, -7.0, -9.0, -16.0, -17.0, -19.0]);
}

/// The switch between adcorre's operations and Burn's is global; the tests that flip it hold
/// this.
static OPS_SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn with_ops<R>(enabled: bool, f: impl FnOnce() -> R) -> R {
    ops::set_enabled(enabled);
    let out = f();
    ops::set_enabled(true);
    out
}

/// Three Adam steps of the fused update against Burn's `Adam` on the same gradients.
fn adam_matches_burn<B: AdCorreBackend>() {
    use adcorre::train::optimizer::model_optimizer;
    use burn::optim::{GradientsParams, Optimizer};
    let _switch = OPS_SWITCH.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let device = Default::default();
    let bytes = network_bytes(&reduced_network(), 2);
    let images = test_images::<Autodiff<B>>([2, 3, 32, 32], 3, &device);
    let run = |fused: bool| {
        let mut net = load::<B>(&bytes);
        let mut optimizer = model_optimizer::<Autodiff<B>>(1e-7);
        for _ in 0..3 {
            // The same loss and gradients in both runs: Burn's layers compute them.
            let out = with_ops(false, || net.forward(images.clone()));
            let grads = GradientsParams::from_grads(out.logits.powi_scalar(2).sum().backward(), &net);
            net = with_ops(fused, || optimizer.step(1e-3, net, grads));
        }
        collect::<Autodiff<B>, _>(&net, None)
    };
    let (fused, burn) = (run(true), run(false));
    assert_eq!(fused.len(), burn.len());
    for ((name, ours), (_, theirs)) in fused.into_iter().zip(burn) {
        let error = max_abs_diff(&ours, &theirs);
        assert!(error <= 1e-6, "{name}: parameters differ by {error:e} after three steps");
    }
}

/// What one training step of a loaded network gives: the loss terms, every parameter's
/// gradient, and the parameters and running statistics after the forward pass.
type StepResult = (adcorre::loss::LossValues, Vec<(String, Vec<f32>)>, Vec<(String, Vec<f32>)>);

/// One training step (forward with batch statistics, the Ad-Corre loss, backward) of the
/// network in `bytes` on `B`, with adcorre's operations or Burn's layers.
fn training_step<B: AdCorreBackend>(bytes: &[u8], adcorre_ops: bool) -> StepResult {
    use adcorre::loss::AdCorreLossConfig;
    let device = Default::default();
    let net = load::<B>(bytes);
    let images = test_images::<Autodiff<B>>([6, 3, 41, 37], 5, &device);
    with_ops(adcorre_ops, || {
        let mut loss = AdCorreLossConfig::default().init(7).unwrap();
        let out = net.forward(images);
        let terms = loss.forward(out.logits, out.embeddings, &[0, 1, 2, 3, 4, 0]).unwrap();
        let loss_values = terms.values().unwrap();
        let grads = terms.total.backward();
        (loss_values, collect::<Autodiff<B>, _>(&net, Some(&grads)), collect::<Autodiff<B>, _>(&net, None))
    })
}

/// Asserts that two steps agree: loss terms, gradients and state within `tolerance` relative.
fn assert_same_step(what: &str, (loss_a, grads_a, state_a): StepResult, (loss_b, grads_b, state_b): StepResult, tolerance: f32) {
    for (term, a, b) in [
        ("total", loss_a.total, loss_b.total),
        ("ce", loss_a.ce, loss_b.ce),
        ("fd", loss_a.fd, loss_b.fd),
        ("md", loss_a.md, loss_b.md),
        ("ed", loss_a.ed, loss_b.ed),
    ] {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1e-3), "{what}: loss {term} {a} vs {b}");
    }
    assert!(grads_a.len() > 60, "{what}: every parameter has a gradient ({})", grads_a.len());
    assert_eq!(grads_a.len(), grads_b.len());
    for ((name, a), (name_b, b)) in grads_a.into_iter().zip(grads_b).chain(state_a.into_iter().zip(state_b)) {
        assert_eq!(name, name_b);
        assert!(a.iter().all(|v| v.is_finite()), "{what}: {name} has non-finite values");
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let error = max_abs_diff(&a, &b) / scale.max(f32::MIN_POSITIVE);
        assert!(error <= tolerance, "{what}: {name} relative error {error:e}");
    }
}

/// One training step of a reduced network, adcorre's operations against Burn's layers: the
/// same loss terms, the same gradient for every parameter, the same running statistics.
/// Tolerances: 1e-4 on flex; 1e-3 on ndarray, where Burn's own layers differ from flex (and
/// from our generic operations) by up to about 1.5e-4 on the same weights (measured over 16
/// networks; Burn's ndarray uses approximate SIMD arithmetic). Max pooling routes each
/// gradient to one maximum, so a near-tie that float rounding breaks differently moves whole
/// gradients: the networks are seeded, and this one has no such tie.
fn training_step_matches_burn_layers<B: AdCorreBackend>() {
    let _switch = OPS_SWITCH.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let bytes = network_bytes(&reduced_network(), 4);
    let tolerance = if std::any::type_name::<B>().contains("ndarray") { 1e-3 } else { 1e-4 };
    assert_same_step("ours vs Burn's layers", training_step::<B>(&bytes, true), training_step::<B>(&bytes, false), tolerance);
}

/// The generic formulations (what ndarray and the GPU backends run) against flex's host
/// kernels on the same weights and inputs, through a whole training step.
#[cfg(all(feature = "flex", feature = "ndarray"))]
#[test]
fn generic_operations_match_flex_kernels_through_a_training_step() {
    use adcorre::backend::{Flex, NdArray};
    let _switch = OPS_SWITCH.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let bytes = network_bytes(&reduced_network(), 6);
    assert_same_step("ndarray vs flex", training_step::<NdArray>(&bytes, true), training_step::<Flex>(&bytes, true), 1e-4);
}
