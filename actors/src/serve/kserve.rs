//! The KServe v2 / Open Inference Protocol as dml speaks it: request parsing (JSON, and
//! Triton's binary tensor extension that `tritonclient` uses by default), the
//! classification extension's `"score:index:label"` strings, metadata documents.
//! Pure functions: the HTTP layer hands bytes in and gets JSON out.
//!
//! Each model takes one input: `image` (BYTES, shape `[N]` or `[N, 1]`: encoded images;
//! in JSON as base64 strings, since an encoded image is not UTF-8) or `input` (FP32,
//! `[N, 3, S, S]`, preprocessed as torchvision does). It has one output, `logits` (FP32
//! `[N, 1000]`); asked with `parameters: {"classification": k}` (on the output, or on the
//! request when no output is named) it is the top k as BYTES `[N, k]`, each
//! `"probability:index:label"`. A request naming no output gets the top 5.

use base64::Engine as _;
use dml_models::{classifier::softmax, labels, Network};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::serve::msg::Item;

/// The most inputs one request may carry.
pub const MAX_ITEMS: usize = 256;
/// Name of the encoded-image input.
pub const IMAGE: &str = "image";
/// Name of the preprocessed-tensor input.
pub const TENSOR: &str = "input";
/// Name of the output.
pub const LOGITS: &str = "logits";
/// Top k when a request names no output.
pub const DEFAULT_K: usize = 5;

/// A request that does not follow the protocol or does not fit the model (400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, BadRequest> {
    Err(BadRequest(msg.into()))
}

#[derive(Deserialize)]
struct RawRequest {
    id: Option<Value>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<RawInput>,
    #[serde(default)]
    outputs: Option<Vec<RawOutput>>,
}

#[derive(Deserialize)]
struct RawInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<Value>,
}

#[derive(Deserialize)]
struct RawOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// One requested output: the logits, or their top k.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub classification: Option<usize>,
}

/// A parsed inference request.
#[derive(Debug)]
pub struct Request {
    pub id: Option<Value>,
    pub items: Vec<Item>,
    pub outputs: Vec<Output>,
}

/// Parses a request body for `network`. `header_len` is the
/// `Inference-Header-Content-Length` header (binary tensor extension): the JSON is the
/// body's first `header_len` bytes and the tensors follow.
pub fn parse(
    body: &[u8],
    header_len: Option<usize>,
    network: Network,
) -> Result<Request, BadRequest> {
    let (head, mut binary) = match header_len {
        Some(n) if n > body.len() => {
            return bad(format!(
                "Inference-Header-Content-Length is {n}, but the body has only {} bytes",
                body.len()
            ))
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let raw: RawRequest = serde_json::from_slice(head)
        .map_err(|e| BadRequest(format!("the request is not a valid inference request: {e}")))?;
    let [input] = &raw.inputs[..] else {
        return bad(format!(
            "expected exactly one input (`{IMAGE}` or `{TENSOR}`), got {}",
            raw.inputs.len()
        ));
    };
    let items = parse_input(input, &mut binary, network)?;
    if !binary.is_empty() {
        return bad(format!(
            "{} bytes of binary data follow the inputs",
            binary.len()
        ));
    }
    let default_k = match raw.parameters.get("classification") {
        Some(v) => Some(class_count(v)?),
        None => None,
    };
    let outputs = match raw.outputs {
        None => vec![Output {
            classification: Some(default_k.unwrap_or(DEFAULT_K)),
        }],
        Some(outs) if outs.is_empty() => {
            return bad("`outputs` is empty; name `logits` or leave `outputs` out")
        }
        Some(outs) => outs
            .iter()
            .map(|o| {
                if o.name != LOGITS {
                    return bad(format!(
                        "unknown output `{}`; the model has `{LOGITS}`",
                        o.name
                    ));
                }
                let k = match o.parameters.get("classification") {
                    Some(v) => Some(class_count(v)?),
                    None => default_k,
                };
                Ok(Output { classification: k })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(Request {
        id: raw.id,
        items,
        outputs,
    })
}

fn class_count(v: &Value) -> Result<usize, BadRequest> {
    match v.as_u64() {
        Some(k) if (1..=labels::NUM_CLASSES as u64).contains(&k) => Ok(k as usize),
        _ => bad(format!(
            "`classification` must be a whole number in 1..={}, got {v}",
            labels::NUM_CLASSES
        )),
    }
}

/// Takes this input's binary part off the front of `binary`, if it has one.
fn take_binary<'a>(
    input: &RawInput,
    binary: &mut &'a [u8],
) -> Result<Option<&'a [u8]>, BadRequest> {
    let Some(size) = input.parameters.get("binary_data_size") else {
        return Ok(None);
    };
    let size = size
        .as_u64()
        .and_then(|s| usize::try_from(s).ok())
        .ok_or_else(|| {
            BadRequest(format!(
                "input `{}`: bad binary_data_size {size}",
                input.name
            ))
        })?;
    if size > binary.len() {
        return bad(format!(
            "input `{}`: binary_data_size {size} but only {} bytes follow the header",
            input.name,
            binary.len()
        ));
    }
    let (mine, rest) = binary.split_at(size);
    *binary = rest;
    Ok(Some(mine))
}

fn parse_input(
    input: &RawInput,
    binary: &mut &[u8],
    network: Network,
) -> Result<Vec<Item>, BadRequest> {
    let name = &input.name;
    if input.shape.iter().any(|d| *d < 0) {
        return bad(format!(
            "input `{name}`: negative dimension in shape {:?}",
            input.shape
        ));
    }
    let bin = take_binary(input, binary)?;
    if bin.is_some() && input.data.is_some() {
        return bad(format!("input `{name}`: both `data` and binary data"));
    }
    let s = network.input_size() as i64;
    match (name.as_str(), input.datatype.as_str()) {
        (IMAGE, "BYTES") => {
            let n = match input.shape[..] {
                [n] | [n, 1] => n,
                _ => return bad(format!("input `{IMAGE}`: shape must be [N] or [N, 1], got {:?}", input.shape)),
            };
            let n = count(n)?;
            let images = match (bin, &input.data) {
                (Some(b), _) => split_bytes(b)?,
                (None, Some(d)) => base64_strings(d)?,
                (None, None) => return bad(format!("input `{IMAGE}` has no data")),
            };
            if images.len() != n {
                return bad(format!("input `{IMAGE}`: shape says {n} elements, data has {}", images.len()));
            }
            Ok(images.into_iter().map(Item::Encoded).collect())
        }
        (TENSOR, "FP32") => {
            let n = match input.shape[..] {
                [n, 3, h, w] if h == s && w == s => n,
                _ => {
                    return bad(format!(
                        "input `{TENSOR}`: shape must be [N, 3, {s}, {s}] for {}, got {:?}",
                        network.name(),
                        input.shape
                    ))
                }
            };
            let n = count(n)?;
            let per = (3 * s * s) as usize;
            let bytes: Vec<u8> = match (bin, &input.data) {
                (Some(b), _) => b.to_vec(),
                (None, Some(d)) => floats(d, n * per)?,
                (None, None) => return bad(format!("input `{TENSOR}` has no data")),
            };
            if bytes.len() != n * per * 4 {
                return bad(format!(
                    "input `{TENSOR}`: shape needs {} FP32 values, data has {}",
                    n * per,
                    bytes.len() / 4
                ));
            }
            Ok(bytes.chunks(per * 4).map(|c| Item::Pixels(c.to_vec())).collect())
        }
        (IMAGE | TENSOR, dt) => bad(format!(
            "input `{name}`: datatype {dt} is not accepted (`{IMAGE}` is BYTES, `{TENSOR}` is FP32)"
        )),
        _ => bad(format!(
            "unknown input `{name}`; {} takes `{IMAGE}` (BYTES) or `{TENSOR}` (FP32 [N, 3, {s}, {s}])",
            network.name()
        )),
    }
}

fn count(n: i64) -> Result<usize, BadRequest> {
    match usize::try_from(n) {
        Ok(n) if (1..=MAX_ITEMS).contains(&n) => Ok(n),
        _ => bad(format!(
            "a request carries 1 to {MAX_ITEMS} inputs, shape says {n}"
        )),
    }
}

/// The binary form of BYTES: each element a 4-byte little-endian length and its bytes.
fn split_bytes(mut b: &[u8]) -> Result<Vec<Vec<u8>>, BadRequest> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let Some((len, rest)) = b.split_first_chunk::<4>() else {
            return bad("BYTES data ends inside an element's length");
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return bad(format!(
                "BYTES element of {len} bytes, only {} left",
                rest.len()
            ));
        }
        let (el, rest) = rest.split_at(len);
        out.push(el.to_vec());
        b = rest;
        if out.len() > MAX_ITEMS {
            return bad(format!("more than {MAX_ITEMS} BYTES elements"));
        }
    }
    Ok(out)
}

/// JSON BYTES data: (possibly nested) arrays of base64 strings.
fn base64_strings(d: &Value) -> Result<Vec<Vec<u8>>, BadRequest> {
    let mut out = Vec::new();
    let mut stack = vec![d];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(a) => stack.extend(a.iter().rev()),
            Value::String(s) => out.push(
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .map_err(|e| {
                        BadRequest(format!("BYTES element {} is not base64: {e}", out.len()))
                    })?,
            ),
            other => return bad(format!("BYTES data must be base64 strings, found {other}")),
        }
        if out.len() > MAX_ITEMS {
            return bad(format!("more than {MAX_ITEMS} BYTES elements"));
        }
    }
    Ok(out)
}

/// JSON FP32 data: (possibly nested) arrays of numbers, as little-endian bytes.
fn floats(d: &Value, want: usize) -> Result<Vec<u8>, BadRequest> {
    let mut out = Vec::with_capacity(want * 4);
    let mut stack = vec![d];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(a) => stack.extend(a.iter().rev()),
            Value::Number(n) => match n.as_f64() {
                Some(f) if out.len() < want * 4 => out.extend_from_slice(&(f as f32).to_le_bytes()),
                Some(_) => {
                    return bad(format!("FP32 data has more than the shape's {want} values"))
                }
                None => return bad("FP32 data holds a number out of range"),
            },
            other => return bad(format!("FP32 data must be numbers, found {other}")),
        }
    }
    Ok(out)
}

/// `probability:index:label` strings of the `k` most probable classes.
pub fn top_k(logits: &[f32], k: usize) -> Vec<String> {
    let probs = softmax(logits);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    // The same order as `dml classify` (ties by index).
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| format!("{:.6}:{i}:{}", probs[i], labels::label(i)))
        .collect()
}

/// The response document for `rows` of logits.
pub fn response(
    model: &str,
    id: &Option<Value>,
    outputs: &[Output],
    rows: &[Vec<f32>],
    extra: Value,
) -> Value {
    let n = rows.len();
    let outs: Vec<Value> = outputs
        .iter()
        .map(|o| match o.classification {
            Some(k) => {
                let k = k.min(rows.first().map_or(k, Vec::len));
                let data: Vec<String> = rows.iter().flat_map(|r| top_k(r, k)).collect();
                json!({"name": LOGITS, "datatype": "BYTES", "shape": [n, k], "data": data})
            }
            None => {
                let width = rows.first().map_or(0, Vec::len);
                let data: Vec<f32> = rows.iter().flatten().copied().collect();
                json!({"name": LOGITS, "datatype": "FP32", "shape": [n, width], "data": data})
            }
        })
        .collect();
    let mut doc = json!({
        "model_name": model,
        "model_version": "1",
        "parameters": extra,
        "outputs": outs,
    });
    if let Some(id) = id {
        doc["id"] = id.clone();
    }
    doc
}

/// `GET /v2/models/{name}`.
pub fn model_metadata(network: Network) -> Value {
    let s = network.input_size();
    json!({
        "name": network.name(),
        "versions": ["1"],
        "platform": "dml",
        "inputs": [
            {"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
            {"name": TENSOR, "datatype": "FP32", "shape": [-1, 3, s, s]},
        ],
        "outputs": [
            {"name": LOGITS, "datatype": "FP32", "shape": [-1, labels::NUM_CLASSES]},
        ],
    })
}

/// `GET /v2`.
pub fn server_metadata() -> Value {
    json!({
        "name": "dml",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["classification", "binary_tensor_data"],
    })
}

#[cfg(test)]
#[path = "kserve_tests.rs"]
mod tests;
