//! Training: the loss falls, the Ad-Corre terms matter, resume equals an uninterrupted run,
//! metrics, checkpoints.
#![cfg(feature = "cli")]

mod common;

use std::path::Path;

use adcorre::atomic_file::write_atomically;
use adcorre::backend::Cpu;
use adcorre::data::{DatasetName, DatasetType};
use adcorre::loss::AdCorreLossConfig;
use adcorre::metrics::ConfusionMatrix;
use adcorre::model::load_model;
use adcorre::train::{TrainConfig, TrainModel};
use adcorre::AdCorreError;
use common::{fer_subset, max_abs_diff, tiny_config, values};

/// Burn's backend random generator (dropout) is process-wide: trainings running in parallel
/// test threads would draw from it in turn and lose reproducibility. Each test holds this.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn trainer(config: TrainConfig) -> TrainModel {
    TrainModel::new(DatasetName::Fer2013, DatasetType::Train)
        .config(config)
        .with_prepared(fer_subset(DatasetType::Train, 8), fer_subset(DatasetType::Eval, 3))
        .quiet(true)
}

fn final_weights(dir: &Path, epoch: usize) -> Vec<f32> {
    let name = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.starts_with(&format!("{epoch}_Fer2013_AC_")) && n.ends_with(".mpk"))
        .expect("checkpoint of the epoch");
    let (model, _) = load_model::<Cpu>(&dir.join(name), &Default::default()).unwrap();
    let mut all = values(model.heads.projection.weight.val().flatten::<1>(0, 1));
    all.extend(values(model.backbone.block1_conv1.conv.weight.val().flatten::<1>(0, 3)));
    all
}

#[test]
fn training_lowers_the_loss_and_writes_checkpoints() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let report = trainer(tiny_config(4)).train("xcp", dir.path()).unwrap();
    assert_eq!(report.steps, 16);
    let totals: Vec<f64> = report.step_losses.iter().map(|l| l.total).collect();
    let first: f64 = totals[..4].iter().sum::<f64>() / 4.0;
    let last: f64 = totals[totals.len() - 4..].iter().sum::<f64>() / 4.0;
    assert!(last < first, "loss did not fall: {totals:?}");
    assert_eq!(report.epochs.len(), 4);
    let best = report.best_checkpoint.unwrap();
    assert!(best.exists());
    assert!(best.with_extension("json").exists());
    let log = std::fs::read_to_string(dir.path().join("training_log.csv")).unwrap();
    assert_eq!(log.lines().count(), 17, "header and one line per step");
    for epoch in 1..=4 {
        final_weights(dir.path(), epoch);
    }
}

#[test]
fn ad_corre_terms_change_the_weights() {
    let _serial = serial();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    trainer(tiny_config(1)).train("xcp", a.path()).unwrap();
    let ce_only = TrainConfig { loss: AdCorreLossConfig::cross_entropy_only(), ..tiny_config(1) };
    trainer(ce_only).train("xcp", b.path()).unwrap();
    let difference = max_abs_diff(&final_weights(a.path(), 1), &final_weights(b.path(), 1));
    assert!(difference > 1e-4, "the discriminators did not change training ({difference})");
}

#[test]
fn resuming_gives_the_weights_of_an_uninterrupted_run() {
    let _serial = serial();
    let (straight, resumed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    trainer(tiny_config(2)).train("xcp", straight.path()).unwrap();
    trainer(tiny_config(1)).train("xcp", resumed.path()).unwrap();
    let report = trainer(tiny_config(2)).train("xcp", resumed.path()).unwrap();
    assert_eq!(report.epochs.len(), 2, "history carried over");
    assert_eq!(report.steps, 8);
    let difference = max_abs_diff(&final_weights(straight.path(), 2), &final_weights(resumed.path(), 2));
    assert!(difference < 1e-5, "resumed weights differ by {difference}");
}

#[test]
fn bad_training_requests_are_typed_errors() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let err = trainer(tiny_config(1)).train("resnet", dir.path()).unwrap_err();
    assert!(matches!(err, AdCorreError::Config(ref m) if m.contains("xcp")), "{err}");
    let eight_classes = TrainConfig {
        network: tiny_config(1).network.with_num_classes(8),
        ..tiny_config(1)
    };
    let err = trainer(eight_classes).train("xcp", dir.path()).unwrap_err();
    assert!(matches!(err, AdCorreError::Config(_)), "{err}");
    let diverging = TrainConfig { learning_rate: 1e30, ..tiny_config(3) };
    let err = trainer(diverging.clone()).train("xcp", dir.path()).unwrap_err();
    assert!(matches!(err, AdCorreError::NonFinite(_)), "{err}");
    // The same on two devices: every replica stops, none is left waiting.
    let other = tempfile::tempdir().unwrap();
    let err = trainer(TrainConfig { devices: vec![0, 0], ..diverging }).train("xcp", other.path()).unwrap_err();
    assert!(matches!(err, AdCorreError::NonFinite(_)), "{err}");
    let too_many = TrainConfig { devices: vec![0; 15], ..tiny_config(1) };
    let err = trainer(too_many).train("xcp", other.path()).unwrap_err();
    assert!(err.to_string().contains("cannot be split across 15 devices"), "{err}");
}

#[test]
fn metrics_match_a_hand_computed_example() {
    let mut confusion = ConfusionMatrix::new(3);
    confusion.add(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0]).unwrap();
    let m = confusion.metrics();
    assert_eq!(m.samples, 5);
    assert!((m.accuracy - 0.6).abs() < 1e-12);
    assert_eq!(m.recall, vec![0.5, 1.0, 0.0]);
    assert!((m.precision[0] - 0.5).abs() < 1e-12 && (m.precision[1] - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(m.precision[2], 0.0, "never predicted");
    assert!((m.f1[1] - 0.8).abs() < 1e-12 && (m.f1[0] - 0.5).abs() < 1e-12 && m.f1[2] == 0.0);
    assert!((m.average_class_accuracy - 0.5).abs() < 1e-12);
    assert_eq!(m.support, vec![2, 2, 1]);
    assert!(confusion.add(&[3], &[0]).is_err());
}

#[test]
fn a_failed_checkpoint_write_leaves_the_previous_one_usable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.mpk");
    let config = tiny_config(1).network;
    let net = config.init::<Cpu>(&Default::default());
    adcorre::model::save_model(&net, &adcorre::model::ModelCard::new(config), &path).unwrap();
    // A write that cannot complete (its target's directory vanished) changes nothing else.
    let err = write_atomically(&dir.path().join("gone/model.mpk"), b"partial").unwrap_err();
    assert!(matches!(err, AdCorreError::Io { .. }));
    // A crash mid-write leaves only a temporary file beside the checkpoint.
    std::fs::write(dir.path().join(".model.mpk.tmp-999"), b"half a model").unwrap();
    load_model::<Cpu>(&path, &Default::default()).unwrap();
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(leftovers, 2);
}


#[test]
fn cli_trains_and_evaluates_from_a_config_file() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.json");
    let config = TrainConfig { epochs: 1, batch_size: 50, input_size: 32, workers: 1, ..tiny_config(1) };
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    let out = dir.path().join("run");
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_adcorre")).args(args).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let csv = "../shared/data/fer2013_sample.csv";
    let text = run(&[
        "train", "--dataset", "fer2013", "--data", csv, "--split", "train",
        "--out", out.to_str().unwrap(), "--config", config_path.to_str().unwrap(),
    ]);
    assert!(text.contains("20 steps"), "{text}");
    let best = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "mpk"))
        .unwrap();
    let prefix = dir.path().join("eval");
    let json = run(&[
        "eval", "--model", best.to_str().unwrap(), "--dataset", "fer2013", "--data", csv,
        "--split", "eval", "--json", "--out", prefix.to_str().unwrap(),
    ]);
    let metrics: adcorre::metrics::EvalMetrics = serde_json::from_str(&json).unwrap();
    assert_eq!(metrics.samples, 400);
    assert_eq!(metrics.support.iter().sum::<u64>(), 400);
    assert!(dir.path().join("eval_confusion.png").exists());
    image::open(dir.path().join("eval_confusion.png")).unwrap();
}

#[test]
fn two_devices_follow_the_loss_trajectory_of_one() {
    let _serial = serial();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |devices: Vec<usize>| {
        let mut config = TrainConfig { devices, ..tiny_config(2) };
        config.network.dropout = 0.0;
        config
    };
    let single = trainer(config(vec![0])).train("xcp", one.path()).unwrap();
    let device = adcorre::backend::cpu_device();
    let parallel = trainer(config(vec![0, 0]))
        .train_on_devices::<adcorre::backend::CpuAutodiff>("xcp", two.path(), &[device, device])
        .unwrap();
    assert_eq!(single.steps, parallel.steps);
    let pairs: Vec<(f64, f64)> =
        single.step_losses.iter().zip(&parallel.step_losses).map(|(a, b)| (a.total, b.total)).collect();
    println!("total loss, one device vs two: {pairs:?}");
    // The loss is computed on the whole batch either way; what differs is that each device
    // normalises its half batch with its own batch-norm statistics.
    for (step, (a, b)) in pairs.iter().enumerate() {
        assert!((a - b).abs() <= 0.05 * a.abs(), "step {step}: one device {a}, two {b}");
    }
    let (first, last) = (pairs[0].1, pairs[pairs.len() - 1].1);
    assert!(last < first, "two devices did not lower the loss: {pairs:?}");
}

#[test]
fn a_time_budget_ends_training_with_an_evaluated_checkpoint() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = TrainConfig { time_budget_s: Some(2.0), ..tiny_config(200) };
    let report = trainer(config).train("xcp", dir.path()).unwrap();
    assert!(report.steps >= 1, "no step was taken");
    assert!(report.epochs.len() < 200, "the budget did not stop training");
    let last = report.epochs.len();
    final_weights(dir.path(), last);
    assert!(report.best_checkpoint.unwrap().exists());
}

/// The cosine schedule warms up linearly to the learning rate, then falls along a half cosine
/// to 0 at the last step; Keras' decay stays the release's formula.
#[test]
fn learning_rate_schedules() {
    use adcorre::train::LrSchedule;
    let keras = TrainConfig { learning_rate: 1e-3, lr_decay: 1e-5, ..Default::default() };
    assert_eq!(keras.learning_rate_at(0, 100), 1e-3);
    assert!((keras.learning_rate_at(1000, 100) - 1e-3 / 1.01).abs() < 1e-15);
    let cosine: TrainConfig =
        serde_json::from_str(r#"{"learning_rate": 0.002, "lr_schedule": {"cosine": {"warmup_steps": 10}}}"#).unwrap();
    assert_eq!(cosine.lr_schedule, LrSchedule::Cosine { warmup_steps: 10 });
    let total = 110;
    let at = |step| cosine.learning_rate_at(step, total);
    assert!((at(0) - 0.0002).abs() < 1e-12 && (at(4) - 0.001).abs() < 1e-12, "linear warm-up");
    assert!((at(9) - 0.002).abs() < 1e-12 && (at(10) - 0.002).abs() < 1e-12, "peak");
    assert!((at(60) - 0.001).abs() < 1e-12, "half way down at the middle of the cosine");
    assert!(at(109) < 1e-6 && at(109) > 0.0 && at(500) == 0.0, "ends at 0");
    assert!((10..total).all(|step| at(step + 1) <= at(step)), "falls monotonically");
}

#[test]
fn committed_configs_parse_and_validate() {
    let mut seen = 0;
    for entry in std::fs::read_dir("configs").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let config = TrainConfig::from_file(&path).unwrap_or_else(|err| panic!("{err}"));
            config.validate().unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 2, "configs/ has {seen} configs");
    let typo = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(typo.path(), r#"{"epoch": 3}"#).unwrap();
    let err = TrainConfig::from_file(typo.path()).unwrap_err().to_string();
    assert!(err.contains("epoch"), "{err}");
}

#[test]
fn confusion_picture_shades_rows_and_writes_percentages() {
    let mut confusion = ConfusionMatrix::new(2);
    confusion.add(&[0, 0, 0, 1, 1], &[0, 0, 0, 0, 1]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confusion.png");
    adcorre::metrics::plot::save_confusion_png(&confusion, &path).unwrap();
    let picture = image::open(&path).unwrap().to_rgb8();
    assert_eq!(picture.dimensions(), (99, 99), "18 px of labels + 2 cells of 40 + 1");
    let cell = |row: u32, column: u32| -> Vec<[u8; 3]> {
        let (x0, y0) = (18 + column * 40 + 4, 18 + row * 40 + 4);
        (y0..y0 + 32).flat_map(|y| (x0..x0 + 32).map(move |x| (x, y))).map(|(x, y)| picture.get_pixel(x, y).0).collect()
    };
    let full = cell(0, 0);
    assert!(full.contains(&[8, 48, 107]), "100% is dark blue");
    assert!(full.contains(&[255, 255, 255]), "with the percentage in white");
    let empty = cell(0, 1);
    assert!(empty.contains(&[255, 255, 255]) && empty.contains(&[40, 40, 40]), "0% is white with dark text");
    let half = cell(1, 1);
    assert!(half.contains(&[132, 152, 181]), "50% is half way: {:?}", &half[..3]);
}
