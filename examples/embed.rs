//! Embedding adcorre in an app, without the CLI: load the shipped model once, then recognise
//! frames held in memory in a loop, one reused RGB buffer, as a camera or video pipeline would.
//!
//! Builds with the inference features only:
//! `cargo run --release --no-default-features --features flex,shipped-model --example embed`

use std::time::Instant;

use adcorre::infer::preprocess::decode_image;
use adcorre::infer::TestModels;
use image::{DynamicImage, RgbImage};

/// Fills `frame` (RGB, row-major) with frame `index` of a stand-in video: `face` sliding to
/// the right by a pixel a frame, over grey.
fn next_frame(frame: &mut [u8], width: u32, face: &RgbImage, index: u32) {
    frame.fill(96);
    let offset = index % (width - face.width());
    for (x, y, pixel) in face.enumerate_pixels() {
        let at = 3 * (y * width + x + offset) as usize;
        frame[at..at + 3].copy_from_slice(&pixel.0);
    }
}

fn main() -> adcorre::Result<()> {
    // Once: the model (3.8 MB, compiled in) and the face detector.
    let models = TestModels::shipped()?;
    let card = models.card();
    println!("model: {}x{} {}, classes {:?}", card.input_size, card.input_size, if card.grayscale { "grayscale" } else { "RGB" }, card.class_names);

    // An encoded image held in memory (e.g. a network upload) decodes with the same limits as files.
    let bytes = std::fs::read("tests/fixtures/mtcnn/obama_libjpeg.png").unwrap_or_default();
    if !bytes.is_empty() {
        let photo = decode_image(&bytes, "upload.png", models.image_limits())?;
        for found in models.recognize_faces_in_image(&photo)? {
            println!("face at {:?}: {} ({:.2})", found.face.bbox.map(|v| v.round()), found.recognition.expression, found.recognition.confidence());
        }
    }

    // A loop over raw RGB frames: one buffer, lent to an RgbImage and taken back each time.
    let (width, height) = (160u32, 120u32);
    let face = RgbImage::from_pixel(96, 96, image::Rgb([180, 140, 120]));
    let mut buffer = vec![0u8; (3 * width * height) as usize];
    let start = Instant::now();
    let frames = 20;
    for index in 0..frames {
        next_frame(&mut buffer, width, &face, index);
        let frame = RgbImage::from_raw(width, height, std::mem::take(&mut buffer)).expect("buffer holds width x height x 3");
        let image = DynamicImage::ImageRgb8(frame);
        let recognition = models.recognize_image(&image)?;
        if index % 5 == 0 {
            println!("frame {index}: {} ({:.2})", recognition.expression, recognition.confidence());
        }
        // An RGB8 image gives its buffer back without a copy.
        buffer = image.into_rgb8().into_raw();
    }
    let per_frame = start.elapsed().as_secs_f64() * 1e3 / frames as f64;
    println!("{frames} frames, {per_frame:.2} ms per frame (whole frame as the face)");
    Ok(())
}
