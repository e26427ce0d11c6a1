//! From a detected face to the crop a recognition model expects: a square box crop with a
//! margin (for models trained on face boxes, as AffectNet's and FER-2013's are), or an aligned
//! crop (a similarity transform that puts the five landmarks on a canonical template, for
//! models trained on aligned faces).

use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use super::DetectedFace;

/// The five-point template of aligned 112x112 faces used by ArcFace / insightface (eyes,
/// nose tip, mouth corners, as seen in the image), in pixels of a 112x112 crop.
pub const ARCFACE_TEMPLATE_112: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// How a face becomes a recognition model's input (stored in the model card, so each model is
/// fed the way it was trained).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaceCrop {
    /// The square around the box's centre whose side is the box's longer side times
    /// `1 + margin`; pixels outside the image repeat its edge.
    Box {
        /// Extra side, as a fraction of the box's longer side (0.2 = 10 % on each side;
        /// negative values crop inside the box).
        margin: f32,
    },
    /// The similarity transform (rotation, uniform scale, shift) that best maps the landmarks
    /// onto [`ARCFACE_TEMPLATE_112`], the template shrunk toward its centre by `1 + margin`.
    Aligned {
        /// Extra room around the template, as a fraction of the crop side.
        margin: f32,
    },
}

/// The detector's box as it is (a model card without a crop, e.g. the authors' models trained
/// on AffectNet's face boxes, gets this).
impl Default for FaceCrop {
    fn default() -> Self {
        FaceCrop::Box { margin: 0.0 }
    }
}

impl FaceCrop {
    /// Checks that the crop has a positive size.
    pub fn validate(&self) -> crate::Result<()> {
        let (FaceCrop::Box { margin } | FaceCrop::Aligned { margin }) = *self;
        if margin.is_finite() && margin > -0.9 {
            Ok(())
        } else {
            Err(crate::AdCorreError::Config(format!("face crop margin must be above -0.9, got {margin}")))
        }
    }

    /// The affine map `[a, b, tx, c, d, ty]` from output pixel centres `(u, v)` of a
    /// `size x size` crop to image coordinates `(a u + b v + tx, c u + d v + ty)`.
    pub fn output_to_image(&self, face: &DetectedFace, size: usize) -> [f32; 6] {
        match *self {
            FaceCrop::Box { margin } => {
                let [x1, y1, x2, y2] = face.bbox;
                let side = (x2 - x1).max(y2 - y1) * (1.0 + margin);
                let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
                let step = side / size as f32;
                [step, 0.0, cx - side / 2.0, 0.0, step, cy - side / 2.0]
            }
            FaceCrop::Aligned { margin } => {
                let scale = size as f32 / 112.0 / (1.0 + margin);
                let centre = size as f32 / 2.0;
                let template = ARCFACE_TEMPLATE_112.map(|[x, y]| [(x - 56.0) * scale + centre, (y - 56.0) * scale + centre]);
                similarity_transform(&template, &face.landmarks)
            }
        }
    }

    /// The crop of `face` from `image`, `size x size`, sampled bilinearly (pixel centres at
    /// `+ 0.5`), edges repeated.
    pub fn crop(&self, image: &RgbImage, face: &DetectedFace, size: usize) -> RgbImage {
        let [a, b, tx, c, d, ty] = self.output_to_image(face, size);
        let mut out = RgbImage::new(size as u32, size as u32);
        for (u, v, pixel) in out.enumerate_pixels_mut() {
            let (u, v) = (u as f32 + 0.5, v as f32 + 0.5);
            *pixel = sample(image, a * u + b * v + tx - 0.5, c * u + d * v + ty - 0.5);
        }
        out
    }
}

/// Bilinear sample at `(x, y)` (pixel centres at integers), clamped to the image.
fn sample(image: &RgbImage, x: f32, y: f32) -> Rgb<u8> {
    let (w, h) = (image.width() as i64, image.height() as i64);
    let (x, y) = (x.clamp(0.0, (w - 1) as f32), y.clamp(0.0, (h - 1) as f32));
    let (x0, y0) = (x.floor() as i64, y.floor() as i64);
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let at = |xx: i64, yy: i64| image.get_pixel(xx.min(w - 1) as u32, yy.min(h - 1) as u32).0;
    let (p00, p10, p01, p11) = (at(x0, y0), at(x0 + 1, y0), at(x0, y0 + 1), at(x0 + 1, y0 + 1));
    Rgb(std::array::from_fn(|ch| {
        let top = p00[ch] as f32 * (1.0 - fx) + p10[ch] as f32 * fx;
        let bottom = p01[ch] as f32 * (1.0 - fx) + p11[ch] as f32 * fx;
        (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8
    }))
}

/// The least-squares similarity transform (Umeyama 1991, no reflection) taking the points
/// `from` to `to`: `[a, b, tx, c, d, ty]` with `to ≈ (a x + b y + tx, c x + d y + ty)` and
/// `a = d`, `c = -b`.
pub fn similarity_transform(from: &[[f32; 2]; 5], to: &[[f32; 2]; 5]) -> [f32; 6] {
    let mean = |points: &[[f32; 2]; 5]| {
        let (sx, sy) = points.iter().fold((0f64, 0f64), |(sx, sy), p| (sx + p[0] as f64, sy + p[1] as f64));
        (sx / 5.0, sy / 5.0)
    };
    let (fx, fy) = mean(from);
    let (tx, ty) = mean(to);
    // With centred points p (from) and q (to): a = sum(p.q) / |p|^2, b = sum(p x q) / |p|^2,
    // the rotation-scale [[a, -b], [b, a]] that minimises sum |q - R p|^2.
    let (mut dot, mut cross, mut norm) = (0f64, 0f64, 0f64);
    for (p, q) in from.iter().zip(to) {
        let (px, py) = (p[0] as f64 - fx, p[1] as f64 - fy);
        let (qx, qy) = (q[0] as f64 - tx, q[1] as f64 - ty);
        dot += px * qx + py * qy;
        cross += px * qy - py * qx;
        norm += px * px + py * py;
    }
    let (a, b) = if norm > 0.0 { (dot / norm, cross / norm) } else { (1.0, 0.0) };
    [a, -b, tx - (a * fx - b * fy), b, a, ty - (b * fx + a * fy)].map(|v| v as f32)
}
