//! The SDFS wire protocol between nodes. Metadata travels on the control lane; file
//! bytes (and the end-of-stream markers that must stay behind them) on the bulk lane, so
//! a large transfer never queues in front of pings or grants.

use serde::{Deserialize, Serialize};

use super::name::SdfsName;
use super::store::Version;
use crate::types::NodeAddr;

/// A client operation's id, chosen by the node that started it (unique per node).
pub type OpId = u64;
/// A transfer's id, unique per originating node; peers key it by (sender, id).
pub type XferId = u64;
/// A background job's id (delete fan-out, re-replication), unique per node.
pub type JobId = u64;

/// Which transport lane a message belongs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Control,
    Bulk,
}

/// One version of a name and the live nodes known to hold it.
/// How a replication order ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyOutcome {
    Copied {
        bytes: u64,
    },
    /// The target refused the write (its store failed: a full or failing disk).
    Refused,
    /// Anything else (the source copy, the transfer).
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: Version,
    pub holders: Vec<NodeAddr>,
}

/// Why a peer refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteError {
    #[error("not the primary for this name")]
    NotPrimary,
    #[error("the name was deleted up to v{tombstone}")]
    Deleted { tombstone: Version },
    #[error("version already taken by another writer")]
    Conflict,
    #[error("no such version on that node")]
    NotFound,
    #[error("stored copy is corrupt at chunk {chunk}")]
    Corrupt { chunk: u64 },
    #[error("transfer out of order or damaged in transit")]
    BadTransfer,
    #[error("storage failure: {0}")]
    Store(String),
    #[error("no file with that name")]
    NoSuchFile,
    /// The replica runs as many incoming transfers as it allows (from this sender or in
    /// all): try again later.
    #[error("too many incoming transfers on that node")]
    Busy,
}

/// SDFS protocol messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    // ---- client <-> primary (control) ----
    /// Ask the primary for the next version of `name`.
    PutBegin {
        op: OpId,
        name: SdfsName,
    },
    PutGrant {
        op: OpId,
        name: SdfsName,
        version: Version,
    },
    /// Tell a new primary about a version granted by its failed predecessor, so it is
    /// never granted twice.
    PutClaim {
        op: OpId,
        name: SdfsName,
        version: Version,
    },
    /// The version is durable on every listed holder; make it visible.
    PutCommitted {
        op: OpId,
        name: SdfsName,
        version: Version,
        holders: Vec<NodeAddr>,
    },
    PutAck {
        op: OpId,
        name: SdfsName,
        version: Version,
    },
    /// The writer gave up on a granted version.
    PutAbort {
        name: SdfsName,
        version: Version,
    },
    /// Ask for the committed versions (newest first) and their holders.
    MetaGet {
        op: OpId,
        name: SdfsName,
    },
    MetaInfo {
        op: OpId,
        name: SdfsName,
        versions: Vec<VersionInfo>,
    },
    Delete {
        op: OpId,
        name: SdfsName,
    },
    Deleted {
        op: OpId,
        name: SdfsName,
        tombstone: Version,
    },
    Refused {
        op: OpId,
        error: RemoteError,
    },
    /// One page of a node's live names under `prefix`: after `after`, at most `limit`.
    ListPrefix {
        op: OpId,
        prefix: String,
        after: Option<String>,
        limit: u32,
    },
    /// `more`: the node holds names past the last one sent.
    ListReply {
        op: OpId,
        names: Vec<SdfsName>,
        more: bool,
    },

    // ---- primary <-> replicas (control) ----
    /// A (new) primary learning the state of a name from its replicas.
    MetaQuery {
        qid: JobId,
        name: SdfsName,
    },
    MetaReply {
        qid: JobId,
        name: SdfsName,
        versions: Vec<Version>,
        tombstone: Version,
        /// Versions being written here right now (granted by some primary).
        inflight: Vec<Version>,
    },
    /// Delete every version `<= upto` and keep the tombstone.
    DeleteUpTo {
        job: JobId,
        name: SdfsName,
        upto: Version,
    },
    DeleteDone {
        job: JobId,
    },
    /// Discard a version that was never acknowledged (its writer failed).
    DropVersion {
        name: SdfsName,
        version: Version,
    },
    /// Sent to the primary of names whose placement changed: the sender holds copies of
    /// them. The sender reports a name again until the primary acknowledges it
    /// (`HoldingAck`), then the primary learns the versions from the placement.
    HoldingReport {
        names: Vec<SdfsName>,
    },
    /// The names of a `HoldingReport` this node took charge of as their primary; the
    /// others go again, to whoever is primary then.
    HoldingAck {
        names: Vec<SdfsName>,
    },
    /// Push a copy of `version` to `to` (re-replication or repair of a bad copy). Sent
    /// again while no answer comes: the holder answers a repeat by the job id.
    Replicate {
        job: JobId,
        name: SdfsName,
        version: Version,
        to: NodeAddr,
    },
    /// The copy of a `Replicate` is still being made.
    ReplicateBusy {
        job: JobId,
    },
    ReplicateDone {
        job: JobId,
        name: SdfsName,
        version: Version,
        to: NodeAddr,
        outcome: CopyOutcome,
    },

    // ---- write stream: sender -> replica chunks (bulk), replica -> sender acks ----
    WriteChunk {
        xfer: XferId,
        name: SdfsName,
        version: Version,
        idx: u64,
        crc: u32,
        #[serde(with = "bytes")]
        data: Vec<u8>,
    },
    WriteEnd {
        xfer: XferId,
        name: SdfsName,
        version: Version,
        chunks: u64,
        bytes: u64,
    },
    WriteAck {
        xfer: XferId,
        idx: u64,
    },
    /// The replica committed the version durably.
    WriteDone {
        xfer: XferId,
    },
    WriteFailed {
        xfer: XferId,
        error: RemoteError,
    },
    WriteAbort {
        xfer: XferId,
    },
    /// Staged transfer (scp): the put's bytes are in the receiver's staging file for
    /// (sender, `xfer`); commit them as `version` if they match `bytes` and `crc`
    /// (CRC-32 of the whole file). Answered with `WriteDone` or `WriteFailed`.
    WriteStaged {
        xfer: XferId,
        name: SdfsName,
        version: Version,
        bytes: u64,
        crc: u32,
    },

    // ---- read stream: reader asks, holder streams chunks (bulk) ----
    ReadReq {
        xfer: XferId,
        name: SdfsName,
        version: Version,
        from_chunk: u64,
    },
    ReadChunk {
        xfer: XferId,
        idx: u64,
        crc: u32,
        #[serde(with = "bytes")]
        data: Vec<u8>,
    },
    ReadEnd {
        xfer: XferId,
        chunks: u64,
    },
    ReadAck {
        xfer: XferId,
        idx: u64,
    },
    ReadFailed {
        xfer: XferId,
        error: RemoteError,
    },
    ReadCancel {
        xfer: XferId,
    },
}

impl Msg {
    /// The lane this message must travel on. Ends of streams ride the bulk lane so they
    /// cannot overtake the chunks they close.
    pub fn lane(&self) -> Lane {
        match self {
            Msg::WriteChunk { .. }
            | Msg::WriteEnd { .. }
            | Msg::ReadChunk { .. }
            | Msg::ReadEnd { .. } => Lane::Bulk,
            _ => Lane::Control,
        }
    }
}

/// MessagePack `bin` encoding for chunk payloads (the default would be an array of
/// integers, up to twice the size).
pub(crate) mod bytes {
    use std::fmt;

    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    use crate::sdfs::store::MAX_CHUNK;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "at most {MAX_CHUNK} bytes")
        }
        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            if v.len() > MAX_CHUNK {
                return Err(E::invalid_length(v.len(), &self));
            }
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            if v.len() > MAX_CHUNK {
                return Err(E::invalid_length(v.len(), &self));
            }
            Ok(v)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // Never trust a size hint from the wire for the allocation.
            let mut out = Vec::new();
            while let Some(b) = seq.next_element::<u8>()? {
                if out.len() >= MAX_CHUNK {
                    return Err(A::Error::invalid_length(out.len() + 1, &self));
                }
                out.push(b);
            }
            Ok(out)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_roundtrip_is_compact() {
        let m = Msg::WriteChunk {
            xfer: 7,
            name: SdfsName::parse("a/b").unwrap(),
            version: 3,
            idx: 0,
            crc: 1,
            data: vec![0xff; 1000],
        };
        let enc = rmp_serde::to_vec(&m).unwrap();
        assert!(enc.len() < 1100, "{}", enc.len());
        assert_eq!(rmp_serde::from_slice::<Msg>(&enc).unwrap(), m);
        assert_eq!(m.lane(), Lane::Bulk);
        assert_eq!(Msg::WriteAck { xfer: 1, idx: 0 }.lane(), Lane::Control);
    }

    #[test]
    fn hostile_name_fails_to_decode() {
        #[derive(Serialize)]
        enum Fake {
            #[allow(dead_code)]
            PutBegin { op: u64, name: String },
        }
        let enc = rmp_serde::to_vec(&Fake::PutBegin {
            op: 1,
            name: "../../etc/passwd".into(),
        })
        .unwrap();
        assert!(rmp_serde::from_slice::<Msg>(&enc).is_err());
    }
}
