//! Times each layer type of Xception at its real sizes, per image, at batch 1 and 8, on every
//! enabled CPU backend: where does the forward pass spend its time?
//!
//! `cargo run --release --example profile_layers --features ndarray [-- flex|ndarray]`
//!
//! Each timed call gets its own copy of the input, as the network's layers do (a shared input
//! would cost the host kernels a copy that the model never pays). "host" rows are
//! adcorre's operations (`adcorre::backend::ops`, host kernels on flex), "burn" rows Burn's generic operations.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use adcorre::backend::{ops, AdCorreBackend};
use adcorre::model::layers::{keras_batch_norm, ConvBnConfig, SeparableConvBnConfig};
use adcorre::model::xception::same_max_pool;
use burn::nn::conv::Conv2dConfig;
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::Distribution;

/// Median milliseconds per image of `f` over a few runs after a warm-up, each on a fresh copy
/// of `x`.
fn time_ms<B: Backend>(x: &Tensor<B, 4>, mut f: impl FnMut(Tensor<B, 4>)) -> f64 {
    let device = x.device();
    let batch = x.dims()[0];
    let fresh = || Tensor::<B, 4>::from_data(x.to_data(), &device);
    f(fresh());
    B::sync(&device).ok();
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let input = fresh();
            let start = Instant::now();
            f(input);
            B::sync(&device).ok();
            start.elapsed().as_secs_f64() * 1e3 / batch as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[2]
}

fn profile<B: AdCorreBackend>(name: &str, has_host: bool) {
    let device = B::Device::default();
    println!("\n{name}: ms per image (batch 1 | batch 8)");
    let shapes = [(128usize, 109usize), (256, 55), (728, 28), (728, 14), (1536, 7)];
    for (c, s) in shapes {
        let depthwise = Conv2dConfig::new([c, c], [3, 3])
            .with_groups(c)
            .with_padding(PaddingConfig2d::Same)
            .with_bias(false)
            .init::<B>(&device);
        let pointwise = Conv2dConfig::new([c, c], [1, 1]).with_bias(false).init::<B>(&device);
        let bn = keras_batch_norm::<B>(c, 0.01, &device);
        let pool = same_max_pool();
        let sep = SeparableConvBnConfig::new([c, c]).init::<B>(&device);
        let folded = sep.clone().fold_batch_norm();
        let mut row = Vec::new();
        for batch in [1usize, 8] {
            let x = Tensor::<B, 4>::random([batch, c, s, s], Distribution::Default, &device);
            let read = |t: Tensor<B, 4>| {
                let _ = t.slice([0..1, 0..1, 0..1, 0..1]).into_data();
            };
            let results = [
                ("depthwise burn", time_ms(&x, |x| read(depthwise.forward(x)))),
                ("depthwise host", if has_host { time_ms(&x, |x| read(ops::depthwise_conv3x3(x, depthwise.weight.val(), false))) } else { f64::NAN }),
                ("pointwise1x1", time_ms(&x, |x| read(pointwise.forward(x)))),
                ("batchnorm", time_ms(&x, |x| read(bn.forward(x)))),
                ("maxpool burn", time_ms(&x, |x| read(pool.forward(x)))),
                ("maxpool host", if has_host { time_ms(&x, |x| read(ops::max_pool3x3_stride2_same(x))) } else { f64::NAN }),
                ("relu", time_ms(&x, |x| read(relu(x)))),
                ("add", time_ms(&x, |x| read(x.clone() + x))),
                ("sepconv+bn", time_ms(&x, |x| read(sep.forward(x)))),
                ("sepconv folded", time_ms(&x, |x| read(folded.forward(x)))),
            ];
            row.push(results);
        }
        for (i, (label, t1)) in row[0].iter().enumerate() {
            println!("  {c:>4}x{s:<3} {label:<15} {t1:>8.2} | {:>8.2}", row[1][i].1);
        }
    }
    let convs = [
        ("stem conv3x3/2 3->32", ConvBnConfig::new([3, 32], 3).with_stride(2), 224),
        ("stem conv3x3 32->64", ConvBnConfig::new([32, 64], 3), 111),
        ("shortcut 1x1/2 64->128", ConvBnConfig::new([64, 128], 1).with_stride(2).with_same(true), 109),
        ("shortcut 1x1/2 728->1024", ConvBnConfig::new([728, 1024], 1).with_stride(2).with_same(true), 14),
    ];
    for (label, config, size) in convs {
        let layer = config.init::<B>(&device).fold_batch_norm();
        let channels = layer.conv.weight.dims()[1];
        let times: Vec<f64> = [1usize, 8]
            .into_iter()
            .map(|batch| {
                let x = Tensor::<B, 4>::random([batch, channels, size, size], Distribution::Default, &device);
                time_ms(&x, |x| {
                    let _ = layer.forward(x).slice([0..1, 0..1, 0..1, 0..1]).into_data();
                })
            })
            .collect();
        println!("  {label:<26} {:>8.2} | {:>8.2}", times[0], times[1]);
    }
}

fn main() {
    let only = std::env::args().nth(1);
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    #[cfg(feature = "flex")]
    if wanted("flex") {
        profile::<adcorre::backend::Flex>("flex", true);
    }
    #[cfg(feature = "ndarray")]
    if wanted("ndarray") {
        profile::<adcorre::backend::NdArray>("ndarray", false);
    }
}
