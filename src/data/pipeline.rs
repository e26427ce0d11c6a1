//! The training input pipeline on Burn's data API: a [`FaceDataset`] (burn `Dataset`) that
//! resizes and augments prepared faces on the fly, a [`FaceBatcher`] (burn `Batcher`) that
//! stacks them into `[B, 3, H, W]` tensors, and [`face_loader`] to run both in worker threads.
//! Epoch order, augmentation and class-balanced sampling are reproducible from a seed.

use std::sync::{Arc, RwLock};

use burn::data::dataloader::{batcher::Batcher, DataLoader, DataLoaderBuilder};
use burn::data::dataset::Dataset;
use burn::prelude::*;

use super::augment::{Augmentation, SplitMix64};
use super::prepared::PackedImages;
use crate::infer::preprocess::image_to_chw;

/// One face ready for the network: `3 x size x size` RGB in [0, 1] (CHW) and its label.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceItem {
    /// CHW pixels.
    pub pixels: Vec<f32>,
    /// Label in the release's order.
    pub label: usize,
}

/// How a [`FaceDataset`] orders and transforms its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceDatasetConfig {
    /// Network input side.
    pub size: usize,
    /// Random transforms (`None` for evaluation: plain anti-aliased resize, as `TestModels`).
    pub augmentation: Option<Augmentation>,
    /// Shuffle the order every epoch.
    pub shuffle: bool,
    /// Draw samples so that every class present is equally likely (with replacement).
    pub class_balanced: bool,
    /// Seed of order, sampling and augmentation.
    pub seed: u64,
}

impl FaceDatasetConfig {
    /// Training: augmentation, shuffling, given input size and seed.
    pub fn train(size: usize, seed: u64) -> Self {
        Self {
            size,
            augmentation: Some(Augmentation::default()),
            shuffle: true,
            class_balanced: false,
            seed,
        }
    }

    /// Evaluation: file order, no augmentation.
    pub fn eval(size: usize) -> Self {
        Self {
            size,
            augmentation: None,
            shuffle: false,
            class_balanced: false,
            seed: 0,
        }
    }
}

/// Prepared faces served as [`FaceItem`]s; a cheap handle (clones share the data and the
/// epoch state, so a training loop can advance the epoch of a dataset a loader holds).
#[derive(Clone)]
pub struct FaceDataset {
    packed: Arc<PackedImages>,
    config: FaceDatasetConfig,
    /// (epoch, the sample index served at each position).
    order: Arc<RwLock<(u64, Vec<usize>)>>,
}

impl FaceDataset {
    /// Serves `packed` as configured, starting at epoch 0.
    pub fn new(packed: Arc<PackedImages>, config: FaceDatasetConfig) -> Self {
        let dataset = Self {
            packed,
            config,
            order: Arc::new(RwLock::new((0, Vec::new()))),
        };
        dataset.set_epoch(0);
        dataset
    }

    /// Recomputes the order (shuffle / class-balanced draw) and augmentation streams for
    /// `epoch`; call before iterating each epoch.
    pub fn set_epoch(&self, epoch: u64) {
        let n = self.packed.len();
        let mut rng = SplitMix64::for_sample(self.config.seed, epoch, u64::MAX);
        let mut order: Vec<usize> = if self.config.class_balanced {
            let mut members: Vec<Vec<usize>> = vec![Vec::new(); self.packed.num_classes];
            for (index, &label) in self.packed.labels.iter().enumerate() {
                members[label].push(index);
            }
            members.retain(|m| !m.is_empty());
            (0..n)
                .map(|_| {
                    let class = &members[rng.below(members.len())];
                    class[rng.below(class.len())]
                })
                .collect()
        } else {
            (0..n).collect()
        };
        if self.config.shuffle {
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
        }
        *self.order.write().unwrap_or_else(|e| e.into_inner()) = (epoch, order);
    }

    /// The labels in serving order of the current epoch.
    pub fn labels(&self) -> Vec<usize> {
        let order = self.order.read().unwrap_or_else(|e| e.into_inner());
        order.1.iter().map(|&i| self.packed.labels[i]).collect()
    }
}

impl Dataset<FaceItem> for FaceDataset {
    fn get(&self, position: usize) -> Option<FaceItem> {
        let (epoch, index) = {
            let order = self.order.read().unwrap_or_else(|e| e.into_inner());
            (order.0, *order.1.get(position)?)
        };
        let packed = &self.packed;
        let pixels = match &self.config.augmentation {
            Some(augmentation) => {
                let mut rng = SplitMix64::for_sample(self.config.seed, epoch, position as u64);
                augmentation.apply(packed.image(index), packed.side, packed.channels, self.config.size, &mut rng)
            }
            None => image_to_chw(&packed.to_image(index), self.config.size),
        };
        Some(FaceItem {
            pixels,
            label: packed.labels[index],
        })
    }

    fn len(&self) -> usize {
        self.packed.len()
    }
}

/// A batch for the network.
#[derive(Debug, Clone)]
pub struct FaceBatch<B: Backend> {
    /// `[B, 3, size, size]` RGB in [0, 1].
    pub images: Tensor<B, 4>,
    /// One label per image.
    pub labels: Vec<usize>,
}

/// Stacks [`FaceItem`]s into a [`FaceBatch`].
#[derive(Debug, Clone, Copy)]
pub struct FaceBatcher {
    /// Input side of the items.
    pub size: usize,
}

impl<B: Backend> Batcher<B, FaceItem, FaceBatch<B>> for FaceBatcher {
    fn batch(&self, items: Vec<FaceItem>, device: &B::Device) -> FaceBatch<B> {
        let n = items.len();
        let mut pixels = Vec::with_capacity(n * 3 * self.size * self.size);
        let mut labels = Vec::with_capacity(n);
        for item in items {
            pixels.extend(item.pixels);
            labels.push(item.label);
        }
        FaceBatch {
            images: Tensor::from_data(TensorData::new(pixels, [n, 3, self.size, self.size]), device),
            labels,
        }
    }
}

/// A Burn data loader over `dataset`: `batch_size` faces per batch, prepared by `workers`
/// threads (0 = on the calling thread), in the dataset's order (shuffling is the dataset's).
pub fn face_loader<B: Backend>(
    dataset: FaceDataset,
    batch_size: usize,
    workers: usize,
    device: &B::Device,
) -> Arc<dyn DataLoader<B, FaceBatch<B>>> {
    let size = dataset.config.size;
    let mut builder = DataLoaderBuilder::new(FaceBatcher { size })
        .batch_size(batch_size.max(1))
        .set_device(device.clone());
    if workers > 0 {
        builder = builder.num_workers(workers);
    }
    builder.build(dataset)
}
