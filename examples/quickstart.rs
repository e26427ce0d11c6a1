//! The zero-setup quickstart: trains a reduced Ad-Corre network on synthetic drawn faces on the
//! CPU for a few minutes, evaluates it on held-out synthetic faces, saves it, and recognises
//! one image with `TestModels`.
//!
//! `cargo run --release --example quickstart [-- OUT_DIR]`

use std::time::Instant;

use adcorre::data::synthetic::synthetic_faces;
use adcorre::data::{DatasetName, DatasetType};
use adcorre::infer::TestModels;
use adcorre::loss::AdCorreLossConfig;
use adcorre::model::{AdCorreNetConfig, XceptionConfig};
use adcorre::train::{TrainConfig, TrainModel};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), adcorre::AdCorreError> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "quickstart_run".into());
    let start = Instant::now();
    let side = 48;
    let train = synthetic_faces(2100, side, 1);
    let held_out = synthetic_faces(700, side, 2);
    println!("synthetic faces: {} for training, {} held out, {side}x{side} gray", train.len(), held_out.len());

    // Xception at a quarter of the width with 2 middle blocks, 7 heads of 64.
    let network = AdCorreNetConfig::new()
        .with_backbone(
            XceptionConfig::new()
                .with_width(0.25)
                .with_middle_blocks(2)
                // A few hundred steps: let batch-norm statistics follow faster than Keras' 0.99.
                .with_bn_momentum(0.1),
        )
        .with_embedding_dim(64);
    let config = TrainConfig {
        network,
        loss: AdCorreLossConfig::default(),
        epochs: 4,
        batch_size: 32,
        learning_rate: 1e-3,
        input_size: side,
        workers: 1,
        seed: 7,
        ..TrainConfig::default()
    };
    let report = TrainModel::new(DatasetName::ImageFolder, DatasetType::Train7)
        .config(config)
        .with_prepared(train, held_out.clone())
        .train("xcp", &out)?;

    let last = report.epochs.last().expect("at least one epoch");
    println!(
        "\nheld-out accuracy {:.1}% (average per class {:.1}%), {} steps in {:.0} s",
        100.0 * last.accuracy,
        100.0 * last.average_class_accuracy,
        report.steps,
        start.elapsed().as_secs_f64()
    );
    let names = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger"];
    println!("confusion matrix (rows: true, columns: predicted):");
    println!("{:>9} {}", "", names.map(|n| format!("{n:>9}")).join(""));
    for (t, name) in names.iter().enumerate() {
        let row: Vec<String> = (0..7).map(|p| format!("{:>9}", last.confusion.get(t, p))).collect();
        println!("{name:>9} {}", row.join(""));
    }

    let best = report.best_checkpoint.expect("a checkpoint was written");
    println!("best model: {}", best.display());
    let models = TestModels::new(&best)?;
    let face = held_out.to_image(1); // a Happy face
    let image_path = std::path::Path::new(&out).join("example_face.png");
    face.save(&image_path).map_err(|err| adcorre::AdCorreError::Image { path: image_path.clone(), reason: err.to_string() })?;
    let recognition = models.recognize_fer(&image_path)?;
    println!(
        "{} (drawn as Happy): recognised {} with probability {:.2}",
        image_path.display(),
        recognition.expression,
        recognition.confidence()
    );
    Ok(())
}
