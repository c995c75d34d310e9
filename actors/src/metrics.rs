//! The node's Prometheus metrics (`GET /metrics`): the `metrics` facade, recorded where
//! things happen, rendered in Prometheus text format by `metrics-exporter-prometheus`.
//! Names follow Prometheus conventions (`_total` counters, `_seconds` histograms).
//! Counters the transport already keeps are copied in at scrape time.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::membership::membership_actor::View;
use crate::membership::{Event, MemberState};
use crate::net::transport::TransportStats;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets (seconds): 1 ms to about 16 s.
const LATENCY: [f64; 15] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384,
];
/// Batch-size buckets (inputs).
const BATCH: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Installs the recorder (once per process; later calls reuse it). `None` when another
/// recorder was installed first (a test harness), in which case `/metrics` says so.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), &BATCH)
                })
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

/// The text exposition, with the transport's counters copied in first.
pub fn render(transport: Option<TransportStats>) -> Option<String> {
    let handle = install()?;
    if let Some(t) = transport {
        for (lane, s) in [("control", t.control), ("bulk", t.bulk)] {
            counter!("dml_transport_sent_bytes_total", "lane" => lane).absolute(s.bytes_sent);
            counter!("dml_transport_received_bytes_total", "lane" => lane)
                .absolute(s.bytes_received);
            counter!("dml_transport_sent_frames_total", "lane" => lane).absolute(s.frames_sent);
            counter!("dml_transport_received_frames_total", "lane" => lane)
                .absolute(s.frames_received);
        }
    }
    Some(handle.render())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "dml_inference_requests_total",
        "Online inference requests answered, by model and outcome."
    );
    describe_counter!(
        "dml_inference_failures_total",
        "Online inference requests that failed or were refused, by model."
    );
    describe_histogram!(
        "dml_inference_batch_size",
        "Inputs per online inference batch, by model."
    );
    describe_histogram!(
        "dml_inference_queue_seconds",
        Unit::Seconds,
        "Time a request waited in the dynamic batcher."
    );
    describe_histogram!(
        "dml_inference_compute_seconds",
        Unit::Seconds,
        "Decode and forward pass of a batch, measured on the node that ran it."
    );
    describe_histogram!(
        "dml_inference_request_seconds",
        Unit::Seconds,
        "End to end, from queueing to the answer, per request."
    );
    describe_gauge!(
        "dml_membership_members",
        "Live members (alive or suspect) in this node's view, itself included."
    );
    describe_gauge!(
        "dml_membership_suspects",
        "Members this node currently suspects."
    );
    describe_counter!(
        "dml_membership_suspicions_total",
        "Suspicions this node learned of."
    );
    describe_counter!(
        "dml_membership_refutations_total",
        "Refuted suspicions this node learned of."
    );
    describe_counter!(
        "dml_membership_removals_total",
        "Members removed (failed or left)."
    );
    describe_counter!(
        "dml_membership_joins_total",
        "Members that joined or rejoined."
    );
    describe_counter!(
        "dml_sdfs_received_bytes_total",
        Unit::Bytes,
        "SDFS chunk bytes received from other nodes (puts, replication, reads)."
    );
    describe_counter!(
        "dml_sdfs_sent_bytes_total",
        Unit::Bytes,
        "SDFS chunk bytes sent to other nodes."
    );
    describe_gauge!(
        "dml_sdfs_stored_objects",
        "Names with at least one version in this node's store."
    );
    describe_gauge!(
        "dml_sdfs_rereplication_backlog",
        "Names still waiting for re-replication on this node as primary."
    );
    describe_counter!(
        "dml_transport_sent_bytes_total",
        Unit::Bytes,
        "Frame bytes written to peers, by lane."
    );
    describe_counter!(
        "dml_transport_received_bytes_total",
        Unit::Bytes,
        "Frame bytes read from peers, by lane."
    );
    describe_counter!(
        "dml_transport_sent_frames_total",
        "Frames written to peers, by lane."
    );
    describe_counter!(
        "dml_transport_received_frames_total",
        "Frames decoded from peers, by lane."
    );
}

/// One batch of `n` inputs sent for `model`.
pub fn serve_batch(model: &str, n: usize) {
    histogram!("dml_inference_batch_size", "model" => model.to_string()).record(n as f64);
}

/// A request left the queue after `ms`.
pub fn serve_queue_ms(model: &str, ms: f64) {
    histogram!("dml_inference_queue_seconds", "model" => model.to_string()).record(ms / 1000.0);
}

/// A batch computed in `ms`.
pub fn serve_compute_ms(model: &str, ms: f64) {
    histogram!("dml_inference_compute_seconds", "model" => model.to_string()).record(ms / 1000.0);
}

/// A request answered after `ms` in all.
pub fn serve_done(model: &str, ok: bool, ms: f64) {
    let outcome = if ok { "ok" } else { "error" };
    counter!("dml_inference_requests_total", "model" => model.to_string(), "outcome" => outcome)
        .increment(1);
    if !ok {
        serve_failure(model);
    }
    histogram!("dml_inference_request_seconds", "model" => model.to_string()).record(ms / 1000.0);
}

/// A request failed or was refused.
pub fn serve_failure(model: &str) {
    counter!("dml_inference_failures_total", "model" => model.to_string()).increment(1);
}

/// The membership after a change.
pub fn members(v: &View) {
    let live = v.live().len();
    let suspects = v
        .members
        .iter()
        .filter(|m| matches!(m.state, MemberState::Suspect) && m.addr != v.me)
        .count();
    gauge!("dml_membership_members").set(live as f64);
    gauge!("dml_membership_suspects").set(suspects as f64);
}

/// A membership event.
pub fn membership_event(ev: &Event) {
    match ev {
        Event::Suspected { .. } => counter!("dml_membership_suspicions_total").increment(1),
        Event::Refuted { .. } => counter!("dml_membership_refutations_total").increment(1),
        Event::Failed { .. } | Event::Left { .. } => {
            counter!("dml_membership_removals_total").increment(1)
        }
        Event::Joined { .. } => counter!("dml_membership_joins_total").increment(1),
        _ => {}
    }
}

/// SDFS chunk bytes in a message received (`incoming`) or sent.
pub fn sdfs_msg(incoming: bool, msg: &crate::sdfs::Msg) {
    use crate::sdfs::Msg;
    let (Msg::WriteChunk { data, .. } | Msg::ReadChunk { data, .. }) = msg else {
        return;
    };
    let n = data.len() as u64;
    if incoming {
        counter!("dml_sdfs_received_bytes_total").increment(n);
    } else {
        counter!("dml_sdfs_sent_bytes_total").increment(n);
    }
}

/// The re-replication backlog from the SDFS core's progress events.
pub fn sdfs_event(ev: &crate::sdfs::core::Event) {
    use crate::sdfs::core::Event;
    match ev {
        Event::ReReplicationProgress { pending, .. } => sdfs_backlog(*pending),
        Event::ReReplicationIdle { .. } => sdfs_backlog(0),
        _ => {}
    }
}

/// Names held by this node's store.
pub fn sdfs_stored(n: usize) {
    gauge!("dml_sdfs_stored_objects").set(n as f64);
}

/// Names waiting for re-replication on this primary.
pub fn sdfs_backlog(n: usize) {
    gauge!("dml_sdfs_rereplication_backlog").set(n as f64);
}
