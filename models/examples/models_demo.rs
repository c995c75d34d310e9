//! Developer tool for the models crate alone: write synthetic weights, print logit
//! statistics on the deterministic test inputs. The real CLI is `dml weights` / `dml classify`.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use dml_models::{Classifier, Network, Weights};

/// The deterministic input the reference script also generates (tools/reference/reference.py).
fn pattern(n: usize, size: usize) -> Vec<f32> {
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("decode") {
        // decode IN OUT.png: our decoder's pixels, for comparing decoders from Python.
        let bytes = std::fs::read(args.get(2).ok_or("decode IN OUT")?)?;
        dml_models::preprocess::decode_rgb(&bytes)?.save(args.get(3).ok_or("decode IN OUT")?)?;
        return Ok(());
    }
    let dir = PathBuf::from(args.get(1).map(String::as_str).unwrap_or("weights"));
    std::fs::create_dir_all(&dir)?;
    for net in Network::ALL {
        let t = Instant::now();
        let w = Weights::synthetic(net, 0)?;
        w.save_safetensors(&dir.join(net.file_name()))?;
        let c = Classifier::new(&w, 2)?;
        println!("{net}: synth+fold {:?}", t.elapsed());
        let s = net.input_size();
        let x = Tensor::from_vec(pattern(2, s), (2, 3, s, s), &Device::Cpu)?;
        let t = Instant::now();
        let logits = c.logits(&x)?.to_vec2::<f32>()?;
        println!("{net}: forward(2) {:?}", t.elapsed());
        for row in logits {
            let mean = row.iter().sum::<f32>() / row.len() as f32;
            let std =
                (row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / row.len() as f32).sqrt();
            let mut s = row.clone();
            s.sort_by(|a, b| b.total_cmp(a));
            println!("  mean {mean:.3} std {std:.3} top {:?}", &s[..6]);
        }
    }
    Ok(())
}
