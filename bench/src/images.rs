//! Deterministic generated pictures: the demo's sample set and the benchmarks' inputs.

use std::fs;
use std::path::Path;

use anyhow::Context;

/// A deterministic test picture: a smooth colour field with a disc, varied by `i`.
pub fn generated_image(i: u32, w: u32, h: u32) -> image::RgbImage {
    let t = i as f32 * 0.37;
    image::RgbImage::from_fn(w, h, |x, y| {
        let (xf, yf) = (x as f32 / w as f32, y as f32 / h as f32);
        let inside = ((xf - 0.5).powi(2) + (yf - 0.5).powi(2)) < 0.04 + 0.02 * (t.sin() + 1.0);
        let base = [
            (255.0 * (0.5 + 0.5 * (t + xf * 6.0).sin())) as u8,
            (255.0 * (0.5 + 0.5 * (t * 1.3 + yf * 5.0).cos())) as u8,
            (255.0 * (0.5 + 0.5 * (t * 0.7 + (xf + yf) * 4.0).sin())) as u8,
        ];
        if inside {
            image::Rgb([255 - base[0], 255 - base[1], base[2] / 2])
        } else {
            image::Rgb(base)
        }
    })
}

/// `n` generated images `bench-NNNN.png`, small so that storing a few hundred in SDFS
/// is quick; the networks resize them anyway.
pub fn write_images(dir: &Path, n: usize) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for i in 0..n {
        let iu = i as u32;
        let (w, h) = (96 + (iu * 37) % 64, 72 + (iu * 53) % 64);
        let img = generated_image(iu, w, h);
        let path = dir.join(format!("bench-{i:04}.png"));
        img.save(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
