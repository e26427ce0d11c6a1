//! One training step (forward, Ad-Corre loss, backward, Adam update) per configuration of the
//! training-speed comparison (`scripts/compare_torch_cpu_train.sh`): the published network at
//! 96x96 batch 8 and at 224x224 batch 2, and the reduced FER-2013 network
//! (`configs/fer2013_cpu_reduced.json`) at 48x48 batch 32; with adcorre's operations and,
//! on flex, with Burn's own (`burn_ops`, the baseline).
//!
//! `cargo bench --bench train_step [--features ndarray]`

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use adcorre::backend::{ops, AdCorreBackend, Autodiff};
use adcorre::loss::AdCorreLossConfig;
use adcorre::model::AdCorreNetConfig;
use adcorre::train::optimizer::model_optimizer;
use adcorre::train::TrainConfig;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::Distribution;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::time::Duration;

/// `(name, network, input side, batch)` of each benchmarked configuration.
fn configurations() -> Vec<(&'static str, AdCorreNetConfig, usize, usize)> {
    let reduced = TrainConfig::from_file("configs/fer2013_cpu_reduced.json".as_ref()).expect("the committed config parses");
    vec![
        ("published_96_batch8", AdCorreNetConfig::new(), 96, 8),
        ("published_224_batch2", AdCorreNetConfig::new(), 224, 2),
        ("fer2013_reduced_48_batch32", reduced.network, reduced.input_size, reduced.batch_size),
    ]
}

fn bench_backend<B: AdCorreBackend>(c: &mut Criterion, backend: &str, variants: &[(&str, bool)]) {
    let device = B::Device::default();
    let mut group = c.benchmark_group(format!("train_step/{backend}"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for (name, network, side, batch) in configurations() {
        let labels: Vec<usize> = (0..batch).map(|i| i % network.num_classes).collect();
        let images = Tensor::<Autodiff<B>, 4>::random([batch, 3, side, side], Distribution::Uniform(0.0, 1.0), &device);
        for &(variant, adcorre_ops) in variants {
            let mut model = Some(network.init::<Autodiff<B>>(&device));
            let mut optimizer = model_optimizer(1e-7);
            let mut loss = AdCorreLossConfig::default().init(network.num_classes).unwrap();
            group.bench_function(BenchmarkId::new(variant, name), |b| {
                ops::set_enabled(adcorre_ops);
                b.iter(|| {
                    let net = model.take().unwrap();
                    model = Some(Autodiff::<B>::run_step(|| {
                        let out = net.forward(images.clone());
                        let terms = loss.forward(out.logits, out.embeddings, &labels).unwrap();
                        let grads = GradientsParams::from_grads(terms.total.backward(), &net);
                        optimizer.step(1e-4, net, grads)
                    }));
                })
            });
        }
    }
    ops::set_enabled(true);
    group.finish();
}

fn train_step(c: &mut Criterion) {
    #[cfg(feature = "flex")]
    bench_backend::<adcorre::backend::Flex>(c, "flex", &[("adcorre_ops", true), ("burn_ops", false)]);
    #[cfg(feature = "ndarray")]
    bench_backend::<adcorre::backend::NdArray>(c, "ndarray", &[("adcorre_ops", true)]);
}

criterion_group!(benches, train_step);
criterion_main!(benches);
