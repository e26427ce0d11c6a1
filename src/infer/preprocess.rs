//! Image preprocessing as the release's `recognize_fer`: any image to RGB, resized with
//! anti-aliasing to the model's input size, values in [0, 1].

use std::path::Path;

use burn::prelude::*;
use image::imageops::{self, FilterType};
use image::DynamicImage;

use crate::error::{AdCorreError, Result};

/// Limits on decoding an image that may come from anywhere: what a file may declare is checked
/// before the decoder allocates it. Each limit exceeded is an [`AdCorreError::LimitExceeded`]
/// naming the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageLimits {
    /// Largest encoded file read, in bytes (default 64 MiB).
    pub max_file_bytes: u64,
    /// Largest image, width x height in pixels (default 50 million, the face detector's
    /// `max_pixels`).
    pub max_pixels: u64,
    /// Most memory the decoder may hold at once, in bytes, the decoded image included
    /// (default 1 GiB: 50 megapixels of 16-bit RGBA is 400 MB).
    pub max_decoder_bytes: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 64 << 20,
            max_pixels: 50_000_000,
            max_decoder_bytes: 1 << 30,
        }
    }
}

/// Decodes an image file (any format and pixel type the `image` crate reads: gray, RGB, RGBA,
/// 8 or 16 bits) within the default [`ImageLimits`].
pub fn open_image(path: &Path) -> Result<DynamicImage> {
    open_image_limited(path, &ImageLimits::default())
}

/// Decodes an image file within `limits`.
pub fn open_image_limited(path: &Path, limits: &ImageLimits) -> Result<DynamicImage> {
    let size = std::fs::metadata(path).map_err(|err| AdCorreError::io(path, err))?.len();
    check_file_bytes(path, size, limits)?;
    let reader = image::ImageReader::open(path).map_err(|err| AdCorreError::io(path, err))?;
    decode_limited(reader, path, limits)
}

/// Decodes an image held in memory (e.g. the body of a request) within `limits`; `name`
/// stands for its path in errors.
pub fn decode_image(bytes: &[u8], name: &str, limits: &ImageLimits) -> Result<DynamicImage> {
    let path = Path::new(name);
    check_file_bytes(path, bytes.len() as u64, limits)?;
    decode_limited(image::ImageReader::new(std::io::Cursor::new(bytes)), path, limits)
}

fn check_file_bytes(path: &Path, size: u64, limits: &ImageLimits) -> Result<()> {
    if size > limits.max_file_bytes {
        return Err(AdCorreError::LimitExceeded {
            path: path.to_path_buf(),
            what: format!("an image file of {size} bytes"),
            limit: format!("{} bytes", limits.max_file_bytes),
            how_to_raise: "ImageLimits::max_file_bytes".into(),
        });
    }
    Ok(())
}

fn decode_limited<R: std::io::BufRead + std::io::Seek>(
    reader: image::ImageReader<R>,
    path: &Path,
    limits: &ImageLimits,
) -> Result<DynamicImage> {
    use image::ImageDecoder;
    let image_error = |err: image::ImageError| match err {
        // The bytes end inside the image: a truncated file or upload, not a failing disk.
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => AdCorreError::Image {
            path: path.to_path_buf(),
            reason: "the image data ends early (truncated?)".into(),
        },
        image::ImageError::IoError(io) => AdCorreError::io(path, io),
        image::ImageError::Limits(limit) => AdCorreError::LimitExceeded {
            path: path.to_path_buf(),
            what: format!("decoding it ({limit})"),
            limit: format!("{} bytes", limits.max_decoder_bytes),
            how_to_raise: "ImageLimits::max_decoder_bytes".into(),
        },
        other => AdCorreError::Image {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    };
    let mut reader = reader.with_guessed_format().map_err(|err| AdCorreError::io(path, err))?;
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_decoder_bytes);
    let max_side = u32::try_from(limits.max_pixels).unwrap_or(u32::MAX);
    decoder_limits.max_image_width = Some(max_side);
    decoder_limits.max_image_height = Some(max_side);
    reader.limits(decoder_limits);
    let decoder = reader.into_decoder().map_err(image_error)?;
    let (width, height) = decoder.dimensions();
    let pixels = width as u64 * height as u64;
    if pixels > limits.max_pixels {
        return Err(AdCorreError::LimitExceeded {
            path: path.to_path_buf(),
            what: format!("an image of {width}x{height} = {pixels} pixels"),
            limit: format!("{} pixels", limits.max_pixels),
            how_to_raise: "ImageLimits::max_pixels".into(),
        });
    }
    if pixels == 0 {
        return Err(AdCorreError::Image {
            path: path.to_path_buf(),
            reason: format!("the image is {width}x{height}: no pixels"),
        });
    }
    DynamicImage::from_decoder(decoder).map_err(image_error)
}

/// An image as `3 x size x size` RGB values in [0, 1], channel-major (CHW), resized with a
/// triangle (bilinear) filter whose support widens when shrinking, i.e. anti-aliased.
pub fn image_to_chw(image: &DynamicImage, size: usize) -> Vec<f32> {
    let rgb = image.to_rgb32f();
    let resized = if rgb.width() as usize == size && rgb.height() as usize == size {
        rgb
    } else {
        imageops::resize(&rgb, size as u32, size as u32, FilterType::Triangle)
    };
    let plane = size * size;
    let mut chw = vec![0f32; 3 * plane];
    for (index, pixel) in resized.pixels().enumerate() {
        for channel in 0..3 {
            chw[channel * plane + index] = pixel.0[channel].clamp(0.0, 1.0);
        }
    }
    chw
}

/// A batch of images as a `[n, 3, size, size]` tensor in [0, 1]; with `grayscale`, each image
/// is converted to luma first (the same value in all three channels), as models trained on
/// grayscale faces expect.
pub fn images_to_tensor<B: Backend>(
    images: &[DynamicImage],
    size: usize,
    grayscale: bool,
    device: &B::Device,
) -> Tensor<B, 4> {
    let mut data = Vec::with_capacity(images.len() * 3 * size * size);
    for image in images {
        if grayscale {
            data.extend(image_to_chw(&image.grayscale(), size));
        } else {
            data.extend(image_to_chw(image, size));
        }
    }
    Tensor::from_data(TensorData::new(data, [images.len(), 3, size, size]), device)
}

/// A prepared NHWC float batch (the release's `.npy` layout, values in [0, 1]) as NCHW.
pub fn nhwc_to_tensor<B: Backend>(
    values: Vec<f32>,
    shape: [usize; 4],
    device: &B::Device,
) -> Tensor<B, 4> {
    Tensor::<B, 4>::from_data(TensorData::new(values, shape), device).permute([0, 3, 1, 2])
}
