//! Defences against connection floods: the table of accepted connections still in their
//! handshake (capped in total and per source address; when full, a newcomer evicts the
//! oldest connection that has not even sent its hello, so a flood of idle connections
//! cannot lock out a client that answers at once), and a warning limiter that logs the
//! first few warnings of each interval and then one summary line with counts, so that a
//! flood cannot fill the disk with log lines.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::warn;

use super::conn::lock;

/// Length of one warning interval.
pub(super) const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Warnings logged one by one per interval; the rest are only counted.
const WARN_BURST: u32 = 5;

/// One connection in its handshake.
struct PendingConn {
    ip: IpAddr,
    since: Instant,
    /// From a configured node's address: evicted only when nothing else can be.
    priority: bool,
    /// It sent a hello that named a known key: evicted only after those that did not.
    hello_seen: bool,
    task: Option<AbortHandle>,
}

/// What [`HandshakeTable::admit`] decided about a new connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// Room for it.
    Admitted,
    /// Admitted in place of this connection, which must be closed.
    Evicted(u64),
    /// No room and nothing it may push out: close the new one.
    Refused,
}

/// The connections still in their handshake.
pub(super) struct HandshakeTable {
    max_total: usize,
    max_per_ip: usize,
    conns: HashMap<u64, PendingConn>,
    per_ip: HashMap<IpAddr, usize>,
}

impl HandshakeTable {
    pub(super) fn new(max_total: usize, max_per_ip: usize) -> Self {
        HandshakeTable {
            max_total,
            max_per_ip,
            conns: HashMap::new(),
            per_ip: HashMap::new(),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.conns.len()
    }

    /// The connection to push out among those `eligible`: one that has not sent its
    /// hello before one that has, then the oldest (connections accepted in the same
    /// instant: the first accepted, so the choice never depends on hash order).
    fn victim(&self, eligible: impl Fn(&PendingConn) -> bool) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(_, c)| eligible(c))
            .min_by_key(|(id, c)| (c.hello_seen, c.since, **id))
            .map(|(id, _)| *id)
    }

    /// Registers connection `id` from `ip`, making room if needed.
    pub(super) fn admit(&mut self, id: u64, ip: IpAddr, priority: bool, now: Instant) -> Admission {
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        let decision = if from_ip >= self.max_per_ip {
            // A source over its own share only ever displaces itself.
            self.victim(|c| c.ip == ip)
                .map_or(Admission::Refused, Admission::Evicted)
        } else if self.conns.len() >= self.max_total {
            self.victim(|c| !c.priority)
                .or_else(|| priority.then(|| self.victim(|_| true)).flatten())
                .map_or(Admission::Refused, Admission::Evicted)
        } else {
            Admission::Admitted
        };
        if decision == Admission::Refused {
            return decision;
        }
        if let Admission::Evicted(old) = decision {
            if let Some(task) = self.remove(old) {
                task.abort();
            }
        }
        *self.per_ip.entry(ip).or_insert(0) += 1;
        self.conns.insert(
            id,
            PendingConn {
                ip,
                since: now,
                priority,
                hello_seen: false,
                task: None,
            },
        );
        decision
    }

    /// Records the task that serves `id` (so that an eviction can stop it).
    pub(super) fn set_task(&mut self, id: u64, task: AbortHandle) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.task = Some(task);
        }
    }

    /// `id` sent a hello this node could answer.
    pub(super) fn hello_seen(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.hello_seen = true;
        }
    }

    /// Forgets `id` (its handshake ended, however it ended); its task, if any.
    pub(super) fn remove(&mut self, id: u64) -> Option<AbortHandle> {
        let c = self.conns.remove(&id)?;
        if let Some(n) = self.per_ip.get_mut(&c.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&c.ip);
            }
        }
        c.task
    }
}

/// Removes a connection from the handshake table when its handshake ends or its task
/// stops, however it stops.
pub(super) struct TableEntry<'a> {
    pub(super) table: &'a Mutex<HandshakeTable>,
    pub(super) id: u64,
}

impl Drop for TableEntry<'_> {
    fn drop(&mut self) {
        lock(self.table).remove(self.id);
    }
}

#[derive(Default)]
struct Window {
    shown: u32,
    suppressed: BTreeMap<&'static str, u64>,
}

/// Logs at most [`WARN_BURST`] warnings per [`WARN_INTERVAL`], and then one summary line
/// per interval with the count of each kind left out.
pub(super) struct WarnLimiter {
    state: Mutex<(Instant, Window)>,
}

impl WarnLimiter {
    pub(super) fn new() -> Self {
        WarnLimiter {
            state: Mutex::new((Instant::now(), Window::default())),
        }
    }

    /// A warning of `kind` about `peer`.
    pub(super) fn warn(
        &self,
        kind: &'static str,
        peer: &dyn fmt::Display,
        detail: &dyn fmt::Display,
    ) {
        let show = {
            let mut st = lock(&self.state);
            Self::roll(&mut st);
            let (_, w) = &mut *st;
            if w.shown < WARN_BURST {
                w.shown += 1;
                true
            } else {
                *w.suppressed.entry(kind).or_insert(0) += 1;
                false
            }
        };
        if show {
            warn!(%peer, "{kind}: {detail}");
        }
    }

    /// Writes the summary of a finished interval, if anything was left out (also called
    /// by a timer, so that the last interval of a flood is reported too).
    pub(super) fn flush(&self) {
        Self::roll(&mut lock(&self.state));
    }

    fn roll(st: &mut (Instant, Window)) {
        let now = Instant::now();
        if now.duration_since(st.0) < WARN_INTERVAL {
            return;
        }
        let w = std::mem::take(&mut st.1);
        st.0 = now;
        if w.suppressed.is_empty() {
            return;
        }
        let total: u64 = w.suppressed.values().sum();
        let counts: Vec<String> = w
            .suppressed
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        warn!(
            suppressed = total,
            "connection warnings summarised over the last interval ({})",
            counts.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_full_source_only_displaces_its_own_oldest_silent_connection() {
        let mut t = HandshakeTable::new(10, 2);
        let t0 = Instant::now();
        assert_eq!(t.admit(1, ip(1), false, t0), Admission::Admitted);
        assert_eq!(
            t.admit(2, ip(1), false, t0 + Duration::from_millis(1)),
            Admission::Admitted
        );
        assert_eq!(t.admit(3, ip(2), false, t0), Admission::Admitted);
        // 1 sent its hello: the newcomer from the same source pushes out 2 instead.
        t.hello_seen(1);
        assert_eq!(
            t.admit(4, ip(1), false, t0 + Duration::from_millis(2)),
            Admission::Evicted(2)
        );
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn when_full_configured_nodes_are_evicted_last() {
        let mut t = HandshakeTable::new(2, 10);
        let t0 = Instant::now();
        assert_eq!(t.admit(1, ip(1), true, t0), Admission::Admitted);
        assert_eq!(t.admit(2, ip(2), false, t0), Admission::Admitted);
        assert_eq!(t.admit(3, ip(3), false, t0), Admission::Evicted(2));
        assert_eq!(t.admit(4, ip(4), true, t0), Admission::Evicted(3));
        // Only priority connections left: a stranger is refused, a node evicts.
        assert_eq!(t.admit(5, ip(5), false, t0), Admission::Refused);
        assert_eq!(t.admit(6, ip(6), true, t0), Admission::Evicted(1));
        t.remove(4);
        t.remove(6);
        assert_eq!(t.len(), 0);
        assert!(t.per_ip.is_empty());
    }
}
