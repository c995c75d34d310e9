//! Weight files refused with a precise error (missing, wrong shape, truncated, unexpected
//! tensors, `.pth` parsing), the offline fetch message, and per-image results of the
//! classifier for good, odd and corrupt inputs.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use dml_models::weights::{self, find_weight_file};
use dml_models::{Classifier, ModelError, Network, Weights};

fn synthetic_map(net: Network) -> HashMap<String, Tensor> {
    net.tensor_spec()
        .into_iter()
        .map(|(name, shape)| {
            let t = Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu).expect("zeros");
            (name, t)
        })
        .collect()
}

#[test]
fn missing_tensor_is_named() {
    let mut m = synthetic_map(Network::ResNet50);
    m.remove("layer2.1.bn2.running_var");
    let err = Weights::from_tensors(Network::ResNet50, m, None, "w.safetensors".as_ref())
        .expect_err("must refuse");
    let msg = err.to_string();
    assert!(
        msg.contains("w.safetensors") && msg.contains("layer2.1.bn2.running_var"),
        "{msg}"
    );
    assert!(msg.contains("[128]") && msg.contains("missing"), "{msg}");
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let mut m = synthetic_map(Network::InceptionV3);
    let bad = Tensor::zeros((128, 128, 7, 1), candle_core::DType::F32, &Device::Cpu).expect("t");
    m.insert("Mixed_6b.branch7x7_2.conv.weight".into(), bad);
    let err = Weights::from_tensors(Network::InceptionV3, m, None, "i.safetensors".as_ref())
        .expect_err("must refuse");
    match err {
        ModelError::WeightMismatch {
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(name, "Mixed_6b.branch7x7_2.conv.weight");
            assert_eq!(expected, vec![128, 128, 1, 7]);
            assert_eq!(found, "[128, 128, 7, 1]");
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn unexpected_tensor_is_refused_but_bookkeeping_is_ignored() {
    let mut m = synthetic_map(Network::ResNet50);
    let scalar = Tensor::new(0i64, &Device::Cpu).expect("scalar");
    m.insert("bn1.num_batches_tracked".into(), scalar);
    assert!(Weights::from_tensors(Network::ResNet50, m.clone(), None, "a".as_ref()).is_ok());
    let extra = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).expect("t");
    m.insert("layer3.6.conv1.weight".into(), extra);
    let msg = Weights::from_tensors(Network::ResNet50, m, None, "a".as_ref())
        .expect_err("resnet101 tensors are not resnet50")
        .to_string();
    assert!(msg.contains("layer3.6.conv1.weight"), "{msg}");
}

#[test]
fn saved_synthetic_weights_round_trip_and_truncation_is_diagnosed() {
    let dir = common::scratch("truncate");
    let w = Weights::synthetic(Network::ResNet50, 7).expect("synth");
    let path = dir.join(Network::ResNet50.file_name());
    w.save_safetensors(&path).expect("save");
    let back = Weights::load(Network::ResNet50, &path).expect("reload");
    assert_eq!(back.synthetic_seed(), Some(7));
    assert_eq!(
        find_weight_file(Network::ResNet50, &dir).expect("found"),
        path
    );

    let len = std::fs::metadata(&path).expect("meta").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(len / 2).expect("truncate");
    let msg = Weights::load(Network::ResNet50, &path)
        .expect_err("truncated")
        .to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains("truncated") && msg.contains("tensor `"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pth_checkpoint_is_parsed_and_validated() {
    let path = common::fixture("resnet50_wrong_conv1.pth");
    let msg = Weights::load(Network::ResNet50, &path)
        .expect_err("3x3 conv1")
        .to_string();
    assert!(msg.contains("resnet50_wrong_conv1.pth"), "{msg}");
    assert!(
        msg.contains("`conv1.weight`") && msg.contains("[64, 3, 7, 7]"),
        "{msg}"
    );
    assert!(msg.contains("[64, 3, 3, 3]"), "{msg}");
}

#[test]
fn missing_file_says_what_to_do() {
    let dir = common::scratch("missing");
    let msg = find_weight_file(Network::InceptionV3, &dir)
        .expect_err("none")
        .to_string();
    assert!(
        msg.contains("inception_v3.safetensors") && msg.contains("dml weights"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fetch_offline_fails_with_one_clear_line() {
    let dir = common::scratch("fetch");
    // Port 9 (discard) on loopback: refused at once, the same path as "no internet".
    let err =
        weights::fetch(Network::ResNet50, &dir, Some("http://127.0.0.1:9")).expect_err("offline");
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    assert!(
        msg.contains("timm/resnet50.tv_in1k/model.safetensors"),
        "{msg}"
    );
    assert!(
        msg.contains(&dir.join("resnet50.safetensors").display().to_string()),
        "{msg}"
    );
    assert!(!dir.join("resnet50.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn classify_batch_gives_one_result_per_image() {
    let classifier =
        Classifier::new(&Weights::synthetic(Network::ResNet50, 0).expect("w"), 2).expect("c");
    assert!(classifier.is_synthetic());
    let jpeg = std::fs::read(common::fixture("rocket.jpg")).expect("jpeg");
    let gray = common::png_bytes(image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(
        300,
        200,
        |x, y| image::Luma([(x + y) as u8]),
    )));
    let rgba = common::png_bytes(image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(
        64,
        900,
        |x, y| image::Rgba([x as u8, y as u8, 7, 128]),
    )));
    let truncated = jpeg.get(..jpeg.len() / 3).expect("slice").to_vec();
    let images = vec![
        jpeg,
        b"definitely not an image".to_vec(),
        gray,
        rgba,
        Vec::new(),
        truncated,
    ];
    let out = classifier.classify_batch(&images);
    assert_eq!(out.results.len(), images.len());
    for i in [0, 2, 3] {
        let p = out.results[i].as_ref().expect("good image");
        assert!(p.synthetic);
        assert_eq!(p.top5.len(), 5);
        assert!(p.top5.windows(2).all(|w| w[0].prob >= w[1].prob));
        assert!(p.top5.iter().all(|c| c.index < 1000 && !c.label.is_empty()));
        let total: f32 = p.top5.iter().map(|c| c.prob).sum();
        assert!(total > 0.0 && total <= 1.0 + 1e-5);
    }
    assert!(matches!(out.results[1], Err(ModelError::Decode(_))));
    assert!(out.results[4].is_err());
    // A JPEG cut short either fails to decode or decodes the part that is there; it never
    // takes the batch down.
    if let Ok(p) = &out.results[5] {
        assert_eq!(p.top5.len(), 5);
    }
    // The photo's result does not depend on its batch-mates.
    let alone = classifier.classify_batch(&images[..1]);
    let (a, b) = (
        alone.results[0].as_ref().expect("ok"),
        out.results[0].as_ref().expect("ok"),
    );
    assert_eq!(
        a.top5.iter().map(|c| c.index).collect::<Vec<_>>(),
        b.top5.iter().map(|c| c.index).collect::<Vec<_>>()
    );
}

#[test]
fn all_bad_batch_does_no_inference() {
    let classifier =
        Classifier::new(&Weights::synthetic(Network::InceptionV3, 0).expect("w"), 1).expect("c");
    let out = classifier.classify_batch(&[b"GIF89a".to_vec(), vec![0u8; 16]]);
    assert!(out.results.iter().all(|r| r.is_err()));
}
