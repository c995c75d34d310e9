//! Events of the SDFS core: things worth a log line, never a decision.

use std::fmt;

use crate::sdfs::name::SdfsName;
use crate::sdfs::store::Version;
use crate::types::{Millis, NodeAddr};

/// Things worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    ChecksumMismatch {
        name: SdfsName,
        version: Version,
        chunk: u64,
        node: NodeAddr,
    },
    ReadFallback {
        name: SdfsName,
        version: Version,
        from: NodeAddr,
        reason: String,
    },
    ReplicaLostMidPut {
        name: SdfsName,
        version: Version,
        node: NodeAddr,
    },
    WriteAborted {
        name: SdfsName,
        version: Version,
        from: NodeAddr,
        reason: String,
    },
    /// This primary's cached metadata of a name was older than its own copy (another
    /// node acted as primary meanwhile): learnt again before answering.
    StaleMeta {
        name: SdfsName,
        cached: Version,
        local: Version,
    },
    /// New incoming transfers refused over the caps since the last sweep.
    IncomingRefused {
        from: NodeAddr,
        refused: u64,
        open: usize,
    },
    VersionDropped {
        name: SdfsName,
        version: Version,
    },
    Repaired {
        name: SdfsName,
        version: Version,
        node: NodeAddr,
    },
    ReReplicated {
        name: SdfsName,
        took_ms: Millis,
        copies: usize,
    },
    ReReplicationIdle {
        took_ms: Millis,
        copies: usize,
        bytes: u64,
    },
    /// A re-replication round still running on this primary.
    ReReplicationProgress {
        /// Names waiting for a check, being checked, or with copies still to make.
        pending: usize,
        copies: usize,
        bytes: u64,
        took_ms: Millis,
    },
    /// Nothing was handled for `gap_ms` (the process was paused or starved): cached
    /// metadata was dropped.
    Paused {
        gap_ms: Millis,
    },
    /// A name's repair failed too often in a row: it is checked again later.
    RepairDeferred {
        name: SdfsName,
        checks: u32,
    },
    /// The primary of a name did not answer a read in time; the read asked the holders.
    ReadFromHolders {
        name: SdfsName,
        primary: NodeAddr,
    },
    DataLost {
        name: SdfsName,
        version: Version,
    },
    StoreFailure {
        what: String,
    },
    /// The local disk refused a write for lack of space; logged once until a write
    /// succeeds again.
    DiskFull {
        node: NodeAddr,
        what: String,
    },
    /// A write succeeded after the disk was full.
    DiskWritable {
        node: NodeAddr,
        refused: u64,
    },
    /// The background scrub found a damaged copy; it was removed and `primary` told.
    ScrubDamage {
        name: SdfsName,
        version: Version,
        node: NodeAddr,
        primary: Option<NodeAddr>,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::ChecksumMismatch {
                name,
                version,
                chunk,
                node,
            } => {
                write!(
                    f,
                    "checksum mismatch in {name} v{version} chunk {chunk} on {node}"
                )
            }
            Event::ReadFallback {
                name,
                version,
                from,
                reason,
            } => {
                write!(f, "read of {name} v{version} from {from} failed ({reason}); trying another replica")
            }
            Event::ReplicaLostMidPut {
                name,
                version,
                node,
            } => {
                write!(
                    f,
                    "replica {node} lost during put of {name} v{version}; retrying"
                )
            }
            Event::StaleMeta {
                name,
                cached,
                local,
            } => write!(
                f,
                "cached metadata of {name} (up to v{cached}) is older than this node's copy \
                 (v{local}): learning it again"
            ),
            Event::IncomingRefused {
                from,
                refused,
                open,
            } => write!(
                f,
                "refused {refused} new incoming transfers from {from}: too many at once \
                 ({open} open on this node)"
            ),
            Event::WriteAborted {
                name,
                version,
                from,
                reason,
            } => {
                write!(
                    f,
                    "incoming write of {name} v{version} from {from} aborted: {reason}"
                )
            }
            Event::VersionDropped { name, version } => {
                write!(f, "dropped unacknowledged {name} v{version}")
            }
            Event::Repaired {
                name,
                version,
                node,
            } => {
                write!(f, "repaired {name} v{version} on {node}")
            }
            Event::ReReplicated {
                name,
                took_ms,
                copies,
            } => {
                write!(
                    f,
                    "re-replication of {name} took {took_ms} ms ({copies} copies made)"
                )
            }
            Event::ReReplicationIdle {
                took_ms,
                copies,
                bytes,
            } => {
                write!(
                    f,
                    "re-replication after membership change finished in {took_ms} ms \
                     ({copies} copies, {bytes} bytes)"
                )
            }
            Event::ReReplicationProgress {
                pending,
                copies,
                bytes,
                took_ms,
            } => {
                write!(
                    f,
                    "re-replication in progress: {pending} names pending, {copies} copies \
                     made, {bytes} bytes, {took_ms} ms"
                )
            }
            Event::Paused { gap_ms } => {
                write!(
                    f,
                    "nothing handled for {gap_ms} ms (paused?): cached metadata dropped, \
                     to be learnt again from the holders"
                )
            }
            Event::RepairDeferred { name, checks } => {
                write!(
                    f,
                    "repair of {name} failed {checks} times; checking it again later"
                )
            }
            Event::ReadFromHolders { name, primary } => {
                write!(
                    f,
                    "primary {primary} of {name} did not answer; asking its holders"
                )
            }
            Event::DataLost { name, version } => {
                write!(f, "no live copy of {name} v{version} is left")
            }
            Event::StoreFailure { what } => write!(f, "local store failure: {what}"),
            Event::DiskFull { node, what } => write!(
                f,
                "disk full on {node}: writes to this node fail and go to other replicas \
                 until space is freed ({what})"
            ),
            Event::DiskWritable { node, refused } => write!(
                f,
                "disk of {node} takes writes again ({refused} writes refused while full)"
            ),
            Event::ScrubDamage {
                name,
                version,
                node,
                primary,
            } => match primary {
                Some(p) => write!(
                    f,
                    "scrub: {name} v{version} on {node} is damaged; copy removed, \
                     primary {p} re-replicates it"
                ),
                None => write!(
                    f,
                    "scrub: {name} v{version} on {node} is damaged; copy removed"
                ),
            },
        }
    }
}
