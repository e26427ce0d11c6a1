//! Builds the published Ad-Corre architecture (Xception, k = 7 heads, 7 classes), prints its
//! structure, runs it on an embedded synthetic image on the CPU and round-trips it through a
//! model file.
//!
//! `cargo run --release --example network`

use std::time::Instant;

use adcorre::backend::{cpu_device, Cpu};
use adcorre::model::{load_model, parameter_count, save_model, AdCorreNetConfig, ModelCard};
use burn::prelude::*;

/// A 224x224 RGB test card: smooth colour gradients with a bright disc, values in [0, 1].
fn test_card(device: &burn::tensor::Device<Cpu>) -> Tensor<Cpu, 4> {
    let size = 224;
    let mut data = vec![0f32; 3 * size * size];
    for y in 0..size {
        for x in 0..size {
            let (u, v) = (x as f32 / size as f32, y as f32 / size as f32);
            let disc = if (u - 0.5).powi(2) + (v - 0.45).powi(2) < 0.08 { 0.4 } else { 0.0 };
            let pixel = [0.3 + 0.5 * u, 0.2 + 0.6 * v, 0.5 - 0.3 * u * v];
            for (channel, value) in pixel.iter().enumerate() {
                data[channel * size * size + y * size + x] = (value + disc).min(1.0);
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [1, 3, size, size]), device)
}

fn main() -> Result<(), adcorre::AdCorreError> {
    let device = cpu_device();
    let config = AdCorreNetConfig::new();
    let net = config.init::<Cpu>(&device);
    println!("Ad-Corre network: Xception backbone, {} heads x {}, {} classes", config.num_heads, config.embedding_dim, config.num_classes);
    println!("parameters (Keras count, incl. batch-norm statistics): {}", parameter_count(&net));

    let image = test_card(&device);
    let start = Instant::now();
    let mut stages = Vec::new();
    let features = net.backbone.forward_with_taps(image.clone(), &mut |name, x| {
        stages.push(format!("  {name:<22} {:?}", x.dims()));
    });
    println!("feature maps at 224x224:\n{}", stages.join("\n"));
    println!("backbone output {:?} in {:.0} ms", features.dims(), start.elapsed().as_secs_f64() * 1e3);

    let out = net.forward(image.clone());
    let card = ModelCard::new(config).with_source("untrained, examples/network.rs");
    let probabilities = out.probabilities().into_data().to_vec::<f32>().unwrap_or_default();
    for (name, p) in card.class_names.iter().zip(&probabilities) {
        println!("  {name:<9} {p:.4}  (untrained weights)");
    }

    let path = std::env::temp_dir().join("adcorre_network_example.mpk");
    save_model(&net, &card, &path)?;
    let (reloaded, reloaded_card) = load_model::<Cpu>(&path, &device)?;
    let same = reloaded.forward(image).logits.into_data() == out.logits.into_data();
    println!(
        "saved to {} ({} MB); reloaded {} heads, {} classes, input {}; identical outputs: {same}",
        path.display(),
        std::fs::metadata(&path).map(|m| m.len() / 1_000_000).unwrap_or(0),
        reloaded_card.network.num_heads,
        reloaded_card.network.num_classes,
        reloaded_card.input_size,
    );
    std::fs::remove_file(&path).ok();
    Ok(())
}
