//! Image bytes -> normalised CHW float tensor, reproducing torchvision's ImageNet recipe on
//! PIL images: `convert("RGB")`, `Resize(shorter side)` with antialiased bilinear filtering,
//! `CenterCrop`, `ToTensor`, `Normalize(mean, std)`.
//!
//! The resize is a port of Pillow's `ImagingResample` (triangle filter widened by the scale
//! factor, 22-bit fixed-point coefficients, horizontal pass then vertical pass with a u8
//! image in between), so our crops match torchvision's byte for byte on the same pixels.
//! Only the output rows and columns inside the crop are computed.

use std::io::Cursor;

use image::{ImageReader, Limits, RgbImage};

use crate::error::ModelError;
use crate::weights::Network;

/// ImageNet channel means and standard deviations (torchvision's `Normalize`).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// See [`MEAN`].
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Images larger than this on either side are refused rather than decoded.
const MAX_SIDE: u32 = 16_384;
/// Decoder allocation cap, so a hostile header cannot make us reserve gigabytes.
const MAX_ALLOC: u64 = 512 * 1024 * 1024;

/// Decodes any common format (JPEG, PNG, GIF, BMP, TIFF, WebP) to 8-bit RGB. Grayscale is
/// replicated, alpha is dropped (as PIL's `convert("RGB")` does), CMYK JPEGs are converted
/// by the decoder.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, ModelError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ModelError::Decode(e.to_string()))?;
    if reader.format().is_none() {
        return Err(ModelError::Decode("unknown image format".into()));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| ModelError::Decode(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(ModelError::Image("image has no pixels".into()));
    }
    Ok(img.to_rgb8())
}

/// torchvision's `Resize(size)` for an int size: the shorter side becomes `size`, the longer
/// one `int(size * long / short)` (truncated).
pub fn resized_dims(width: u32, height: u32, size: usize) -> (usize, usize) {
    let (w, h) = (width as usize, height as usize);
    if w <= h {
        (size, size * h / w.max(1))
    } else {
        (size * w / h.max(1), size)
    }
}

/// torchvision's `CenterCrop` offset: `int(round((in - crop) / 2))`, Python rounding
/// (half to even).
fn crop_offset(input: usize, crop: usize) -> usize {
    let diff = input.saturating_sub(crop);
    let half = diff / 2;
    // diff odd -> x.5: round half to even.
    if diff % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// Pillow's fixed-point precision for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per-output-pixel filter taps: first input index and fixed-point weights.
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear (triangle) filter,
/// for output positions `range` of a resize from `in_size` to `out_size`.
fn coefficients(in_size: usize, out_size: usize, range: std::ops::Range<usize>) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support is 1.0
    let ss = 1.0 / filterscale;
    range
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C casts truncate toward zero; both values are clamped to the image.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(0) as usize;
            let n = xmax.saturating_sub(xmin);
            let raw: Vec<f64> = (0..n)
                .map(|x| {
                    let t = ((x + xmin) as f64 - center + 0.5) * ss;
                    (1.0 - t.abs()).max(0.0)
                })
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let f = w * f64::from(1u32 << PRECISION_BITS);
                    if f < 0.0 {
                        (-0.5 + f) as i32
                    } else {
                        (0.5 + f) as i32
                    }
                })
                .collect();
            Taps {
                start: xmin,
                weights,
            }
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Applies `taps` along a line of `len` samples at `stride` (in channels-interleaved u8).
fn sample(src: &[u8], base: usize, stride: usize, taps: &Taps, channel: usize) -> u8 {
    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
    for (i, &w) in taps.weights.iter().enumerate() {
        let idx = base + (taps.start + i) * stride + channel;
        acc += i64::from(src.get(idx).copied().unwrap_or(0)) * i64::from(w);
    }
    clip8(acc)
}

/// Resizes the shorter side to `resize` and centre-crops `crop` x `crop`, exactly as
/// torchvision does on a PIL image. Returns the crop as interleaved RGB.
pub fn resize_and_crop(img: &RgbImage, resize: usize, crop: usize) -> Result<RgbImage, ModelError> {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    if in_w == 0 || in_h == 0 {
        return Err(ModelError::Image("image has no pixels".into()));
    }
    let (out_w, out_h) = resized_dims(img.width(), img.height(), resize);
    if out_w < crop || out_h < crop {
        return Err(ModelError::Image(format!(
            "{in_w}x{in_h} resizes to {out_w}x{out_h}, smaller than the {crop}x{crop} crop"
        )));
    }
    let (left, top) = (crop_offset(out_w, crop), crop_offset(out_h, crop));
    let htaps = coefficients(in_w, out_w, left..left + crop);
    let vtaps = coefficients(in_h, out_h, top..top + crop);
    // Rows of the source the vertical pass will read.
    let row_lo = vtaps.iter().map(|t| t.start).min().unwrap_or(0);
    let row_hi = vtaps
        .iter()
        .map(|t| t.start + t.weights.len())
        .max()
        .unwrap_or(0)
        .min(in_h);
    let src = img.as_raw();
    // Horizontal pass into a u8 buffer (Pillow rounds to u8 between passes).
    let rows = row_hi.saturating_sub(row_lo);
    let mut tmp = vec![0u8; rows * crop * 3];
    for (r, line) in tmp.chunks_exact_mut(crop * 3).enumerate() {
        let base = (row_lo + r) * in_w * 3;
        for (x, px) in line.chunks_exact_mut(3).enumerate() {
            if let Some(t) = htaps.get(x) {
                for (c, v) in px.iter_mut().enumerate() {
                    *v = sample(src, base, 3, t, c);
                }
            }
        }
    }
    let mut out = vec![0u8; crop * crop * 3];
    for (y, line) in out.chunks_exact_mut(crop * 3).enumerate() {
        let Some(t) = vtaps.get(y) else { continue };
        let shifted = Taps {
            start: t.start.saturating_sub(row_lo),
            weights: t.weights.clone(),
        };
        for (x, px) in line.chunks_exact_mut(3).enumerate() {
            for (c, v) in px.iter_mut().enumerate() {
                *v = sample(&tmp, x * 3, crop * 3, &shifted, c);
            }
        }
    }
    RgbImage::from_raw(crop as u32, crop as u32, out)
        .ok_or_else(|| ModelError::Image("crop buffer size".into()))
}

/// `ToTensor` + `Normalize`: interleaved RGB u8 -> planar CHW f32.
pub fn normalize(img: &RgbImage) -> Vec<f32> {
    let plane = (img.width() * img.height()) as usize;
    let mut out = vec![0f32; plane * 3];
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            if let (Some(o), Some(m), Some(s)) =
                (out.get_mut(c * plane + i), MEAN.get(c), STD.get(c))
            {
                *o = (f32::from(v) / 255.0 - m) / s;
            }
        }
    }
    out
}

/// The whole recipe for `network`: decoded, resized, cropped, normalised CHW values
/// (`3 * size * size` of them).
pub fn preprocess(bytes: &[u8], network: Network) -> Result<Vec<f32>, ModelError> {
    let img = decode_rgb(bytes)?;
    let crop = resize_and_crop(&img, network.resize_size(), network.input_size())?;
    Ok(normalize(&crop))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_rule_matches_torchvision() {
        assert_eq!(resized_dims(640, 427, 256), (383, 256));
        assert_eq!(resized_dims(427, 640, 342), (342, 512));
        assert_eq!(resized_dims(300, 300, 256), (256, 256));
    }

    #[test]
    fn crop_offset_rounds_half_to_even() {
        assert_eq!(crop_offset(256, 224), 16);
        assert_eq!(crop_offset(257, 224), 16); // round(16.5) == 16
        assert_eq!(crop_offset(259, 224), 18); // round(17.5) == 18
        assert_eq!(crop_offset(224, 224), 0);
    }

    #[test]
    fn same_size_resize_is_identity() {
        let img = RgbImage::from_fn(224, 224, |x, y| {
            image::Rgb([x as u8, y as u8, (x ^ y) as u8])
        });
        let out = resize_and_crop(&img, 224, 224).expect("resize");
        assert_eq!(out.as_raw(), img.as_raw());
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(1000, 517, image::Rgb([10, 128, 250]));
        let out = resize_and_crop(&img, 342, 299).expect("resize");
        assert!(out.pixels().all(|p| p.0 == [10, 128, 250]));
    }

    #[test]
    fn corrupt_bytes_are_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"not an image",
            &[0xff, 0xd8, 0xff, 0xe0, 0, 0x10][..],
        ] {
            assert!(preprocess(bytes, Network::ResNet50).is_err());
        }
    }
}
