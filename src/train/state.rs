//! The training loop and its resumable state. After every epoch the run writes
//! `resume-<epoch>/{model.mpk, optimizer.mpk}` and then, atomically, `state.json` naming that
//! folder: an interrupted write leaves the previous state usable.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use serde::{Deserialize, Serialize};

use super::optimizer::{model_optimizer, ModelOptimizer};
use super::replicas::{Replicas, StepOutput};
use super::{append_log, evaluate, save_checkpoint, truncate_log, TrainConfig, TrainReport};
use crate::atomic_file::{is_temporary, write_atomically};
use crate::backend::AdCorreAutodiffBackend;
use crate::data::pipeline::{face_loader, FaceDataset, FaceDatasetConfig};
use crate::data::PackedImages;
use crate::error::{AdCorreError, Result};
use crate::infer::load_network;
use crate::loss::AdCorreLoss;
use crate::metrics::plot::save_confusion_png;
use crate::metrics::EvalMetrics;
use crate::model::{load_model, AdCorreNet, ModelCard};

/// What `state.json` holds: where a run stands after its last complete epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Training steps completed.
    pub step: usize,
    /// The loss with its confusion window.
    pub loss: AdCorreLoss,
    /// Evaluation after each completed epoch.
    pub history: Vec<EvalMetrics>,
    /// Best evaluation accuracy so far and its checkpoint file name.
    pub best: Option<(f64, String)>,
    /// Folder (relative to the run's output) holding the model and optimizer of this state.
    pub folder: String,
    /// The configuration the run was started with.
    pub config: TrainConfig,
}

impl ResumeState {
    /// The state of a previous run in `out_dir`, if any.
    pub fn find(out_dir: &Path) -> Result<Option<Self>> {
        let path = out_dir.join("state.json");
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|err| AdCorreError::io(&path, err))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|err| AdCorreError::Config(format!("{}: unreadable resume state: {err}", path.display())))
    }
}

type StateRecorder = NamedMpkBytesRecorder<FullPrecisionSettings>;

/// One training run: where it writes and how it trains.
pub(crate) struct TrainingRun {
    pub out_dir: PathBuf,
    pub dataset_name: String,
    pub config: TrainConfig,
    pub quiet: bool,
}

impl TrainingRun {
    /// Trains on `devices` (data-parallel when there are several; the first holds the data
    /// loader, evaluation and checkpoints).
    pub fn train<B: AdCorreAutodiffBackend>(
        &self,
        train: Arc<PackedImages>,
        eval: Arc<PackedImages>,
        start_from: Option<&Path>,
        devices: &[B::Device],
    ) -> Result<TrainReport> {
        let config = &self.config;
        let device = devices
            .first()
            .ok_or_else(|| AdCorreError::Config("training needs at least one device".into()))?;
        B::seed(device, config.seed);
        let mut optimizer: ModelOptimizer<B> = model_optimizer(1e-7);
        let (model, mut state, card) = match ResumeState::find(&self.out_dir)? {
            Some(state) => {
                let folder = self.out_dir.join(&state.folder);
                let (model, card) = load_model::<B>(&folder.join("model.mpk"), device)?;
                let bytes_path = folder.join("optimizer.mpk");
                let bytes = std::fs::read(&bytes_path).map_err(|err| AdCorreError::io(&bytes_path, err))?;
                let record = crate::model::checkpoint::decode_record(bytes, device)
                    .map_err(|reason| AdCorreError::InvalidModelFile { path: bytes_path.clone(), reason })?;
                optimizer = optimizer.load_record(record);
                (model, state, card)
            }
            None => {
                let (model, network) = match start_from {
                    Some(path) => {
                        let (model, card) = load_network::<B>(path, device)?;
                        (model, card.network)
                    }
                    None => (config.network.init::<B>(device), config.network.clone()),
                };
                let card = ModelCard::new(network.clone())
                    .with_input_size(config.input_size)
                    .with_grayscale(train.channels == 1)
                    .with_source(format!("adcorre training on {}", self.dataset_name));
                let state = ResumeState {
                    epochs_done: 0,
                    step: 0,
                    loss: config.loss.init(network.num_classes)?,
                    history: Vec::new(),
                    best: None,
                    folder: String::new(),
                    config: config.clone(),
                };
                (model, state, card)
            }
        };

        let train_data = FaceDataset::new(
            train.clone(),
            FaceDatasetConfig {
                size: config.input_size,
                augmentation: config.augmentation,
                shuffle: true,
                class_balanced: config.class_balanced,
                seed: config.seed,
            },
        );
        let loader = face_loader::<B>(train_data.clone(), config.batch_size, config.workers, device);
        let steps_per_epoch = train.len().div_ceil(config.batch_size);
        let remaining = (config.epochs.saturating_sub(state.epochs_done) * steps_per_epoch) as u64;
        let bar = if self.quiet {
            indicatif::ProgressBar::hidden()
        } else {
            let bar = indicatif::ProgressBar::new(remaining);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} [{elapsed_precise} < {eta}] {msg}")
                    .expect("valid template"),
            );
            bar
        };
        let log_path = self.out_dir.join("training_log.csv");
        truncate_log(&log_path, state.step)?;
        remove_stale_temporaries(&self.out_dir);
        let mut step_losses = Vec::new();
        let mut running = (0usize, 0usize);
        let mut engine = if devices.len() > 1 {
            Engine::Replicated(Replicas::start(model, optimizer, state.loss.clone(), devices)?)
        } else {
            Engine::Local(model, optimizer)
        };

        let started = std::time::Instant::now();
        let budget_spent = || config.time_budget_s.is_some_and(|budget| started.elapsed().as_secs_f64() >= budget);
        for epoch in state.epochs_done..config.epochs {
            train_data.set_epoch(epoch as u64);
            B::seed(device, config.seed ^ ((epoch as u64 + 1) * 0x9E37_79B9));
            bar.set_prefix(format!("epoch {}/{}", epoch + 1, config.epochs));
            for batch in loader.iter() {
                if config.max_steps.is_some_and(|max| state.step >= max) {
                    bar.finish_and_clear();
                    return Ok(self.report(&state, step_losses));
                }
                if budget_spent() {
                    break;
                }
                let learning_rate = config.learning_rate_at(state.step, config.epochs * steps_per_epoch);
                let loss = &mut state.loss;
                let (next, output) = B::run_step(|| engine.step(batch.images, &batch.labels, learning_rate, loss));
                engine = next;
                let output = output.map_err(|err| match err {
                    AdCorreError::NonFinite(what) => AdCorreError::NonFinite(format!(
                        "{what} at epoch {} step {}; training stopped, the last checkpoint in {} is intact",
                        epoch + 1,
                        state.step + 1,
                        self.out_dir.display()
                    )),
                    other => other,
                })?;
                let Some(StepOutput { values, predictions }) = output else {
                    bar.inc(1);
                    continue;
                };
                state.step += 1;
                let correct = predictions.iter().zip(&batch.labels).filter(|(p, l)| p == l).count();
                running = (running.0 + correct, running.1 + batch.labels.len());
                append_log(
                    &log_path,
                    &format!(
                        "{},{},{learning_rate:e},{},{},{},{},{},{}",
                        epoch + 1,
                        state.step,
                        values.total,
                        values.ce,
                        values.fd,
                        values.md,
                        values.ed,
                        correct as f64 / batch.labels.len() as f64
                    ),
                )?;
                bar.inc(1);
                bar.set_message(format!(
                    "loss {:.3} (ce {:.3} fd {:.3} md {:.3} ed {:.3}) acc {:.3}",
                    values.total,
                    values.ce,
                    values.fd,
                    values.md,
                    values.ed,
                    running.0 as f64 / running.1.max(1) as f64
                ));
                step_losses.push(values);
            }
            let (model, optimizer) = engine.current(&mut state.loss)?;
            let inner = model.valid().fold_batch_norm();
            let inner_device = inner.devices()[0].clone();
            let metrics = evaluate(&inner, &eval, config.input_size, config.eval_batch_size, Default::default(), &inner_device)?;
            let name = format!("{}_{}_AC_{:.4}", epoch + 1, self.dataset_name, metrics.accuracy);
            save_checkpoint(&model, &card, &self.out_dir.join(format!("{name}.mpk")))?;
            let json = serde_json::to_vec_pretty(&metrics).expect("metrics serialise");
            write_atomically(&self.out_dir.join(format!("{name}.json")), &json)?;
            save_confusion_png(&metrics.confusion, &self.out_dir.join(format!("{name}_confusion.png")))?;
            if !self.quiet {
                bar.println(format!(
                    "epoch {}: eval accuracy {:.4}, average class accuracy {:.4} -> {name}.mpk",
                    epoch + 1,
                    metrics.accuracy,
                    metrics.average_class_accuracy
                ));
            }
            if state.best.as_ref().is_none_or(|(best, _)| metrics.accuracy > *best) {
                state.best = Some((metrics.accuracy, format!("{name}.mpk")));
            }
            state.history.push(metrics);
            state.epochs_done = epoch + 1;
            self.save_state(&model, &optimizer, &card, &mut state)?;
            if budget_spent() {
                if !self.quiet {
                    bar.println(format!("time budget spent: stopped after {} steps", state.step));
                }
                break;
            }
        }
        bar.finish_and_clear();
        Ok(self.report(&state, step_losses))
    }

    fn report(&self, state: &ResumeState, step_losses: Vec<crate::loss::LossValues>) -> TrainReport {
        TrainReport {
            epochs: state.history.clone(),
            best_checkpoint: state.best.as_ref().map(|(_, name)| self.out_dir.join(name)),
            steps: state.step,
            step_losses,
        }
    }

    /// Writes model and optimizer into a new `resume-<epoch>` folder, then `state.json`
    /// pointing at it, then removes the previous folder.
    fn save_state<B: AdCorreAutodiffBackend>(
        &self,
        model: &AdCorreNet<B>,
        optimizer: &ModelOptimizer<B>,
        card: &ModelCard,
        state: &mut ResumeState,
    ) -> Result<()> {
        let previous = std::mem::replace(&mut state.folder, format!("resume-{}", state.epochs_done));
        let folder = self.out_dir.join(&state.folder);
        std::fs::create_dir_all(&folder).map_err(|err| AdCorreError::io(&folder, err))?;
        save_checkpoint(model, card, &folder.join("model.mpk"))?;
        let bytes = Recorder::<B>::record(&StateRecorder::default(), optimizer.to_record(), ())
            .map_err(|err| AdCorreError::Config(format!("cannot serialise the optimizer: {err}")))?;
        write_atomically(&folder.join("optimizer.mpk"), &bytes)?;
        let json = serde_json::to_vec_pretty(&state).expect("state serialises");
        write_atomically(&self.out_dir.join("state.json"), &json)?;
        if !previous.is_empty() && previous != state.folder {
            std::fs::remove_dir_all(self.out_dir.join(previous)).ok();
        }
        Ok(())
    }
}

/// Removes the temporary files of writes a killed run left half-done (`.<name>.tmp-<pid>`, see
/// [`write_atomically`]) in the output folder and its resume folders; best effort.
fn remove_stale_temporaries(out_dir: &Path) {
    let folders = std::fs::read_dir(out_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .chain(std::iter::once(out_dir.to_path_buf()));
    for folder in folders {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            if is_temporary(&entry.file_name().to_string_lossy()) {
                std::fs::remove_file(entry.path()).ok();
            }
        }
    }
}

/// Who takes the training steps: the model on one device, or its replicas on several.
pub(crate) enum Engine<B: AdCorreAutodiffBackend> {
    Local(AdCorreNet<B>, ModelOptimizer<B>),
    Replicated(Replicas<B>),
}

impl<B: AdCorreAutodiffBackend> Engine<B> {
    /// One step on a batch; `Ok(None)` when the batch was skipped (fewer images than devices).
    pub(crate) fn step(
        self,
        images: Tensor<B, 4>,
        labels: &[usize],
        learning_rate: f64,
        loss: &mut AdCorreLoss,
    ) -> (Self, Result<Option<StepOutput>>) {
        match self {
            Engine::Local(model, mut optimizer) => {
                let out = model.forward(images);
                let step = loss
                    .forward(out.logits, out.embeddings, labels)
                    .and_then(|terms| Ok((terms.values()?, terms)));
                match step {
                    Ok((values, terms)) => {
                        let gradients = GradientsParams::from_grads(terms.total.backward(), &model);
                        let model = optimizer.step(learning_rate, model, gradients);
                        let output = StepOutput { values, predictions: terms.predictions };
                        (Engine::Local(model, optimizer), Ok(Some(output)))
                    }
                    Err(err) => (Engine::Local(model, optimizer), Err(err)),
                }
            }
            Engine::Replicated(mut replicas) => {
                let output = replicas.step(images, labels, learning_rate);
                (Engine::Replicated(replicas), output)
            }
        }
    }

    /// The model and optimizer as they stand (replica 0's with several devices, whose loss
    /// state then replaces `loss`).
    pub(crate) fn current(&mut self, loss: &mut AdCorreLoss) -> Result<(AdCorreNet<B>, ModelOptimizer<B>)> {
        match self {
            Engine::Local(model, optimizer) => Ok((model.clone(), optimizer.clone())),
            Engine::Replicated(replicas) => {
                let snapshot = replicas.snapshot(0)?;
                *loss = snapshot.loss;
                Ok((snapshot.model, snapshot.optimizer))
            }
        }
    }
}
