//! Helpers shared by the model integration tests: fixture paths, the deterministic inputs
//! that tools/reference/reference.py also generates, scratch directories.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use dml_models::preprocess;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// x[b,c,h,w] = 2 sin(0.05 (h+1)(c+1) + 0.031 w (b+2) + 0.5 b), the formula in reference.py.
pub fn pattern(n: usize, size: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n * 3 * size * size);
    for b in 0..n {
        for c in 0..3 {
            for h in 0..size {
                for w in 0..size {
                    let x = 0.05 * ((h + 1) * (c + 1)) as f64
                        + 0.031 * (w * (b + 2)) as f64
                        + 0.5 * b as f64;
                    v.push((2.0 * x.sin()) as f32);
                }
            }
        }
    }
    v
}

pub fn pattern_tensor(n: usize, size: usize) -> Tensor {
    Tensor::from_vec(pattern(n, size), (n, 3, size, size), &Device::Cpu).expect("pattern tensor")
}

/// The torchvision-preprocessed crop of rocket.jpg for `net`, normalised like ToTensor+Normalize.
pub fn rocket_crop(net: &str) -> (image::RgbImage, Vec<f32>) {
    let img = image::open(fixture(&format!("rocket_{net}_crop.png")))
        .expect("crop fixture")
        .to_rgb8();
    let norm = preprocess::normalize(&img);
    (img, norm)
}

/// A fresh scratch directory under the system temp dir, unique per test.
pub fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dml-models-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Encodes an image as PNG bytes.
pub fn png_bytes(img: image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

/// The 517x333 test card of reference.py: v = (x^2/97 + 3y + 40c + xy/211) mod 256.
pub fn test_card() -> image::RgbImage {
    image::RgbImage::from_fn(517, 333, |x, y| {
        let (x, y) = (x as u64, y as u64);
        let v = |c: u64| ((x * x / 97 + 3 * y + 40 * c + (x * y) / 211) % 256) as u8;
        image::Rgb([v(0), v(1), v(2)])
    })
}
