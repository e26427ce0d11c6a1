//! Input pipeline throughput on one core: FER-2013 JPEG decode, then resize to 224x224 with
//! augmentation (flip, rotation, crop, brightness/contrast), per image.
//!
//! `cargo bench --bench pipeline`

use std::path::Path;

use adcorre::data::augment::{Augmentation, SplitMix64};
use adcorre::data::prepared::decode_resized;
use adcorre::data::{load_dataset, DatasetName, DatasetType};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn pipeline(c: &mut Criterion) {
    let mut data = load_dataset(DatasetName::Fer2013, DatasetType::Eval, Path::new("../shared/data/fer2013"))
        .expect("FER-2013 images in ../shared/data/fer2013");
    data.samples.truncate(64);
    let augmentation = Augmentation::default();
    let mut group = c.benchmark_group("pipeline_fer2013");
    group.throughput(Throughput::Elements(data.len() as u64));
    group.bench_function("decode", |b| {
        b.iter(|| {
            for sample in &data.samples {
                decode_resized(&sample.image, 48, 1).unwrap();
            }
        })
    });
    group.bench_function("decode_augment_224", |b| {
        let mut epoch = 0;
        b.iter(|| {
            epoch += 1;
            for (index, sample) in data.samples.iter().enumerate() {
                let pixels = decode_resized(&sample.image, 48, 1).unwrap();
                let mut rng = SplitMix64::for_sample(1, epoch, index as u64);
                augmentation.apply(&pixels, 48, 1, 224, &mut rng);
            }
        })
    });
    let packed: Vec<Vec<u8>> = data.samples.iter().map(|s| decode_resized(&s.image, 48, 1).unwrap()).collect();
    group.bench_function("augment_224_from_prepared", |b| {
        let mut epoch = 0;
        b.iter(|| {
            epoch += 1;
            for (index, pixels) in packed.iter().enumerate() {
                let mut rng = SplitMix64::for_sample(1, epoch, index as u64);
                augmentation.apply(pixels, 48, 1, 224, &mut rng);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
