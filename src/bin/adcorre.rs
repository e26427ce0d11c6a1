//! `adcorre`: facial expression recognition with Ad-Corre models from the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use adcorre::backend::host_profile::{self, StepTime};
use adcorre::backend::{cpu_device, AdCorreBackend, Cpu};
use adcorre::data::npy::read_npy_f32;
use adcorre::infer::preprocess::nhwc_to_tensor;
use adcorre::infer::{Recognition, TestModels};
use adcorre::{AdCorreError, Result};
use clap::{Parser, Subcommand};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The backends this build can run, for `--backend`.
fn compiled_backends() -> String {
    let features = [("flex", cfg!(feature = "flex")), ("ndarray", cfg!(feature = "ndarray")), ("cuda", cfg!(feature = "cuda")), ("wgpu", cfg!(feature = "wgpu"))];
    features.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
}

/// Runs `job::<B>(args...)` on the backend named by `--backend` (`None`: the default CPU
/// backend). GPU backends are started first with a probe, so that a machine without the driver
/// gets an error instead of a panic.
macro_rules! on_backend {
    ($name:expr, $job:ident($($arg:expr),* $(,)?)) => {
        match $name {
            None => $job::<Cpu>($($arg),*),
            #[cfg(feature = "flex")]
            Some("flex") => $job::<adcorre::backend::Flex>($($arg),*),
            #[cfg(feature = "ndarray")]
            Some("ndarray") => $job::<adcorre::backend::NdArray>($($arg),*),
            #[cfg(feature = "cuda")]
            Some("cuda") => {
                start_backend::<adcorre::backend::Cuda>("cuda", "no NVIDIA driver or GPU here?")?;
                $job::<adcorre::backend::Cuda>($($arg),*)
            }
            #[cfg(feature = "wgpu")]
            Some("wgpu") => {
                start_backend::<adcorre::backend::Wgpu>("wgpu", "no Vulkan, Metal or DX12 driver here? On Linux without a GPU: apt-get install mesa-vulkan-drivers")?;
                $job::<adcorre::backend::Wgpu>($($arg),*)
            }
            Some(other) => Err(AdCorreError::Config(format!(
                "backend '{other}' is not compiled in (this build has: {}; the others are cargo features)", compiled_backends()
            ))),
        }
    };
}

/// Runs one small operation on `B`'s default device: GPU backends panic when they find no
/// driver, and this turns that into an error naming the backend.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn start_backend<B: burn::tensor::backend::Backend>(name: &str, hint: &str) -> Result<()> {
    std::panic::catch_unwind(|| burn::tensor::Tensor::<B, 1>::zeros([1], &Default::default()).into_data())
        .map(|_| ())
        .map_err(|_| AdCorreError::Config(format!("the {name} backend failed to start ({hint})")))
}

#[derive(Parser)]
#[command(name = "adcorre", version, about = "Facial expression recognition with Ad-Corre models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options of `adcorre bench`.
#[derive(clap::Args)]
struct BenchArgs {
    /// The model (.mpk or .h5); without it, the published architecture (7 classes) with
    /// untrained weights, which runs at the same speed.
    #[arg(long)]
    model: Option<PathBuf>,
    /// A training config (JSON, as for `train`): bench its network at its input size and
    /// batch size (unless --size / --batch say otherwise) instead of the published network.
    #[arg(long, conflicts_with = "model")]
    config: Option<PathBuf>,
    /// Images per forward pass (or training step); default 1, or the config's batch size.
    #[arg(long)]
    batch: Option<usize>,
    /// Input side in pixels (default: the model's input size).
    #[arg(long)]
    size: Option<usize>,
    /// Timed runs.
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Keep batch normalisation as separate layers (the unoptimised network, for comparison).
    #[arg(long)]
    no_fold: bool,
    /// Run Burn's own layers and Adam instead of adcorre's operations (the one-pass inference
    /// backbone, the convolution, batch-norm and pooling kernels, the fused Adam), for
    /// comparison.
    #[arg(long)]
    burn_ops: bool,
    /// Time training steps (forward, Ad-Corre loss, backward, Adam) instead of inference.
    #[arg(long)]
    train: bool,
    /// Then time each step of the host inference pass (flex) over as many more runs and print
    /// them layer by layer (ms per run, GFLOP/s), with totals per kind of step. For wall times
    /// of each step run one thread (RAYON_NUM_THREADS=1): at batches of at least one image per
    /// thread each thread's pass adds its own times.
    #[arg(long, conflicts_with = "train")]
    profile: bool,
    /// Embedding heads k of the untrained network (the PyTorch peer script uses 10).
    #[arg(long, default_value_t = 7)]
    heads: usize,
    /// Time face detection (MTCNN) of this image instead (decoded once, not timed).
    #[arg(long, value_name = "IMAGE", conflicts_with_all = ["model", "config", "train"])]
    detect: Option<PathBuf>,
    #[arg(long, help = BACKEND_HELP)]
    backend: Option<String>,
}

/// What `--backend` takes.
const BACKEND_HELP: &str = "flex, ndarray, cuda or wgpu, as compiled in (cargo features); default: the default CPU backend (flex)";

/// Which dataset split to read.
#[derive(clap::Args)]
struct DatasetArgs {
    /// affectnet, rafdb, fer2013, ferplus or imagefolder.
    #[arg(long)]
    dataset: String,
    /// The dataset's root folder (or FER-2013 CSV).
    #[arg(long)]
    data: PathBuf,
    /// train, train7, eval, eval7 or test (default: train, or eval for `eval`).
    #[arg(long)]
    split: Option<String>,
}

impl DatasetArgs {
    fn load(&self, default_split: &str) -> Result<adcorre::data::FerDataset> {
        let split = self.split.as_deref().unwrap_or(default_split);
        adcorre::data::load_dataset(self.dataset.parse()?, split.parse()?, &self.data)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Convert a Keras .h5 Ad-Corre model (e.g. AffectNet_6336.h5) to an adcorre .mpk file.
    ImportKeras {
        /// The Keras HDF5 model.
        input: PathBuf,
        /// The .mpk file to write.
        output: PathBuf,
    },
    /// Recognise the expression in face images (or a prepared .npy batch).
    Predict {
        /// The model: .mpk (or .h5 with the keras feature); default: the FER-2013 model that
        /// ships with adcorre (48x48 grayscale faces; see models/README.md).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Print JSON, one object per input.
        #[arg(long)]
        json: bool,
        /// Include the k embeddings in the JSON output.
        #[arg(long, requires = "json")]
        embeddings: bool,
        /// A prepared NHWC float32 batch in [0, 1] (the release's .npy layout).
        #[arg(long, value_name = "X.npy")]
        input_npy: Option<PathBuf>,
        /// Images per forward pass.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Find the faces in each image first (MTCNN) and recognise each face, cropped as the
        /// model card says; without it, each whole image is one face (the release's behaviour).
        #[arg(long, conflicts_with = "input_npy")]
        faces: bool,
        /// With --faces: draw boxes, landmarks and expressions onto the image and write it to
        /// this PNG file (one image) or into this folder as NAME_faces.png (several images).
        #[arg(long, requires = "faces", value_name = "OUT")]
        annotate: Option<PathBuf>,
        #[arg(long, help = BACKEND_HELP)]
        backend: Option<String>,
        /// Image files.
        images: Vec<PathBuf>,
    },
    /// Find faces (MTCNN, weights shipped with adcorre): per image, each face's box
    /// [x1, y1, x2, y2], probability and five landmarks (eyes, nose, mouth corners).
    Faces {
        /// Print JSON, one object per image.
        #[arg(long)]
        json: bool,
        /// Smallest face side to find, in pixels.
        #[arg(long, default_value_t = 20.0)]
        min_face: f64,
        /// Draw boxes, landmarks and probabilities onto the image and write it to this PNG file
        /// (one image) or into this folder as NAME_faces.png (several images).
        #[arg(long, value_name = "OUT")]
        annotate: Option<PathBuf>,
        /// Image files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Show a model's card (architecture, input, class order, the crop and flip it expects);
    /// with --set-* options, write a copy with those entries changed to --out.
    Card {
        /// The model (.mpk, or .h5 with the keras feature).
        model: PathBuf,
        /// Average each image's and its mirror image's probabilities when predicting.
        #[arg(long)]
        set_test_time_flip: Option<bool>,
        /// Also average the centred crop of this fraction of the side, resized back (`none`:
        /// no crop).
        #[arg(long, value_name = "FRACTION|none", value_parser = parse_crop)]
        set_test_time_crop: Option<Crop>,
        /// The face crop the model expects: box:MARGIN (square box crop, side times
        /// 1 + MARGIN) or aligned:MARGIN (five-point alignment).
        #[arg(long, value_name = "KIND:MARGIN")]
        set_face_crop: Option<String>,
        /// Where to write the changed model (required with --set-*).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Per-class counts of a dataset split, and everything skipped with the reason.
    DatasetInfo {
        #[command(flatten)]
        source: DatasetArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Decode, crop and resize a dataset split once, into a form that loads fast.
    Prepare {
        #[command(flatten)]
        source: DatasetArgs,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Side of the stored images (the pipeline resizes to the network input when training).
        #[arg(long, default_value_t = 224)]
        size: usize,
        /// 1 keeps grayscale (FER-2013), 3 stores RGB.
        #[arg(long, default_value_t = 3)]
        channels: usize,
        /// packed (images.npy + labels.npy) or release (images/*.png + annotations/*_exp.npy).
        #[arg(long, default_value = "packed")]
        layout: String,
    },
    /// Train an Ad-Corre model (resumes the run found in --out, if any).
    Train {
        /// The training split (train or train7; evaluation uses the matching eval split).
        #[command(flatten)]
        source: DatasetArgs,
        /// Output folder: checkpoints, metrics, log, resume state.
        #[arg(long)]
        out: PathBuf,
        /// A JSON training config (see TrainConfig); the flags below override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Start from this model (.mpk or .h5) instead of random weights.
        #[arg(long)]
        from: Option<PathBuf>,
        #[arg(long)]
        epochs: Option<usize>,
        #[arg(long)]
        batch: Option<usize>,
        #[arg(long)]
        lr: Option<f64>,
        /// Network input side.
        #[arg(long)]
        size: Option<usize>,
        #[arg(long)]
        seed: Option<u64>,
        /// Cross-entropy only (the ablation baseline).
        #[arg(long)]
        ce_only: bool,
        /// Devices to train on, data-parallel (CUDA GPU numbers, e.g. 0,1,2,3; on the CPU,
        /// 0,0 runs two replicas in parallel threads).
        #[arg(long, value_delimiter = ',')]
        devices: Option<Vec<usize>>,
        /// Train on at most this many images per class (a class-balanced subset).
        #[arg(long)]
        max_per_class: Option<usize>,
    },
    /// Evaluate a model on a dataset split: accuracy, per-class metrics, confusion matrix.
    Eval {
        /// The model (.mpk or .h5).
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        source: DatasetArgs,
        /// Print the metrics as JSON.
        #[arg(long)]
        json: bool,
        /// Also write OUT.json and OUT_confusion.png.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Images per forward pass.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Average each image's and its mirror image's probabilities (true / false; default:
        /// what the model card says).
        #[arg(long)]
        test_time_flip: Option<bool>,
        /// Also average the centred crop of this fraction of the side, resized back (`none`:
        /// no crop; default: what the model card says).
        #[arg(long, value_name = "FRACTION|none", value_parser = parse_crop)]
        test_time_crop: Option<Crop>,
        #[arg(long, help = BACKEND_HELP)]
        backend: Option<String>,
    },
    /// Measure inference latency and throughput (median after warm-up).
    Bench(BenchArgs),
    /// Serve recognition over HTTP: POST /predict an image (raw body, or multipart field
    /// `image`) for the JSON of `predict --json`; GET /health.
    #[cfg(feature = "serve")]
    Serve(ServeArgs),
}

/// Options of `adcorre serve`.
#[cfg(feature = "serve")]
#[derive(clap::Args)]
struct ServeArgs {
    /// The model (.mpk, or .h5 with the keras feature); default: the shipped FER-2013 model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Find the faces in each image first (MTCNN) and answer like `predict --faces --json`
    /// (a request's `?faces=false` turns it off).
    #[arg(long)]
    faces: bool,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = adcorre::serve::ServeConfig::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Recognitions running at once (default: CPUs, at most 4).
    #[arg(long)]
    max_concurrent: Option<usize>,
    /// Requests that may wait for a free slot before the service answers 503.
    #[arg(long, default_value_t = adcorre::serve::ServeConfig::default().max_queued)]
    max_queued: usize,
    #[arg(long, help = BACKEND_HELP)]
    backend: Option<String>,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::ImportKeras { input, output } => import_keras(&input, &output),
        Command::Predict {
            model,
            json,
            embeddings,
            input_npy,
            batch,
            faces,
            annotate,
            backend,
            images,
        } => {
            let output = PredictOutput { json, embeddings, annotate };
            if faces {
                on_backend!(backend.as_deref(), predict_faces(model.as_deref(), &output, batch, &images))
            } else {
                on_backend!(backend.as_deref(), predict(model.as_deref(), &output, input_npy.as_deref(), batch, &images))
            }
        }
        Command::Faces { json, min_face, annotate, images } => faces(json, min_face, annotate.as_deref(), &images),
        Command::Card { model, set_test_time_flip, set_test_time_crop, set_face_crop, out } => {
            card(&model, set_test_time_flip, set_test_time_crop, set_face_crop.as_deref(), out.as_deref())
        }
        Command::DatasetInfo { source, json } => dataset_info(&source, json),
        Command::Prepare {
            source,
            out,
            size,
            channels,
            layout,
        } => prepare(&source, &out, size, channels, &layout),
        Command::Train {
            source,
            out,
            config,
            from,
            epochs,
            batch,
            lr,
            size,
            seed,
            ce_only,
            devices,
            max_per_class,
        } => {
            let mut train_config = match config {
                Some(path) => adcorre::train::TrainConfig::from_file(&path)?,
                None => adcorre::train::TrainConfig::default(),
            };
            train_config.epochs = epochs.unwrap_or(train_config.epochs);
            train_config.batch_size = batch.unwrap_or(train_config.batch_size);
            train_config.learning_rate = lr.unwrap_or(train_config.learning_rate);
            train_config.input_size = size.unwrap_or(train_config.input_size);
            train_config.seed = seed.unwrap_or(train_config.seed);
            train_config.devices = devices.unwrap_or(train_config.devices);
            train_config.max_per_class = max_per_class.or(train_config.max_per_class);
            if ce_only {
                train_config.loss = train_config.loss.without_discriminators();
            }
            train(&source, &out, train_config, from.as_deref())
        }
        Command::Eval {
            model,
            source,
            json,
            out,
            batch,
            test_time_flip,
            test_time_crop,
            backend,
        } => on_backend!(backend.as_deref(), eval(&model, &source, json, out.as_deref(), batch, test_time_flip, test_time_crop)),
        Command::Bench(args) => bench(&args),
        #[cfg(feature = "serve")]
        Command::Serve(args) => on_backend!(args.backend.as_deref(), serve(&args)),
    }
}

/// `adcorre serve`: loads the model, binds, prints the address, serves until Ctrl-C.
#[cfg(feature = "serve")]
fn serve<B: AdCorreBackend>(args: &ServeArgs) -> Result<()>
where
    TestModels<B>: Send + Sync + 'static,
{
    let defaults = adcorre::serve::ServeConfig::default();
    let config = adcorre::serve::ServeConfig {
        max_body_bytes: args.max_body_bytes,
        max_concurrent: args.max_concurrent.unwrap_or(defaults.max_concurrent),
        max_queued: args.max_queued,
        faces: args.faces,
    };
    let models = std::sync::Arc::new(load_models::<B>(args.model.as_deref(), &B::Device::default())?);
    let address = format!("{}:{}", args.host, args.port);
    let runtime = tokio::runtime::Runtime::new().map_err(|err| AdCorreError::Config(format!("cannot start the server: {err}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|err| AdCorreError::Config(format!("cannot listen on {address}: {err}")))?;
        let bound = listener.local_addr().map_err(|err| AdCorreError::Config(err.to_string()))?;
        println!("adcorre serve: listening on http://{bound} (POST /predict, GET /health)");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        adcorre::serve::serve(listener, models, config, shutdown)
            .await
            .map_err(|err| AdCorreError::Config(format!("the server stopped: {err}")))
    })
}

#[cfg(feature = "keras")]
fn import_keras(input: &Path, output: &Path) -> Result<()> {
    use adcorre::model::{parameter_count, save_model};
    let (net, card) = adcorre::import::keras::import_keras::<Cpu>(input, &cpu_device())?;
    save_model(&net, &card, output)?;
    println!(
        "{} -> {}: k = {} heads, {} classes ({}), {} parameters",
        input.display(),
        output.display(),
        card.network.num_heads,
        card.network.num_classes,
        card.class_names.join(", "),
        parameter_count(&net)
    );
    Ok(())
}

#[cfg(not(feature = "keras"))]
fn import_keras(input: &Path, _output: &Path) -> Result<()> {
    Err(AdCorreError::NotKerasModel {
        path: input.to_path_buf(),
        reason: "this build has no Keras import: rebuild with `--features keras`".into(),
    })
}

fn faces(json: bool, min_face: f64, annotate: Option<&Path>, images: &[PathBuf]) -> Result<()> {
    use adcorre::detect::{FaceDetector, FaceDetectorConfig};
    let detector = FaceDetector::<Cpu>::new(FaceDetectorConfig::new().with_min_face_size(min_face), &cpu_device())?;
    for path in images {
        let image = adcorre::infer::preprocess::open_image(path)?;
        let faces = detector.detect(&image)?;
        if json {
            println!("{}", serde_json::json!({ "input": path.display().to_string(), "faces": faces }));
        } else {
            println!("{}: {} face{}", path.display(), faces.len(), if faces.len() == 1 { "" } else { "s" });
            for face in &faces {
                let [x1, y1, x2, y2] = face.bbox;
                println!("  box [{x1:.1}, {y1:.1}, {x2:.1}, {y2:.1}] probability {:.4}", face.probability);
            }
        }
        if let Some(out) = annotate {
            let labels: Vec<String> = faces.iter().map(|f| format!("{:.1}%", 100.0 * f.probability)).collect();
            write_annotated(&image, &faces, &labels, out, path, images.len())?;
        }
    }
    Ok(())
}

/// A `--test-time-crop` / `--set-test-time-crop` value: the side fraction, or `None` for no crop.
#[derive(Clone, Copy, Debug)]
struct Crop(Option<f32>);

fn parse_crop(text: &str) -> std::result::Result<Crop, String> {
    if text == "none" {
        return Ok(Crop(None));
    }
    match text.parse::<f32>() {
        Ok(fraction) if fraction > 0.0 && fraction <= 1.0 => Ok(Crop(Some(fraction))),
        _ => Err(format!("'{text}': expected a fraction in (0, 1], e.g. 0.9, or none")),
    }
}

fn card(model: &Path, test_time_flip: Option<bool>, test_time_crop: Option<Crop>, face_crop: Option<&str>, out: Option<&Path>) -> Result<()> {
    use adcorre::detect::align::FaceCrop;
    let (net, mut card) = adcorre::infer::load_network::<Cpu>(model, &cpu_device())?;
    if let Some(flip) = test_time_flip {
        card.test_time_flip = flip;
    }
    if let Some(Crop(crop)) = test_time_crop {
        card.test_time_crop = crop;
    }
    if let Some(text) = face_crop {
        let parsed = text.split_once(':').and_then(|(kind, margin)| {
            let margin: f32 = margin.parse().ok()?;
            match kind {
                "box" => Some(FaceCrop::Box { margin }),
                "aligned" => Some(FaceCrop::Aligned { margin }),
                _ => None,
            }
        });
        card.face_crop = parsed.ok_or_else(|| {
            AdCorreError::Config(format!("--set-face-crop '{text}': expected box:MARGIN or aligned:MARGIN, e.g. box:0.2"))
        })?;
    }
    let changed = test_time_flip.is_some() || test_time_crop.is_some() || face_crop.is_some();
    match (changed, out) {
        (true, Some(out)) => adcorre::model::save_model(&net, &card, out)?,
        (true, None) => return Err(AdCorreError::Config("--set-* needs --out FILE.mpk".into())),
        (false, _) => {}
    }
    println!("{}", serde_json::to_string_pretty(&card).expect("cards serialise"));
    Ok(())
}

/// How `predict` reports.
struct PredictOutput {
    json: bool,
    embeddings: bool,
    annotate: Option<PathBuf>,
}

/// The three most probable classes, as "Happy 0.912, Neutral 0.051, ...".
fn top_classes(recognition: &Recognition) -> String {
    let mut ranked = recognition.probabilities.clone();
    ranked.sort_by(|a, b| b.probability.total_cmp(&a.probability));
    let top: Vec<String> = ranked.iter().take(3).map(|c| format!("{} {:.3}", c.name, c.probability)).collect();
    top.join(", ")
}

/// Writes `image` with the faces drawn on it: to `out` for a single image, else into the folder
/// `out` as `<stem>_faces.png`.
fn write_annotated(
    image: &image::DynamicImage,
    faces: &[adcorre::detect::DetectedFace],
    labels: &[String],
    out: &Path,
    source: &Path,
    image_count: usize,
) -> Result<()> {
    let target = if image_count == 1 && out.extension().is_some() {
        out.to_path_buf()
    } else {
        std::fs::create_dir_all(out).map_err(|err| AdCorreError::io(out, err))?;
        let stem = source.file_stem().unwrap_or_default().to_string_lossy();
        out.join(format!("{stem}_faces.png"))
    };
    let drawn = adcorre::detect::annotate::annotate(&image.to_rgb8(), faces, labels);
    let mut bytes = Vec::new();
    drawn
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|err| AdCorreError::Image { path: target.clone(), reason: err.to_string() })?;
    adcorre::atomic_file::write_atomically(&target, &bytes)
}

/// The model of `--model`, or the one that ships with adcorre.
fn load_models<B: AdCorreBackend>(model: Option<&Path>, device: &B::Device) -> Result<TestModels<B>> {
    match model {
        Some(path) => TestModels::<B>::load(path, device),
        #[cfg(feature = "shipped-model")]
        None => TestModels::<B>::load_shipped(device),
        #[cfg(not(feature = "shipped-model"))]
        None => Err(AdCorreError::Config(
            "give --model: this build has no shipped model (cargo feature shipped-model)".into(),
        )),
    }
}

fn predict_faces<B: AdCorreBackend>(model: Option<&Path>, output: &PredictOutput, batch: usize, images: &[PathBuf]) -> Result<()> {
    if images.is_empty() {
        return Err(AdCorreError::Config("nothing to predict: give image files".into()));
    }
    let device = B::Device::default();
    let models = load_models::<B>(model, &device)?.with_batch_size(batch);
    for path in images {
        let image = adcorre::infer::preprocess::open_image(path)?;
        let found = models.recognize_faces_in_image(&image)?;
        if output.json {
            let faces: Vec<serde_json::Value> =
                found.iter().map(|f| serde_json::Value::Object(f.to_json(output.embeddings))).collect();
            println!("{}", serde_json::json!({ "input": path.display().to_string(), "faces": faces }));
        } else {
            println!("{}: {} face{}", path.display(), found.len(), if found.len() == 1 { "" } else { "s" });
            for f in &found {
                let [x1, y1, x2, y2] = f.face.bbox;
                println!(
                    "  [{x1:.0}, {y1:.0}, {x2:.0}, {y2:.0}]: {}  ({})",
                    f.recognition.expression,
                    top_classes(&f.recognition)
                );
            }
        }
        if let Some(out) = &output.annotate {
            let faces: Vec<_> = found.iter().map(|f| f.face.clone()).collect();
            let labels: Vec<String> = found
                .iter()
                .map(|f| format!("{} {:.0}%", f.recognition.expression, 100.0 * f.recognition.confidence()))
                .collect();
            write_annotated(&image, &faces, &labels, out, path, images.len())?;
        }
    }
    Ok(())
}

fn predict<B: AdCorreBackend>(
    model: Option<&Path>,
    output: &PredictOutput,
    input_npy: Option<&Path>,
    batch: usize,
    images: &[PathBuf],
) -> Result<()> {
    let device = B::Device::default();
    let models = load_models::<B>(model, &device)?.with_batch_size(batch);
    let mut results: Vec<(String, Recognition)> = Vec::new();
    if let Some(npy) = input_npy {
        let array = read_npy_f32(npy)?;
        let shape: [usize; 4] = match array.shape() {
            &[n, h, w, 3] => [n, h, w, 3],
            other => {
                return Err(AdCorreError::Shape {
                    what: format!("{}", npy.display()),
                    expected: "(n, height, width, 3) float32 or float64 values in the model's range".into(),
                    got: other.to_vec(),
                })
            }
        };
        let values: Vec<f32> = array.iter().copied().collect();
        let per_image = shape[1] * shape[2] * 3;
        for (chunk_index, chunk) in values.chunks(per_image * batch.max(1)).enumerate() {
            let n = chunk.len() / per_image;
            let tensor = nhwc_to_tensor::<B>(chunk.to_vec(), [n, shape[1], shape[2], 3], &device);
            let recognitions = models.recognize_tensor(tensor).map_err(|err| match err {
                AdCorreError::InvalidInput { reason, .. } => AdCorreError::InvalidInput {
                    what: format!("{} (batch from image {})", npy.display(), chunk_index * batch.max(1)),
                    reason,
                },
                other => other,
            })?;
            for (i, recognition) in recognitions.into_iter().enumerate() {
                let index = chunk_index * batch.max(1) + i;
                results.push((format!("{}[{index}]", npy.display()), recognition));
            }
        }
    }
    for (path, recognition) in images.iter().zip(models.recognize_files(images)?) {
        results.push((path.display().to_string(), recognition));
    }
    if results.is_empty() {
        return Err(AdCorreError::Config("nothing to predict: give image files or --input-npy".into()));
    }
    for (input, recognition) in &results {
        if output.json {
            let mut object = serde_json::Map::new();
            object.insert("input".into(), serde_json::json!(input));
            object.extend(recognition.to_json(output.embeddings));
            println!("{}", serde_json::Value::Object(object));
        } else {
            println!("{input}: {}  ({})", recognition.expression, top_classes(recognition));
        }
    }
    Ok(())
}

fn bench(args: &BenchArgs) -> Result<()> {
    on_backend!(args.backend.as_deref(), bench_on(args))
}

/// Timings of `iters` runs after two warm-up runs: the median wall time, and the process's CPU
/// time over the timed runs per second of their wall time (`None` where unknown), which shows
/// how many cores the work used.
fn median_seconds(iters: usize, mut run: impl FnMut() -> Result<()>) -> Result<(f64, Option<f64>)> {
    for _ in 0..2 {
        run()?;
    }
    let mut seconds = Vec::with_capacity(iters);
    let (cpu_start, wall_start) = (process_cpu_seconds(), std::time::Instant::now());
    for _ in 0..iters.max(1) {
        let start = std::time::Instant::now();
        run()?;
        seconds.push(start.elapsed().as_secs_f64());
    }
    let cores = process_cpu_seconds().zip(cpu_start).map(|(end, start)| (end - start) / wall_start.elapsed().as_secs_f64());
    seconds.sort_by(f64::total_cmp);
    Ok((seconds[seconds.len() / 2], cores))
}

/// User + system CPU time of this process so far (Linux: `/proc/self/stat`, in clock ticks of
/// 1/100 s); `None` elsewhere.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (which may contain spaces) start after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Median time of face detection of one image.
fn bench_detect<B: AdCorreBackend>(args: &BenchArgs, path: &Path) -> Result<()> {
    use adcorre::detect::{FaceDetector, FaceDetectorConfig};
    let detector = FaceDetector::<B>::new(FaceDetectorConfig::new(), &B::Device::default())?;
    let image = adcorre::infer::preprocess::open_image(path)?;
    let faces = detector.detect(&image)?.len();
    let (median, cores) = median_seconds(args.iters, || detector.detect(&image).map(|_| ()))?;
    let (width, height) = (image.width(), image.height());
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "image": path.display().to_string(), "width": width, "height": height,
                "faces": faces, "ms_per_image": median * 1e3, "cores_busy": cores })
        );
    } else {
        println!("face detection of {} ({width}x{height}, {faces} faces): {:.1} ms", path.display(), median * 1e3);
    }
    Ok(())
}

fn bench_on<B: AdCorreBackend>(args: &BenchArgs) -> Result<()> {
    use adcorre::backend::Autodiff;
    if let Some(path) = &args.detect {
        return bench_detect::<B>(args, path);
    }
    use adcorre::model::{AdCorreNetConfig, ModelCard};
    use burn::optim::{GradientsParams, Optimizer};
    use burn::tensor::{Distribution, Tensor};

    let device = B::Device::default();
    adcorre::backend::ops::set_enabled(!args.burn_ops);
    let train_config = args.config.as_deref().map(adcorre::train::TrainConfig::from_file).transpose()?;
    let (net, card) = match (&args.model, &train_config) {
        (Some(path), _) => adcorre::infer::load_network::<Autodiff<B>>(path, &device)?,
        (None, Some(config)) => {
            let card = ModelCard::new(config.network.clone()).with_input_size(config.input_size);
            (config.network.try_init(&device)?, card)
        }
        (None, None) => {
            let config = AdCorreNetConfig::new().with_num_heads(args.heads);
            (config.try_init(&device)?, ModelCard::new(config))
        }
    };
    let size = args.size.unwrap_or(card.input_size);
    let batch = args.batch.or(train_config.as_ref().map(|config| config.batch_size)).unwrap_or(1).max(1);
    // The outermost type's name without its path or parameters: "Flex", "NdArray", "Fusion".
    let backend = std::any::type_name::<B>().split('<').next().and_then(|path| path.rsplit("::").next()).unwrap_or("backend");
    let backend = args.backend.as_deref().unwrap_or(backend).to_string();
    let mut profile = None;
    let (median, cores) = if args.train {
        let labels: Vec<usize> = (0..batch).map(|i| i % card.network.num_classes).collect();
        let channels = card.network.backbone.in_channels;
        let images = Tensor::<Autodiff<B>, 4>::random([batch, channels, size, size], Distribution::Uniform(0.0, 1.0), &device);
        net.check_input(images.dims())?;
        let mut loss = adcorre::loss::AdCorreLossConfig::default().init(card.network.num_classes)?;
        let mut optimizer = adcorre::train::optimizer::model_optimizer(1e-7);
        let mut model = Some(net);
        median_seconds(args.iters, || {
            let net = model.take().expect("model returned by the last step");
            model = Some(<Autodiff<B> as adcorre::backend::AdCorreBackend>::run_step(|| -> Result<_> {
                let out = net.forward(images.clone());
                let terms = loss.forward(out.logits, out.embeddings, &labels)?;
                let grads = GradientsParams::from_grads(terms.total.backward(), &net);
                Ok(optimizer.step(1e-4, net, grads))
            })?);
            B::sync(&device).map_err(|err| AdCorreError::Config(format!("device error: {err:?}")))
        })?
    } else {
        use burn::module::AutodiffModule;
        let net = net.valid();
        let net = if args.no_fold { net } else { net.fold_batch_norm() };
        let images = Tensor::<B, 4>::random([batch, card.network.backbone.in_channels, size, size], Distribution::Uniform(0.0, 1.0), &device);
        net.check_input(images.dims())?;
        let mut run = || {
            let output = net.forward_test_time(images.clone(), card.test_time_views());
            let _ = output.logits.into_data();
            Ok(())
        };
        let timings = median_seconds(args.iters, &mut run)?;
        if args.profile {
            profile = Some(profile_host_pass(args.iters.max(1), run)?);
        }
        timings
    };
    let views = card.test_time_views();
    let mode = match (args.train, views.flip, views.crop.is_some()) {
        (true, _, _) => "train step",
        (false, true, true) => "inference with test-time flip and crop",
        (false, true, false) => "inference with test-time flip",
        (false, false, true) => "inference with test-time crop",
        (false, false, false) => "inference",
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "backend": backend, "mode": mode, "batch_norm_folded": !args.no_fold && !args.train,
                "test_time_flip": card.test_time_flip && !args.train,
                "test_time_crop": if args.train { None } else { card.test_time_crop },
                "adcorre_ops": adcorre::backend::ops::enabled(),
                "heads": card.network.num_heads, "batch": batch, "size": size, "iters": args.iters,
                "median_s": median, "ms_per_image": median * 1e3 / batch as f64,
                "images_per_s": batch as f64 / median, "cpu_per_wall": cores,
                "profile": profile.as_ref().map(|(steps, runs)| profile_json(steps, *runs)),
            })
        );
    } else {
        println!(
            "{backend} {mode} {size}x{size} batch {batch}: median {:.1} ms per batch, {:.1} ms/image, {:.2} images/s ({} runs{})",
            median * 1e3,
            median * 1e3 / batch as f64,
            batch as f64 / median,
            args.iters,
            cores.map(|c| format!(", {c:.2} cores busy")).unwrap_or_default()
        );
        if let Some((steps, runs)) = &profile {
            print_profile(steps, *runs);
        }
    }
    Ok(())
}

/// The steps of the host pass over `runs` runs of `run` (`bench --profile`).
fn profile_host_pass(runs: usize, mut run: impl FnMut() -> Result<()>) -> Result<(Vec<StepTime>, usize)> {
    host_profile::start();
    let ran = (0..runs).try_for_each(|_| run());
    let steps = host_profile::stop();
    ran?;
    if steps.is_empty() {
        return Err(AdCorreError::Config(
            "--profile: no host pass ran (it runs on flex, for inference with folded batch norms and adcorre's operations on)".into(),
        ));
    }
    Ok((steps, runs))
}

/// A profiled step's milliseconds per run and GFLOP/s.
fn step_rates(step: &StepTime, runs: usize) -> (f64, Option<f64>) {
    let gflops = (step.flops > 0.0 && step.seconds > 0.0).then(|| step.flops / step.seconds / 1e9);
    (step.seconds * 1e3 / runs as f64, gflops)
}

/// The steps' times summed by kind of step, in the order each kind first ran.
fn profile_totals(steps: &[StepTime]) -> Vec<StepTime> {
    let mut totals: Vec<StepTime> = Vec::new();
    for step in steps.iter().filter(|step| step.step != host_profile::WHOLE_PASS) {
        match totals.iter_mut().find(|total| total.step == step.step) {
            Some(total) => {
                total.seconds += step.seconds;
                total.flops += step.flops;
                total.calls += step.calls;
            }
            None => totals.push(StepTime { layer: "all".into(), ..step.clone() }),
        }
    }
    totals
}

fn print_profile(steps: &[StepTime], runs: usize) {
    println!("host pass, {runs} runs: ms per run (summed over a run's calls), GFLOP/s");
    let line = |step: &StepTime| {
        let (ms, gflops) = step_rates(step, runs);
        let gflops = gflops.map(|g| format!("{g:8.1}")).unwrap_or_default();
        println!("  {:<18} {:<10} {ms:8.3} {gflops}", step.layer, step.step);
    };
    let (passes, layers): (Vec<&StepTime>, Vec<&StepTime>) = steps.iter().partition(|step| step.step == host_profile::WHOLE_PASS);
    layers.into_iter().for_each(line);
    let totals = profile_totals(steps);
    totals.iter().for_each(line);
    println!("  {:<18} {:<10} {:8.3}", "all", "steps", totals.iter().map(|total| total.seconds).sum::<f64>() * 1e3 / runs as f64);
    passes.into_iter().for_each(line);
}

fn profile_json(steps: &[StepTime], runs: usize) -> serde_json::Value {
    let entries = |steps: &[StepTime]| -> Vec<serde_json::Value> {
        steps
            .iter()
            .map(|step| {
                let (ms, gflops) = step_rates(step, runs);
                serde_json::json!({ "layer": step.layer, "step": step.step, "calls_per_run": step.calls as f64 / runs as f64,
                    "ms_per_run": ms, "gflops": gflops })
            })
            .collect()
    };
    serde_json::json!({ "runs": runs, "steps": entries(steps), "totals": entries(&profile_totals(steps)) })
}

fn class_name(label: usize) -> String {
    adcorre::data::Expression::from_label(label)
        .map(|e| e.name().to_string())
        .unwrap_or_else(|| format!("class_{label}"))
}

fn dataset_info(source: &DatasetArgs, json: bool) -> Result<()> {
    let loaded = source.load("train")?;
    let counts = loaded.class_counts();
    if json {
        let classes: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .enumerate()
            .map(|(label, &n)| (class_name(label), serde_json::json!(n)))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "dataset": loaded.description, "total": loaded.len(),
                "classes": classes, "skipped": loaded.skipped,
            })
        );
    } else {
        println!("{}: {} samples", loaded.description, loaded.len());
        for (label, n) in counts.iter().enumerate() {
            println!("  {label} {:<9} {n}", class_name(label));
        }
        for (reason, n) in &loaded.skipped {
            println!("  skipped {n}: {reason}");
        }
    }
    Ok(())
}

fn progress_bar(total: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} [{elapsed_precise} < {eta}]")
            .expect("valid template"),
    );
    bar.set_message(what.to_string());
    bar
}

fn prepare(
    source: &DatasetArgs,
    out: &Path,
    size: usize,
    channels: usize,
    layout: &str,
) -> Result<()> {
    if !["packed", "release"].contains(&layout) {
        return Err(AdCorreError::Config(format!("unknown layout '{layout}' (packed or release)")));
    }
    let loaded = source.load("train")?;
    let bar = progress_bar(loaded.len(), "decoding");
    let packed = adcorre::data::prepare(&loaded, size, channels, &|done| bar.set_position(done as u64))?;
    bar.finish();
    if layout == "packed" {
        packed.save(out)?;
    } else {
        adcorre::data::prepared::save_release_layout(&packed, out)?;
    }
    println!(
        "{}: {} images of {size}x{size}x{channels} written to {} ({layout}); skipped: {:?}",
        loaded.description,
        packed.len(),
        out.display(),
        loaded.skipped
    );
    Ok(())
}

fn train(
    source: &DatasetArgs,
    out: &Path,
    config: adcorre::train::TrainConfig,
    from: Option<&Path>,
) -> Result<()> {
    let split = source.split.as_deref().unwrap_or("train");
    let trainer = adcorre::train::TrainModel::new(source.dataset.parse()?, split.parse()?)
        .data_root(&source.data)
        .config(config);
    let report = match from {
        Some(model) => {
            std::fs::create_dir_all(out).map_err(|err| AdCorreError::io(out, err))?;
            let start = out.join("start.mpk");
            let (net, card) = adcorre::infer::load_network::<Cpu>(model, &cpu_device())?;
            adcorre::model::save_model(&net, &card, &start)?;
            trainer.train("xcp", &start)?
        }
        None => trainer.train("xcp", out)?,
    };
    if let Some(last) = report.epochs.last() {
        println!(
            "{} steps; last eval accuracy {:.4} (average per class {:.4}); best: {}",
            report.steps,
            last.accuracy,
            last.average_class_accuracy,
            report.best_checkpoint.map(|p| p.display().to_string()).unwrap_or_default()
        );
    }
    Ok(())
}

fn eval<B: AdCorreBackend>(
    model: &Path,
    source: &DatasetArgs,
    json: bool,
    out: Option<&Path>,
    batch: usize,
    test_time_flip: Option<bool>,
    test_time_crop: Option<Crop>,
) -> Result<()> {
    use std::sync::Arc;
    let device = B::Device::default();
    let (net, card) = adcorre::infer::load_network::<B>(model, &device)?;
    let net = net.fold_batch_norm();
    let name: adcorre::data::DatasetName = source.dataset.parse()?;
    let loaded = source.load("eval")?;
    let (side, channels) = name.prepared_format(card.input_size);
    let bar = progress_bar(loaded.len(), "decoding");
    let packed = adcorre::data::prepare(&loaded, side, channels, &|done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let metrics = adcorre::train::evaluate(
        &net,
        &Arc::new(packed),
        card.input_size,
        batch,
        adcorre::model::TestTimeViews {
            flip: test_time_flip.unwrap_or(card.test_time_flip),
            crop: test_time_crop.map_or(card.test_time_crop, |Crop(crop)| crop),
        },
        &device,
    )?;
    let text = serde_json::to_string_pretty(&metrics).expect("metrics serialise");
    if let Some(prefix) = out {
        let json_path = prefix.with_extension("json");
        adcorre::atomic_file::write_atomically(&json_path, text.as_bytes())?;
        let png = PathBuf::from(format!("{}_confusion.png", prefix.display()));
        adcorre::metrics::plot::save_confusion_png(&metrics.confusion, &png)?;
    }
    if json {
        println!("{text}");
    } else {
        println!(
            "{} on {}: accuracy {:.4}, average per-class accuracy {:.4} ({} images)",
            model.display(),
            loaded.description,
            metrics.accuracy,
            metrics.average_class_accuracy,
            metrics.samples
        );
        println!("  class      precision recall  f1     support");
        for (label, name) in card.class_names.iter().enumerate() {
            println!(
                "  {name:<10} {:.3}     {:.3}   {:.3}  {}",
                metrics.precision[label], metrics.recall[label], metrics.f1[label], metrics.support[label]
            );
        }
    }
    Ok(())
}
