//! Times each layer type of Xception at its real sizes, per image, at batch 1 and 8, on every
//! enabled CPU backend: where does the forward pass spend its time?
//!
//! `cargo run --release --example profile_layers --features ndarray [-- flex|ndarray]`

use std::time::Instant;

use adcorre::model::layers::{keras_batch_norm, ConvBnConfig, SeparableConvBnConfig};
use adcorre::model::xception::same_max_pool;
use burn::nn::conv::Conv2dConfig;
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::Distribution;

/// Median milliseconds per image of `f` over a few runs after a warm-up.
fn time_ms<B: Backend>(batch: usize, device: &B::Device, mut f: impl FnMut()) -> f64 {
    f();
    B::sync(device).ok();
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            f();
            B::sync(device).ok();
            start.elapsed().as_secs_f64() * 1e3 / batch as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[2]
}

fn profile<B: Backend>(name: &str) {
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
                ("depthwise3x3", time_ms::<B>(batch, &device, || read(depthwise.forward(x.clone())))),
                ("pointwise1x1", time_ms::<B>(batch, &device, || read(pointwise.forward(x.clone())))),
                ("batchnorm", time_ms::<B>(batch, &device, || read(bn.forward(x.clone())))),
                ("maxpool3x3/2", time_ms::<B>(batch, &device, || read(pool.forward(x.clone())))),
                ("relu", time_ms::<B>(batch, &device, || read(relu(x.clone())))),
                ("add", time_ms::<B>(batch, &device, || read(x.clone() + x.clone()))),
                ("sepconv+bn", time_ms::<B>(batch, &device, || read(sep.forward(x.clone())))),
                ("sepconv folded", time_ms::<B>(batch, &device, || read(folded.forward(x.clone())))),
            ];
            row.push(results);
        }
        for (i, (label, t1)) in row[0].iter().enumerate() {
            println!("  {c:>4}x{s:<3} {label:<13} {t1:>8.2} | {:>8.2}", row[1][i].1);
        }
    }
    let stem = ConvBnConfig::new([3, 32], 3).with_stride(2).init::<B>(&device);
    for batch in [1usize, 8] {
        let x = Tensor::<B, 4>::random([batch, 3, 224, 224], Distribution::Default, &device);
        let t = time_ms::<B>(batch, &device, || {
            let _ = stem.forward(x.clone()).slice([0..1, 0..1, 0..1, 0..1]).into_data();
        });
        println!("  stem conv3x3/2+bn batch {batch}: {t:.2}");
    }
}

fn main() {
    let only = std::env::args().nth(1);
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    #[cfg(feature = "flex")]
    if wanted("flex") {
        profile::<adcorre::backend::Flex>("flex");
    }
    #[cfg(feature = "ndarray")]
    if wanted("ndarray") {
        profile::<adcorre::backend::NdArray>("ndarray");
    }
}
