//! The ModelActor's handler for online inference: a batch of raw inputs (encoded images
//! or preprocessed tensors) in, per-item logits out. It runs on the model's SyncArbiter
//! thread, queued with the job batches of the same model (FIFO), which is how serving
//! shares a node with running jobs.

use std::time::Instant;

use actix::prelude::*;
use candle_core::{Device, Tensor};
use dml_models::{preprocess, Classifier, Network};

use crate::jobs::model_actor::ModelActor;
use crate::serve::msg::{Item, RunOutput};

/// Run `items` through this actor's network.
#[derive(Message)]
#[rtype(result = "Result<RunOutput, String>")]
pub struct RunItems {
    pub items: Vec<Item>,
}

impl Handler<RunItems> for ModelActor {
    type Result = Result<RunOutput, String>;

    fn handle(&mut self, m: RunItems, _ctx: &mut SyncContext<Self>) -> Self::Result {
        let start = Instant::now();
        let Some(classifier) = self.classifier()? else {
            return Ok(fixed_logits(m.items.len()));
        };
        let inputs = prepare(&m.items, classifier.network(), classifier.threads());
        let good: Vec<&Vec<f32>> = inputs.iter().filter_map(|r| r.as_ref().ok()).collect();
        let mut rows = if good.is_empty() {
            Vec::new()
        } else {
            forward(&classifier, &good)?
        }
        .into_iter();
        let items = inputs
            .into_iter()
            .map(|r| r.and_then(|_| rows.next().ok_or_else(|| "missing output".to_string())))
            .collect();
        Ok(RunOutput {
            items,
            compute_ms: start.elapsed().as_secs_f64() * 1000.0,
            synthetic: classifier.is_synthetic(),
        })
    }
}

/// The benchmark model's answer (`dml node --bench-fixed-logits`): classes 0..5 first.
fn fixed_logits(n: usize) -> RunOutput {
    let mut row = vec![0.0f32; dml_models::labels::NUM_CLASSES];
    for (i, v) in row.iter_mut().take(5).enumerate() {
        *v = 10.0 - i as f32;
    }
    RunOutput {
        items: vec![Ok(row); n],
        compute_ms: 0.0,
        synthetic: true,
    }
}

/// Each item as the network's CHW input, decoding images on up to `threads` threads
/// (the model's own team is idle meanwhile: its forward pass has not started).
fn prepare(items: &[Item], network: Network, threads: usize) -> Vec<Result<Vec<f32>, String>> {
    let want = 3 * network.input_size() * network.input_size();
    let one = |item: &Item| -> Result<Vec<f32>, String> {
        match item {
            Item::Encoded(bytes) => {
                preprocess::preprocess(bytes, network).map_err(|e| e.to_string())
            }
            Item::Pixels(bytes) => {
                if bytes.len() != want * 4 {
                    return Err(format!(
                        "expected {want} FP32 values, got {} bytes",
                        bytes.len()
                    ));
                }
                Ok(bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect())
            }
        }
    };
    let per = items.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = items
            .chunks(per)
            .map(|chunk| {
                let h = s.spawn(move || chunk.iter().map(one).collect::<Vec<_>>());
                (chunk.len(), h)
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|(n, h)| {
                h.join()
                    .unwrap_or_else(|_| vec![Err("cannot preprocess this input".to_string()); n])
            })
            .collect()
    })
}

/// Logits rows of the stacked inputs.
fn forward(classifier: &Classifier, inputs: &[&Vec<f32>]) -> Result<Vec<Vec<f32>>, String> {
    let s = classifier.network().input_size();
    let mut flat = Vec::with_capacity(inputs.len() * 3 * s * s);
    for i in inputs {
        flat.extend_from_slice(i);
    }
    let t =
        Tensor::from_vec(flat, (inputs.len(), 3, s, s), &Device::Cpu).map_err(|e| e.to_string())?;
    classifier
        .logits(&t)
        .and_then(|l| Ok(l.to_vec2::<f32>()?))
        .map_err(|e| e.to_string())
}
