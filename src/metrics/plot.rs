//! A picture of a confusion matrix: rows are true classes, columns predictions, each cell
//! shaded by the fraction of its row (white 0 .. dark blue 1), the diagonal outlined.

use std::path::Path;

use image::{Rgb, RgbImage};

use super::ConfusionMatrix;
use crate::error::{AdCorreError, Result};

const CELL: u32 = 40;

/// Renders the row-normalised matrix as a PNG at `path`.
pub fn save_confusion_png(confusion: &ConfusionMatrix, path: &Path) -> Result<()> {
    let c = confusion.num_classes as u32;
    let mut picture = RgbImage::from_pixel(c * CELL + 1, c * CELL + 1, Rgb([120, 120, 120]));
    for t in 0..c {
        let row_total: u64 = (0..c).map(|p| confusion.get(t as usize, p as usize)).sum();
        for p in 0..c {
            let fraction = if row_total == 0 {
                0.0
            } else {
                confusion.get(t as usize, p as usize) as f32 / row_total as f32
            };
            let shade = |full: f32| (255.0 - (255.0 - full) * fraction).round() as u8;
            let colour = Rgb([shade(8.0), shade(48.0), shade(107.0)]);
            for y in 1..CELL {
                for x in 1..CELL {
                    let border = t == p && (x < 3 || y < 3 || x > CELL - 3 || y > CELL - 3);
                    let pixel = if border { Rgb([230, 120, 20]) } else { colour };
                    picture.put_pixel(p * CELL + x, t * CELL + y, pixel);
                }
            }
        }
    }
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(picture)
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|err| AdCorreError::Image { path: path.to_path_buf(), reason: err.to_string() })?;
    crate::atomic_file::write_atomically(path, &bytes)
}
