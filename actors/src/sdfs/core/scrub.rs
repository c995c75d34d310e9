//! Local disk health: a background scrub that re-verifies every stored version a little
//! at a time (HDFS block scanner, MinIO bitrot scan), so a damaged copy is found and
//! restored before a reader needs it, and the once-per-episode report of a full disk.
//!
//! The scrub walks a snapshot of the store's holdings, verifying at most
//! `scrub_bytes_per_sweep` per sweep tick; the next round starts when this one is done,
//! but no sooner than `scrub_round_ms` after it started (a small store is not re-read
//! on every tick).
//! A copy that fails its checksums is removed (as a failed read removes it) and the
//! name's primary is told through a `HoldingReport`: it re-reads the placement from the
//! holders, sees the copy missing and re-replicates it from a good one.

use std::collections::VecDeque;

use crate::sdfs::name::SdfsName;
use crate::sdfs::store::{StoreError, Version, VersionReader};
use crate::types::{Millis, NodeAddr};

use super::{Event, SdfsCore};

/// What opening one version costs against the per-sweep budget, so a store of many
/// tiny files is not listed and opened thousands of times per tick.
const OPEN_COST: u64 = 64 * 1024;

/// State of the scrub and of the disk-full report.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// Versions still to verify in this round.
    queue: VecDeque<(SdfsName, Version)>,
    /// The version being verified, chunk by chunk across sweeps.
    cur: Option<(SdfsName, Version, Box<VersionReader>)>,
    /// When the current round started.
    round_at: Option<Millis>,
    /// Set while the disk is full (logged once); writes refused meanwhile.
    full: Option<u64>,
}

impl SdfsCore {
    /// One sweep's share of the scrub: at most `scrub_bytes_per_sweep` verified.
    pub(super) fn scrub_step(&mut self) {
        let budget = self.cfg.scrub_bytes_per_sweep;
        let mut spent = 0u64;
        let mut listed = false;
        while spent < budget {
            let Some((name, version, mut reader)) = self.health.cur.take() else {
                let Some((name, version)) = self.health.queue.pop_front() else {
                    // One listing per sweep at most.
                    if listed || !self.scrub_list() {
                        return;
                    }
                    listed = true;
                    continue;
                };
                spent += OPEN_COST;
                match self.store.open_read(&name, version) {
                    Ok(r) => self.health.cur = Some((name, version, Box::new(r))),
                    Err(e) => self.scrub_failed(&name, version, &e),
                }
                continue;
            };
            match reader.next_chunk() {
                Ok(Some(data)) => {
                    spent += (data.len() as u64).max(1);
                    self.health.cur = Some((name, version, reader));
                }
                Ok(None) => {}
                Err(e) => self.scrub_failed(&name, version, &e),
            }
        }
    }

    /// Starts a round from a fresh listing; false if there is nothing to verify yet.
    fn scrub_list(&mut self) -> bool {
        let due = self
            .health
            .round_at
            .is_none_or(|at| self.now.saturating_sub(at) >= self.cfg.scrub_round_ms);
        if !due {
            return false;
        }
        self.health.round_at = Some(self.now);
        match self.store.holdings() {
            Ok(hs) => {
                self.health.queue = hs
                    .into_iter()
                    .flat_map(|h| {
                        let name = h.name;
                        h.versions.into_iter().map(move |v| (name.clone(), v))
                    })
                    .collect();
                !self.health.queue.is_empty()
            }
            Err(e) => {
                self.store_failed(&e);
                false
            }
        }
    }

    fn scrub_failed(&mut self, name: &SdfsName, version: Version, e: &StoreError) {
        // Deleted or pruned since the listing: nothing to verify.
        if matches!(
            e,
            StoreError::NotFound { .. } | StoreError::Tombstoned { .. }
        ) {
            return;
        }
        // Logs the mismatch and removes a corrupt copy; other errors are only logged.
        self.local_read_failed(name, version, e);
        if !matches!(e, StoreError::Corrupt { .. }) {
            return;
        }
        let primary = self.primary_of(name);
        self.log(Event::ScrubDamage {
            name: name.clone(),
            version,
            node: self.cfg.me.clone(),
            primary: primary.clone(),
        });
        self.report_lost_copy(name, primary);
    }

    /// Tells the name's primary that this node's copy is gone, so it re-replicates: a
    /// holding report, sent again until the primary acknowledges it.
    fn report_lost_copy(&mut self, name: &SdfsName, primary: Option<NodeAddr>) {
        if primary.is_none() {
            return;
        }
        self.reports.insert(name.clone(), None);
        self.pump_reports();
    }

    /// A local store call failed: a full disk is logged once per episode (every write
    /// of every chunk would fail the same way), a deleted name is no failure, anything
    /// else is logged as it comes.
    pub(super) fn store_failed(&mut self, e: &StoreError) {
        match e {
            StoreError::DiskFull { .. } => match &mut self.health.full {
                Some(refused) => *refused += 1,
                None => {
                    self.health.full = Some(1);
                    self.log(Event::DiskFull {
                        node: self.cfg.me.clone(),
                        what: e.to_string(),
                    });
                }
            },
            StoreError::Tombstoned { .. } | StoreError::NotFound { .. } => {}
            other => self.log(Event::StoreFailure {
                what: other.to_string(),
            }),
        }
    }

    /// A write committed: a full-disk episode, if any, is over.
    pub(super) fn store_wrote(&mut self) {
        if let Some(refused) = self.health.full.take() {
            self.log(Event::DiskWritable {
                node: self.cfg.me.clone(),
                refused,
            });
        }
    }
}
