//! Inference latency of the published architecture (k = 7, 7 classes) at 224x224, batch 1
//! and 8, on each enabled CPU backend: as `TestModels` runs it (batch norm folded; on flex the
//! one-pass host backbone) and, as baselines in the same run, with Burn's generic operations
//! only (`folded_burn_ops`) and unfolded.
//!
//! `cargo bench --bench forward --features ndarray` (flex is on by default).

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use adcorre::backend::AdCorreBackend;
use adcorre::model::AdCorreNetConfig;
use burn::prelude::*;
use burn::tensor::Distribution;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

/// `has_host_kernels`: whether adcorre's operations have host kernels on `B` (flex); elsewhere
/// the "Burn ops" baseline is not run (it differs little from the generic operations).
fn bench_backend<B: AdCorreBackend>(c: &mut Criterion, name: &str, has_host_kernels: bool) {
    let device = B::Device::default();
    let net = AdCorreNetConfig::new().init::<B>(&device);
    let folded = net.clone().fold_batch_norm();
    let mut group = c.benchmark_group(format!("forward_224/{name}"));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(10));
    for batch in [1usize, 8] {
        let images =
            Tensor::<B, 4>::random([batch, 3, 224, 224], Distribution::Uniform(0.0, 1.0), &device);
        group.throughput(Throughput::Elements(batch as u64));
        for (variant, net, host_kernels) in
            [("folded", &folded, true), ("folded_burn_ops", &folded, false), ("unfolded", &net, true)]
        {
            if !host_kernels && !has_host_kernels {
                continue;
            }
            group.bench_with_input(BenchmarkId::new(variant, batch), &images, |b, images| {
                adcorre::backend::ops::set_enabled(host_kernels);
                b.iter(|| {
                    let out = net.forward(images.clone());
                    // Read back so lazy/async backends finish the work inside the timing.
                    out.logits.into_data()
                })
            });
        }
    }
    adcorre::backend::ops::set_enabled(true);
    group.finish();
}

fn forward(c: &mut Criterion) {
    #[cfg(feature = "flex")]
    bench_backend::<adcorre::backend::Flex>(c, "flex", true);
    #[cfg(feature = "ndarray")]
    bench_backend::<adcorre::backend::NdArray>(c, "ndarray", false);
}

criterion_group!(benches, forward);
criterion_main!(benches);
