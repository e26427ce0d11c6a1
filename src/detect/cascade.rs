//! The MTCNN cascade on the host: image pyramid, area resampling, candidate boxes, non-maximum
//! suppression, box regression, squaring and crops, as facenet-pytorch's `detect_face` does
//! them (box arithmetic in `f32` like its tensors).

/// An RGB image as three planes of `f32` values in 0..=255 (row-major, plane after plane).
#[derive(Debug, Clone)]
pub struct RgbPlanes {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `3 * height * width` values.
    pub values: Vec<f32>,
}

impl RgbPlanes {
    /// The planes of an 8-bit RGB image.
    pub fn from_rgb8(image: &image::RgbImage) -> Self {
        let (width, height) = (image.width() as usize, image.height() as usize);
        let plane = width * height;
        let mut values = vec![0f32; 3 * plane];
        for (index, pixel) in image.pixels().enumerate() {
            for channel in 0..3 {
                values[channel * plane + index] = pixel.0[channel] as f32;
            }
        }
        Self { width, height, values }
    }

    /// The rectangle `[x0, x1) x [y0, y1)` resized to `out_h x out_w` by area averaging
    /// (PyTorch's `interpolate(mode="area")`, i.e. adaptive average pooling: output cell `i`
    /// averages input cells `floor(i * n / out) .. ceil((i + 1) * n / out)`), then scaled to
    /// `(v - 127.5) / 128`, the networks' input range; appended to `out` as `[3, out_h, out_w]`.
    pub fn area_resize_into(&self, [x0, y0, x1, y1]: [usize; 4], [out_h, out_w]: [usize; 2], out: &mut Vec<f32>) {
        let (in_w, in_h) = (x1 - x0, y1 - y0);
        let windows = |n: usize, count: usize| -> Vec<(usize, usize)> {
            (0..count).map(|i| (i * n / count, ((i + 1) * n).div_ceil(count))).collect()
        };
        let columns = windows(in_w, out_w);
        let rows = windows(in_h, out_h);
        let mut row_means = vec![0f32; in_h * out_w];
        for channel in 0..3 {
            let plane = &self.values[channel * self.width * self.height..][..self.width * self.height];
            for y in 0..in_h {
                let source = &plane[(y0 + y) * self.width + x0..][..in_w];
                for (slot, &(start, end)) in row_means[y * out_w..][..out_w].iter_mut().zip(&columns) {
                    *slot = source[start..end].iter().sum::<f32>() / (end - start) as f32;
                }
            }
            for &(start, end) in &rows {
                for x in 0..out_w {
                    let sum: f32 = (start..end).map(|y| row_means[y * out_w + x]).sum();
                    out.push((sum / (end - start) as f32 - 127.5) * 0.0078125);
                }
            }
        }
    }
}

/// A candidate face: box `[x1, y1, x2, y2]`, score, and the regression that refines it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Box corners in image pixels.
    pub bbox: [f32; 4],
    /// Face probability of the stage that produced it.
    pub score: f32,
    /// Box regression (offsets in box widths / heights) not yet applied.
    pub regression: [f32; 4],
}

/// The pyramid's scales: from `12 / min_face_size` down by `factor` while the shorter side,
/// scaled, is at least 12 pixels (P-Net's window).
pub fn pyramid_scales(width: usize, height: usize, min_face_size: f64, factor: f64) -> Vec<f64> {
    let m = 12.0 / min_face_size;
    let mut shorter = width.min(height) as f64 * m;
    let mut scale = m;
    let mut scales = Vec::new();
    while shorter >= 12.0 {
        scales.push(scale);
        scale *= factor;
        shorter *= factor;
    }
    scales
}

/// The size `[h, w]` of the pyramid level at `scale` (facenet-pytorch's `int(h * scale + 1)`).
pub fn level_size(width: usize, height: usize, scale: f64) -> [usize; 2] {
    [(height as f64 * scale + 1.0) as usize, (width as f64 * scale + 1.0) as usize]
}

/// P-Net's cells with face probability `>= threshold` as candidates in image pixels: cell
/// `(x, y)` of a level at `scale` covers `floor((2x + 1) / scale) .. floor((2x + 12) / scale)`.
/// `regression` is `[4, h, w]` and `probability` `[h, w]` (the face channel), row-major.
pub fn proposals(regression: &[f32], probability: &[f32], [h, w]: [usize; 2], scale: f64, threshold: f32) -> Vec<Candidate> {
    let scale = scale as f32;
    let mut found = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let score = probability[y * w + x];
            if score >= threshold {
                let corner = |v: usize, offset: f32| ((2.0 * v as f32 + offset) / scale).floor();
                found.push(Candidate {
                    bbox: [corner(x, 1.0), corner(y, 1.0), corner(x, 12.0), corner(y, 12.0)],
                    score,
                    regression: std::array::from_fn(|c| regression[(c * h + y) * w + x]),
                });
            }
        }
    }
    found
}

/// Indices `0..len` in descending order of `score(index)`, stable for ties.
fn by_descending_score(len: usize, score: impl Fn(usize) -> f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
    order
}

/// Non-maximum suppression with intersection over union, areas `(x2 - x1) * (y2 - y1)`
/// (torchvision's `nms`): keeps, best first, every box that overlaps no kept box by more
/// than `threshold`. Returns the kept candidates in descending score order.
pub fn nms_union(candidates: &[Candidate], threshold: f32) -> Vec<Candidate> {
    let area = |b: &[f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    let mut kept: Vec<Candidate> = Vec::new();
    for index in by_descending_score(candidates.len(), |i| candidates[i].score) {
        let candidate = candidates[index];
        let suppressed = kept.iter().any(|k| {
            let inter = (k.bbox[2].min(candidate.bbox[2]) - k.bbox[0].max(candidate.bbox[0])).max(0.0)
                * (k.bbox[3].min(candidate.bbox[3]) - k.bbox[1].max(candidate.bbox[1])).max(0.0);
            inter / (area(&k.bbox) + area(&candidate.bbox) - inter) > threshold
        });
        if !suppressed {
            kept.push(candidate);
        }
    }
    kept
}

/// Non-maximum suppression with the "Min" overlap (intersection over the smaller area, areas
/// with the `+ 1` pixel convention of the original MTCNN code), used after O-Net. Returns the
/// kept indices, best first.
pub fn nms_min(boxes: &[[f32; 4]], scores: &[f32], threshold: f32) -> Vec<usize> {
    let area = |b: &[f32; 4]| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let mut kept: Vec<usize> = Vec::new();
    for index in by_descending_score(boxes.len(), |i| scores[i]) {
        let b = &boxes[index];
        let suppressed = kept.iter().any(|&k| {
            let k = &boxes[k];
            let inter = (k[2].min(b[2]) - k[0].max(b[0]) + 1.0).max(0.0) * (k[3].min(b[3]) - k[1].max(b[1]) + 1.0).max(0.0);
            inter / area(k).min(area(b)) > threshold
        });
        if !suppressed {
            kept.push(index);
        }
    }
    kept
}

/// P-Net's refinement: offsets in box sizes `x2 - x1`, `y2 - y1`.
pub fn apply_proposal_regression(candidate: &Candidate) -> [f32; 4] {
    let [x1, y1, x2, y2] = candidate.bbox;
    let (w, h) = (x2 - x1, y2 - y1);
    let r = candidate.regression;
    [x1 + r[0] * w, y1 + r[1] * h, x2 + r[2] * w, y2 + r[3] * h]
}

/// R-Net's and O-Net's refinement: offsets in box sizes `x2 - x1 + 1`, `y2 - y1 + 1`.
pub fn apply_regression([x1, y1, x2, y2]: [f32; 4], r: [f32; 4]) -> [f32; 4] {
    let (w, h) = (x2 - x1 + 1.0, y2 - y1 + 1.0);
    [x1 + r[0] * w, y1 + r[1] * h, x2 + r[2] * w, y2 + r[3] * h]
}

/// The square with the box's centre and its longer side.
pub fn square([x1, y1, x2, y2]: [f32; 4]) -> [f32; 4] {
    let (w, h) = (x2 - x1, y2 - y1);
    let side = w.max(h);
    let (nx, ny) = (x1 + w * 0.5 - side * 0.5, y1 + h * 0.5 - side * 0.5);
    [nx, ny, nx + side, ny + side]
}

/// The pixels a box covers, clipped to the image: its corners truncated toward zero, as
/// `[x0, y0, x1, y1)` (facenet-pytorch's `pad`: columns `max(x1, 1) - 1 .. min(x2, w)`).
/// `None` when nothing of the box lies in the image.
pub fn crop_rectangle(bbox: [f32; 4], width: usize, height: usize) -> Option<[usize; 4]> {
    let [x1, y1, x2, y2] = bbox.map(|v| v.trunc() as i64);
    let (x0, y0) = (x1.max(1) - 1, y1.max(1) - 1);
    let (xe, ye) = (x2.min(width as i64), y2.min(height as i64));
    (xe > x0 && ye > y0).then(|| [x0 as usize, y0 as usize, xe as usize, ye as usize])
}
