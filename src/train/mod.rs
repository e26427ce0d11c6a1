//! Training and evaluation: [`TrainModel`] (the release's entry point) runs the Ad-Corre loss
//! over a dataset with Adam and Keras-style learning-rate decay, evaluates after every epoch,
//! writes checkpoints atomically and can resume.
//!
//! ```no_run
//! use adcorre::data::{DatasetName, DatasetType};
//! use adcorre::train::TrainModel;
//!
//! // FER-2013 from its folders (train/, test/ by class), 10 epochs; checkpoints go to ./runs.
//! let report = TrainModel::new(DatasetName::Fer2013, DatasetType::Train)
//!     .data_root("fer2013")
//!     .epochs(10)
//!     .train("xcp", "./runs")?;
//! println!("last epoch: {:.4} accuracy", report.epochs.last().map_or(0.0, |m| m.accuracy));
//! # Ok::<(), adcorre::AdCorreError>(())
//! ```

pub mod optimizer;
mod replicas;
pub mod state;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::{AdCorreAutodiffBackend, AdCorreBackend};
use crate::data::augment::Augmentation;
use crate::data::pipeline::{face_loader, FaceDataset, FaceDatasetConfig};
use crate::data::{load_dataset, prepare, DatasetName, DatasetType, PackedImages};
use crate::error::{AdCorreError, Result};
use crate::loss::{argmax_rows, AdCorreLossConfig};
use crate::metrics::{ConfusionMatrix, EvalMetrics};
use crate::model::{save_model, AdCorreNet, AdCorreNetConfig, ModelCard, TestTimeViews};
use state::TrainingRun;

/// The architectures `train` accepts.
pub const ARCHITECTURES: [&str; 1] = ["xcp"];

/// Everything that shapes a training run (serialisable, so a run can be described by a file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The network (the published architecture by default).
    #[serde(deserialize_with = "crate::model::adcorre_net::network_with_defaults")]
    pub network: AdCorreNetConfig,
    /// The loss (CE x 50 + adaptive FD + MD + ED by default).
    pub loss: AdCorreLossConfig,
    /// Number of epochs.
    pub epochs: usize,
    /// Samples per training step (the release uses 50).
    pub batch_size: usize,
    /// Adam learning rate (1e-3 as the release).
    pub learning_rate: f64,
    /// Keras-style decay: `lr / (1 + decay * step)` (1e-5 as the release); used by the
    /// `keras_decay` schedule.
    pub lr_decay: f64,
    /// How the learning rate moves over the run (the release's Keras decay by default).
    pub lr_schedule: LrSchedule,
    /// Network input side; images are resized to it.
    pub input_size: usize,
    /// Training augmentation (`None` = resize only).
    pub augmentation: Option<Augmentation>,
    /// Draw training samples class-balanced.
    pub class_balanced: bool,
    /// Train on a class-balanced subset: at most this many images per class, drawn with
    /// `seed` (`None` = the whole training split). Evaluation always uses the whole split.
    pub max_per_class: Option<usize>,
    /// Seed of initialisation, data order, augmentation and dropout.
    pub seed: u64,
    /// Data-loading worker threads (0 = on the training thread).
    pub workers: usize,
    /// Devices to train on, by index (CUDA GPU numbers). Several devices train data-parallel:
    /// each step's batch is split across them. The CPU has one device; listing it n times
    /// runs n replicas on it in parallel threads.
    pub devices: Vec<usize>,
    /// Batch size of evaluation.
    pub eval_batch_size: usize,
    /// Stop after this many training steps in total (for smoke tests); `None` = all epochs.
    pub max_steps: Option<usize>,
    /// Wall-clock budget of this run in seconds: when it is spent, the current epoch ends
    /// early (evaluated and checkpointed like any other) and training stops. `None` = no limit.
    pub time_budget_s: Option<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            network: AdCorreNetConfig::new(),
            loss: AdCorreLossConfig::default(),
            epochs: 10,
            batch_size: 50,
            learning_rate: 1e-3,
            lr_decay: 1e-5,
            lr_schedule: LrSchedule::KerasDecay,
            input_size: 224,
            augmentation: Some(Augmentation::default()),
            class_balanced: false,
            max_per_class: None,
            seed: 0,
            workers: 2,
            devices: vec![0],
            eval_batch_size: 32,
            max_steps: None,
            time_budget_s: None,
        }
    }
}

impl TrainConfig {
    /// Reads a JSON config file (missing fields take their defaults).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|err| AdCorreError::io(path, err))?;
        serde_json::from_str(&text)
            .map_err(|err| AdCorreError::Config(format!("{}: {err}", path.display())))
    }

    /// Checks that the configuration describes a run that can start.
    pub fn validate(&self) -> Result<()> {
        self.network.validate()?;
        self.loss.validate()?;
        if self.batch_size == 0 || self.epochs == 0 || self.eval_batch_size == 0 || self.max_per_class == Some(0) {
            return Err(AdCorreError::Config("epochs, batch sizes and max_per_class must be at least 1".into()));
        }
        if self.devices.is_empty() {
            return Err(AdCorreError::Config("the device list is empty".into()));
        }
        if self.devices.len() > self.batch_size {
            return Err(AdCorreError::Config(format!(
                "a batch of {} cannot be split across {} devices",
                self.batch_size,
                self.devices.len()
            )));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0 && self.lr_decay >= 0.0) {
            return Err(AdCorreError::Config("learning rate must be positive, decay non-negative".into()));
        }
        if self.input_size < crate::model::xception::MIN_INPUT_SIZE {
            return Err(AdCorreError::Config(format!("input size {} is too small", self.input_size)));
        }
        Ok(())
    }

    /// The learning rate at `step` of a run of `total_steps` steps.
    pub fn learning_rate_at(&self, step: usize, total_steps: usize) -> f64 {
        match self.lr_schedule {
            LrSchedule::KerasDecay => self.learning_rate / (1.0 + self.lr_decay * step as f64),
            LrSchedule::Cosine { warmup_steps } => {
                if step < warmup_steps {
                    return self.learning_rate * (step + 1) as f64 / warmup_steps as f64;
                }
                let span = total_steps.saturating_sub(warmup_steps).max(1) as f64;
                let progress = ((step - warmup_steps) as f64 / span).min(1.0);
                self.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// Learning-rate schedules.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Keras' time-based decay `lr / (1 + lr_decay * step)` (the release).
    #[default]
    KerasDecay,
    /// Linear warm-up over `warmup_steps`, then a half cosine from `learning_rate` to 0 at
    /// the last step of the configured epochs.
    Cosine {
        /// Steps of the linear warm-up from `learning_rate / warmup_steps`.
        warmup_steps: usize,
    },
}

/// What a finished run reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Metrics after each epoch of this run (resumed epochs included from the state).
    pub epochs: Vec<EvalMetrics>,
    /// The checkpoint with the best evaluation accuracy.
    pub best_checkpoint: Option<PathBuf>,
    /// Training steps done in total.
    pub steps: usize,
    /// The loss terms of every step of this run, in order.
    pub step_losses: Vec<crate::loss::LossValues>,
}

/// The release's training entry point:
/// `TrainModel::new(DatasetName::AffectNet, DatasetType::Train7).train("xcp", "./")`.
pub struct TrainModel {
    dataset: DatasetName,
    kind: DatasetType,
    data_root: PathBuf,
    config: TrainConfig,
    prepared: Option<(Arc<PackedImages>, Arc<PackedImages>)>,
    quiet: bool,
}

impl TrainModel {
    /// Training on a split of a dataset (data under `./<dataset name>` unless
    /// [`TrainModel::data_root`] says otherwise), evaluated on the matching evaluation split.
    pub fn new(dataset: DatasetName, kind: DatasetType) -> Self {
        Self {
            dataset,
            kind,
            data_root: PathBuf::from(format!("{dataset:?}")),
            config: TrainConfig::default(),
            prepared: None,
            quiet: false,
        }
    }

    /// Where the dataset lives.
    pub fn data_root(mut self, path: impl Into<PathBuf>) -> Self {
        self.data_root = path.into();
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: TrainConfig) -> Self {
        self.config = config;
        self
    }

    /// Number of epochs.
    pub fn epochs(mut self, epochs: usize) -> Self {
        self.config.epochs = epochs;
        self
    }

    /// Training batch size.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.config.batch_size = batch_size;
        self
    }

    /// Adam learning rate.
    pub fn learning_rate(mut self, learning_rate: f64) -> Self {
        self.config.learning_rate = learning_rate;
        self
    }

    /// The loss configuration.
    pub fn loss(mut self, loss: AdCorreLossConfig) -> Self {
        self.config.loss = loss;
        self
    }

    /// The network configuration.
    pub fn network(mut self, network: AdCorreNetConfig) -> Self {
        self.config.network = network;
        self
    }

    /// Network input side.
    pub fn input_size(mut self, size: usize) -> Self {
        self.config.input_size = size;
        self
    }

    /// The devices to train on, by index (see [`TrainConfig::devices`]).
    pub fn devices(mut self, devices: Vec<usize>) -> Self {
        self.config.devices = devices;
        self
    }

    /// The seed of the run.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }

    /// Trains on data already prepared (train, eval) instead of loading the dataset.
    pub fn with_prepared(mut self, train: PackedImages, eval: PackedImages) -> Self {
        self.prepared = Some((Arc::new(train), Arc::new(eval)));
        self
    }

    /// No progress bar (for tests and logs).
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// The configuration as it stands.
    pub fn current_config(&self) -> &TrainConfig {
        &self.config
    }

    /// Trains architecture `arch` ("xcp") on the default backend (CUDA with the `cuda`
    /// feature, else the CPU) and the configured devices. `weight_path` is a model file to start
    /// from, or a directory to write into (resuming the run found there, if any).
    pub fn train(&self, arch: &str, weight_path: impl AsRef<Path>) -> Result<TrainReport> {
        #[cfg(feature = "cuda")]
        type Train = crate::backend::Autodiff<crate::backend::Cuda>;
        #[cfg(not(feature = "cuda"))]
        type Train = crate::backend::CpuAutodiff;
        let devices: Vec<_> = self.config.devices.iter().map(|&index| device_by_index::<Train>(index)).collect();
        self.train_on_devices::<Train>(arch, weight_path.as_ref(), &devices)
    }

    /// [`TrainModel::train`] on a chosen autodiff backend and device.
    pub fn train_on<B: AdCorreAutodiffBackend>(
        &self,
        arch: &str,
        weight_path: &Path,
        device: &B::Device,
    ) -> Result<TrainReport> {
        self.train_on_devices::<B>(arch, weight_path, std::slice::from_ref(device))
    }

    /// [`TrainModel::train`] on a chosen autodiff backend, data-parallel over `devices` (the
    /// configured device indices are not used). The first device holds data loading,
    /// evaluation and checkpoints.
    pub fn train_on_devices<B: AdCorreAutodiffBackend>(
        &self,
        arch: &str,
        weight_path: &Path,
        devices: &[B::Device],
    ) -> Result<TrainReport> {
        if !ARCHITECTURES.contains(&arch) {
            return Err(AdCorreError::Config(format!(
                "unknown architecture '{arch}' (valid: {})",
                ARCHITECTURES.join(", ")
            )));
        }
        self.config.validate()?;
        if devices.len() > 1 && !B::MOVES_TENSORS_BETWEEN_DEVICES {
            return Err(AdCorreError::Devices(format!(
                "{} devices asked for, but this backend cannot move tensors between devices (wgpu: \
                 cubecl-wgpu 0.10 has no device-to-device transfer): train on one device, or on CUDA",
                devices.len()
            )));
        }
        let (out_dir, start_from) = if weight_path.is_file() {
            let parent = weight_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            (parent.to_path_buf(), Some(weight_path.to_path_buf()))
        } else {
            (weight_path.to_path_buf(), None)
        };
        std::fs::create_dir_all(&out_dir).map_err(|err| AdCorreError::io(&out_dir, err))?;
        let (train, eval) = self.data()?;
        if train.num_classes != self.config.network.num_classes {
            return Err(AdCorreError::Config(format!(
                "the data has {} classes, the network {}",
                train.num_classes, self.config.network.num_classes
            )));
        }
        let run = TrainingRun {
            out_dir,
            dataset_name: format!("{:?}", self.dataset),
            config: self.config.clone(),
            quiet: self.quiet,
        };
        run.train::<B>(train, eval, start_from.as_deref(), devices)
    }

    fn data(&self) -> Result<(Arc<PackedImages>, Arc<PackedImages>)> {
        if let Some((train, eval)) = &self.prepared {
            return Ok((train.clone(), eval.clone()));
        }
        let eval_kind = if self.kind.seven_classes() { DatasetType::Eval7 } else { DatasetType::Eval };
        let (side, channels) = self.dataset.prepared_format(self.config.input_size);
        let load = |kind: DatasetType| -> Result<PackedImages> {
            let mut dataset = load_dataset(self.dataset, kind, &self.data_root)?;
            if let (Some(per_class), true) = (self.config.max_per_class, kind.is_train()) {
                dataset = dataset.class_subset(per_class, self.config.seed);
            }
            if dataset.is_empty() {
                return Err(AdCorreError::Config(format!("{}: no samples", dataset.description)));
            }
            prepare(&dataset, side, channels, &|_| {})
        };
        Ok((Arc::new(load(self.kind)?), Arc::new(load(eval_kind)?)))
    }
}

/// The device numbered `index` of a backend (CUDA GPU `index`; the CPU backends have one).
pub fn device_by_index<B: Backend>(index: usize) -> B::Device {
    use burn::tensor::backend::{Device as _, DeviceId};
    B::Device::from_id(DeviceId::new(0, index as u16))
}

/// Evaluates `model` on prepared data: resized like `TestModels` (no augmentation), with the
/// the test-time views asked for ([`AdCorreNet::forward_test_time`]).
pub fn evaluate<B: AdCorreBackend>(
    model: &AdCorreNet<B>,
    data: &Arc<PackedImages>,
    input_size: usize,
    batch_size: usize,
    views: TestTimeViews,
    device: &B::Device,
) -> Result<EvalMetrics> {
    let dataset = FaceDataset::new(data.clone(), FaceDatasetConfig::eval(input_size));
    let mut confusion = ConfusionMatrix::new(model.num_classes());
    for batch in face_loader::<B>(dataset, batch_size, 0, device).iter() {
        let output = model.forward_test_time(batch.images, views);
        let predictions = argmax_rows(output.logits);
        confusion.add(&batch.labels, &predictions)?;
    }
    Ok(confusion.metrics())
}

/// Writes a run's per-step log line (CSV with header on creation).
pub(crate) fn append_log(path: &Path, line: &str) -> Result<()> {
    let exists = path.exists();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|err| AdCorreError::io(path, err))?;
    if !exists {
        writeln!(file, "epoch,step,learning_rate,total,ce,fd,md,ed,batch_accuracy")
            .map_err(|err| AdCorreError::io(path, err))?;
    }
    writeln!(file, "{line}").map_err(|err| AdCorreError::io(path, err))
}

/// Cuts the step log back to the steps a resumed run keeps (`steps`, those of the checkpoint it
/// resumes from): lines written after that checkpoint by a run that was killed, the last one
/// perhaps half-written, would otherwise be there twice. Rewritten atomically.
pub(crate) fn truncate_log(path: &Path, steps: usize) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(AdCorreError::io(path, err)),
    };
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let fields = header.split(',').count();
    let kept: Vec<&str> = lines
        .take_while(|line| {
            let values: Vec<&str> = line.split(',').collect();
            values.len() == fields && values[1].parse::<usize>().is_ok_and(|step| step <= steps)
        })
        .collect();
    if kept.is_empty() {
        return std::fs::remove_file(path).map_err(|err| AdCorreError::io(path, err));
    }
    let mut out = String::with_capacity(text.len());
    for line in std::iter::once(header).chain(kept) {
        out.push_str(line);
        out.push('\n');
    }
    crate::atomic_file::write_atomically(path, out.as_bytes())
}

/// Saves `model` (an autodiff model's inner network) as a checkpoint with its card.
pub(crate) fn save_checkpoint<B: AdCorreAutodiffBackend>(
    model: &AdCorreNet<B>,
    card: &ModelCard,
    path: &Path,
) -> Result<()> {
    save_model(&model.valid(), card, path)
}
