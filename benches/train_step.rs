//! One training step (forward, Ad-Corre loss, backward, Adam update) of the published
//! architecture on each enabled CPU backend, at 96x96 batch 2 (small enough for 2 cores).
//!
//! `cargo bench --bench train_step --features ndarray`

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use adcorre::backend::Autodiff;
use adcorre::loss::AdCorreLossConfig;
use adcorre::model::AdCorreNetConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::Distribution;
use criterion::{criterion_group, criterion_main, Criterion};
use std::time::Duration;

fn bench_backend<B: Backend>(c: &mut Criterion, name: &str) {
    let device = B::Device::default();
    let labels = [0usize, 1];
    let images = Tensor::<Autodiff<B>, 4>::random([2, 3, 96, 96], Distribution::Uniform(0.0, 1.0), &device);
    let mut model = Some(AdCorreNetConfig::new().init::<Autodiff<B>>(&device));
    let mut optimizer = AdamConfig::new().init();
    let mut loss = AdCorreLossConfig::default().init(7).unwrap();
    let mut group = c.benchmark_group("train_step_96_batch2");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function(name, |b| {
        b.iter(|| {
            let net = model.take().unwrap();
            let out = net.forward(images.clone());
            let terms = loss.forward(out.logits, out.embeddings, &labels).unwrap();
            let grads = GradientsParams::from_grads(terms.total.backward(), &net);
            model = Some(optimizer.step(1e-3, net, grads));
        })
    });
    group.finish();
}

fn train_step(c: &mut Criterion) {
    #[cfg(feature = "flex")]
    bench_backend::<adcorre::backend::Flex>(c, "flex");
    #[cfg(feature = "ndarray")]
    bench_backend::<adcorre::backend::NdArray>(c, "ndarray");
}

criterion_group!(benches, train_step);
criterion_main!(benches);
