//! Plausibility of membership news, shared by the membership core and the introducer:
//! the highest believable incarnation, and reports of refused news rate-limited per
//! sender, so that a flood of forged updates costs a log line a minute, not one each.

use std::collections::BTreeMap;

use crate::types::{Incarnation, Millis};

/// How often refused implausible updates from one sender are reported at most.
pub const IMPLAUSIBLE_LOG_INTERVAL: Millis = 60_000;

/// Senders tracked at most; a set that grows past it only costs a reset.
const MAX_TRACKED: usize = 1024;

/// The highest incarnation believed at `now`: the wall clock (`wall_origin + now`)
/// plus `ahead`. Incarnations are wall-clock ms at join, so anything above is forged
/// or corrupt.
pub fn incarnation_ceiling(wall_origin: u64, now: Millis, ahead: Millis) -> Incarnation {
    wall_origin.saturating_add(now).saturating_add(ahead)
}

/// Per sender: when a refusal was last reported and how many went unreported since.
#[derive(Debug)]
pub struct Reports<K> {
    last: BTreeMap<K, (Millis, u64)>,
}

impl<K: Ord> Default for Reports<K> {
    fn default() -> Self {
        Reports {
            last: BTreeMap::new(),
        }
    }
}

impl<K: Ord> Reports<K> {
    /// Counts one refusal from `key`. `Some(suppressed)` when it is to be reported now
    /// (the first, or the first after [`IMPLAUSIBLE_LOG_INTERVAL`]), with the number of
    /// refusals held back since the previous report.
    pub fn refused(&mut self, now: Millis, key: K) -> Option<u64> {
        if self.last.len() >= MAX_TRACKED {
            self.last.clear();
        }
        let slot = self.last.entry(key).or_insert((0, 0));
        if slot.0 == 0 || now.saturating_sub(slot.0) >= IMPLAUSIBLE_LOG_INTERVAL {
            let suppressed = slot.1;
            *slot = (now.max(1), 0);
            Some(suppressed)
        } else {
            slot.1 = slot.1.saturating_add(1);
            None
        }
    }
}
