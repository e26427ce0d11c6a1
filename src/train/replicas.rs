//! Data-parallel training on several devices with Burn's collective operations
//! (`burn::collective`): one replica of the network per device, each driven by its own thread.
//!
//! Every step the global batch is split into one shard per device. Each replica runs its shard
//! forward; the shards' logits and embeddings are then gathered on every replica (an all-reduce
//! of zero-padded copies), so the Ad-Corre loss is computed on the *whole* batch exactly as on one
//! device: its Feature and Mean Discriminators correlate samples across the batch, and splitting
//! them per device would change the loss. Each replica backpropagates the loss's gradient for its
//! own rows through its network, `GradientsParams::all_reduce` sums the parameter gradients
//! across replicas (Burn's gradient exchange), and every replica takes the same Adam step, so the
//! trainable weights stay identical. Batch-norm statistics are those of each replica's shard (as
//! in PyTorch's DDP without SyncBatchNorm); checkpoints carry replica 0's running statistics.
//! Burn's collective state is global per backend: one multi-device run at a time per process.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorPrimitive;

use super::optimizer::ModelOptimizer;
use crate::backend::AdCorreAutodiffBackend;
use crate::error::{AdCorreError, Result};
use crate::loss::{AdCorreLoss, LossValues};
use crate::model::AdCorreNet;

type Inner<B> = <B as AutodiffBackend>::InnerBackend;

/// What a replica reports after a step: the loss of the global batch and its predictions.
pub(crate) struct StepOutput {
    pub values: LossValues,
    pub predictions: Vec<usize>,
}

/// A replica's current model, optimizer and loss state (for evaluation and checkpoints).
pub(crate) struct Snapshot<B: AdCorreAutodiffBackend> {
    pub model: AdCorreNet<B>,
    pub optimizer: ModelOptimizer<B>,
    pub loss: AdCorreLoss,
}

enum Command<B: AdCorreAutodiffBackend> {
    Step {
        /// This replica's rows of the batch, `[shard, 3, h, w]`.
        images: Tensor<Inner<B>, 4>,
        /// The labels of the whole batch.
        labels: Arc<Vec<usize>>,
        /// Where this replica's rows start in the batch.
        offset: usize,
        learning_rate: f64,
    },
    Snapshot,
}

enum Reply<B: AdCorreAutodiffBackend> {
    Step(Result<StepOutput>),
    Snapshot(Box<Snapshot<B>>),
}

struct Replica<B: AdCorreAutodiffBackend> {
    commands: Sender<Command<B>>,
    replies: Receiver<Reply<B>>,
    thread: Option<JoinHandle<()>>,
}

/// The replicas of a data-parallel run, one per device.
pub(crate) struct Replicas<B: AdCorreAutodiffBackend> {
    replicas: Vec<Replica<B>>,
    devices: Vec<B::Device>,
}

impl<B: AdCorreAutodiffBackend> Replicas<B> {
    /// Starts one replica of `model` (with a copy of `optimizer` and `loss`) per device.
    pub fn start(
        model: AdCorreNet<B>,
        optimizer: ModelOptimizer<B>,
        loss: AdCorreLoss,
        devices: &[B::Device],
    ) -> Result<Self> {
        collective::reset_collective::<Inner<B>>();
        let config = CollectiveConfig::default().with_num_devices(devices.len());
        let replicas = devices
            .iter()
            .enumerate()
            .map(|(index, device)| {
                let (commands, inbox) = channel::<Command<B>>();
                let (outbox, replies) = channel::<Reply<B>>();
                let worker = Worker {
                    peer: PeerId::from(index as u32),
                    device: device.clone(),
                    model: model.clone().fork(device),
                    optimizer: optimizer.clone(),
                    loss: loss.clone(),
                };
                let config = config.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("adcorre-replica-{index}"))
                    .spawn(move || worker.run(config, inbox, outbox))
                    .map_err(|err| AdCorreError::Devices(format!("cannot start replica {index}: {err}")))?;
                Ok(Replica { commands, replies, thread: Some(thread) })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { replicas, devices: devices.to_vec() })
    }

    /// One step on a global batch `[n, 3, h, w]` with its labels. `None` when the batch has
    /// fewer images than there are devices (it is skipped: every replica needs a shard).
    pub fn step(&mut self, images: Tensor<B, 4>, labels: &[usize], learning_rate: f64) -> Result<Option<StepOutput>> {
        let count = labels.len();
        let replicas = self.replicas.len();
        if count < replicas {
            return Ok(None);
        }
        let images = images.inner();
        let labels = Arc::new(labels.to_vec());
        let mut offset = 0;
        for (index, replica) in self.replicas.iter().enumerate() {
            let rows = count / replicas + usize::from(index < count % replicas);
            let shard = images.clone().slice(offset..offset + rows).to_device(&self.devices[index]);
            let command = Command::Step { images: shard, labels: labels.clone(), offset, learning_rate };
            replica.commands.send(command).map_err(|_| stopped(index))?;
            offset += rows;
        }
        // Every replica's reply is read before an error is returned, so that none is left
        // queued for the next command.
        let mut outputs = Vec::with_capacity(replicas);
        for (index, replica) in self.replicas.iter().enumerate() {
            outputs.push(match replica.replies.recv().map_err(|_| stopped(index))? {
                Reply::Step(output) => output,
                Reply::Snapshot(_) => Err(AdCorreError::Devices("unexpected reply".into())),
            });
        }
        let mut first = None;
        for output in outputs {
            first.get_or_insert(output?);
        }
        Ok(first)
    }

    /// Replica `index`'s model, optimizer and loss state (replica 0's is what checkpoints hold).
    pub fn snapshot(&mut self, index: usize) -> Result<Snapshot<B>> {
        let replica = &self.replicas[index];
        replica.commands.send(Command::Snapshot).map_err(|_| stopped(index))?;
        match replica.replies.recv().map_err(|_| stopped(index))? {
            Reply::Snapshot(snapshot) => Ok(*snapshot),
            Reply::Step(_) => Err(AdCorreError::Devices("unexpected reply".into())),
        }
    }
}

impl<B: AdCorreAutodiffBackend> Drop for Replicas<B> {
    fn drop(&mut self) {
        for replica in &mut self.replicas {
            let (closed, _) = channel();
            drop(std::mem::replace(&mut replica.commands, closed));
        }
        for replica in &mut self.replicas {
            if let Some(thread) = replica.thread.take() {
                thread.join().ok();
            }
        }
    }
}

fn stopped(index: usize) -> AdCorreError {
    AdCorreError::Devices(format!("replica {index} stopped"))
}

/// The state one replica thread owns.
struct Worker<B: AdCorreAutodiffBackend> {
    peer: PeerId,
    device: B::Device,
    model: AdCorreNet<B>,
    optimizer: ModelOptimizer<B>,
    loss: AdCorreLoss,
}

impl<B: AdCorreAutodiffBackend> Worker<B> {
    fn run(self, config: CollectiveConfig, inbox: Receiver<Command<B>>, outbox: Sender<Reply<B>>) {
        let Worker { peer, device, mut model, mut optimizer, mut loss } = self;
        let registered = collective::register::<Inner<B>>(peer, device.clone(), config)
            .map_err(|err| format!("cannot register replica {peer}: {err:?}"));
        while let Ok(command) = inbox.recv() {
            let reply = match command {
                Command::Step { images, labels, offset, learning_rate } => {
                    let gradients = match &registered {
                        Ok(()) => replica_gradients(peer, &model, &mut loss, images, &labels, offset),
                        Err(why) => Err(AdCorreError::Devices(why.clone())),
                    };
                    match gradients {
                        Ok((gradients, output)) => {
                            model = optimizer.step(learning_rate, model, gradients);
                            Reply::Step(Ok(output))
                        }
                        Err(err) => Reply::Step(Err(err)),
                    }
                }
                Command::Snapshot => Reply::Snapshot(Box::new(Snapshot {
                    model: model.clone(),
                    optimizer: optimizer.clone(),
                    loss: loss.clone(),
                })),
            };
            if outbox.send(reply).is_err() {
                break;
            }
        }
        if registered.is_ok() {
            collective::finish_collective::<Inner<B>>(peer).ok();
        }
    }
}

/// One replica's part of a step: the loss of the whole batch (gathered from all replicas) and
/// the parameter gradients summed over replicas.
fn replica_gradients<B: AdCorreAutodiffBackend>(
    peer: PeerId,
    model: &AdCorreNet<B>,
    loss: &mut AdCorreLoss,
    images: Tensor<Inner<B>, 4>,
    labels: &[usize],
    offset: usize,
) -> Result<(GradientsParams, StepOutput)> {
    let out = model.forward(Tensor::from_inner(images));
    let [rows, classes] = out.logits.dims();
    let [heads, _, dim] = out.embeddings.dims();
    let count = labels.len();

    // The whole batch's logits and embeddings, as leaves of a graph of the loss alone.
    let logits = gather(peer, out.logits.clone().inner(), 0, offset, count)?;
    let embeddings = gather(peer, out.embeddings.clone().inner(), 1, offset, count)?;
    let logits = Tensor::<B, 2>::from_inner(logits).require_grad();
    let embeddings = Tensor::<B, 3>::from_inner(embeddings).require_grad();
    let terms = loss.forward(logits.clone(), embeddings.clone(), labels)?;
    let values = terms.values()?;
    let loss_grads = terms.total.backward();
    let missing = || AdCorreError::Devices("the loss has no gradient for its inputs".into());
    let logits_grad = logits.grad(&loss_grads).ok_or_else(missing)?.slice([offset..offset + rows, 0..classes]);
    let embeddings_grad =
        embeddings.grad(&loss_grads).ok_or_else(missing)?.slice([0..heads, offset..offset + rows, 0..dim]);

    // This replica's share of the gradient: its rows' loss gradients backpropagated through its
    // network; the shares of all replicas sum to the gradient of the whole batch's loss.
    let share = (out.logits * Tensor::from_inner(logits_grad)).sum()
        + (out.embeddings * Tensor::from_inner(embeddings_grad)).sum();
    let gradients = GradientsParams::from_grads(share.backward(), model)
        .all_reduce::<Inner<B>>(peer, ReduceOperation::Sum)
        .map_err(|err| AdCorreError::Devices(format!("gradient all-reduce failed: {err:?}")))?;
    Ok((gradients, StepOutput { values, predictions: terms.predictions }))
}

/// All replicas' rows of a tensor split along `dim`: each replica contributes its rows at
/// `offset` in a zero tensor of the whole batch's size, and an all-reduce sums them (exactly,
/// since every other contribution is zero).
fn gather<B: Backend, const D: usize>(
    peer: PeerId,
    local: Tensor<B, D>,
    dim: usize,
    offset: usize,
    count: usize,
) -> Result<Tensor<B, D>> {
    let mut dims = local.dims();
    let rows = dims[dim];
    dims[dim] = count;
    let ranges: [std::ops::Range<usize>; D] =
        std::array::from_fn(|axis| if axis == dim { offset..offset + rows } else { 0..dims[axis] });
    let padded = Tensor::<B, D>::zeros(dims, &local.device()).slice_assign(ranges, local);
    let summed = collective::all_reduce::<B>(peer, padded.into_primitive().tensor(), ReduceOperation::Sum)
        .map_err(|err| AdCorreError::Devices(format!("all-reduce of the batch's outputs failed: {err:?}")))?;
    Ok(Tensor::from_primitive(TensorPrimitive::Float(summed)))
}

#[cfg(test)]
mod tests {
    use crate::train::optimizer::model_optimizer;
    use burn::tensor::Distribution;

    use super::*;
    use crate::backend::CpuAutodiff;
    use crate::loss::AdCorreLossConfig;
    use crate::model::{AdCorreNetConfig, XceptionConfig};
    use crate::train::state::Engine;

    fn trainable(model: &AdCorreNet<CpuAutodiff>) -> Vec<f32> {
        let mut all = model.classifier.weight.val().into_data().to_vec::<f32>().unwrap();
        all.extend(model.heads.projection.weight.val().into_data().to_vec::<f32>().unwrap());
        all.extend(model.backbone.block1_conv1.conv.weight.val().into_data().to_vec::<f32>().unwrap());
        all
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// Two replicas given two copies of the same 4 images (labelled differently, so that their
    /// gradient shares differ) see, shard by shard, the batch-norm statistics of the whole batch,
    /// so they must take the steps one device takes on the whole batch: the same loss values and
    /// the same weights.
    #[test]
    fn two_replicas_on_duplicated_shards_equal_one_device() {
        let device = Default::default();
        let network = AdCorreNetConfig::new()
            .with_backbone(XceptionConfig::new().with_width(0.125).with_middle_blocks(1))
            .with_num_heads(3)
            .with_embedding_dim(8)
            .with_dropout(0.0);
        <CpuAutodiff as Backend>::seed(&device, 11);
        let model = network.init::<CpuAutodiff>(&device);
        let initial = trainable(&model);
        // Adam divides each gradient by its own magnitude, which turns rounding-level
        // differences of near-zero gradients into full-size steps; a large epsilon keeps those
        // steps small so that the comparison measures the data-parallel machinery.
        let optimizer: ModelOptimizer<CpuAutodiff> = model_optimizer(1e-2);
        let loss = AdCorreLossConfig::default().init(7).unwrap();
        let half = Tensor::<CpuAutodiff, 4>::random([4, 3, 32, 32], Distribution::Uniform(0.0, 1.0), &device);
        let images = Tensor::cat(vec![half.clone(), half], 0);
        let labels = [0, 3, 6, 3, 1, 3, 2, 5];

        let mut single = Engine::Local(model.clone(), optimizer.clone());
        let mut single_loss = loss.clone();
        let mut replicated = Engine::Replicated(Replicas::start(model, optimizer, loss.clone(), &[device, device]).unwrap());
        let mut replicated_loss = loss;
        for step in 0..3 {
            let (next, one) = single.step(images.clone(), &labels, 1e-3, &mut single_loss);
            single = next;
            let (next, two) = replicated.step(images.clone(), &labels, 1e-3, &mut replicated_loss);
            replicated = next;
            let (one, two) = (one.unwrap().unwrap(), two.unwrap().unwrap());
            assert_eq!(one.predictions, two.predictions);
            for (a, b, name) in [
                (one.values.total, two.values.total, "total"),
                (one.values.ce, two.values.ce, "ce"),
                (one.values.fd, two.values.fd, "fd"),
                (one.values.md, two.values.md, "md"),
                (one.values.ed, two.values.ed, "ed"),
            ] {
                assert!((a - b).abs() <= 1e-4 * a.abs().max(1e-3), "step {step} {name}: {a} vs {b}");
            }
        }
        let (single_model, _) = single.current(&mut single_loss).unwrap();
        let Engine::Replicated(mut replicas) = replicated else { unreachable!() };
        let snapshots = [replicas.snapshot(0).unwrap(), replicas.snapshot(1).unwrap()];
        let (first, second) = (trainable(&snapshots[0].model), trainable(&snapshots[1].model));
        assert_eq!(first, second, "the replicas' weights drifted apart");
        let moved = max_abs_diff(&trainable(&single_model), &initial);
        let difference = max_abs_diff(&trainable(&single_model), &first);
        println!("weights moved by up to {moved}; one device vs replicas: {difference}");
        assert!(difference < 1e-5, "replicated weights differ from one device's by {difference}");
        assert!(moved > 1e-3, "training did not move the weights ({moved})");
        assert_eq!(snapshots[0].loss, single_loss, "the confusion windows differ");
    }
}
