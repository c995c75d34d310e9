//! Re-replication. Holders report the names whose placement changed to the primary
//! until it acknowledges them; the primary checks a bounded number of names at once
//! (each check re-learns the versions from the placement), queues the copies that are
//! missing and orders them from live holders, sending an order again while its holder
//! stays silent; a name whose repair keeps failing is checked again later, never
//! forgotten. The holder side answers a repeated order by its job id.

use std::collections::{BTreeMap, HashMap};

use crate::sdfs::msg::{CopyOutcome, JobId, Msg};
use crate::sdfs::name::SdfsName;
use crate::sdfs::store::Version;
use crate::types::{Millis, NodeAddr};

use super::{
    Event, PrimaryReq, RepairTask, Replicating, Running, SdfsCore, TargetState, Upload, UploadFor,
    UploadSource,
};

/// Names a holder has reported to one primary and not yet seen acknowledged: at most
/// four report messages per peer are in flight.
const REPORT_WINDOW: usize = 1024;
const REPORT_BATCH: usize = 256;
/// How often a running re-replication round logs its progress.
const PROGRESS_EVERY_MS: Millis = 5_000;

impl SdfsCore {
    /// Holding reports and replication orders.
    pub(super) fn on_repair_msg(&mut self, from: NodeAddr, msg: Msg) {
        match msg {
            Msg::HoldingReport { names } => {
                let me = self.cfg.me.clone();
                // A name this node is not primary of (its view lags the reporter's) is
                // not acknowledged: the reporter asks the primary of its next view.
                let taken: Vec<SdfsName> = names
                    .into_iter()
                    .filter(|n| self.primary_of(n).as_ref() == Some(&me))
                    .collect();
                if taken.is_empty() {
                    return;
                }
                // The acknowledgement goes first, ahead of the queries the checks send
                // to the same node.
                self.send(
                    &from,
                    Msg::HoldingAck {
                        names: taken.clone(),
                    },
                );
                self.repairs.since.get_or_insert(self.now);
                for name in taken {
                    self.repairs
                        .sources
                        .entry(name.clone())
                        .or_default()
                        .insert(from.clone());
                    self.schedule_check(&name);
                }
            }
            Msg::HoldingAck { names } => {
                for name in names {
                    let acked =
                        matches!(self.reports.get(&name), Some(Some((to, _))) if *to == from);
                    if acked {
                        self.reports.remove(&name);
                    }
                }
                self.pump_reports();
            }
            Msg::Replicate {
                job,
                name,
                version,
                to,
            } => self.on_replicate(from, job, name, version, to),
            Msg::ReplicateBusy { job } => {
                let now = self.now;
                if let Some(r) = self.repairs.running.get_mut(&job) {
                    if r.task.from == from {
                        r.heard = now;
                    }
                }
            }
            Msg::ReplicateDone { job, outcome, .. } => self.on_replicate_done(job, outcome),
            // `on_peer` routes only the messages above here.
            _ => {}
        }
    }

    /// Holder side: sends the names waiting to be reported to their current primary,
    /// at most [`REPORT_WINDOW`] unacknowledged per primary, again after
    /// `request_timeout_ms` without an acknowledgement. Names this node is primary of
    /// are checked here.
    pub(super) fn pump_reports(&mut self) {
        if self.reports.is_empty() {
            return;
        }
        let now = self.now;
        let timeout = self.cfg.request_timeout_ms;
        let me = self.cfg.me.clone();
        let mut in_flight: HashMap<NodeAddr, usize> = HashMap::new();
        let mut due: BTreeMap<NodeAddr, Vec<SdfsName>> = BTreeMap::new();
        for (name, sent) in &self.reports {
            let Some(p) = self.ring.primary(name) else {
                continue;
            };
            match sent {
                Some((to, at)) if *to == p && now.saturating_sub(*at) < timeout => {
                    *in_flight.entry(p).or_default() += 1;
                }
                _ => due.entry(p).or_default().push(name.clone()),
            }
        }
        for (p, names) in due {
            if p == me {
                for name in names {
                    self.reports.remove(&name);
                    self.repairs.since.get_or_insert(now);
                    self.schedule_check(&name);
                }
                continue;
            }
            let room = REPORT_WINDOW.saturating_sub(in_flight.get(&p).copied().unwrap_or(0));
            let names: Vec<SdfsName> = names.into_iter().take(room).collect();
            for name in &names {
                self.reports.insert(name.clone(), Some((p.clone(), now)));
            }
            for batch in names.chunks(REPORT_BATCH) {
                self.send(
                    &p,
                    Msg::HoldingReport {
                        names: batch.to_vec(),
                    },
                );
            }
        }
    }

    /// Queues a fresh look at `name` (its meta may predate the failure) on its primary.
    pub(super) fn schedule_check(&mut self, name: &SdfsName) {
        // Only the primary plans; holders report to whoever is primary in their view.
        if self.primary_of(name).as_ref() != Some(&self.cfg.me) {
            return;
        }
        if self.repairs.pending.contains(name) {
            return;
        }
        let n = self.repairs.checks.entry(name.clone()).or_insert(0);
        *n += 1;
        let checks = *n;
        if checks > self.cfg.max_attempts * 2 {
            if !self.repairs.later.contains_key(name) {
                let at = self.now.saturating_add(self.retry_later_ms());
                self.repairs.later.insert(name.clone(), at);
                self.log(Event::RepairDeferred {
                    name: name.clone(),
                    checks,
                });
            }
            return;
        }
        self.repairs.pending.insert(name.clone());
        self.pump_checks();
    }

    /// Pause before a name whose repair kept failing is checked again.
    fn retry_later_ms(&self) -> Millis {
        self.cfg.request_timeout_ms.saturating_mul(2)
    }

    /// Starts pending checks while fewer than `check_window` run.
    pub(super) fn pump_checks(&mut self) {
        if self.repairs.pumping {
            return;
        }
        self.repairs.pumping = true;
        self.pump_checks_now();
        self.repairs.pumping = false;
    }

    fn pump_checks_now(&mut self) {
        let me = self.cfg.me.clone();
        // A check whose query went away (the name's primary moved) is no longer running.
        let waiting = &self.waiting;
        let querying = &self.querying;
        self.repairs.checking.retain(|n| {
            querying.contains_key(n)
                || waiting
                    .get(n)
                    .is_some_and(|w| w.iter().any(|r| matches!(r, PrimaryReq::RepairCheck)))
        });
        while self.repairs.checking.len() < self.cfg.check_window {
            let next = self
                .repairs
                .pending
                .iter()
                .find(|n| !self.repairs.checking.contains(*n))
                .cloned();
            let Some(name) = next else { break };
            self.repairs.pending.remove(&name);
            if self.primary_of(&name).as_ref() != Some(&me) {
                continue;
            }
            self.repairs.checking.insert(name.clone());
            if !self.querying.contains_key(&name) {
                self.meta.remove(&name);
            }
            self.primary_req(name, PrimaryReq::RepairCheck);
        }
    }

    pub(super) fn plan_repair(&mut self, name: &SdfsName) {
        self.repairs.checking.remove(name);
        if self.primary_of(name).as_ref() != Some(&self.cfg.me) {
            self.pump_checks();
            return;
        }
        // Nodes that refused a copy are skipped while other live nodes can stand in.
        let mut placement = self.placement(name);
        if let Some(refused) = self.repairs.refused.get(name) {
            let stand_ins = self
                .ring
                .placement_excluding(name, self.cfg.replicas, refused);
            if stand_ins.len() == placement.len() {
                placement = stand_ins;
            }
        }
        let Some(m) = self.meta.get(name) else {
            self.pump_checks();
            return;
        };
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
            .chain(self.repairs.running.values().map(|r| &r.task))
            .any(|t| t.name == *name);
        if tasks.is_empty() || busy {
            if !busy {
                self.repairs.checks.remove(name);
                self.repairs.sources.remove(name);
            }
            self.pump_checks();
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
        self.pump_checks();
    }

    pub(super) fn dispatch_repairs(&mut self) {
        while self.repairs.running.len() < self.cfg.repair_parallelism
            && !self.repairs.queue.is_empty()
        {
            let task = self.repairs.queue.remove(0);
            let job = self.id();
            self.send(&task.from, replicate_order(job, &task));
            let heard = self.now;
            self.repairs.running.insert(job, Running { task, heard });
        }
    }

    /// Sweep, primary side: orders whose holder went silent are sent again (a holder
    /// answers a repeat by its job id, so no copy is made twice); names due for another
    /// look are queued; progress is logged.
    pub(super) fn sweep_repairs(&mut self) {
        let now = self.now;
        let timeout = self.cfg.request_timeout_ms;
        let mut again = Vec::new();
        for (job, r) in self.repairs.running.iter_mut() {
            if now.saturating_sub(r.heard) >= timeout {
                r.heard = now;
                again.push((r.task.from.clone(), replicate_order(*job, &r.task)));
            }
        }
        for (to, msg) in again {
            self.send(&to, msg);
        }
        let due: Vec<SdfsName> = self
            .repairs
            .later
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.repairs.later.remove(&name);
            self.repairs.checks.remove(&name);
            self.schedule_check(&name);
        }
        let keep = self.cfg.idle_timeout_ms.saturating_mul(2);
        self.replicating.retain(|_, r| match r {
            Replicating::Copying => true,
            Replicating::Done { at, .. } => now.saturating_sub(*at) < keep,
        });
        self.pump_reports();
        self.pump_checks();
        if let Some(since) = self.repairs.since {
            let active = !(self.repairs.outstanding.is_empty()
                && self.repairs.pending.is_empty()
                && self.repairs.checking.is_empty()
                && self.repairs.later.is_empty());
            if active && now.saturating_sub(self.repairs.logged_at) >= PROGRESS_EVERY_MS {
                self.repairs.logged_at = now;
                let pending = self.repairs.pending.len()
                    + self.repairs.checking.len()
                    + self.repairs.later.len()
                    + self.repairs.outstanding.len();
                self.log(Event::ReReplicationProgress {
                    pending,
                    copies: self.repairs.made,
                    bytes: self.repairs.bytes,
                    took_ms: now.saturating_sub(since),
                });
            }
        }
    }

    pub(super) fn on_replicate_done(&mut self, job: JobId, outcome: CopyOutcome) {
        let ok = matches!(outcome, CopyOutcome::Copied { .. });
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
        let Some(r) = self.repairs.running.remove(&job) else {
            return;
        };
        if let CopyOutcome::Copied { bytes } = outcome {
            self.repairs.bytes += bytes;
        } else if outcome == CopyOutcome::Refused {
            // The target's store refused the copy (full or failing disk): the next plan
            // for the name places it on another node if there is one.
            self.repairs
                .refused
                .entry(r.task.name.clone())
                .or_default()
                .insert(r.task.to.clone());
        }
        self.repair_task_finished(r.task, ok);
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
            // what failed.
            self.schedule_check(&task.name);
        }
        self.maybe_repairs_idle();
    }

    pub(super) fn maybe_repairs_idle(&mut self) {
        let r = &self.repairs;
        let idle = r.queue.is_empty()
            && r.running.is_empty()
            && r.outstanding.is_empty()
            && r.pending.is_empty()
            && r.checking.is_empty()
            && r.later.is_empty();
        if idle && self.repairs.made > 0 {
            if let Some(since) = self.repairs.since {
                self.log(Event::ReReplicationIdle {
                    took_ms: self.now.saturating_sub(since),
                    copies: self.repairs.made,
                    bytes: self.repairs.bytes,
                });
            }
            self.repairs.made = 0;
            self.repairs.bytes = 0;
        }
    }

    /// Holder side of `Replicate`: push a local copy to `to`, or answer a repeated order.
    pub(super) fn on_replicate(
        &mut self,
        requester: NodeAddr,
        job: JobId,
        name: SdfsName,
        version: Version,
        to: NodeAddr,
    ) {
        match self.replicating.get(&(requester.clone(), job)).copied() {
            Some(Replicating::Copying) => {
                self.send(&requester, Msg::ReplicateBusy { job });
                return;
            }
            Some(Replicating::Done { outcome, .. }) => {
                // The answer was lost: give it again (and keep it a while longer).
                self.finish_replicate(requester, job, name, version, to, outcome);
                return;
            }
            None => {}
        }
        match self.store.open_read(&name, version) {
            Ok(reader) => {
                let xfer = self.id();
                let mut targets = BTreeMap::new();
                targets.insert(to, TargetState::default());
                self.replicating
                    .insert((requester.clone(), job), Replicating::Copying);
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
                self.finish_replicate(requester, job, name, version, to, CopyOutcome::Failed);
            }
        }
    }

    /// Holder side: the copy of an order ended; the answer is kept for repeats.
    pub(super) fn finish_replicate(
        &mut self,
        requester: NodeAddr,
        job: JobId,
        name: SdfsName,
        version: Version,
        to: NodeAddr,
        outcome: CopyOutcome,
    ) {
        let at = self.now;
        self.replicating
            .insert((requester.clone(), job), Replicating::Done { outcome, at });
        self.send(
            &requester,
            Msg::ReplicateDone {
                job,
                name,
                version,
                to,
                outcome,
            },
        );
    }
}

fn replicate_order(job: JobId, task: &RepairTask) -> Msg {
    Msg::Replicate {
        job,
        name: task.name.clone(),
        version: task.version,
        to: task.to.clone(),
    }
}
