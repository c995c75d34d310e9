//! Unit tests of the protocol parsing in `kserve.rs`.

use super::*;

fn json_req(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).expect("json")
}

#[test]
fn base64_images_and_request_level_classification() {
    let img = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG fake");
    let body = json_req(json!({
        "id": "42",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [img, img]}],
        "parameters": {"classification": 3},
    }));
    let r = parse(&body, None, Network::ResNet50).expect("parse");
    assert_eq!(r.items.len(), 2);
    assert_eq!(r.items[0], Item::Encoded(b"\x89PNG fake".to_vec()));
    assert_eq!(
        r.outputs,
        vec![Output {
            classification: Some(3)
        }]
    );
    assert_eq!(r.id, Some(json!("42")));
}

#[test]
fn binary_extension_as_tritonclient_sends_it() {
    let head = json_req(json!({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2, 1],
                    "parameters": {"binary_data_size": 4 + 3 + 4 + 2}}],
        "outputs": [{"name": "logits", "parameters": {"classification": 5, "binary_data": true}}],
    }));
    let mut body = head.clone();
    body.extend_from_slice(&3u32.to_le_bytes());
    body.extend_from_slice(b"abc");
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(b"de");
    let r = parse(&body, Some(head.len()), Network::ResNet50).expect("parse");
    assert_eq!(
        r.items,
        vec![
            Item::Encoded(b"abc".to_vec()),
            Item::Encoded(b"de".to_vec())
        ]
    );
    assert_eq!(
        r.outputs,
        vec![Output {
            classification: Some(5)
        }]
    );
    // A length running past the end is an error, not a panic.
    let cut = &body[..body.len() - 1];
    let e = parse(cut, Some(head.len()), Network::ResNet50).expect_err("short");
    assert!(e.0.contains("binary_data_size"), "{e}");
}

#[test]
fn fp32_tensor_with_raw_logits_output() {
    let s = 224;
    let n = 3 * s * s;
    let data: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let body = json_req(json!({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, s, s], "data": data}],
        "outputs": [{"name": "logits"}],
    }));
    let r = parse(&body, None, Network::ResNet50).expect("parse");
    let Item::Pixels(b) = &r.items[0] else {
        panic!("pixels")
    };
    assert_eq!(b.len(), n * 4);
    assert_eq!(f32::from_le_bytes([b[4], b[5], b[6], b[7]]), 1.0);
    assert_eq!(
        r.outputs,
        vec![Output {
            classification: None
        }]
    );
}

#[test]
fn bad_requests_name_what_is_wrong() {
    let cases = [
        (json!({"inputs": []}), "exactly one input"),
        (
            json!({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}]}),
            "unknown input `x`",
        ),
        (
            json!({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [1.0]}]}),
            "datatype FP32",
        ),
        (
            json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 299, 299], "data": [1.0]}]}),
            "[N, 3, 224, 224]",
        ),
        (
            json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": [1.0]}]}),
            "150528 FP32 values",
        ),
        (
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["AA=="]}]}),
            "shape says 2",
        ),
        (
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}),
            "not base64",
        ),
        (
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [100000], "data": []}]}),
            "1 to 256",
        ),
        (
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1], "data": []}]}),
            "negative",
        ),
        (
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}],
                "parameters": {"classification": 0}}),
            "classification",
        ),
        (
            json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}],
                "outputs": [{"name": "probs"}]}),
            "unknown output",
        ),
        (json!({"input": 1}), "not a valid inference request"),
    ];
    for (req, want) in cases {
        let e = parse(&json_req(req.clone()), None, Network::ResNet50).expect_err(want);
        assert!(e.0.contains(want), "{req}: {e}");
    }
    let e = parse(b"not json", None, Network::ResNet50).expect_err("junk");
    assert!(e.0.contains("not a valid"), "{e}");
    let e = parse(b"{}", Some(10), Network::ResNet50).expect_err("header past the end");
    assert!(e.0.contains("Inference-Header-Content-Length"), "{e}");
}

#[test]
fn classification_strings_are_score_index_label() {
    let mut logits = vec![0.0f32; 1000];
    logits[207] = 10.0;
    logits[3] = 9.0;
    let top = top_k(&logits, 2);
    assert_eq!(top.len(), 2);
    assert!(top[0].ends_with(":207:golden retriever"), "{}", top[0]);
    assert!(top[1].contains(":3:"), "{}", top[1]);
    let p: f32 = top[0]
        .split(':')
        .next()
        .expect("score")
        .parse()
        .expect("float");
    assert!(p > 0.5 && p < 1.0);
    let doc = response(
        "resnet50",
        &None,
        &[Output {
            classification: Some(2),
        }],
        &[logits],
        json!({}),
    );
    assert_eq!(doc["outputs"][0]["shape"], json!([1, 2]));
    assert_eq!(doc["outputs"][0]["datatype"], "BYTES");
}
