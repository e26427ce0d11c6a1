//! Drawing detections on a photo: each face's box, its five landmarks and a label (for
//! example the recognised expression), in a built-in 5x7 pixel font, so that results can be
//! looked at rather than read.

use image::{Rgb, RgbImage};

use super::DetectedFace;

/// Box and label background colour.
const BOX: Rgb<u8> = Rgb([255, 196, 0]);
/// Landmark colour.
const LANDMARK: Rgb<u8> = Rgb([0, 220, 255]);
/// Label text colour.
const TEXT: Rgb<u8> = Rgb([0, 0, 0]);

/// `image` with every face's box, landmarks and label (`labels[i]` for `faces[i]`; missing or
/// empty labels draw no text). Lines and letters scale with the face size.
pub fn annotate(image: &RgbImage, faces: &[DetectedFace], labels: &[String]) -> RgbImage {
    let mut out = image.clone();
    for (index, face) in faces.iter().enumerate() {
        let [x1, y1, x2, y2] = face.bbox;
        let side = (x2 - x1).max(y2 - y1).max(1.0);
        let thickness = (side / 80.0).ceil().max(1.0) as i64;
        let [x1, y1, x2, y2] = face.bbox.map(|v| v.round() as i64);
        for t in 0..thickness {
            rectangle_outline(&mut out, [x1 - t, y1 - t, x2 + t, y2 + t], BOX);
        }
        let dot = thickness;
        for [x, y] in face.landmarks {
            let (x, y) = (x.round() as i64, y.round() as i64);
            fill(&mut out, [x - dot, y - dot, x + dot, y + dot], LANDMARK);
        }
        if let Some(label) = labels.get(index).filter(|l| !l.is_empty()) {
            let scale = ((side / 90.0).round() as i64).clamp(2, 8);
            let (width, height) = (text_width(label) * scale + 2 * scale, 7 * scale + 2 * scale);
            let top = if y1 - thickness - height >= 0 { y1 - thickness - height } else { y2 + thickness };
            let left = x1 - thickness + 1;
            fill(&mut out, [left, top, left + width - 1, top + height - 1], BOX);
            draw_text(&mut out, label, left + scale, top + scale, scale, TEXT);
        }
    }
    out
}

fn put(image: &mut RgbImage, x: i64, y: i64, colour: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < image.width() && (y as u32) < image.height() {
        image.put_pixel(x as u32, y as u32, colour);
    }
}

/// Fills the rectangle with corners `[x1, y1]` and `[x2, y2]`, both inclusive, clipped to the image.
fn fill(image: &mut RgbImage, [x1, y1, x2, y2]: [i64; 4], colour: Rgb<u8>) {
    let (w, h) = (image.width() as i64, image.height() as i64);
    for y in y1.max(0)..=y2.min(h - 1) {
        for x in x1.max(0)..=x2.min(w - 1) {
            image.put_pixel(x as u32, y as u32, colour);
        }
    }
}

fn rectangle_outline(image: &mut RgbImage, [x1, y1, x2, y2]: [i64; 4], colour: Rgb<u8>) {
    for x in x1..=x2 {
        put(image, x, y1, colour);
        put(image, x, y2, colour);
    }
    for y in y1..=y2 {
        put(image, x1, y, colour);
        put(image, x2, y, colour);
    }
}

/// Width in font pixels (5 per character and 1 between characters).
fn text_width(text: &str) -> i64 {
    (text.chars().count() as i64 * 6 - 1).max(0)
}

/// Draws `text` (upper-cased; characters without a glyph become spaces) with its top left at
/// `(x, y)`, each font pixel `scale x scale` image pixels.
fn draw_text(image: &mut RgbImage, text: &str, x: i64, y: i64, scale: i64, colour: Rgb<u8>) {
    for (index, character) in text.chars().enumerate() {
        let rows = glyph(character.to_ascii_uppercase());
        let left = x + index as i64 * 6 * scale;
        for (row, bits) in rows.iter().enumerate() {
            for column in 0..5 {
                if bits >> (4 - column) & 1 == 1 {
                    let (px, py) = (left + column * scale, y + row as i64 * scale);
                    fill(image, [px, py, px + scale - 1, py + scale - 1], colour);
                }
            }
        }
    }
}

/// The 5x7 glyph of a character: seven rows, the five low bits of each, left to right.
fn glyph(character: char) -> [u8; 7] {
    match character {
        'A' => [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001],
        'B' => [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110],
        'C' => [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110],
        'D' => [0b11110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11110],
        'E' => [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111],
        'F' => [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000],
        'G' => [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111],
        'H' => [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001],
        'I' => [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        'J' => [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100],
        'K' => [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001],
        'L' => [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111],
        'M' => [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001],
        'N' => [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001],
        'O' => [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110],
        'P' => [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000],
        'Q' => [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101],
        'R' => [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001],
        'S' => [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110],
        'T' => [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100],
        'U' => [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110],
        'V' => [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100],
        'W' => [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010],
        'X' => [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001],
        'Y' => [0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100],
        'Z' => [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111],
        '0' => [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110],
        '1' => [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110],
        '2' => [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111],
        '3' => [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110],
        '4' => [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010],
        '5' => [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110],
        '6' => [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110],
        '7' => [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000],
        '8' => [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110],
        '9' => [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100],
        '%' => [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011],
        '.' => [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100],
        '-' => [0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000],
        _ => [0; 7],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_landmarks_and_labels_are_drawn_inside_the_image() {
        let image = RgbImage::from_pixel(200, 160, Rgb([10, 10, 10]));
        let face = DetectedFace {
            bbox: [50.0, 60.0, 130.0, 150.0],
            probability: 0.99,
            landmarks: [[70.0, 90.0], [110.0, 90.0], [90.0, 110.0], [75.0, 130.0], [105.0, 130.0]],
        };
        let out = annotate(&image, &[face.clone()], &["HAPPY 97%".to_string()]);
        assert_eq!(*out.get_pixel(50, 100), BOX, "left edge of the box");
        assert_eq!(*out.get_pixel(90, 150), BOX, "bottom edge");
        assert_eq!(*out.get_pixel(70, 90), LANDMARK, "left eye");
        assert_eq!(*out.get_pixel(90, 100), Rgb([10, 10, 10]), "inside the box untouched");
        let label_area = (0..200).flat_map(|x| (40..60).map(move |y| (x, y)));
        let text_pixels = label_area.filter(|&(x, y)| *out.get_pixel(x, y) == TEXT).count();
        assert!(text_pixels > 20, "label text above the box: {text_pixels} pixels");
        let edge = DetectedFace { bbox: [-20.0, -20.0, 300.0, 300.0], ..face };
        let clipped = annotate(&image, &[edge], &["X".to_string()]);
        assert_eq!(clipped.dimensions(), image.dimensions());
    }
}
