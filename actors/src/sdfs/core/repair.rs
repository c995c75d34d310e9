//! Re-replication, planned by a name's primary: checks after membership changes,
//! the repair queue, and the holder side of a `Replicate` order.

use std::collections::BTreeMap;

use crate::sdfs::msg::{JobId, Msg};
use crate::sdfs::name::SdfsName;
use crate::sdfs::store::Version;
use crate::types::NodeAddr;

use super::{
    Event, PrimaryReq, RepairTask, SdfsCore, TargetState, Upload, UploadFor, UploadSource,
};

impl SdfsCore {
    /// Holding reports and replication orders.
    pub(super) fn on_repair_msg(&mut self, from: NodeAddr, msg: Msg) {
        match msg {
            Msg::HoldingReport { holdings } => {
                for h in holdings {
                    self.repairs
                        .sources
                        .entry(h.name.clone())
                        .or_default()
                        .insert(from.clone());
                    self.repairs.since.get_or_insert(self.now);
                    self.schedule_check(&h.name);
                }
            }
            Msg::Replicate {
                job,
                name,
                version,
                to,
            } => self.on_replicate(from, job, name, version, to),
            Msg::ReplicateDone {
                job,
                name,
                version,
                to,
                ok,
            } => self.on_replicate_done(job, name, version, to, ok),
            // `on_peer` routes only the messages above here.
            _ => {}
        }
    }

    /// Forces a fresh look at `name` (its meta may predate the failure) and queues a plan.
    pub(super) fn schedule_check(&mut self, name: &SdfsName) {
        let n = self.repairs.checks.entry(name.clone()).or_insert(0);
        *n += 1;
        if *n > self.cfg.max_attempts * 2 {
            return;
        }
        let pending = self
            .waiting
            .get(name)
            .is_some_and(|w| w.iter().any(|r| matches!(r, PrimaryReq::RepairCheck)));
        if pending {
            return;
        }
        if self.primary_of(name).as_ref() != Some(&self.cfg.me) {
            self.repairs.deferred.insert(name.clone());
            return;
        }
        if !self.querying.contains_key(name) {
            self.meta.remove(name);
        }
        self.primary_req(name.clone(), PrimaryReq::RepairCheck);
    }

    pub(super) fn plan_repair(&mut self, name: &SdfsName) {
        let placement = self.placement(name);
        let Some(m) = self.meta.get(name) else { return };
        let mut tasks = Vec::new();
        let mut lost = Vec::new();
        for (v, hs) in m.versions.iter().rev() {
            let live: Vec<&NodeAddr> = hs.iter().filter(|h| self.ring.contains(h)).collect();
            let Some(from) = live.first() else {
                lost.push(*v);
                continue;
            };
            for p in placement.iter().filter(|p| !hs.contains(*p)) {
                tasks.push(RepairTask {
                    name: name.clone(),
                    version: *v,
                    from: (*from).clone(),
                    to: p.clone(),
                    left: live.len(),
                });
            }
        }
        for v in lost {
            self.log(Event::DataLost {
                name: name.clone(),
                version: v,
            });
        }
        let busy = self
            .repairs
            .queue
            .iter()
            .chain(self.repairs.running.values())
            .any(|t| t.name == *name);
        if tasks.is_empty() || busy {
            if !busy {
                self.repairs.checks.remove(name);
                self.repairs.sources.remove(name);
            }
            self.maybe_repairs_idle();
            return;
        }
        let e = self
            .repairs
            .outstanding
            .entry(name.clone())
            .or_insert((0, 0));
        e.0 += tasks.len();
        self.repairs.queue.extend(tasks);
        // Fewest live copies first (GFS): those are closest to being lost.
        self.repairs.queue.sort_by(|a, b| {
            (a.left, &a.name, std::cmp::Reverse(a.version)).cmp(&(
                b.left,
                &b.name,
                std::cmp::Reverse(b.version),
            ))
        });
        self.dispatch_repairs();
    }

    pub(super) fn dispatch_repairs(&mut self) {
        while self.repairs.running.len() < self.cfg.repair_parallelism
            && !self.repairs.queue.is_empty()
        {
            let task = self.repairs.queue.remove(0);
            let job = self.id();
            self.send(
                &task.from,
                Msg::Replicate {
                    job,
                    name: task.name.clone(),
                    version: task.version,
                    to: task.to.clone(),
                },
            );
            self.repairs.running.insert(job, task);
        }
    }

    pub(super) fn on_replicate_done(
        &mut self,
        job: JobId,
        name: SdfsName,
        version: Version,
        to: NodeAddr,
        ok: bool,
    ) {
        if let Some((n, v, node)) = self.read_repairs.remove(&job) {
            if ok {
                self.log(Event::Repaired {
                    name: n,
                    version: v,
                    node,
                });
            }
            return;
        }
        let Some(task) = self.repairs.running.remove(&job) else {
            return;
        };
        self.repair_task_finished(task, ok);
        let _ = (name, version, to);
        self.dispatch_repairs();
    }

    pub(super) fn repair_task_finished(&mut self, task: RepairTask, ok: bool) {
        if ok {
            self.repairs.made += 1;
            if let Some(hs) = self
                .meta
                .get_mut(&task.name)
                .and_then(|m| m.versions.get_mut(&task.version))
            {
                hs.insert(task.to.clone());
            }
        }
        let Some(e) = self.repairs.outstanding.get_mut(&task.name) else {
            return;
        };
        e.0 = e.0.saturating_sub(1);
        if ok {
            e.1 += 1;
        }
        let (left, made) = *e;
        if left == 0 {
            self.repairs.outstanding.remove(&task.name);
            if made > 0 {
                let took_ms = self
                    .now
                    .saturating_sub(self.repairs.since.unwrap_or(self.now));
                self.log(Event::ReReplicated {
                    name: task.name.clone(),
                    took_ms,
                    copies: made,
                });
            }
            // Look again from a fresh view: confirms the placement is whole, or plans
            // what failed (bounded by the per-name check count).
            self.schedule_check(&task.name);
        }
        self.maybe_repairs_idle();
    }

    pub(super) fn maybe_repairs_idle(&mut self) {
        let idle = self.repairs.queue.is_empty()
            && self.repairs.running.is_empty()
            && self.repairs.outstanding.is_empty()
            && !self
                .waiting
                .values()
                .any(|w| w.iter().any(|r| matches!(r, PrimaryReq::RepairCheck)));
        if idle && self.repairs.made > 0 {
            if let Some(since) = self.repairs.since {
                self.log(Event::ReReplicationIdle {
                    took_ms: self.now.saturating_sub(since),
                });
            }
            self.repairs.made = 0;
        }
    }

    /// Holder side of `Replicate`: push a local copy to `to`.
    pub(super) fn on_replicate(
        &mut self,
        requester: NodeAddr,
        job: JobId,
        name: SdfsName,
        version: Version,
        to: NodeAddr,
    ) {
        match self.store.open_read(&name, version) {
            Ok(reader) => {
                let xfer = self.id();
                let mut targets = BTreeMap::new();
                targets.insert(to, TargetState::default());
                self.uploads.insert(
                    xfer,
                    Upload {
                        purpose: UploadFor::Repair { job, requester },
                        name,
                        version,
                        targets,
                        source: UploadSource::Local(Box::new(reader)),
                        next_idx: 0,
                        bytes: 0,
                        reading: false,
                        ended: false,
                        last: self.now,
                    },
                );
                self.pump_upload(xfer);
            }
            Err(e) => {
                self.local_read_failed(&name, version, &e);
                self.send(
                    &requester,
                    Msg::ReplicateDone {
                        job,
                        name,
                        version,
                        to,
                        ok: false,
                    },
                );
            }
        }
    }
}
