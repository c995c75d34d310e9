//! Unit tests of the coordinator core, driven through `handle`.

use super::*;
use crate::jobs::msg::{BatchDone, RunBatch};

/// A coordinator alone on a one-node ring, started as the ring's first node with
/// `used_epoch` already in SDFS.
fn solo(me: &NodeAddr, cfg: JobsConfig, used_epoch: u64) -> Coordinator {
    let mut c = Coordinator::new(me.clone(), cfg, vec![me.clone()], 0);
    let fx = c.handle(0, Input::Members(vec![me.clone()]));
    assert!(fx.contains(&Effect::SetTimer {
        at: 0,
        timer: Timer::Bootstrap
    }));
    assert_eq!(
        c.handle(0, Input::Timer(Timer::Bootstrap)),
        vec![Effect::ReadUsedEpoch]
    );
    c.handle(0, Input::UsedEpoch(used_epoch));
    c
}

fn listed(client: &str, request_id: u64, queries: &[&str]) -> Input {
    Input::InputsListed {
        client: client.into(),
        request_id,
        model: "resnet50".into(),
        input: "in/".into(),
        sources: queries
            .iter()
            .map(|q| Source {
                name: q.to_string(),
                entries: None,
            })
            .collect(),
        weights: Ok(Default::default()),
    }
}

fn sends(fx: &[Effect]) -> Vec<(&NodeAddr, &Msg)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Send { to, msg } => Some((to, msg)),
            _ => None,
        })
        .collect()
}

fn run_batches(fx: &[Effect]) -> Vec<RunBatch> {
    sends(fx)
        .into_iter()
        .filter_map(|(_, m)| match m {
            Msg::RunBatch(rb) => Some(rb.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn successor_wraps_and_skips_the_start() {
    let live: BTreeSet<NodeAddr> = ["a:1", "b:1", "c:1"]
        .iter()
        .map(|s| NodeAddr::from(*s))
        .collect();
    assert_eq!(successor(&live, &"b:1".into()), Some("c:1".into()));
    assert_eq!(successor(&live, &"c:1".into()), Some("a:1".into()));
    assert_eq!(successor(&live, &"bb:1".into()), Some("c:1".into()));
    let one: BTreeSet<NodeAddr> = [NodeAddr::from("a:1")].into();
    assert_eq!(successor(&one, &"a:1".into()), None);
}

/// One node, no standby: failing queries are retried, then committed as failed.
#[test]
fn a_query_that_keeps_failing_is_committed_as_failed_after_max_attempts() {
    let me = NodeAddr::from("solo:1");
    let cfg = JobsConfig {
        max_attempts: 2,
        ..JobsConfig::default()
    };
    let mut c = solo(&me, cfg, 0);
    assert_eq!(c.role(), RoleKind::Primary);
    let client = NodeAddr::from("client:1");
    let fx = c.handle(1, listed("client:1", 1, &["in/a", "in/b"]));
    let manifest = fx
        .iter()
        .find_map(|e| match e {
            Effect::WriteManifest { manifest } => Some(manifest.clone()),
            _ => None,
        })
        .expect("manifest written before the ack");
    assert!(!sends(&fx)
        .iter()
        .any(|(_, m)| matches!(m, Msg::JobAccepted { .. })));
    let mut rb = run_batches(&fx);
    let fx = c.handle(2, Input::ManifestWritten(manifest.id));
    assert!(sends(&fx)
        .iter()
        .any(|(to, m)| *to == &client && matches!(m, Msg::JobAccepted { .. })));

    for attempt in 1..=2u64 {
        let b = rb.pop().expect("a batch");
        let done = BatchDone {
            term: b.term.clone(),
            batch: b.batch,
            job: b.job,
            results_written: vec![0],
            failed: vec![1],
            compute_ms: 30,
            precision: Some("int8".into()),
        };
        let fx = c.handle(
            10 * attempt,
            Input::Message {
                from: me.clone(),
                msg: Msg::BatchDone(done),
            },
        );
        rb = run_batches(&fx);
        if attempt == 1 {
            assert_eq!(rb.len(), 1, "in/b retried");
            assert_eq!(rb[0].queries, vec![1]);
            assert_eq!(rb[0].inputs[0].source, "in/b");
        } else {
            assert!(rb.is_empty());
            assert!(sends(&fx).iter().any(|(_, m)| matches!(
                m,
                Msg::JobCompleted {
                    ok: 1,
                    failed: 1,
                    ..
                }
            )));
        }
    }
    let j = &c.state().jobs[&manifest.id];
    assert!(j.is_complete());
    assert_eq!(j.ok_count(), 1);
}

/// A cluster restarted on SDFS data that holds jobs of epochs up to 4 starts at 5, so
/// its first job cannot reuse an old id (and so old manifest and result names).
#[test]
fn bootstrap_starts_above_the_epochs_already_in_sdfs() {
    let me = NodeAddr::from("solo:1");
    let fresh = solo(&me, JobsConfig::default(), 0);
    assert_eq!(fresh.reign().map(|r| r.term.epoch), Some(1));

    let mut c = solo(&me, JobsConfig::default(), 4);
    assert_eq!(c.reign().map(|r| r.term.epoch), Some(5));
    let fx = c.handle(1, listed("client:1", 1, &["in/a"]));
    let id = fx
        .iter()
        .find_map(|e| match e {
            Effect::WriteManifest { manifest } => Some(manifest.id),
            _ => None,
        })
        .expect("manifest written");
    assert_eq!(id.to_string(), "5-1");
    // A late second answer changes nothing: a reign is known.
    c.handle(2, Input::UsedEpoch(9));
    assert_eq!(c.reign().map(|r| r.term.epoch), Some(5));
}

#[test]
fn requests_to_a_member_name_the_coordinator() {
    let mut c = Coordinator::new("m:1".into(), JobsConfig::default(), Vec::new(), 0);
    let r = Reign {
        term: Term {
            epoch: 3,
            coordinator: "boss:1".into(),
        },
        standby: None,
        view: 0,
    };
    c.handle(
        0,
        Input::Message {
            from: "boss:1".into(),
            msg: Msg::Reign(r),
        },
    );
    let fx = c.handle(
        1,
        Input::Message {
            from: "client:1".into(),
            msg: Msg::SetBatchSize {
                request_id: 5,
                model: "resnet50".into(),
                size: 4,
            },
        },
    );
    assert!(matches!(
        sends(&fx)[0].1,
        Msg::Refused {
            error: JobError::NotCoordinator { coordinator: Some(c) },
            ..
        } if c.as_str() == "boss:1"
    ));
}

fn manifests(fx: &[Effect]) -> Vec<JobManifest> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::WriteManifest { manifest } => Some(manifest.clone()),
            _ => None,
        })
        .collect()
}

/// SDFS refuses a manifest while its ring forms: the core writes it again after
/// `MANIFEST_RETRY_MS`, acknowledges the job only once it is stored, and a retry timer
/// that fires after that is stale.
#[test]
fn a_failed_manifest_write_is_retried_and_the_job_acknowledged_only_when_stored() {
    let me = NodeAddr::from("solo:1");
    let mut c = solo(&me, JobsConfig::default(), 0);
    let fx = c.handle(1, listed("client:1", 1, &["in/a"]));
    let manifest = manifests(&fx).pop().expect("a manifest to write");
    let id = manifest.id;

    let fx = c.handle(5, Input::ManifestFailed(id));
    let retry = Timer::RetryManifest { job: id };
    assert_eq!(
        fx,
        vec![Effect::SetTimer {
            at: 5 + MANIFEST_RETRY_MS,
            timer: retry,
        }]
    );
    let fx = c.handle(5 + MANIFEST_RETRY_MS, Input::Timer(retry));
    assert_eq!(manifests(&fx), vec![manifest]);
    assert!(!sends(&fx)
        .iter()
        .any(|(_, m)| matches!(m, Msg::JobAccepted { .. })));

    let fx = c.handle(1_100, Input::ManifestWritten(id));
    assert!(sends(&fx)
        .iter()
        .any(|(_, m)| matches!(m, Msg::JobAccepted { .. })));
    // Stored now: a late retry timer writes nothing.
    assert!(manifests(&c.handle(2_000, Input::Timer(retry))).is_empty());
}

/// Finding 5 of issue 14: a hand-made `jobs/18446744073709551614-1.manifest` made the
/// next epoch wrap to 0 and the new coordinator was fenced at once. An epoch past the
/// bound is ignored: the reign starts at a real epoch, never 0.
#[test]
fn a_huge_used_epoch_does_not_wrap() {
    use crate::jobs::types::MAX_EPOCH;
    let me = NodeAddr::from("solo:1");
    for used in [u64::MAX - 1, u64::MAX, MAX_EPOCH] {
        let c = solo(&me, JobsConfig::default(), used);
        assert_eq!(c.reign().map(|r| r.term.epoch), Some(1), "used {used}");
        assert_eq!(c.counters().implausible_epochs, 1);
    }
    let c = solo(&me, JobsConfig::default(), MAX_EPOCH - 1);
    assert_eq!(c.reign().map(|r| r.term.epoch), Some(MAX_EPOCH));
}

/// A forged reign at `u64::MAX` neither deposes the coordinator nor is reported more
/// than a few times.
#[test]
fn a_forged_reign_past_the_bound_is_ignored() {
    let me = NodeAddr::from("solo:1");
    let mut c = solo(&me, JobsConfig::default(), 0);
    let forged = Reign {
        term: Term {
            epoch: u64::MAX,
            coordinator: "rogue:1".into(),
        },
        standby: None,
        view: 0,
    };
    let mut reports = 0;
    for t in 0..1000 {
        let fx = c.handle(
            1 + t,
            Input::Message {
                from: "rogue:1".into(),
                msg: Msg::Reign(forged.clone()),
            },
        );
        reports += fx
            .iter()
            .filter(|e| matches!(e, Effect::Event(Event::ImplausibleEpoch { .. })))
            .count();
    }
    assert_eq!(c.reign().map(|r| r.term.epoch), Some(1));
    assert_eq!(c.role(), RoleKind::Primary);
    assert_eq!(reports, 10, "1st, 2nd, 4th ... 512th of 1000");
}

/// A job pinned to a published version goes only to workers that serve it: none while
/// the only worker runs another local file, and its batch as soon as the worker says it
/// serves published versions; the batch carries the pin.
#[test]
fn batches_go_only_to_workers_serving_the_pinned_weights() {
    use crate::weights::{Pinned, Serving, ServingReport};
    let me = NodeAddr::from("solo:1");
    let mut c = solo(&me, JobsConfig::default(), 0);
    let report = |serving| Input::Message {
        from: me.clone(),
        msg: Msg::Serving(ServingReport {
            models: vec![("resnet50".into(), serving)],
            notes: vec!["resnet50: a note for C5".into()],
        }),
    };
    let other = Serving::Local {
        sha256: "b".repeat(64),
    };
    assert!(run_batches(&c.handle(1, report(other))).is_empty());
    let pin = WeightsPin::Published(Box::new(Pinned {
        version: 3,
        sha256: "a".repeat(64),
        format: "safetensors".into(),
    }));
    let Input::InputsListed {
        client,
        request_id,
        model,
        input,
        sources,
        ..
    } = listed("client:1", 1, &["in/a"])
    else {
        unreachable!()
    };
    let submit = Input::InputsListed {
        client,
        request_id,
        model,
        input,
        sources,
        weights: Ok(pin.clone()),
    };
    let fx = c.handle(2, submit);
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::WriteManifest { manifest } if manifest.weights == pin)));
    assert!(
        run_batches(&fx).is_empty(),
        "the worker's local file differs"
    );
    let fx = c.handle(3, report(Serving::Cluster { synthetic: false }));
    let rb = run_batches(&fx);
    assert_eq!(rb.len(), 1);
    assert_eq!(rb[0].weights, pin);
    let Ok(StatusReport::Assignment { weights, .. }) = c.status(4, StatusKind::Assignment) else {
        panic!("no C5")
    };
    assert_eq!(weights, vec![format!("{me}: resnet50: a note for C5")]);
}
