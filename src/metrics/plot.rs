//! A picture of a confusion matrix: rows are true classes, columns predictions, each cell
//! shaded by the fraction of its row (white 0 .. dark blue 1) and labelled with that fraction in
//! percent, the diagonal outlined, rows and columns numbered by class label.

use std::path::Path;

use image::{Rgb, RgbImage};

use super::ConfusionMatrix;
use crate::error::{AdCorreError, Result};

const CELL: u32 = 40;
/// Room left of and above the matrix for the class numbers.
const MARGIN: u32 = 18;
/// Pixels per font dot.
const DOT: u32 = 2;

/// Digits 0-9 in a 3x5 dot font, one row of three bits per entry (top row first).
const DIGITS: [[u8; 5]; 10] = [
    [0b111, 0b101, 0b101, 0b101, 0b111],
    [0b010, 0b110, 0b010, 0b010, 0b111],
    [0b111, 0b001, 0b111, 0b100, 0b111],
    [0b111, 0b001, 0b111, 0b001, 0b111],
    [0b101, 0b101, 0b111, 0b001, 0b001],
    [0b111, 0b100, 0b111, 0b001, 0b111],
    [0b111, 0b100, 0b111, 0b101, 0b111],
    [0b111, 0b001, 0b010, 0b010, 0b010],
    [0b111, 0b101, 0b111, 0b101, 0b111],
    [0b111, 0b101, 0b111, 0b001, 0b111],
];

/// Writes the decimal `number` centred on `(cx, cy)`.
fn draw_number(picture: &mut RgbImage, number: u64, cx: u32, cy: u32, colour: Rgb<u8>) {
    let text = number.to_string();
    let advance = 4 * DOT;
    let width = text.len() as u32 * advance - DOT;
    let (left, top) = (cx.saturating_sub(width / 2), cy.saturating_sub(5 * DOT / 2));
    for (index, digit) in text.bytes().enumerate() {
        let glyph = DIGITS[(digit - b'0') as usize];
        for (row, bits) in glyph.iter().enumerate() {
            for column in 0..3u32 {
                if bits & (0b100 >> column) != 0 {
                    for dy in 0..DOT {
                        for dx in 0..DOT {
                            let x = left + index as u32 * advance + column * DOT + dx;
                            let y = top + row as u32 * DOT + dy;
                            if x < picture.width() && y < picture.height() {
                                picture.put_pixel(x, y, colour);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Renders the row-normalised matrix as a PNG at `path`.
pub fn save_confusion_png(confusion: &ConfusionMatrix, path: &Path) -> Result<()> {
    let c = confusion.num_classes as u32;
    let side = MARGIN + c * CELL + 1;
    let mut picture = RgbImage::from_pixel(side, side, Rgb([255, 255, 255]));
    let ink = Rgb([40, 40, 40]);
    for t in 0..c {
        draw_number(&mut picture, t as u64, MARGIN / 2, MARGIN + t * CELL + CELL / 2, ink);
        draw_number(&mut picture, t as u64, MARGIN + t * CELL + CELL / 2, MARGIN / 2, ink);
        let row_total: u64 = (0..c).map(|p| confusion.get(t as usize, p as usize)).sum();
        for p in 0..c {
            let fraction = if row_total == 0 {
                0.0
            } else {
                confusion.get(t as usize, p as usize) as f32 / row_total as f32
            };
            let shade = |full: f32| (255.0 - (255.0 - full) * fraction).round() as u8;
            let colour = Rgb([shade(8.0), shade(48.0), shade(107.0)]);
            let (x0, y0) = (MARGIN + p * CELL, MARGIN + t * CELL);
            for y in 0..=CELL {
                for x in 0..=CELL {
                    let grid = x == 0 || y == 0 || x == CELL || y == CELL;
                    let border = t == p && (x < 3 || y < 3 || x > CELL - 3 || y > CELL - 3);
                    let pixel = if border {
                        Rgb([230, 120, 20])
                    } else if grid {
                        Rgb([120, 120, 120])
                    } else {
                        colour
                    };
                    picture.put_pixel(x0 + x, y0 + y, pixel);
                }
            }
            let text = if fraction > 0.5 { Rgb([255, 255, 255]) } else { ink };
            let percent = (100.0 * fraction).round() as u64;
            draw_number(&mut picture, percent, x0 + CELL / 2, y0 + CELL / 2, text);
        }
    }
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(picture)
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|err| AdCorreError::Image { path: path.to_path_buf(), reason: err.to_string() })?;
    crate::atomic_file::write_atomically(path, &bytes)
}
