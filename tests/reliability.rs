//! Reliability: untrusted input is refused with typed errors before anything large is
//! allocated, a training killed at random points resumes to the uninterrupted result, a failed
//! write stops training with a typed error and leaves the last checkpoint usable, and one
//! `TestModels` serves many threads.
#![cfg(feature = "cli")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use adcorre::backend::Cpu;
use adcorre::data::npy::{read_npy_f32, NpzFile};
use adcorre::data::{load_dataset, DatasetName, DatasetType};
use adcorre::infer::preprocess::{decode_image, ImageLimits};
use adcorre::infer::TestModels;
use adcorre::model::checkpoint::model_to_bytes;
use adcorre::model::{load_model, ModelCard};
use adcorre::train::TrainConfig;
use adcorre::AdCorreError;
use burn::prelude::*;
use common::{max_abs_diff, png_header, tiny_config, two_head_config, values};
use ndarray_npy::WriteNpyExt;

const FER_SAMPLE_CSV: &str = "../shared/data/fer2013_sample.csv";
const FER_FOLDERS: &str = "../shared/data/fer2013";

fn two_head_models() -> TestModels<Cpu> {
    let device = Default::default();
    let config = two_head_config();
    TestModels::from_model(config.init::<Cpu>(&device), ModelCard::new(config), &device)
}

#[test]
fn nan_infinite_and_out_of_range_inputs_are_typed_errors_not_predictions() {
    let models = two_head_models();
    let device = Default::default();
    let shape = [2, 3, 48, 48];
    let batch = |data: Vec<f32>| Tensor::<Cpu, 4>::from_data(TensorData::new(data, shape), &device);
    let count = shape.iter().product::<usize>();
    models.recognize_tensor(batch(vec![0.5; count])).unwrap();
    // Within the rounding margin of the [0, 1] range.
    models.recognize_tensor(batch(vec![1.0 + 1e-6; count])).unwrap();
    for (value, shown) in [(f32::NAN, "is NaN"), (f32::INFINITY, "is inf"), (-0.5, "is -0.5"), (255.0, "is 255")] {
        let mut data = vec![0.5f32; count];
        data[((3 + 2) * 48 + 3) * 48 + 4] = value;
        let err = models.recognize_tensor(batch(data)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, AdCorreError::InvalidInput { .. }), "{text}");
        assert!(text.contains("image 1, channel 2, row 3, column 4") && text.contains(shown), "{text}");
        assert!(text.contains("[0, 1]"), "{text}");
    }
}

#[test]
fn npy_batches_convert_float64_and_name_what_they_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let values32 = ndarray::Array4::<f32>::from_shape_fn((2, 4, 4, 3), |(n, y, x, c)| (n + y + x + c) as f32 / 16.0);
    let (path32, path64, path_i64) = (dir.path().join("a.npy"), dir.path().join("b.npy"), dir.path().join("c.npy"));
    values32.write_npy(std::fs::File::create(&path32).unwrap()).unwrap();
    values32.mapv(f64::from).write_npy(std::fs::File::create(&path64).unwrap()).unwrap();
    values32.mapv(|v| v as i64).write_npy(std::fs::File::create(&path_i64).unwrap()).unwrap();
    assert_eq!(read_npy_f32(&path64).unwrap(), read_npy_f32(&path32).unwrap().into_dyn());
    let err = read_npy_f32(&path_i64).unwrap_err().to_string();
    assert!(err.contains("holds int64 ('<i8'); expected float32 ('<f4') or float64 ('<f8')"), "{err}");
    // A header that declares far more data than the file holds is refused before allocating.
    let mut bytes = std::fs::read(&path32).unwrap();
    let text = String::from_utf8_lossy(&bytes[10..]).into_owned();
    let forged = text.replacen("(2, 4, 4, 3)", "(99999999999, 4, 4, 3)", 1);
    bytes.truncate(10);
    bytes.extend(forged.as_bytes());
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize + forged.len() - text.len();
    bytes[8..10].copy_from_slice(&(header_len as u16).to_le_bytes());
    let forged_path = dir.path().join("forged.npy");
    std::fs::write(&forged_path, &bytes).unwrap();
    let err = read_npy_f32(&forged_path).unwrap_err().to_string();
    assert!(err.contains("forged.npy") && err.contains("declares shape [99999999999, 4, 4, 3]"), "{err}");
}

#[test]
fn npz_archives_are_read_by_entry_and_refuse_what_they_lack() {
    let mut npz = NpzFile::embedded("mtcnn.npz", include_bytes!("../src/detect/weights/mtcnn_weights.npz")).unwrap();
    let names = npz.names().unwrap();
    assert!(names.iter().any(|n| n.starts_with("pnet")), "{names:?}");
    let first = names[0].clone();
    assert!(!npz.array::<f32>(&first).unwrap().is_empty());
    let err = npz.array::<f32>("no_such_array").unwrap_err().to_string();
    assert!(err.contains("no_such_array") && err.contains("no such array"), "{err}");
    let err = NpzFile::new(Path::new("junk.npz"), std::io::Cursor::new(vec![7u8; 100])).err().unwrap().to_string();
    assert!(err.contains("junk.npz") && err.contains("not a .npz archive"), "{err}");
}

#[test]
fn a_truncated_model_file_says_so_without_burns_format_advice() {
    let dir = tempfile::tempdir().unwrap();
    let config = two_head_config();
    let bytes = model_to_bytes(&config.init::<Cpu>(&Default::default()), &ModelCard::new(config)).unwrap();
    let path = dir.path().join("cut.mpk");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_model::<Cpu>(&path, &Default::default()).err().unwrap();
    let text = err.to_string();
    assert!(matches!(err, AdCorreError::InvalidModelFile { .. }), "{text}");
    assert!(text.contains("cut.mpk") && text.contains("truncated"), "{text}");
    assert!(!text.contains("record-backward-compat") && !text.contains('\n'), "{text}");
}

#[test]
fn an_empty_split_is_an_error_naming_the_split_and_what_the_folder_holds() {
    let dir = tempfile::tempdir().unwrap();
    let class_dir = dir.path().join("test/angry");
    std::fs::create_dir_all(&class_dir).unwrap();
    let source = Path::new(FER_FOLDERS).join("test/angry");
    let mut names: Vec<_> = std::fs::read_dir(&source).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    for name in names.iter().take(3) {
        let renamed = name.to_string_lossy().replacen("PublicTest_", "PrivateTest_", 1);
        std::fs::copy(source.join(name), class_dir.join(renamed)).unwrap();
    }
    let err = load_dataset(DatasetName::Fer2013, DatasetType::Eval, dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, AdCorreError::EmptySplit { .. }), "{text}");
    assert!(text.contains("Eval split is empty") && text.contains("holds 3 PrivateTest"), "{text}");
    assert_eq!(load_dataset(DatasetName::Fer2013, DatasetType::Test, dir.path()).unwrap().samples.len(), 3);
    // The CLI fails instead of printing an accuracy of 0 over 0 samples.
    let config = two_head_config();
    let model = dir.path().join("m.mpk");
    adcorre::model::save_model(&config.init::<Cpu>(&Default::default()), &ModelCard::new(config), &model).unwrap();
    let output = adcorre_cli()
        .args(["eval", "--model", model.to_str().unwrap(), "--dataset", "fer2013", "--split", "eval", "--json"])
        .args(["--data", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("Eval split is empty"));
}

#[test]
fn image_limits_refuse_large_declarations_before_decoding() {
    let limits = ImageLimits::default();
    let err = decode_image(&png_header(60_000, 60_000), "huge.png", &limits).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, AdCorreError::LimitExceeded { .. }), "{text}");
    assert!(text.contains("huge.png") && text.contains("60000x60000") && text.contains("50000000 pixels"), "{text}");
    assert!(matches!(decode_image(&png_header(0, 5), "empty.png", &limits), Err(AdCorreError::Image { .. })));
    // An upload cut short is the image's fault (an Image error), not an I/O failure.
    let whole = std::fs::read("tests/fixtures/mtcnn/obama_libjpeg.png").unwrap();
    let cut = decode_image(&whole[..whole.len() / 2], "cut.png", &limits).err();
    assert!(matches!(cut, Some(AdCorreError::Image { .. })), "{cut:?}");
    let header_only = decode_image(&png_header(64, 64)[..33], "header.png", &limits).err();
    assert!(matches!(header_only, Some(AdCorreError::Image { .. })), "{header_only:?}");
    // Limits a caller sets apply to the files TestModels reads.
    let face = std::fs::read_dir(Path::new(FER_FOLDERS).join("test/happy")).unwrap().next().unwrap().unwrap().path();
    let models = two_head_models();
    models.recognize_fer(&face).unwrap();
    let small = two_head_models().with_image_limits(ImageLimits { max_pixels: 1000, ..limits });
    let text = small.recognize_fer(&face).unwrap_err().to_string();
    assert!(text.contains("48x48 = 2304 pixels") && text.contains("ImageLimits::max_pixels"), "{text}");
    let tiny_files = two_head_models().with_image_limits(ImageLimits { max_file_bytes: 100, ..limits });
    let text = tiny_files.recognize_fer(&face).unwrap_err().to_string();
    assert!(text.contains(&*face.to_string_lossy()) && text.contains("100 bytes"), "{text}");
}

fn adcorre_cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_adcorre"))
}

/// `adcorre train` on the FER-2013 sample CSV with `config`, writing to `out`, one thread (the
/// same arithmetic in every run).
fn train_command(config: &Path, out: &Path) -> Command {
    let mut command = adcorre_cli();
    command
        .args(["train", "--dataset", "fer2013", "--data", FER_SAMPLE_CSV, "--split", "train"])
        .args(["--out", out.to_str().unwrap(), "--config", config.to_str().unwrap()])
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn write_config(dir: &Path, name: &str, epochs: usize) -> PathBuf {
    let config = TrainConfig { batch_size: 50, input_size: 32, ..tiny_config(epochs) };
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    path
}

/// Every weight of the checkpoint of `epoch` in `dir`, flattened in parameter order.
fn checkpoint_weights(dir: &Path, epoch: usize) -> Vec<f32> {
    let name = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.starts_with(&format!("{epoch}_Fer2013_AC_")) && n.ends_with(".mpk"))
        .unwrap_or_else(|| panic!("no checkpoint of epoch {epoch} in {}", dir.display()));
    let (model, _) = load_model::<Cpu>(&dir.join(name), &Default::default()).unwrap();
    let mut all = values(model.heads.projection.weight.val().flatten::<1>(0, 1));
    all.extend(values(model.backbone.block1_conv1.conv.weight.val().flatten::<1>(0, 3)));
    all.extend(values(model.classifier.weight.val().flatten::<1>(0, 1)));
    all
}

/// Temporary files of unfinished atomic writes in `dir` and its sub-folders.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if adcorre::atomic_file::is_temporary(&entry.file_name().to_string_lossy()) {
                found.push(path);
            }
        }
    }
    found
}

/// Sends `signal` to `pid` directly (a `kill` process would arrive after a short write ended).
fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a child's pid and a valid signal number touches no memory of ours.
    let status = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(status, 0, "kill({pid}, {signal})");
}

#[test]
fn training_killed_at_random_points_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "config.json", 3);
    let (straight, killed) = (dir.path().join("straight"), dir.path().join("killed"));
    let started = Instant::now();
    let output = train_command(&config, &straight).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let full_run = started.elapsed();

    // SplitMix64 from a fixed seed: the same kill times on every run of the test.
    let mut state = 0x5EED_u64;
    let mut next_fraction = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    };
    let (mut random_kills, mut kills_mid_write, mut attempts, mut fresh_starts) = (0, 0, 0, 0);
    loop {
        attempts += 1;
        assert!(attempts <= 30, "the killed run never finished");
        let mut child = train_command(&config, &killed).spawn().unwrap();
        let pid = child.id();
        // First a kill inside a checkpoint write: freeze the run the moment a temporary file
        // exists (watching without pause), kill it if the write is still unfinished. Then kills
        // at 4 random times; then let it end.
        let mode = if kills_mid_write < 1 { "mid-write" } else if random_kills < 4 { "random" } else { "finish" };
        // At most about one epoch of progress per attempt (an epoch is a third of the run).
        let deadline = Instant::now() + full_run.mul_f64(0.05 + 0.25 * next_fraction());
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            match mode {
                "random" if Instant::now() >= deadline => {
                    signal(pid, libc::SIGKILL);
                    random_kills += 1;
                    break None;
                }
                "mid-write" if !temporaries(&killed).is_empty() => {
                    signal(pid, libc::SIGSTOP);
                    if temporaries(&killed).is_empty() {
                        signal(pid, libc::SIGCONT);
                    } else {
                        signal(pid, libc::SIGKILL);
                        kills_mid_write += 1;
                        break None;
                    }
                }
                _ => {}
            }
            if mode != "mid-write" {
                std::thread::sleep(Duration::from_micros(500));
            }
        };
        match finished {
            Some(status) => {
                let stderr = child.wait_with_output().unwrap().stderr;
                assert!(status.success(), "{}", String::from_utf8_lossy(&stderr));
                if mode == "mid-write" && fresh_starts < 3 {
                    // Every write was over before the watcher saw it: start again from nothing.
                    std::fs::remove_dir_all(&killed).unwrap();
                    fresh_starts += 1;
                    continue;
                }
                break;
            }
            None => {
                child.wait().unwrap();
            }
        }
    }
    assert_eq!((random_kills, kills_mid_write), (4, 1));
    assert!(temporaries(&killed).is_empty(), "resuming cleans up half-written files");

    let difference = max_abs_diff(&checkpoint_weights(&straight, 3), &checkpoint_weights(&killed, 3));
    assert!(difference < 1e-5, "weights after kills differ by {difference}");
    let metrics = |dir: &Path| -> serde_json::Value {
        let state: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
        state["history"].clone()
    };
    let (a, b) = (metrics(&straight), metrics(&killed));
    assert_eq!(a.as_array().unwrap().len(), 3);
    for (x, y) in a.as_array().unwrap().iter().zip(b.as_array().unwrap()) {
        assert_eq!(x["confusion"], y["confusion"], "same predictions after every epoch");
    }
    // The step log has each step once, in order, with the same losses.
    let log = |dir: &Path| std::fs::read_to_string(dir.join("training_log.csv")).unwrap();
    let (log_a, log_b) = (log(&straight), log(&killed));
    let steps = |text: &str| text.lines().skip(1).map(|l| l.split(',').nth(1).unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(steps(&log_a), steps(&log_b));
    for (line_a, line_b) in log_a.lines().zip(log_b.lines()).skip(1) {
        let total = |line: &str| line.split(',').nth(3).unwrap().parse::<f64>().unwrap();
        assert!((total(line_a) - total(line_b)).abs() < 1e-4, "{line_a} vs {line_b}");
    }
}

#[test]
fn a_failed_write_stops_training_with_a_typed_error_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let one = write_config(dir.path(), "one.json", 1);
    let output = train_command(&one, &out).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let checkpoint_bytes = std::fs::metadata(out.join("resume-1/model.mpk")).unwrap().len();
    let log_bytes = std::fs::metadata(out.join("training_log.csv")).unwrap().len();
    // Files may grow to half a checkpoint: the step log of epoch 2 still fits, the epoch's
    // checkpoint does not (EFBIG, the kernel's answer when a write passes RLIMIT_FSIZE, with the
    // signal ignored so that the write fails instead of killing the process).
    let limit_kib = checkpoint_bytes / 2 / 1024;
    assert!(limit_kib * 1024 > 3 * log_bytes, "a checkpoint of {checkpoint_bytes} bytes, a log of {log_bytes}");
    let two = write_config(dir.path(), "two.json", 2);
    let inner = train_command(&two, &out);
    let mut limited = Command::new("bash");
    limited
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {limit_kib}; exec \"$0\" \"$@\""))
        .arg(inner.get_program())
        .args(inner.get_args())
        .env("RAYON_NUM_THREADS", "1");
    let output = limited.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error:") && stderr.contains("File too large") && stderr.contains(".mpk"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(temporaries(&out).is_empty(), "a failed write removes its temporary file");
    // The state still points at epoch 1, whose files load; resuming without the limit finishes.
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["epochs_done"], 1);
    load_model::<Cpu>(&out.join("resume-1/model.mpk"), &Default::default()).unwrap();
    let output = train_command(&two, &out).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    checkpoint_weights(&out, 2);
}

#[cfg(feature = "shipped-model")]
#[test]
fn one_model_shared_by_eight_threads_gives_the_results_of_one() {
    fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<TestModels<Cpu>>();
    let models = std::sync::Arc::new(TestModels::shipped().unwrap());
    let mut faces = Vec::new();
    for class in ["angry", "happy", "sad", "surprise"] {
        let dir = Path::new(FER_FOLDERS).join("test").join(class);
        let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        faces.extend(names.into_iter().take(2).map(|p| image::open(p).unwrap()));
    }
    let expected: Vec<_> = faces.iter().map(|face| models.recognize_image(face).unwrap()).collect();
    let (faces, expected) = (std::sync::Arc::new(faces), std::sync::Arc::new(expected));
    let resident_kib = || {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().to_string();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
    };
    // Each thread checks its results as they come (nothing is kept), so resident memory is
    // what recognition itself holds.
    let round = |per_thread: usize| -> usize {
        let threads: Vec<_> = (0..8)
            .map(|thread| {
                let (models, faces, expected) = (models.clone(), faces.clone(), expected.clone());
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        let index = (thread + i) % faces.len();
                        let got = models.recognize_image(&faces[index]).unwrap();
                        assert_eq!(got.label, expected[index].label);
                        for (a, b) in got.probabilities.iter().zip(&expected[index].probabilities) {
                            assert!((a.probability - b.probability).abs() < 1e-6, "{} vs {}", a.probability, b.probability);
                        }
                    }
                    per_thread
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    };
    // Eight rounds of 8 threads x 25: resident memory after each round must level off.
    let mut recognitions = 0;
    let mut resident = Vec::new();
    for _ in 0..8 {
        recognitions += round(25);
        resident.push(resident_kib());
    }
    println!("resident memory after each round of 200 recognitions (KiB): {resident:?}");
    assert_eq!(recognitions, 8 * 200);
    let late_growth_mib = resident[7].saturating_sub(resident[3]) / 1024;
    assert!(late_growth_mib < 16, "resident memory still grew by {late_growth_mib} MiB over rounds 5-8: {resident:?}");
}
