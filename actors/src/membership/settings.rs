//! Settings and errors of the membership core: every knob of the failure detector and
//! its dissemination, validated once when the core is built.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::types::{Millis, NodeAddr};

/// Errors of the membership layer. When one is returned, no state changed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum MembershipError {
    /// A setting is out of range.
    #[error("invalid membership setting `{key}`: {reason}")]
    InvalidSetting {
        key: &'static str,
        reason: &'static str,
    },
    /// `join` needs an introducer address.
    #[error("no introducer is configured")]
    NoIntroducer,
    /// `join` while already joining or a member.
    #[error("already a member or joining")]
    AlreadyJoined,
    /// `leave` while not a member.
    #[error("not a member of the cluster")]
    NotMember,
    /// `forgive ADDR` for an address this node holds no tombstone for.
    #[error("no tombstone for {0} on this node")]
    NotBuried(NodeAddr),
}

/// How far ahead of this node's wall clock an incarnation may be before it is refused
/// as implausible: incarnations are wall-clock ms at join, so a day covers any clock
/// skew a working cluster has, while `u64::MAX` and its neighbours are refused.
pub const MAX_INCARNATION_AHEAD: Millis = 86_400_000;

/// Settings of the membership core (from the config; times in ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Every configured node in ring order; fixes each address's ring position.
    /// Members outside it are placed after it, ordered by address.
    pub ring: Vec<NodeAddr>,
    /// Number of peers each node monitors.
    pub m: usize,
    /// Explicit topology (node -> monitored nodes); overrides the computed ring sets
    /// for the nodes it names. Dead nodes are skipped.
    pub topology: Option<BTreeMap<NodeAddr, Vec<NodeAddr>>>,
    /// Probe period; also paces the rate limits of repair messages.
    pub ping_duration: Millis,
    /// How long a suspect has to refute before it is declared failed.
    pub cleanup_time: Millis,
    /// With `false`, an unanswered probe removes the peer at once (classic detector,
    /// kept to measure what suspicion buys).
    pub suspicion: bool,
    /// Where joins go; also told about every broadcast update and announced to.
    pub introducer: Option<NodeAddr>,
    /// Lambda: each update is piggybacked about `retransmit_mult * log2(n + 1)` times.
    pub retransmit_mult: u32,
    /// Updates piggybacked on one ping or ack at most.
    pub max_piggyback: usize,
    /// How often a member tells the introducer it is alive (cheap: one small message).
    pub announce_interval: Millis,
    /// How often a member sends one buried address its tombstone (partition healing).
    pub tombstone_probe_interval: Millis,
    /// How long a join waits for the introducer.
    pub join_timeout: Millis,
    /// Delay before a rejoin retries an unanswered introducer.
    pub join_retry: Millis,
    /// Wall-clock ms (Unix epoch) at which the core's `now` read 0: with `now` it gives
    /// the wall clock that bounds plausible incarnations. 0 in simulations, whose
    /// incarnations are small.
    pub wall_origin: u64,
    /// An incarnation (or `joined`) above wall clock + this is refused and logged.
    pub max_incarnation_ahead: Millis,
    /// Shortest wait between two rejoins; it doubles while burials keep coming, up to
    /// `rejoin_backoff_max`, so a node that keeps being declared failed cannot spin.
    pub rejoin_backoff_min: Millis,
    /// Longest wait between two rejoins; a quiet spell this long resets the backoff.
    pub rejoin_backoff_max: Millis,
}

impl Settings {
    /// Settings with the detector's timings and sensible defaults for the rest.
    pub fn new(
        ring: Vec<NodeAddr>,
        m: usize,
        ping_duration: Millis,
        cleanup_time: Millis,
        introducer: Option<NodeAddr>,
    ) -> Self {
        Settings {
            ring,
            m,
            topology: None,
            ping_duration,
            cleanup_time,
            suspicion: true,
            introducer,
            retransmit_mult: 3,
            max_piggyback: 6,
            announce_interval: ping_duration.saturating_mul(4),
            tombstone_probe_interval: ping_duration.saturating_mul(2),
            join_timeout: ping_duration.saturating_mul(2).max(1000),
            join_retry: ping_duration.saturating_mul(2),
            wall_origin: 0,
            max_incarnation_ahead: MAX_INCARNATION_AHEAD,
            rejoin_backoff_min: ping_duration,
            rejoin_backoff_max: ping_duration.saturating_mul(32),
        }
    }

    /// Checks every value once; names the offending key.
    pub fn validate(&self) -> Result<(), MembershipError> {
        let bad = |key, reason| Err(MembershipError::InvalidSetting { key, reason });
        if self.m == 0 {
            return bad("m", "must be at least 1");
        }
        if self.ping_duration == 0 {
            return bad("ping_duration", "must be positive");
        }
        if self.suspicion && self.cleanup_time == 0 {
            return bad("cleanup_time", "must be positive");
        }
        if self.retransmit_mult == 0 {
            return bad("retransmit_mult", "must be at least 1");
        }
        if self.announce_interval == 0 {
            return bad("announce_interval", "must be positive");
        }
        if self.tombstone_probe_interval == 0 {
            return bad("tombstone_probe_interval", "must be positive");
        }
        if self.join_timeout == 0 {
            return bad("join_timeout", "must be positive");
        }
        if self.join_retry == 0 {
            return bad("join_retry", "must be positive");
        }
        if self.rejoin_backoff_min == 0 || self.rejoin_backoff_max < self.rejoin_backoff_min {
            return bad(
                "rejoin_backoff_min",
                "must be positive and at most rejoin_backoff_max",
            );
        }
        Ok(())
    }
}
