//! Image preprocessing as the release's `recognize_fer`: any image to RGB, resized with
//! anti-aliasing to the model's input size, values in [0, 1].

use std::path::Path;

use burn::prelude::*;
use image::imageops::{self, FilterType};
use image::DynamicImage;

use crate::error::{AdCorreError, Result};

/// Decodes an image file (any format and pixel type the `image` crate reads: gray, RGB, RGBA,
/// 8 or 16 bits).
pub fn open_image(path: &Path) -> Result<DynamicImage> {
    let reader = image::ImageReader::open(path).map_err(|err| AdCorreError::io(path, err))?;
    let reader = reader.with_guessed_format().map_err(|err| AdCorreError::io(path, err))?;
    reader.decode().map_err(|err| match err {
        image::ImageError::IoError(io) => AdCorreError::io(path, io),
        other => AdCorreError::Image {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })
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
