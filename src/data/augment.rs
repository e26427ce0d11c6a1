//! Data augmentation for training faces: random horizontal flip, small rotation, random
//! resized crop (scale and shift) and brightness/contrast, applied in one bilinear affine warp
//! that also resizes to the network's input. Reproducible from a seed.

use serde::{Deserialize, Serialize};

/// A small deterministic random generator (SplitMix64): each sample of each epoch gets its own
/// stream from `(seed, epoch, index)`, so results do not depend on thread scheduling.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for one stream.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The generator of sample `index` in `epoch` for a run seeded with `seed`.
    pub fn for_sample(seed: u64, epoch: u64, index: u64) -> Self {
        let mut mixer = Self(seed ^ 0x9E37_79B9_7F4A_7C15);
        let a = mixer.next_u64() ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut mixer = Self(a);
        Self(mixer.next_u64() ^ index.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in `[low, high)`.
    pub fn uniform(&mut self, low: f32, high: f32) -> f32 {
        low + (high - low) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }

    /// A uniform index below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Augmentation strengths; `Augmentation::none()` only resizes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Augmentation {
    /// Probability of a horizontal flip.
    pub flip: f32,
    /// Largest rotation, in degrees (uniform in +-).
    pub rotation_degrees: f32,
    /// Smallest side of the random crop, as a fraction of the image side (1 = no crop).
    pub min_crop: f32,
    /// Largest brightness shift, added to values in [0, 1] (uniform in +-).
    pub brightness: f32,
    /// Largest relative contrast change (uniform factor in 1 +- contrast).
    pub contrast: f32,
}

impl Default for Augmentation {
    /// Mild settings suited to aligned faces: flip 0.5, +-10 degrees, crops of 85-100%,
    /// brightness +-0.1, contrast +-20%.
    fn default() -> Self {
        Self {
            flip: 0.5,
            rotation_degrees: 10.0,
            min_crop: 0.85,
            brightness: 0.1,
            contrast: 0.2,
        }
    }
}

impl Augmentation {
    /// No augmentation: resize only.
    pub fn none() -> Self {
        Self {
            flip: 0.0,
            rotation_degrees: 0.0,
            min_crop: 1.0,
            brightness: 0.0,
            contrast: 0.0,
        }
    }

    /// Warps `pixels` (`side x side x channels`, u8, row-major HWC, 1 or 3 channels) to a
    /// `3 x size x size` RGB CHW image in [0, 1], with random transforms drawn from `rng`.
    pub fn apply(&self, pixels: &[u8], side: usize, channels: usize, size: usize, rng: &mut SplitMix64) -> Vec<f32> {
        let flip = rng.uniform(0.0, 1.0) < self.flip;
        let angle = rng.uniform(-1.0, 1.0) * self.rotation_degrees.to_radians();
        let crop = rng.uniform(self.min_crop.clamp(0.05, 1.0), 1.0);
        // Room left by the crop, as a shift of the centre in source pixels.
        let slack = (1.0 - crop) * side as f32 / 2.0;
        let (dx, dy) = (rng.uniform(-1.0, 1.0) * slack, rng.uniform(-1.0, 1.0) * slack);
        let brightness = rng.uniform(-1.0, 1.0) * self.brightness;
        let contrast = 1.0 + rng.uniform(-1.0, 1.0) * self.contrast;

        // Output pixel centre (u, v) -> source coordinates (x, y), both in pixel units.
        let scale = crop * side as f32 / size as f32;
        let (sin, cos) = angle.sin_cos();
        let centre_out = size as f32 / 2.0;
        let centre_in = side as f32 / 2.0;
        let plane = size * size;
        let mut out = vec![0f32; 3 * plane];
        let mut mean = [0f32; 3];
        for v in 0..size {
            for u in 0..size {
                let mut ox = (u as f32 + 0.5 - centre_out) * scale;
                let oy = (v as f32 + 0.5 - centre_out) * scale;
                if flip {
                    ox = -ox;
                }
                let x = cos * ox - sin * oy + centre_in + dx - 0.5;
                let y = sin * ox + cos * oy + centre_in + dy - 0.5;
                let rgb = bilinear(pixels, side, channels, x, y);
                for c in 0..3 {
                    out[c * plane + v * size + u] = rgb[c];
                    mean[c] += rgb[c];
                }
            }
        }
        if brightness != 0.0 || contrast != 1.0 {
            for (c, channel_mean) in mean.iter().enumerate() {
                let m = channel_mean / plane as f32;
                for value in &mut out[c * plane..(c + 1) * plane] {
                    *value = ((*value - m) * contrast + m + brightness).clamp(0.0, 1.0);
                }
            }
        }
        out
    }
}

/// Bilinear sample at `(x, y)` (pixel centres at integers), edges clamped; RGB in [0, 1].
fn bilinear(pixels: &[u8], side: usize, channels: usize, x: f32, y: f32) -> [f32; 3] {
    let max = (side - 1) as f32;
    let (x, y) = (x.clamp(0.0, max), y.clamp(0.0, max));
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(side - 1), (y0 + 1).min(side - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let at = |xx: usize, yy: usize, c: usize| {
        let channel = if channels == 1 { 0 } else { c };
        pixels[(yy * side + xx) * channels + channel] as f32
    };
    let mut rgb = [0f32; 3];
    for (c, value) in rgb.iter_mut().enumerate() {
        let top = at(x0, y0, c) * (1.0 - fx) + at(x1, y0, c) * fx;
        let bottom = at(x0, y1, c) * (1.0 - fx) + at(x1, y1, c) * fx;
        *value = (top * (1.0 - fy) + bottom * fy) / 255.0;
    }
    rgb
}
