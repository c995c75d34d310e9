//! The low-precision paths against fp32 on the committed fixtures, for every path this CPU
//! has (int8 and bf16, each with and without AMX): the relative logit error must not
//! exceed that of the peers on the same weights and inputs (ONNX Runtime's static int8,
//! PyTorch's bf16 autocast; figures from tools/reference/lowp.py in
//! `fixtures/lowp_reference.json`), top-1 must not change and top-5 must overlap at least
//! as much as the peer's. A path this CPU lacks is reported as skipped, never passed.

mod common;

use candle_core::{Device, Tensor};
use dml_models::weights::sha256_file;
use dml_models::{Classifier, Kernels, Network, Precision, Weights};
use serde_json::Value;

/// The inputs of reference.py and lowp.py: two pattern images and the photograph.
fn inputs(net: Network) -> Tensor {
    let s = net.input_size();
    let mut input = common::pattern(2, s);
    input.extend(common::rocket_crop(net.name()).1);
    Tensor::from_vec(input, (3, 3, s, s), &Device::Cpu).expect("input")
}

fn top(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    idx.truncate(k);
    idx
}

fn rel_err(got: &[f32], base: &[f32]) -> f64 {
    let d: f64 = got
        .iter()
        .zip(base)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
        .sum();
    let n: f64 = base.iter().map(|b| f64::from(*b).powi(2)).sum();
    (d / n).sqrt()
}

fn check(net: Network) {
    let text = std::fs::read_to_string(common::fixture("lowp_reference.json")).expect("fixture");
    let reference: Value = serde_json::from_str(&text).expect("json");
    let weights = Weights::synthetic(net, 0).expect("synthetic weights");
    let dir = common::scratch(&format!("lowp-{}", net.name()));
    let file = dir.join(net.file_name());
    weights.save_safetensors(&file).expect("save");
    assert_eq!(
        sha256_file(&file).expect("hash"),
        reference["weights_sha256"][net.name()]
            .as_str()
            .expect("sha field"),
        "synthetic weight generator changed; rerun tools/reference/lowp.py"
    );
    let _ = std::fs::remove_dir_all(&dir);

    let x = inputs(net);
    let logits = |k: Kernels| -> Vec<Vec<f32>> {
        Classifier::with_kernels(&weights, 2, k)
            .expect("classifier")
            .logits(&x)
            .expect("forward")
            .to_vec2::<f32>()
            .expect("vec")
    };
    let base = logits(Kernels::best());
    let mut ran = 0;
    for (precision, peer) in [
        (Precision::Int8, "ort_int8"),
        (Precision::Bf16, "torch_bf16"),
    ] {
        let theirs = &reference["nets"][net.name()][peer];
        let peer_err: Vec<f64> =
            serde_json::from_value(theirs["rel_err"].clone()).expect("rel_err");
        let peer_overlap: Vec<usize> =
            serde_json::from_value(theirs["top5_overlap"].clone()).expect("top5_overlap");
        let kernels = match Kernels::at(precision) {
            Ok(k) => k,
            Err(why) => {
                println!("SKIPPED {net} {precision}: {why}");
                continue;
            }
        };
        for amx in [false, true] {
            let k = Kernels { amx, ..kernels }.for_this_cpu();
            if k.amx != amx {
                println!("SKIPPED {net} {precision} on AMX: this CPU or kernel has no AMX");
                continue;
            }
            let ours = logits(k);
            for (i, (o, b)) in ours.iter().zip(&base).enumerate() {
                let err = rel_err(o, b);
                let overlap = top(o, 5).iter().filter(|c| top(b, 5).contains(c)).count();
                println!(
                    "{net} {precision} amx={amx} input {i}: relative error {err:.4} \
                     ({peer} {:.4}), top-5 overlap {overlap} ({peer} {})",
                    peer_err[i], peer_overlap[i]
                );
                assert!(
                    err <= peer_err[i],
                    "{net} {precision} amx={amx} input {i}: error {err:.4} above {peer}'s {:.4}",
                    peer_err[i]
                );
                assert_eq!(top(o, 1), top(b, 1), "{net} {precision} input {i}: top-1");
                assert!(
                    overlap >= peer_overlap[i],
                    "{net} {precision} amx={amx} input {i}: top-5 overlap {overlap} below \
                     {peer}'s {}",
                    peer_overlap[i]
                );
            }
            ran += 1;
        }
    }
    println!("{net}: {ran} low-precision paths checked");
}

#[test]
fn resnet50_low_precision_within_peer_error() {
    check(Network::ResNet50);
}

#[test]
fn inception_v3_low_precision_within_peer_error() {
    check(Network::InceptionV3);
}
