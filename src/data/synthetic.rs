//! Synthetic expression images: drawn faces whose mouth curve and openness, brows and eyes
//! encode the 7 basic expressions, under random pose, scale, lighting and noise. A dataset
//! that needs no download, for the quickstart and for tests of the training loop.

use std::collections::BTreeMap;

use super::augment::SplitMix64;
use super::prepared::{PackedImages, PreparedInfo};

/// Facial feature parameters of one expression (before random jitter).
struct Features {
    /// Mouth corners up (+) or down (-).
    mouth_curve: f32,
    /// Mouth opening height.
    mouth_open: f32,
    /// Mouth half-width.
    mouth_width: f32,
    /// Eye opening.
    eye_open: f32,
    /// Brow height above the eyes.
    brow_raise: f32,
    /// Inner brow ends up (+, sad/fear) or down (-, anger).
    brow_slant: f32,
}

fn features(label: usize) -> Features {
    let f = |mouth_curve, mouth_open, mouth_width, eye_open, brow_raise, brow_slant| Features {
        mouth_curve,
        mouth_open,
        mouth_width,
        eye_open,
        brow_raise,
        brow_slant,
    };
    match label {
        0 => f(0.0, 0.0, 0.26, 0.5, 0.0, 0.0),     // Neutral
        1 => f(0.16, 0.05, 0.34, 0.45, 0.02, 0.0), // Happy
        2 => f(-0.14, 0.0, 0.24, 0.4, 0.0, 0.1),   // Sad
        3 => f(0.0, 0.22, 0.14, 1.0, 0.14, 0.0),   // Surprise
        4 => f(-0.04, 0.1, 0.3, 0.9, 0.1, 0.1),    // Fear
        5 => f(-0.08, 0.04, 0.22, 0.2, -0.04, 0.0), // Disgust
        _ => f(0.0, 0.0, 0.22, 0.3, -0.06, -0.12), // Anger
    }
}

fn smooth_inside(distance: f32, edge: f32) -> f32 {
    // 1 inside (distance < 0), 0 outside, linear over `edge`.
    (0.5 - distance / edge).clamp(0.0, 1.0)
}

fn segment_distance(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let t = (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / (dx * dx + dy * dy)).clamp(0.0, 1.0);
    ((p.0 - a.0 - t * dx).powi(2) + (p.1 - a.1 - t * dy).powi(2)).sqrt()
}

/// Draws one `side x side` grayscale face of expression `label` (0..7, the release's order).
pub fn draw_face(label: usize, side: usize, rng: &mut SplitMix64) -> Vec<u8> {
    let base = features(label);
    let jitter = |rng: &mut SplitMix64, value: f32, amount: f32| value + rng.uniform(-amount, amount);
    let mouth_curve = jitter(rng, base.mouth_curve, 0.03);
    let mouth_open = (jitter(rng, base.mouth_open, 0.025)).max(0.0);
    let mouth_width = jitter(rng, base.mouth_width, 0.03);
    let eye_open = jitter(rng, base.eye_open, 0.08).clamp(0.1, 1.1);
    let brow_raise = jitter(rng, base.brow_raise, 0.02);
    let brow_slant = jitter(rng, base.brow_slant, 0.025);
    let angle = rng.uniform(-0.25, 0.25);
    let scale = rng.uniform(0.8, 1.1);
    let (tx, ty) = (rng.uniform(-0.12, 0.12), rng.uniform(-0.12, 0.12));
    let skin = rng.uniform(0.5, 0.8);
    let background = rng.uniform(0.05, 0.4);
    let ink = rng.uniform(0.0, 0.2);
    let (light_x, light_y) = (rng.uniform(-0.25, 0.25), rng.uniform(-0.25, 0.25));
    let (sin, cos) = angle.sin_cos();
    let edge = 2.5 / side as f32;
    let mut pixels = Vec::with_capacity(side * side);
    for row in 0..side {
        for col in 0..side {
            let (sx, sy) = (
                (col as f32 + 0.5) / side as f32 * 2.0 - 1.0,
                (row as f32 + 0.5) / side as f32 * 2.0 - 1.0,
            );
            // Image -> face coordinates (inverse pose).
            let (ux, uy) = ((sx - tx) / scale, (sy - ty) / scale);
            let (x, y) = (cos * ux + sin * uy, -sin * ux + cos * uy);
            let face = smooth_inside(((x / 0.72).powi(2) + (y / 0.92).powi(2)).sqrt() - 1.0, edge * 2.0);
            let mut value = background + (skin - background) * face;
            let mut dark = 0f32;
            for side_sign in [-1.0f32, 1.0] {
                let (ex, ey) = (0.3 * side_sign, -0.2);
                let eye_h = 0.025 + 0.075 * eye_open;
                let eye = ((x - ex) / 0.12).powi(2) + ((y - ey) / eye_h).powi(2);
                dark = dark.max(smooth_inside(eye.sqrt() - 1.0, edge * 4.0));
                let inner = (0.12 * side_sign, -0.36 - brow_raise - brow_slant);
                let outer = (0.46 * side_sign, -0.38 - brow_raise + brow_slant * 0.5);
                dark = dark.max(smooth_inside(segment_distance((x, y), inner, outer) - 0.035, edge));
            }
            if x.abs() <= mouth_width {
                let t = x / mouth_width;
                let centre = 0.48 + mouth_curve * (1.0 - t * t) - mouth_curve;
                let half = 0.025 + mouth_open * (1.0 - t * t).sqrt();
                dark = dark.max(smooth_inside((y - centre).abs() - half, edge));
            }
            value = value * (1.0 - dark * face) + ink * dark * face;
            value += light_x * sx + light_y * sy + rng.uniform(-0.05, 0.05);
            pixels.push((value.clamp(0.0, 1.0) * 255.0).round() as u8);
        }
    }
    pixels
}

/// A class-balanced synthetic dataset of `count` faces, `side x side` grayscale, 7 classes.
pub fn synthetic_faces(count: usize, side: usize, seed: u64) -> PackedImages {
    let mut pixels = Vec::with_capacity(count * side * side);
    let mut labels = Vec::with_capacity(count);
    for index in 0..count {
        let label = index % 7;
        let mut rng = SplitMix64::for_sample(seed, 0, index as u64);
        pixels.extend(draw_face(label, side, &mut rng));
        labels.push(label);
    }
    PackedImages {
        side,
        channels: 1,
        pixels,
        labels,
        num_classes: 7,
        info: PreparedInfo {
            source: format!("synthetic faces, seed {seed}"),
            skipped: BTreeMap::new(),
        },
    }
}
