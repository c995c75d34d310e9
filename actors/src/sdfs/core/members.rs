//! Membership changes (what dies with a node, what must be re-replicated) and the
//! housekeeping sweep (resends, stalled transfers).

use std::collections::BTreeSet;

use crate::sdfs::msg::{JobId, Msg, OpId, RemoteError, XferId};
use crate::sdfs::ring::Ring;
use crate::types::NodeAddr;

use super::{ClientOp, DeleteOp, Event, PutOp, PutStage, ReadOp, RepairTask, SdfsCore};

impl SdfsCore {
    pub(super) fn on_members(&mut self, live: Vec<NodeAddr>) {
        let old = std::mem::replace(&mut self.ring, Ring::new(&live));
        let dead: BTreeSet<NodeAddr> = old
            .members()
            .filter(|m| !self.ring.contains(m))
            .cloned()
            .collect();
        let changed = old != self.ring;
        if !changed {
            return;
        }
        let now = self.now;

        // Writes from dead senders can never finish.
        let keys: Vec<_> = self
            .incoming
            .keys()
            .filter(|k| dead.contains(&k.0))
            .cloned()
            .collect();
        for k in keys {
            self.abort_incoming(&k, "sender failed");
        }
        self.serving.retain(|k, _| !dead.contains(&k.0));

        // Uploads that lost a target.
        let lost: Vec<(XferId, NodeAddr)> = self
            .uploads
            .iter()
            .filter_map(|(x, u)| {
                u.targets
                    .keys()
                    .find(|t| dead.contains(*t))
                    .map(|t| (*x, t.clone()))
            })
            .collect();
        for (xfer, node) in lost {
            self.upload_failed(xfer, Some((node, false, "replica failed".into())));
        }

        // Reads whose holder died fall back; client requests to a dead primary go again.
        let ops: Vec<OpId> = self.ops.keys().copied().collect();
        for op in ops {
            let (holder_dead, primary_dead, list_wait) = match self.ops.get(&op) {
                Some(ClientOp::Read(r)) => (
                    r.cur.as_ref().is_some_and(|f| dead.contains(&f.holder)),
                    r.ctl.as_ref().is_some_and(|c| dead.contains(&c.primary)),
                    false,
                ),
                Some(ClientOp::Put(p)) => {
                    let primary_changed = p.version.is_some()
                        && matches!(p.stage, PutStage::Uploading { .. })
                        && old.primary(&p.name) != self.ring.primary(&p.name);
                    (
                        false,
                        p.ctl.as_ref().is_some_and(|c| dead.contains(&c.primary))
                            || primary_changed,
                        false,
                    )
                }
                Some(ClientOp::Delete(d)) => (
                    false,
                    d.ctl.as_ref().is_some_and(|c| dead.contains(&c.primary)),
                    false,
                ),
                Some(ClientOp::List(_)) => (false, false, true),
                None => (false, false, false),
            };
            if holder_dead {
                self.read_fallback(op, "holder failed".into(), false);
            }
            if let Some(ClientOp::Read(ReadOp {
                direct: Some(d), ..
            })) = self.ops.get_mut(&op)
            {
                d.waiting.retain(|n| !dead.contains(n));
            }
            self.maybe_finish_direct(op);
            if primary_dead {
                self.ctl_send(op);
            }
            if list_wait {
                if let Some(ClientOp::List(l)) = self.ops.get_mut(&op) {
                    l.waiting.retain(|n| !dead.contains(n));
                }
                self.maybe_finish_list(op);
            }
        }

        // Primary side: queries and deletes stop waiting for the dead; grants held by a
        // dead writer are dropped (never acknowledged, so never visible).
        let qids: Vec<JobId> = self.queries.keys().copied().collect();
        for qid in qids {
            if let Some(q) = self.queries.get_mut(&qid) {
                q.waiting.retain(|n| !dead.contains(n));
            }
            self.maybe_finish_query(qid);
        }
        let jobs: Vec<JobId> = self.deletes.keys().copied().collect();
        for job in jobs {
            if let Some(d) = self.deletes.get_mut(&job) {
                d.waiting.retain(|n| !dead.contains(n));
            }
            self.maybe_finish_delete(job);
        }
        let mut orphaned = Vec::new();
        for (name, g) in self.granted.iter_mut() {
            g.retain(|v, w| {
                let gone = dead.contains(w);
                if gone {
                    orphaned.push((name.clone(), *v));
                }
                !gone
            });
        }
        for (name, v) in orphaned {
            if self.primary_of(&name).as_ref() == Some(&self.cfg.me) {
                self.drop_version(&name, v);
            }
        }
        // Cached metadata is trusted only while the placement it was learnt from holds.
        let me = self.cfg.me.clone();
        let replicas = self.cfg.replicas;
        let ring = &self.ring;
        self.meta.retain(|name, _| {
            ring.primary(name).as_ref() == Some(&me)
                && old.placement(name, replicas) == ring.placement(name, replicas)
        });

        // Repairs in flight that involved a dead node are re-planned.
        let failed: Vec<JobId> = self
            .repairs
            .running
            .iter()
            .filter(|(_, r)| dead.contains(&r.task.from) || dead.contains(&r.task.to))
            .map(|(j, _)| *j)
            .collect();
        for job in failed {
            if let Some(r) = self.repairs.running.remove(&job) {
                self.repair_task_finished(r.task, false);
            }
        }
        self.replicating
            .retain(|(requester, _), _| !dead.contains(requester));
        let (stale, keep): (Vec<RepairTask>, Vec<RepairTask>) =
            std::mem::take(&mut self.repairs.queue)
                .into_iter()
                .partition(|t| dead.contains(&t.from) || dead.contains(&t.to));
        self.repairs.queue = keep;
        for t in stale {
            self.repair_task_finished(t, false);
        }

        // Every name this node holds whose placement changed is reported to its
        // primary (until acknowledged), which restores m + 1 copies. After at most m
        // failures at least one holder of every version survives to report it. Checks
        // start afresh: names that kept failing get their attempts back.
        self.repairs.since = Some(now);
        self.repairs.checks.clear();
        self.repairs.refused.clear();
        let later = std::mem::take(&mut self.repairs.later);
        self.repairs.pending.extend(later.into_keys());
        let (ring, pending) = (&self.ring, &mut self.repairs.pending);
        pending.retain(|n| ring.primary(n).as_ref() == Some(&me));
        let holdings = match self.store.holdings() {
            Ok(h) => h,
            Err(e) => {
                self.log(Event::StoreFailure {
                    what: e.to_string(),
                });
                Vec::new()
            }
        };
        for h in holdings {
            if old.placement(&h.name, replicas) != self.ring.placement(&h.name, replicas) {
                self.reports.insert(h.name, None);
            }
        }
        self.pump_reports();
        self.dispatch_repairs();
        self.pump_checks();
        self.maybe_repairs_idle();
    }

    // Housekeeping

    pub(super) fn on_sweep(&mut self) {
        let now = self.now;
        let idle = self.cfg.idle_timeout_ms;
        let req_timeout = self.cfg.request_timeout_ms;
        self.set_sweep_timer();

        let stale_in: Vec<_> = self
            .incoming
            .iter()
            .filter(|(_, i)| now.saturating_sub(i.last) >= idle)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale_in {
            self.abort_incoming(&k, "idle");
            self.send(
                &k.0,
                Msg::WriteFailed {
                    xfer: k.1,
                    error: RemoteError::BadTransfer,
                },
            );
        }
        self.serving
            .retain(|_, s| now.saturating_sub(s.last) < idle);
        self.resend_stale_queries();
        self.resend_stale_deletes();
        for (from, refused) in std::mem::take(&mut self.busy_refusals) {
            self.log(Event::IncomingRefused {
                from,
                refused,
                open: self.incoming.len(),
            });
        }
        let keep = idle.saturating_mul(2);
        self.deleted
            .retain(|_, (_, _, at)| now.saturating_sub(*at) < keep);
        self.sweep_repairs();
        let ops = &self.ops;
        self.read_queries.retain(|_, op| ops.contains_key(op));

        let stale_up: Vec<(XferId, NodeAddr)> = self
            .uploads
            .iter()
            .filter(|(_, u)| now.saturating_sub(u.last) >= idle && !u.reading)
            .filter_map(|(x, u)| {
                u.targets
                    .iter()
                    .find(|(_, t)| !t.done)
                    .map(|(n, _)| (*x, n.clone()))
            })
            .collect();
        for (xfer, node) in stale_up {
            self.upload_failed(xfer, Some((node, false, "transfer stalled".into())));
        }

        let ops: Vec<OpId> = self.ops.keys().copied().collect();
        for op in ops {
            let (resend, read_stalled, list_again) = match self.ops.get(&op) {
                Some(ClientOp::Put(PutOp { ctl: Some(c), .. }))
                | Some(ClientOp::Read(ReadOp { ctl: Some(c), .. }))
                | Some(ClientOp::Delete(DeleteOp { ctl: Some(c), .. })) => (
                    match c.backoff_until {
                        Some(until) => now >= until,
                        None => now.saturating_sub(c.sent_at) >= req_timeout,
                    },
                    false,
                    false,
                ),
                Some(ClientOp::Read(ReadOp {
                    cur: Some(f),
                    ctl: None,
                    ..
                })) => (false, now.saturating_sub(f.last) >= idle, false),
                Some(ClientOp::List(l)) => {
                    (false, false, now.saturating_sub(l.asked_at) >= req_timeout)
                }
                _ => (false, false, false),
            };
            if resend {
                // A primary that does not answer a read may be dead and not yet
                // detected, or busy: the holders are asked as well.
                if matches!(self.ops.get(&op), Some(ClientOp::Read(_))) {
                    self.read_direct(op);
                }
                self.ctl_send(op);
            }
            if read_stalled {
                self.read_fallback(op, "transfer stalled".into(), false);
            }
            if list_again {
                self.resend_list(op);
            }
            self.maybe_finish_direct(op);
        }
        self.scrub_step();
    }
}
