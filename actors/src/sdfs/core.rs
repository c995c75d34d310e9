//! The SDFS protocol core: a state machine with no sockets and no clock. The shell feeds
//! it [`Input`]s with the current time and executes the [`Effect`]s it returns: send a
//! message (a message to this node itself must be delivered back as a peer message; the
//! shell may short-circuit it), read a chunk of a put's local source file, hand a chunk of
//! a fetched file to the local sink, reply to a client, set a timer, log an event.
//!
//! The core calls the [`LocalStore`] directly. Those calls block (fsync), so the shell
//! runs the core on a thread of its own, never on the thread that answers pings. Every
//! step is bounded by one chunk, so a call never does more than `window` chunks of I/O.
//!
//! Roles per name (see docs/ARCHITECTURE-sdfs.md): the first node of the name's placement
//! is its *primary*; it sequences versions, records commits and drives re-replication.
//! Every replica keeps the version files themselves, so a new primary rebuilds the
//! metadata by asking the placement nodes (`MetaQuery`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::io::Read;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::msg::{JobId, Lane, Msg, OpId, RemoteError, VersionInfo, XferId};
use super::name::SdfsName;
use super::ring::Ring;
use super::store::{
    Holding, LocalStore, StoreError, Version, VersionReader, VersionWriter, MAX_CHUNK,
};
use crate::types::{Millis, NodeAddr};

/// Settings of one node's SDFS core.
#[derive(Debug, Clone)]
pub struct SdfsConfig {
    /// This node's address, as the membership layer names it.
    pub me: NodeAddr,
    /// Copies of every version (m + 1).
    pub replicas: usize,
    /// Bytes per chunk (at most [`MAX_CHUNK`]).
    pub chunk_size: usize,
    /// Chunks in flight per stream before the sender waits for acks.
    pub window: usize,
    /// Versions kept per name (the store prunes older ones).
    pub keep_versions: usize,
    /// A transfer with no progress for this long is abandoned.
    pub idle_timeout_ms: Millis,
    /// A request to a primary with no answer for this long is sent again.
    pub request_timeout_ms: Millis,
    /// Wait after a refusal (e.g. views of the membership disagree) before retrying.
    pub retry_backoff_ms: Millis,
    /// Period of the housekeeping timer.
    pub sweep_ms: Millis,
    /// Attempts per client operation before it fails.
    pub max_attempts: u32,
    /// Re-replication transfers a primary runs at once.
    pub repair_parallelism: usize,
    /// High bits of this run's ids, so ids of a restarted node do not collide with
    /// the ones peers may still remember (the shell passes something random).
    pub id_seed: u32,
    /// Puts move their data by staging (scp): the shell copies the source into each
    /// replica's staging directory ([`Effect::Stage`]) and the replica commits it from
    /// there; see the staged-transfer section at the end of this file.
    pub staged: bool,
}

impl SdfsConfig {
    pub fn new(me: NodeAddr) -> Self {
        SdfsConfig {
            me,
            replicas: 4,
            chunk_size: MAX_CHUNK,
            window: 4,
            keep_versions: 5,
            idle_timeout_ms: 30_000,
            request_timeout_ms: 5_000,
            retry_backoff_ms: 500,
            sweep_ms: 1_000,
            max_attempts: 5,
            repair_parallelism: 4,
            id_seed: 0,
            staged: false,
        }
    }
}

/// A client command (console or `dml ctl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Store the shell's source for this op as a new version; the core pulls it with
    /// [`Effect::ReadSource`].
    Put {
        name: SdfsName,
    },
    /// Fetch the latest version into the op's sink.
    Get {
        name: SdfsName,
    },
    /// Fetch the newest `k` versions, newest first, each framed by `Begin`/`End`.
    GetVersions {
        name: SdfsName,
        k: usize,
    },
    Delete {
        name: SdfsName,
    },
    Ls {
        name: SdfsName,
    },
    LsPrefix {
        prefix: String,
    },
    /// What this node holds.
    Store,
}

/// Timers the core asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Housekeeping: retries, idle transfers, backoffs.
    Sweep,
}

/// Everything that can happen to the core.
#[derive(Debug, Clone)]
pub enum Input {
    Command {
        op: OpId,
        cmd: Command,
    },
    Peer {
        from: NodeAddr,
        msg: Msg,
    },
    /// The full list of live members (this node included), after every change.
    Members {
        live: Vec<NodeAddr>,
    },
    Timer(Timer),
    /// Bytes of a put's source at `offset`; empty means end of file.
    Source {
        op: OpId,
        offset: u64,
        data: Vec<u8>,
    },
    SourceFailed {
        op: OpId,
        error: String,
    },
    /// Answer to [`Effect::Stage`]: the source's byte count and CRC-32 as sent, or why
    /// the copy failed.
    Staged {
        xfer: XferId,
        to: NodeAddr,
        result: Result<(u64, u32), String>,
    },
}

/// Pieces of a fetched file, in order, for the op's sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Begin { version: Version },
    Chunk(Vec<u8>),
    End { version: Version, bytes: u64 },
}

/// Successful results of client commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Put {
        name: SdfsName,
        version: Version,
    },
    Get {
        name: SdfsName,
        version: Version,
        bytes: u64,
    },
    GetVersions {
        name: SdfsName,
        versions: Vec<Version>,
    },
    Deleted {
        name: SdfsName,
        tombstone: Version,
    },
    Ls {
        name: SdfsName,
        versions: Vec<VersionInfo>,
    },
    Names(Vec<SdfsName>),
    Store(Vec<Holding>),
}

/// Why a client command failed. Nothing partial becomes visible on failure; a failed
/// get may have delivered part of a file, which the shell discards.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdfsError {
    #[error("no live members")]
    NoMembers,
    #[error("{0}: no such file")]
    NoSuchFile(SdfsName),
    #[error("{name}: no replica could serve v{version}")]
    Unavailable { name: SdfsName, version: Version },
    #[error("{name}: gave up after {attempts} attempts: {last}")]
    GaveUp {
        name: String,
        attempts: u32,
        last: String,
    },
    #[error("refused: {0}")]
    Remote(RemoteError),
    #[error("local store: {0}")]
    Store(String),
    #[error("reading the local source: {0}")]
    Source(String),
    #[error("operation id {0} is already in use")]
    DuplicateOp(OpId),
    #[error("transfer: {0}")]
    Transfer(String),
}

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
    },
    DataLost {
        name: SdfsName,
        version: Version,
    },
    StoreFailure {
        what: String,
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
            Event::ReReplicationIdle { took_ms } => {
                write!(
                    f,
                    "re-replication after membership change finished in {took_ms} ms"
                )
            }
            Event::DataLost { name, version } => {
                write!(f, "no live copy of {name} v{version} is left")
            }
            Event::StoreFailure { what } => write!(f, "local store failure: {what}"),
        }
    }
}

/// What the shell must do.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Send on `msg.lane()`.
    Send {
        to: NodeAddr,
        msg: Msg,
    },
    /// Read up to `len` bytes of op's source at `offset`, answer with [`Input::Source`].
    ReadSource {
        op: OpId,
        offset: u64,
        len: usize,
    },
    Deliver {
        op: OpId,
        item: Delivery,
    },
    Reply {
        op: OpId,
        result: Result<Reply, SdfsError>,
    },
    SetTimer {
        after: Millis,
        timer: Timer,
    },
    Log(Event),
    /// Staged transfer only: copy op's source into `to`'s staging file for
    /// (this node, `xfer`) ([`staging_file_name`]) and answer [`Input::Staged`].
    Stage {
        op: OpId,
        xfer: XferId,
        to: NodeAddr,
    },
}

impl Effect {
    /// Lane of a `Send`, for shells that route by lane.
    pub fn lane(&self) -> Option<Lane> {
        match self {
            Effect::Send { msg, .. } => Some(msg.lane()),
            _ => None,
        }
    }
}

// ------------------------------------------------------------------------------------
// State

/// A request to a primary that a client op is waiting on.
#[derive(Debug, Clone)]
struct Ctl {
    primary: NodeAddr,
    sent_at: Millis,
    /// Set after a refusal: resend once `now >= until`.
    backoff_until: Option<Millis>,
}

#[derive(Debug)]
enum PutStage {
    Granting,
    Uploading { xfer: XferId },
    Committing,
}

#[derive(Debug)]
struct PutOp {
    name: SdfsName,
    version: Option<Version>,
    stage: PutStage,
    ctl: Option<Ctl>,
    attempts: u32,
    /// Nodes that failed a write for this put; skipped when placing the retry.
    excluded: BTreeSet<NodeAddr>,
    /// Where the upload committed, for the commit request (and its resends).
    holders: Vec<NodeAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadKind {
    Get,
    Versions(usize),
    Ls,
}

#[derive(Debug)]
struct Fetch {
    info: VersionInfo,
    xfer: XferId,
    holder: NodeAddr,
    next_idx: u64,
    bytes: u64,
    tried: BTreeSet<NodeAddr>,
    /// Holders that reported a corrupt copy; repaired from the holder that succeeds.
    bad: BTreeSet<NodeAddr>,
    last: Millis,
}

#[derive(Debug)]
struct ReadOp {
    name: SdfsName,
    kind: ReadKind,
    ctl: Option<Ctl>,
    attempts: u32,
    queue: VecDeque<VersionInfo>,
    cur: Option<Fetch>,
    done: Vec<Version>,
    last_bytes: u64,
}

#[derive(Debug)]
struct DeleteOp {
    name: SdfsName,
    ctl: Option<Ctl>,
    attempts: u32,
}

#[derive(Debug)]
struct ListOp {
    waiting: BTreeSet<NodeAddr>,
    names: BTreeSet<SdfsName>,
}

#[derive(Debug)]
enum ClientOp {
    Put(PutOp),
    Read(ReadOp),
    Delete(DeleteOp),
    List(ListOp),
}

/// What the primary knows about a name.
#[derive(Debug, Clone, Default)]
struct Meta {
    versions: BTreeMap<Version, BTreeSet<NodeAddr>>,
    tombstone: Version,
    /// Highest version seen anywhere (committed, in flight, granted, deleted).
    seen: Version,
}

/// Requests a primary serves once it knows the name's metadata.
#[derive(Debug, Clone)]
enum PrimaryReq {
    Grant {
        from: NodeAddr,
        op: OpId,
    },
    Claim {
        from: NodeAddr,
        op: OpId,
        version: Version,
    },
    Commit {
        from: NodeAddr,
        op: OpId,
        version: Version,
        holders: Vec<NodeAddr>,
    },
    Abort {
        version: Version,
    },
    MetaGet {
        from: NodeAddr,
        op: OpId,
    },
    Delete {
        from: NodeAddr,
        op: OpId,
    },
    RepairCheck,
}

#[derive(Debug)]
struct Query {
    name: SdfsName,
    waiting: BTreeSet<NodeAddr>,
    acc: Meta,
    node_tombstones: BTreeMap<NodeAddr, Version>,
}

#[derive(Debug)]
struct DeleteJob {
    from: NodeAddr,
    op: OpId,
    name: SdfsName,
    tombstone: Version,
    waiting: BTreeSet<NodeAddr>,
}

#[derive(Debug, Clone)]
struct RepairTask {
    name: SdfsName,
    version: Version,
    from: NodeAddr,
    to: NodeAddr,
    /// Live copies left when planned; the queue runs fewest first.
    left: usize,
}

#[derive(Debug, Default)]
struct Repairs {
    queue: Vec<RepairTask>,
    running: HashMap<JobId, RepairTask>,
    outstanding: HashMap<SdfsName, (usize, usize)>,
    checks: HashMap<SdfsName, u32>,
    /// Nodes outside the placement that reported holding a name: extra sources.
    sources: HashMap<SdfsName, BTreeSet<NodeAddr>>,
    /// When the current round started (the membership change), for the log.
    since: Option<Millis>,
    /// Copies made in the current round.
    made: usize,
    /// Names reported to this node while it did not consider itself their primary
    /// (its view lagged the reporter's); looked at again after the next change.
    deferred: BTreeSet<SdfsName>,
}

#[derive(Debug)]
enum UploadFor {
    Put(OpId),
    Repair { job: JobId, requester: NodeAddr },
}

#[derive(Debug)]
enum UploadSource {
    Client(OpId),
    Local(Box<VersionReader>),
}

#[derive(Debug, Default, Clone, Copy)]
struct TargetState {
    acked: u64,
    done: bool,
}

#[derive(Debug)]
struct Upload {
    purpose: UploadFor,
    name: SdfsName,
    version: Version,
    targets: BTreeMap<NodeAddr, TargetState>,
    source: UploadSource,
    next_idx: u64,
    bytes: u64,
    reading: bool,
    ended: bool,
    last: Millis,
}

/// The fields of a `WriteChunk`.
struct ChunkIn {
    xfer: XferId,
    name: SdfsName,
    version: Version,
    idx: u64,
    crc: u32,
    data: Vec<u8>,
}

#[derive(Debug)]
struct Incoming {
    name: SdfsName,
    version: Version,
    writer: VersionWriter,
    next_idx: u64,
    end: Option<(u64, u64)>,
    last: Millis,
}

#[derive(Debug)]
struct Serving {
    reader: Box<VersionReader>,
    name: SdfsName,
    version: Version,
    sent: u64,
    acked: u64,
    last: Millis,
}

/// One node's SDFS protocol state. See the module docs.
#[derive(Debug)]
pub struct SdfsCore {
    cfg: SdfsConfig,
    store: LocalStore,
    ring: Ring,
    now: Millis,
    next_id: u64,
    out: Vec<Effect>,
    ops: HashMap<OpId, ClientOp>,
    /// Own read transfers -> the op they serve.
    read_xfers: HashMap<XferId, OpId>,
    /// Repairs of bad copies this node asked for as a reader.
    read_repairs: HashMap<JobId, (SdfsName, Version, NodeAddr)>,
    meta: HashMap<SdfsName, Meta>,
    granted: HashMap<SdfsName, BTreeMap<Version, NodeAddr>>,
    /// Versions whose writer failed; a late commit for them is refused. Kept apart from
    /// `meta`, which is dropped and re-learnt whenever the placement changes.
    dropped: HashMap<SdfsName, BTreeSet<Version>>,
    queries: HashMap<JobId, Query>,
    querying: HashMap<SdfsName, JobId>,
    waiting: HashMap<SdfsName, Vec<PrimaryReq>>,
    deletes: HashMap<JobId, DeleteJob>,
    repairs: Repairs,
    uploads: HashMap<XferId, Upload>,
    incoming: HashMap<(NodeAddr, XferId), Incoming>,
    serving: HashMap<(NodeAddr, XferId), Serving>,
    /// Staged puts: targets whose staging copy has not been reported yet.
    staging: HashMap<XferId, BTreeSet<NodeAddr>>,
}

fn store_err(e: &StoreError) -> RemoteError {
    match e {
        StoreError::NotFound { .. } => RemoteError::NotFound,
        StoreError::Corrupt { chunk, .. } => RemoteError::Corrupt { chunk: *chunk },
        StoreError::Tombstoned { tombstone, .. } => RemoteError::Deleted {
            tombstone: *tombstone,
        },
        other => RemoteError::Store(other.to_string()),
    }
}

impl SdfsCore {
    /// A core with no members yet; call [`SdfsCore::start`] and feed `Members`.
    pub fn new(mut cfg: SdfsConfig, store: LocalStore) -> Self {
        cfg.chunk_size = cfg.chunk_size.clamp(1, MAX_CHUNK);
        cfg.window = cfg.window.max(1);
        cfg.replicas = cfg.replicas.max(1);
        cfg.repair_parallelism = cfg.repair_parallelism.max(1);
        let next_id = u64::from(cfg.id_seed) << 32;
        SdfsCore {
            cfg,
            store,
            ring: Ring::default(),
            now: 0,
            next_id,
            out: Vec::new(),
            ops: HashMap::new(),
            read_xfers: HashMap::new(),
            read_repairs: HashMap::new(),
            meta: HashMap::new(),
            granted: HashMap::new(),
            dropped: HashMap::new(),
            queries: HashMap::new(),
            querying: HashMap::new(),
            waiting: HashMap::new(),
            deletes: HashMap::new(),
            repairs: Repairs::default(),
            uploads: HashMap::new(),
            incoming: HashMap::new(),
            serving: HashMap::new(),
            staging: HashMap::new(),
        }
    }

    /// Effects to run at start-up (the first housekeeping timer).
    pub fn start(&mut self, now: Millis) -> Vec<Effect> {
        self.now = now;
        vec![Effect::SetTimer {
            after: self.cfg.sweep_ms,
            timer: Timer::Sweep,
        }]
    }

    pub fn config(&self) -> &SdfsConfig {
        &self.cfg
    }

    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    /// The live nodes a name is placed on, primary first.
    pub fn placement(&self, name: &SdfsName) -> Vec<NodeAddr> {
        self.ring.placement(name, self.cfg.replicas)
    }

    /// True when nothing is in flight on this node (tests wait for this).
    pub fn is_idle(&self) -> bool {
        self.ops.is_empty()
            && self.uploads.is_empty()
            && self.incoming.is_empty()
            && self.serving.is_empty()
            && self.queries.is_empty()
            && self.deletes.is_empty()
            && self.repairs.queue.is_empty()
            && self.repairs.running.is_empty()
    }

    /// Feeds one input; returns the effects to execute, in order.
    pub fn handle(&mut self, now: Millis, input: Input) -> Vec<Effect> {
        self.now = self.now.max(now);
        match input {
            Input::Command { op, cmd } => self.on_command(op, cmd),
            Input::Peer { from, msg } => self.on_peer(from, msg),
            Input::Members { live } => self.on_members(live),
            Input::Timer(Timer::Sweep) => self.on_sweep(),
            Input::Source { op, offset, data } => self.on_source(op, offset, data),
            Input::SourceFailed { op, error } => self.fail_put(op, SdfsError::Source(error)),
            Input::Staged { xfer, to, result } => self.on_staged(xfer, to, result),
        }
        std::mem::take(&mut self.out)
    }

    fn id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    fn send(&mut self, to: &NodeAddr, msg: Msg) {
        self.out.push(Effect::Send {
            to: to.clone(),
            msg,
        });
    }

    fn log(&mut self, e: Event) {
        self.out.push(Effect::Log(e));
    }

    fn reply(&mut self, op: OpId, result: Result<Reply, SdfsError>) {
        self.out.push(Effect::Reply { op, result });
    }

    fn primary_of(&self, name: &SdfsName) -> Option<NodeAddr> {
        self.ring.primary(name)
    }

    fn is_live(&self, n: &NodeAddr) -> bool {
        self.ring.contains(n)
    }

    // --------------------------------------------------------------------------------
    // Client commands

    fn on_command(&mut self, op: OpId, cmd: Command) {
        if self.ops.contains_key(&op) {
            self.reply(op, Err(SdfsError::DuplicateOp(op)));
            return;
        }
        match cmd {
            Command::Put { name } => {
                self.ops.insert(
                    op,
                    ClientOp::Put(PutOp {
                        name,
                        version: None,
                        stage: PutStage::Granting,
                        ctl: None,
                        attempts: 0,
                        excluded: BTreeSet::new(),
                        holders: Vec::new(),
                    }),
                );
                self.ctl_send(op);
            }
            Command::Get { name } => self.start_read(op, name, ReadKind::Get),
            Command::GetVersions { name, k } => self.start_read(op, name, ReadKind::Versions(k)),
            Command::Ls { name } => self.start_read(op, name, ReadKind::Ls),
            Command::Delete { name } => {
                self.ops.insert(
                    op,
                    ClientOp::Delete(DeleteOp {
                        name,
                        ctl: None,
                        attempts: 0,
                    }),
                );
                self.ctl_send(op);
            }
            Command::LsPrefix { prefix } => {
                let mut names = BTreeSet::new();
                match self.store.names_with_prefix(&prefix) {
                    Ok(local) => names.extend(local),
                    Err(e) => self.log(Event::StoreFailure {
                        what: e.to_string(),
                    }),
                }
                let me = self.cfg.me.clone();
                let waiting: BTreeSet<NodeAddr> =
                    self.ring.members().filter(|m| **m != me).cloned().collect();
                for m in &waiting {
                    self.send(
                        m,
                        Msg::ListPrefix {
                            op,
                            prefix: prefix.clone(),
                        },
                    );
                }
                self.ops
                    .insert(op, ClientOp::List(ListOp { waiting, names }));
                self.maybe_finish_list(op);
            }
            Command::Store => {
                let result = self
                    .store
                    .holdings()
                    .map(|hs| {
                        Reply::Store(hs.into_iter().filter(|h| !h.versions.is_empty()).collect())
                    })
                    .map_err(|e| SdfsError::Store(e.to_string()));
                self.reply(op, result);
            }
        }
    }

    fn start_read(&mut self, op: OpId, name: SdfsName, kind: ReadKind) {
        self.ops.insert(
            op,
            ClientOp::Read(ReadOp {
                name,
                kind,
                ctl: None,
                attempts: 0,
                queue: VecDeque::new(),
                cur: None,
                done: Vec::new(),
                last_bytes: 0,
            }),
        );
        self.ctl_send(op);
    }

    /// (Re)sends the request `op` is waiting on to the name's current primary, or fails
    /// the op after too many attempts.
    fn ctl_send(&mut self, op: OpId) {
        let now = self.now;
        let max = self.cfg.max_attempts;
        let Some(entry) = self.ops.get_mut(&op) else {
            return;
        };
        let (name, attempts, msg, expects_answer) = match entry {
            ClientOp::Put(p) => {
                let msg = match (&p.stage, p.version) {
                    (PutStage::Granting, _) => Msg::PutBegin {
                        op,
                        name: p.name.clone(),
                    },
                    (PutStage::Uploading { .. }, Some(v)) => Msg::PutClaim {
                        op,
                        name: p.name.clone(),
                        version: v,
                    },
                    (PutStage::Committing, Some(v)) => Msg::PutCommitted {
                        op,
                        name: p.name.clone(),
                        version: v,
                        holders: p.holders.clone(),
                    },
                    _ => return,
                };
                p.attempts += 1;
                // A claim is only remembered by the primary; the put keeps uploading.
                let expects = !matches!(p.stage, PutStage::Uploading { .. });
                (p.name.clone(), p.attempts, msg, expects)
            }
            ClientOp::Read(r) => {
                r.attempts += 1;
                (
                    r.name.clone(),
                    r.attempts,
                    Msg::MetaGet {
                        op,
                        name: r.name.clone(),
                    },
                    true,
                )
            }
            ClientOp::Delete(d) => {
                d.attempts += 1;
                (
                    d.name.clone(),
                    d.attempts,
                    Msg::Delete {
                        op,
                        name: d.name.clone(),
                    },
                    true,
                )
            }
            ClientOp::List(_) => return,
        };
        if attempts > max {
            let err = SdfsError::GaveUp {
                name: name.to_string(),
                attempts: max,
                last: "no answer from the primary".into(),
            };
            self.fail_op(op, err);
            return;
        }
        let Some(primary) = self.primary_of(&name) else {
            self.fail_op(op, SdfsError::NoMembers);
            return;
        };
        if expects_answer {
            let ctl = Some(Ctl {
                primary: primary.clone(),
                sent_at: now,
                backoff_until: None,
            });
            match self.ops.get_mut(&op) {
                Some(ClientOp::Put(p)) => p.ctl = ctl,
                Some(ClientOp::Read(r)) => r.ctl = ctl,
                Some(ClientOp::Delete(d)) => d.ctl = ctl,
                _ => {}
            }
        }
        self.send(&primary, msg);
    }

    /// Fails any client op, cleaning up what it holds.
    fn fail_op(&mut self, op: OpId, err: SdfsError) {
        match self.ops.remove(&op) {
            Some(ClientOp::Put(p)) => {
                self.ops.insert(op, ClientOp::Put(p));
                self.fail_put(op, err);
            }
            Some(ClientOp::Read(r)) => {
                if let Some(f) = r.cur {
                    self.read_xfers.remove(&f.xfer);
                    self.send(&f.holder, Msg::ReadCancel { xfer: f.xfer });
                }
                self.reply(op, Err(err));
            }
            Some(_) => self.reply(op, Err(err)),
            None => {}
        }
    }

    fn fail_put(&mut self, op: OpId, err: SdfsError) {
        if !matches!(self.ops.get(&op), Some(ClientOp::Put(_))) {
            return;
        }
        let Some(ClientOp::Put(p)) = self.ops.remove(&op) else {
            return;
        };
        if let PutStage::Uploading { xfer } = p.stage {
            self.cancel_upload(xfer);
        }
        if let (Some(v), Some(primary)) = (p.version, self.primary_of(&p.name)) {
            self.send(
                &primary,
                Msg::PutAbort {
                    name: p.name.clone(),
                    version: v,
                },
            );
        }
        self.reply(op, Err(err));
    }

    // --------------------------------------------------------------------------------
    // Put: client side

    fn start_attempt(&mut self, op: OpId) {
        let replicas = self.cfg.replicas;
        let now = self.now;
        let Some(ClientOp::Put(p)) = self.ops.get(&op) else {
            return;
        };
        let Some(version) = p.version else { return };
        let name = p.name.clone();
        let targets = self.ring.placement_excluding(&name, replicas, &p.excluded);
        if targets.is_empty() {
            self.fail_put(op, SdfsError::NoMembers);
            return;
        }
        let xfer = self.id();
        self.uploads.insert(
            xfer,
            Upload {
                purpose: UploadFor::Put(op),
                name,
                version,
                targets: targets
                    .into_iter()
                    .map(|t| (t, TargetState::default()))
                    .collect(),
                source: UploadSource::Client(op),
                next_idx: 0,
                bytes: 0,
                reading: false,
                ended: false,
                last: now,
            },
        );
        if let Some(ClientOp::Put(p)) = self.ops.get_mut(&op) {
            p.stage = PutStage::Uploading { xfer };
            p.ctl = None;
        }
        if self.cfg.staged {
            self.stage_upload(op, xfer);
        } else {
            self.pump_upload(xfer);
        }
    }

    /// A put's upload lost a target: place the put again (same version, from the first
    /// byte) or give up after too many attempts.
    fn retry_put(&mut self, op: OpId, lost: &NodeAddr, exclude: bool, why: &str) {
        let max = self.cfg.max_attempts;
        let Some(ClientOp::Put(p)) = self.ops.get_mut(&op) else {
            return;
        };
        p.attempts += 1;
        if exclude {
            p.excluded.insert(lost.clone());
        }
        let (name, version, attempts) = (p.name.clone(), p.version.unwrap_or(0), p.attempts);
        if let PutStage::Uploading { xfer } = p.stage {
            self.cancel_upload(xfer);
        }
        self.log(Event::ReplicaLostMidPut {
            name: name.clone(),
            version,
            node: lost.clone(),
        });
        if attempts > max {
            let err = SdfsError::GaveUp {
                name: name.to_string(),
                attempts,
                last: why.to_string(),
            };
            self.fail_put(op, err);
        } else {
            self.start_attempt(op);
        }
    }

    fn on_source(&mut self, op: OpId, offset: u64, data: Vec<u8>) {
        let chunk = self.cfg.chunk_size as u64;
        let Some(ClientOp::Put(PutOp {
            stage: PutStage::Uploading { xfer },
            ..
        })) = self.ops.get(&op)
        else {
            return;
        };
        let xfer = *xfer;
        let Some(u) = self.uploads.get_mut(&xfer) else {
            return;
        };
        // A read issued for an earlier attempt may answer late: only the offset the
        // current attempt asked for is taken.
        if !u.reading || offset != u.next_idx.saturating_mul(chunk) {
            return;
        }
        u.reading = false;
        if data.is_empty() {
            self.end_upload(xfer);
        } else if data.len() > self.cfg.chunk_size {
            self.fail_put(
                op,
                SdfsError::Source(format!(
                    "source returned {} bytes for a {chunk}-byte chunk",
                    data.len()
                )),
            );
        } else {
            self.send_chunk(xfer, data);
            self.pump_upload(xfer);
        }
    }

    // --------------------------------------------------------------------------------
    // Uploads (puts and repairs): sender side

    fn pump_upload(&mut self, xfer: XferId) {
        loop {
            let window = self.cfg.window as u64;
            let chunk = self.cfg.chunk_size;
            let Some(u) = self.uploads.get_mut(&xfer) else {
                return;
            };
            if u.reading || u.ended {
                return;
            }
            let min_acked = u.targets.values().map(|t| t.acked).min().unwrap_or(0);
            if u.next_idx >= min_acked + window {
                return;
            }
            match &mut u.source {
                UploadSource::Client(op) => {
                    u.reading = true;
                    let (op, offset) = (*op, u.next_idx.saturating_mul(chunk as u64));
                    self.out.push(Effect::ReadSource {
                        op,
                        offset,
                        len: chunk,
                    });
                    return;
                }
                UploadSource::Local(reader) => match reader.next_chunk() {
                    Ok(Some(data)) => self.send_chunk(xfer, data),
                    Ok(None) => {
                        self.end_upload(xfer);
                        return;
                    }
                    Err(e) => {
                        let (name, version) = (u.name.clone(), u.version);
                        self.local_read_failed(&name, version, &e);
                        self.upload_failed(xfer, None);
                        return;
                    }
                },
            }
        }
    }

    fn send_chunk(&mut self, xfer: XferId, data: Vec<u8>) {
        let now = self.now;
        let Some(u) = self.uploads.get_mut(&xfer) else {
            return;
        };
        let crc = crc32fast::hash(&data);
        let idx = u.next_idx;
        u.next_idx += 1;
        u.bytes += data.len() as u64;
        u.last = now;
        for to in u.targets.keys() {
            self.out.push(Effect::Send {
                to: to.clone(),
                msg: Msg::WriteChunk {
                    xfer,
                    name: u.name.clone(),
                    version: u.version,
                    idx,
                    crc,
                    data: data.clone(),
                },
            });
        }
    }

    fn end_upload(&mut self, xfer: XferId) {
        let Some(u) = self.uploads.get_mut(&xfer) else {
            return;
        };
        u.ended = true;
        for to in u.targets.keys() {
            self.out.push(Effect::Send {
                to: to.clone(),
                msg: Msg::WriteEnd {
                    xfer,
                    name: u.name.clone(),
                    version: u.version,
                    chunks: u.next_idx,
                    bytes: u.bytes,
                },
            });
        }
    }

    fn cancel_upload(&mut self, xfer: XferId) {
        if let Some(u) = self.uploads.remove(&xfer) {
            for to in u.targets.keys() {
                if self.ring.contains(to) {
                    self.send(to, Msg::WriteAbort { xfer });
                }
            }
        }
    }

    /// A target of an upload failed (`Some(node)`), or its source did (`None`).
    fn upload_failed(&mut self, xfer: XferId, lost: Option<(NodeAddr, bool, String)>) {
        let Some(u) = self.uploads.get(&xfer) else {
            return;
        };
        match u.purpose {
            UploadFor::Put(op) => {
                let (node, exclude, why) =
                    lost.unwrap_or_else(|| (self.cfg.me.clone(), false, "source failed".into()));
                self.retry_put(op, &node, exclude, &why);
            }
            UploadFor::Repair { job, ref requester } => {
                let requester = requester.clone();
                let (name, version) = (u.name.clone(), u.version);
                let to = u
                    .targets
                    .keys()
                    .next()
                    .cloned()
                    .unwrap_or_else(|| self.cfg.me.clone());
                self.cancel_upload(xfer);
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

    fn on_write_ack(&mut self, from: &NodeAddr, xfer: XferId, idx: u64) {
        let now = self.now;
        let Some(u) = self.uploads.get_mut(&xfer) else {
            return;
        };
        if let Some(t) = u.targets.get_mut(from) {
            t.acked = t.acked.max(idx.saturating_add(1));
            u.last = now;
        }
        self.pump_upload(xfer);
    }

    fn on_write_done(&mut self, from: &NodeAddr, xfer: XferId) {
        let Some(u) = self.uploads.get_mut(&xfer) else {
            return;
        };
        if let Some(t) = u.targets.get_mut(from) {
            t.done = true;
        }
        if !u.targets.values().all(|t| t.done) {
            return;
        }
        let Some(u) = self.uploads.remove(&xfer) else {
            return;
        };
        let holders: Vec<NodeAddr> = u.targets.keys().cloned().collect();
        match u.purpose {
            UploadFor::Put(op) => {
                let Some(primary) = self.primary_of(&u.name) else {
                    self.fail_put(op, SdfsError::NoMembers);
                    return;
                };
                let _ = primary;
                if let Some(ClientOp::Put(p)) = self.ops.get_mut(&op) {
                    p.stage = PutStage::Committing;
                    p.holders = holders;
                    p.attempts = 0;
                }
                self.ctl_send(op);
            }
            UploadFor::Repair { job, requester } => {
                let to = holders
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| self.cfg.me.clone());
                self.send(
                    &requester,
                    Msg::ReplicateDone {
                        job,
                        name: u.name,
                        version: u.version,
                        to,
                        ok: true,
                    },
                );
            }
        }
    }

    // --------------------------------------------------------------------------------
    // Incoming writes: replica side

    fn on_write_chunk(&mut self, from: NodeAddr, chunk: ChunkIn) {
        let ChunkIn {
            xfer,
            name,
            version,
            idx,
            crc,
            data,
        } = chunk;
        let key = (from.clone(), xfer);
        if !self.incoming.contains_key(&key) {
            if idx != 0 {
                // The rest of an aborted or failed stream.
                return;
            }
            if !self.open_incoming(&from, xfer, &name, version) {
                return;
            }
        }
        let now = self.now;
        let Some(inc) = self.incoming.get_mut(&key) else {
            return;
        };
        if idx != inc.next_idx || crc32fast::hash(&data) != crc {
            self.incoming.remove(&key);
            self.send(
                &from,
                Msg::WriteFailed {
                    xfer,
                    error: RemoteError::BadTransfer,
                },
            );
            return;
        }
        if let Err(e) = inc.writer.append(&data) {
            self.incoming.remove(&key);
            self.log(Event::StoreFailure {
                what: e.to_string(),
            });
            self.send(
                &from,
                Msg::WriteFailed {
                    xfer,
                    error: store_err(&e),
                },
            );
            return;
        }
        inc.next_idx += 1;
        inc.last = now;
        self.send(&from, Msg::WriteAck { xfer, idx });
        self.maybe_commit_incoming(&key);
    }

    fn open_incoming(
        &mut self,
        from: &NodeAddr,
        xfer: XferId,
        name: &SdfsName,
        version: Version,
    ) -> bool {
        // Two live writers of one version can only come from a primary failover race;
        // the second is refused so a version never mixes two sources.
        let clash = self
            .incoming
            .iter()
            .any(|(k, i)| i.name == *name && i.version == version && (k.0 != *from));
        if clash {
            self.send(
                from,
                Msg::WriteFailed {
                    xfer,
                    error: RemoteError::Conflict,
                },
            );
            return false;
        }
        match self.store.begin_write(name, version) {
            Ok(writer) => {
                self.incoming.insert(
                    (from.clone(), xfer),
                    Incoming {
                        name: name.clone(),
                        version,
                        writer,
                        next_idx: 0,
                        end: None,
                        last: self.now,
                    },
                );
                true
            }
            Err(e) => {
                self.send(
                    from,
                    Msg::WriteFailed {
                        xfer,
                        error: store_err(&e),
                    },
                );
                false
            }
        }
    }

    fn on_write_end(
        &mut self,
        from: NodeAddr,
        xfer: XferId,
        name: SdfsName,
        version: Version,
        chunks: u64,
        bytes: u64,
    ) {
        let key = (from.clone(), xfer);
        if !self.incoming.contains_key(&key) {
            // Only an empty file has no chunk that opened the stream.
            if chunks != 0 || !self.open_incoming(&from, xfer, &name, version) {
                return;
            }
        }
        if let Some(inc) = self.incoming.get_mut(&key) {
            inc.end = Some((chunks, bytes));
        }
        self.maybe_commit_incoming(&key);
    }

    fn maybe_commit_incoming(&mut self, key: &(NodeAddr, XferId)) {
        let ready = match self.incoming.get(key) {
            Some(inc) => matches!(inc.end, Some((c, _)) if c == inc.next_idx),
            None => false,
        };
        if !ready {
            return;
        }
        let Some(inc) = self.incoming.remove(key) else {
            return;
        };
        let (from, xfer) = key.clone();
        let expected = inc.end.map(|(_, b)| b).unwrap_or(0);
        if inc.writer.bytes() != expected {
            self.send(
                &from,
                Msg::WriteFailed {
                    xfer,
                    error: RemoteError::BadTransfer,
                },
            );
            return;
        }
        match inc.writer.commit() {
            Ok(()) => self.send(&from, Msg::WriteDone { xfer }),
            Err(e) => {
                self.log(Event::StoreFailure {
                    what: e.to_string(),
                });
                self.send(
                    &from,
                    Msg::WriteFailed {
                        xfer,
                        error: store_err(&e),
                    },
                );
            }
        }
    }

    fn abort_incoming(&mut self, key: &(NodeAddr, XferId), reason: &str) {
        if let Some(inc) = self.incoming.remove(key) {
            self.log(Event::WriteAborted {
                name: inc.name,
                version: inc.version,
                from: key.0.clone(),
                reason: reason.to_string(),
            });
            // Dropping the writer removes its temp file.
        }
    }

    // --------------------------------------------------------------------------------
    // Reads: client side

    fn on_meta_info(&mut self, op: OpId, versions: Vec<VersionInfo>) {
        let Some(ClientOp::Read(r)) = self.ops.get_mut(&op) else {
            return;
        };
        if r.ctl.is_none() {
            return;
        }
        r.ctl = None;
        let name = r.name.clone();
        match r.kind {
            ReadKind::Ls => {
                self.ops.remove(&op);
                self.reply(op, Ok(Reply::Ls { name, versions }));
            }
            ReadKind::Get | ReadKind::Versions(_) => {
                let k = match r.kind {
                    ReadKind::Versions(k) => k,
                    _ => 1,
                };
                if versions.is_empty() {
                    self.ops.remove(&op);
                    self.reply(op, Err(SdfsError::NoSuchFile(name)));
                    return;
                }
                r.queue = versions.into_iter().take(k).collect();
                self.next_fetch(op);
            }
        }
    }

    /// Starts fetching the next queued version, or replies when none is left.
    fn next_fetch(&mut self, op: OpId) {
        let Some(ClientOp::Read(r)) = self.ops.get_mut(&op) else {
            return;
        };
        let Some(info) = r.queue.pop_front() else {
            let Some(ClientOp::Read(r)) = self.ops.remove(&op) else {
                return;
            };
            let reply = match r.kind {
                ReadKind::Versions(_) => Reply::GetVersions {
                    name: r.name,
                    versions: r.done,
                },
                _ => {
                    let version = r.done.first().copied().unwrap_or(0);
                    Reply::Get {
                        name: r.name,
                        version,
                        bytes: r.last_bytes,
                    }
                }
            };
            self.reply(op, Ok(reply));
            return;
        };
        self.out.push(Effect::Deliver {
            op,
            item: Delivery::Begin {
                version: info.version,
            },
        });
        r.cur = Some(Fetch {
            info,
            xfer: 0,
            holder: self.cfg.me.clone(),
            next_idx: 0,
            bytes: 0,
            tried: BTreeSet::new(),
            bad: BTreeSet::new(),
            last: self.now,
        });
        self.fetch_from_next_holder(op);
    }

    /// Asks the next untried live holder for the current version, resuming at the first
    /// chunk not yet delivered (chunk boundaries are identical on every replica).
    fn fetch_from_next_holder(&mut self, op: OpId) {
        let me = self.cfg.me.clone();
        let now = self.now;
        let Some(ClientOp::Read(r)) = self.ops.get_mut(&op) else {
            return;
        };
        let Some(f) = r.cur.as_mut() else { return };
        let candidates: Vec<&NodeAddr> = f
            .info
            .holders
            .iter()
            .filter(|h| self.ring.contains(h) && !f.tried.contains(*h))
            .collect();
        // Prefer the local copy; otherwise spread readers over holders by op id.
        let pick = candidates
            .iter()
            .find(|h| ***h == me)
            .or_else(|| candidates.get((op as usize) % candidates.len().max(1)))
            .map(|h| (*h).clone());
        let Some(holder) = pick else {
            let (name, version) = (r.name.clone(), f.info.version);
            self.fail_op(op, SdfsError::Unavailable { name, version });
            return;
        };
        let old = f.xfer;
        self.read_xfers.remove(&old);
        self.next_id = self.next_id.wrapping_add(1);
        let xfer = self.next_id;
        f.xfer = xfer;
        f.holder = holder.clone();
        f.last = now;
        f.tried.insert(holder.clone());
        let msg = Msg::ReadReq {
            xfer,
            name: r.name.clone(),
            version: f.info.version,
            from_chunk: f.next_idx,
        };
        self.read_xfers.insert(xfer, op);
        self.send(&holder, msg);
    }

    fn read_fallback(&mut self, op: OpId, reason: String, corrupt: bool) {
        let Some(ClientOp::Read(r)) = self.ops.get_mut(&op) else {
            return;
        };
        let Some(f) = r.cur.as_mut() else { return };
        if corrupt {
            f.bad.insert(f.holder.clone());
        }
        let ev = Event::ReadFallback {
            name: r.name.clone(),
            version: f.info.version,
            from: f.holder.clone(),
            reason,
        };
        let (holder, xfer) = (f.holder.clone(), f.xfer);
        self.read_xfers.remove(&xfer);
        if self.is_live(&holder) {
            self.send(&holder, Msg::ReadCancel { xfer });
        }
        self.log(ev);
        self.fetch_from_next_holder(op);
    }

    fn on_read_chunk(&mut self, from: &NodeAddr, xfer: XferId, idx: u64, crc: u32, data: Vec<u8>) {
        let Some(&op) = self.read_xfers.get(&xfer) else {
            return;
        };
        let now = self.now;
        let Some(ClientOp::Read(r)) = self.ops.get_mut(&op) else {
            return;
        };
        let Some(f) = r.cur.as_mut() else { return };
        if f.xfer != xfer || f.holder != *from || idx != f.next_idx {
            return;
        }
        if crc32fast::hash(&data) != crc {
            self.read_fallback(op, "chunk damaged in transit".into(), false);
            return;
        }
        f.next_idx += 1;
        f.bytes += data.len() as u64;
        f.last = now;
        self.out.push(Effect::Deliver {
            op,
            item: Delivery::Chunk(data),
        });
        self.send(from, Msg::ReadAck { xfer, idx });
    }

    fn on_read_end(&mut self, from: &NodeAddr, xfer: XferId, chunks: u64) {
        let Some(&op) = self.read_xfers.get(&xfer) else {
            return;
        };
        let Some(ClientOp::Read(r)) = self.ops.get_mut(&op) else {
            return;
        };
        let Some(f) = r.cur.as_mut() else { return };
        if f.xfer != xfer || f.holder != *from {
            return;
        }
        if chunks != f.next_idx {
            let why = format!("stream ended at chunk {chunks}, expected {}", f.next_idx);
            self.read_fallback(op, why, false);
            return;
        }
        self.read_xfers.remove(&xfer);
        let (version, bytes) = (f.info.version, f.bytes);
        let bad: Vec<NodeAddr> = f.bad.iter().cloned().collect();
        let name = r.name.clone();
        r.done.push(version);
        r.last_bytes = bytes;
        r.cur = None;
        self.out.push(Effect::Deliver {
            op,
            item: Delivery::End { version, bytes },
        });
        // Heal the copies that failed their checksum from the one that just served us.
        for b in bad {
            if self.is_live(&b) {
                let job = self.id();
                self.read_repairs
                    .insert(job, (name.clone(), version, b.clone()));
                self.send(
                    from,
                    Msg::Replicate {
                        job,
                        name: name.clone(),
                        version,
                        to: b,
                    },
                );
            }
        }
        self.next_fetch(op);
    }

    // --------------------------------------------------------------------------------
    // Reads: holder side

    fn on_read_req(
        &mut self,
        from: NodeAddr,
        xfer: XferId,
        name: SdfsName,
        version: Version,
        from_chunk: u64,
    ) {
        let opened = self.store.open_read(&name, version).and_then(|mut r| {
            r.seek_chunk(from_chunk)?;
            Ok(r)
        });
        match opened {
            Ok(reader) => {
                self.serving.insert(
                    (from.clone(), xfer),
                    Serving {
                        reader: Box::new(reader),
                        name,
                        version,
                        sent: from_chunk,
                        acked: from_chunk,
                        last: self.now,
                    },
                );
                self.pump_serving(&(from, xfer));
            }
            Err(e) => {
                self.local_read_failed(&name, version, &e);
                self.send(
                    &from,
                    Msg::ReadFailed {
                        xfer,
                        error: store_err(&e),
                    },
                );
            }
        }
    }

    fn pump_serving(&mut self, key: &(NodeAddr, XferId)) {
        let window = self.cfg.window as u64;
        loop {
            let Some(s) = self.serving.get_mut(key) else {
                return;
            };
            if s.sent >= s.acked + window {
                return;
            }
            let (to, xfer) = key.clone();
            match s.reader.next_chunk() {
                Ok(Some(data)) => {
                    let idx = s.sent;
                    s.sent += 1;
                    let crc = crc32fast::hash(&data);
                    self.send(
                        &to,
                        Msg::ReadChunk {
                            xfer,
                            idx,
                            crc,
                            data,
                        },
                    );
                }
                Ok(None) => {
                    let chunks = s.sent;
                    self.serving.remove(key);
                    self.send(&to, Msg::ReadEnd { xfer, chunks });
                    return;
                }
                Err(e) => {
                    let (name, version) = (s.name.clone(), s.version);
                    self.serving.remove(key);
                    self.local_read_failed(&name, version, &e);
                    self.send(
                        &to,
                        Msg::ReadFailed {
                            xfer,
                            error: store_err(&e),
                        },
                    );
                    return;
                }
            }
        }
    }

    /// A local copy failed to read: a corrupt copy is logged and removed so it is never
    /// served again; the reader that hit it arranges the repair.
    fn local_read_failed(&mut self, name: &SdfsName, version: Version, e: &StoreError) {
        match e {
            StoreError::Corrupt { chunk, .. } => {
                self.log(Event::ChecksumMismatch {
                    name: name.clone(),
                    version,
                    chunk: *chunk,
                    node: self.cfg.me.clone(),
                });
                if let Err(e) = self.store.remove_version(name, version) {
                    self.log(Event::StoreFailure {
                        what: e.to_string(),
                    });
                }
            }
            StoreError::NotFound { .. } => {}
            other => self.log(Event::StoreFailure {
                what: other.to_string(),
            }),
        }
    }

    // --------------------------------------------------------------------------------
    // Primary side

    fn primary_req(&mut self, name: SdfsName, req: PrimaryReq) {
        if self.primary_of(&name).as_ref() != Some(&self.cfg.me) {
            let op = match &req {
                PrimaryReq::Grant { from, op }
                | PrimaryReq::Claim { from, op, .. }
                | PrimaryReq::Commit { from, op, .. }
                | PrimaryReq::MetaGet { from, op }
                | PrimaryReq::Delete { from, op } => Some((from.clone(), *op)),
                PrimaryReq::Abort { .. } | PrimaryReq::RepairCheck => None,
            };
            if let Some((from, op)) = op {
                self.send(
                    &from,
                    Msg::Refused {
                        op,
                        error: RemoteError::NotPrimary,
                    },
                );
            }
            return;
        }
        if self.meta.contains_key(&name) {
            self.serve(&name, req);
        } else {
            self.waiting.entry(name.clone()).or_default().push(req);
            self.start_query(&name);
        }
    }

    fn start_query(&mut self, name: &SdfsName) {
        if self.querying.contains_key(name) {
            return;
        }
        let qid = self.id();
        let me = self.cfg.me.clone();
        let mut targets: BTreeSet<NodeAddr> = self.placement(name).into_iter().collect();
        if let Some(extra) = self.repairs.sources.get(name) {
            targets.extend(extra.iter().filter(|n| self.ring.contains(n)).cloned());
        }
        targets.remove(&me);
        let mut q = Query {
            name: name.clone(),
            waiting: targets.clone(),
            acc: Meta::default(),
            node_tombstones: BTreeMap::new(),
        };
        let (versions, tombstone, inflight) = self.local_state(name);
        merge_reply(&mut q, &me, &versions, tombstone, &inflight);
        for t in &targets {
            self.send(
                t,
                Msg::MetaQuery {
                    qid,
                    name: name.clone(),
                },
            );
        }
        self.queries.insert(qid, q);
        self.querying.insert(name.clone(), qid);
        self.maybe_finish_query(qid);
    }

    fn local_state(&mut self, name: &SdfsName) -> (Vec<Version>, Version, Vec<Version>) {
        let versions = self.store.versions(name);
        let tombstone = self.store.tombstone(name);
        let inflight = self
            .incoming
            .values()
            .filter(|i| i.name == *name)
            .map(|i| i.version)
            .collect();
        match (versions, tombstone) {
            (Ok(v), Ok(t)) => (v, t, inflight),
            (Err(e), _) | (_, Err(e)) => {
                self.log(Event::StoreFailure {
                    what: e.to_string(),
                });
                (Vec::new(), 0, inflight)
            }
        }
    }

    fn maybe_finish_query(&mut self, qid: JobId) {
        if !self.queries.get(&qid).is_some_and(|q| q.waiting.is_empty()) {
            return;
        }
        let Some(q) = self.queries.remove(&qid) else {
            return;
        };
        self.querying.remove(&q.name);
        let mut meta = q.acc;
        let t = meta.tombstone;
        // Copies of deleted versions (a node that was away during the delete) and
        // placement nodes that missed the tombstone are told to catch up.
        let mut stale: BTreeSet<NodeAddr> = meta
            .versions
            .range(..=t)
            .flat_map(|(_, hs)| hs.iter().cloned())
            .collect();
        if t > 0 {
            for n in self.placement(&q.name) {
                if q.node_tombstones.get(&n).copied().unwrap_or(0) < t {
                    stale.insert(n);
                }
            }
        }
        meta.versions = meta.versions.split_off(&(t + 1));
        while meta.versions.len() > self.cfg.keep_versions {
            meta.versions.pop_first();
        }
        for n in stale {
            self.send(
                &n,
                Msg::DeleteUpTo {
                    job: 0,
                    name: q.name.clone(),
                    upto: t,
                },
            );
        }
        self.meta.insert(q.name.clone(), meta);
        for req in self.waiting.remove(&q.name).unwrap_or_default() {
            self.serve(&q.name, req);
        }
    }

    fn high(&self, name: &SdfsName) -> Version {
        let m = self.meta.get(name);
        let committed = m
            .and_then(|m| m.versions.keys().next_back().copied())
            .unwrap_or(0);
        let granted = self
            .granted
            .get(name)
            .and_then(|g| g.keys().next_back().copied())
            .unwrap_or(0);
        let (t, seen) = m.map(|m| (m.tombstone, m.seen)).unwrap_or((0, 0));
        let dropped = self
            .dropped
            .get(name)
            .and_then(|d| d.iter().next_back().copied())
            .unwrap_or(0);
        committed.max(granted).max(t).max(seen).max(dropped)
    }

    fn serve(&mut self, name: &SdfsName, req: PrimaryReq) {
        match req {
            PrimaryReq::Grant { from, op } => {
                let version = self.high(name) + 1;
                self.granted
                    .entry(name.clone())
                    .or_default()
                    .insert(version, from.clone());
                self.send(
                    &from,
                    Msg::PutGrant {
                        op,
                        name: name.clone(),
                        version,
                    },
                );
            }
            PrimaryReq::Claim { from, op, version } => {
                let taken_by_other = self
                    .granted
                    .get(name)
                    .and_then(|g| g.get(&version))
                    .is_some_and(|w| *w != from);
                let meta = self.meta.get(name);
                let committed = meta.is_some_and(|m| m.versions.contains_key(&version));
                let dead =
                    meta.is_some_and(|m| version <= m.tombstone) || self.is_dropped(name, version);
                if taken_by_other || committed || dead {
                    self.send(
                        &from,
                        Msg::Refused {
                            op,
                            error: RemoteError::Conflict,
                        },
                    );
                } else {
                    self.granted
                        .entry(name.clone())
                        .or_default()
                        .insert(version, from);
                }
            }
            PrimaryReq::Commit {
                from,
                op,
                version,
                holders,
            } => {
                let keep = self.cfg.keep_versions;
                if self.is_dropped(name, version) {
                    self.send(
                        &from,
                        Msg::Refused {
                            op,
                            error: RemoteError::Conflict,
                        },
                    );
                    return;
                }
                let Some(m) = self.meta.get_mut(name) else {
                    return;
                };
                if version <= m.tombstone {
                    let tombstone = m.tombstone;
                    self.send(
                        &from,
                        Msg::Refused {
                            op,
                            error: RemoteError::Deleted { tombstone },
                        },
                    );
                    return;
                }
                let hs = m.versions.entry(version).or_default();
                hs.extend(holders);
                if hs.is_empty() {
                    // A commit relayed to a new primary carries no holders, and the query
                    // found none: the data is not durable anywhere we can see.
                    m.versions.remove(&version);
                    self.send(
                        &from,
                        Msg::Refused {
                            op,
                            error: RemoteError::NotFound,
                        },
                    );
                    return;
                }
                m.seen = m.seen.max(version);
                while m.versions.len() > keep {
                    m.versions.pop_first();
                }
                if let Some(g) = self.granted.get_mut(name) {
                    g.remove(&version);
                }
                self.send(
                    &from,
                    Msg::PutAck {
                        op,
                        name: name.clone(),
                        version,
                    },
                );
            }
            PrimaryReq::Abort { version } => {
                let granted = self
                    .granted
                    .get_mut(name)
                    .and_then(|g| g.remove(&version))
                    .is_some();
                if granted {
                    self.drop_version(name, version);
                }
            }
            PrimaryReq::MetaGet { from, op } => {
                let versions = self.version_infos(name);
                self.send(
                    &from,
                    Msg::MetaInfo {
                        op,
                        name: name.clone(),
                        versions,
                    },
                );
            }
            PrimaryReq::Delete { from, op } => self.serve_delete(name, from, op),
            PrimaryReq::RepairCheck => self.plan_repair(name),
        }
    }

    fn is_dropped(&self, name: &SdfsName, version: Version) -> bool {
        self.dropped.get(name).is_some_and(|d| d.contains(&version))
    }

    fn version_infos(&self, name: &SdfsName) -> Vec<VersionInfo> {
        self.meta
            .get(name)
            .map(|m| {
                m.versions
                    .iter()
                    .rev()
                    .map(|(v, hs)| VersionInfo {
                        version: *v,
                        holders: hs
                            .iter()
                            .filter(|h| self.ring.contains(h))
                            .cloned()
                            .collect(),
                    })
                    .filter(|vi| !vi.holders.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Discards a version whose writer failed before it was acknowledged.
    fn drop_version(&mut self, name: &SdfsName, version: Version) {
        self.dropped
            .entry(name.clone())
            .or_default()
            .insert(version);
        if let Some(m) = self.meta.get_mut(name) {
            m.versions.remove(&version);
        }
        self.log(Event::VersionDropped {
            name: name.clone(),
            version,
        });
        for n in self.placement(name) {
            self.send(
                &n,
                Msg::DropVersion {
                    name: name.clone(),
                    version,
                },
            );
        }
    }

    fn serve_delete(&mut self, name: &SdfsName, from: NodeAddr, op: OpId) {
        let t = self.high(name);
        let Some(m) = self.meta.get_mut(name) else {
            return;
        };
        if m.versions.is_empty() {
            self.send(
                &from,
                Msg::Refused {
                    op,
                    error: RemoteError::NoSuchFile,
                },
            );
            return;
        }
        let mut targets: BTreeSet<NodeAddr> = m.versions.values().flatten().cloned().collect();
        m.versions.clear();
        m.tombstone = t;
        m.seen = m.seen.max(t);
        self.granted.remove(name);
        targets.extend(self.placement(name));
        targets.retain(|n| self.ring.contains(n));
        let job = self.id();
        for n in &targets {
            self.send(
                n,
                Msg::DeleteUpTo {
                    job,
                    name: name.clone(),
                    upto: t,
                },
            );
        }
        self.deletes.insert(
            job,
            DeleteJob {
                from,
                op,
                name: name.clone(),
                tombstone: t,
                waiting: targets,
            },
        );
        self.maybe_finish_delete(job);
    }

    fn maybe_finish_delete(&mut self, job: JobId) {
        if !self.deletes.get(&job).is_some_and(|d| d.waiting.is_empty()) {
            return;
        }
        if let Some(d) = self.deletes.remove(&job) {
            self.send(
                &d.from,
                Msg::Deleted {
                    op: d.op,
                    name: d.name,
                    tombstone: d.tombstone,
                },
            );
        }
    }

    // --------------------------------------------------------------------------------
    // Re-replication (primary side)

    /// Forces a fresh look at `name` (its meta may predate the failure) and queues a plan.
    fn schedule_check(&mut self, name: &SdfsName) {
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

    fn plan_repair(&mut self, name: &SdfsName) {
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

    fn dispatch_repairs(&mut self) {
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

    fn on_replicate_done(
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

    fn repair_task_finished(&mut self, task: RepairTask, ok: bool) {
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

    fn maybe_repairs_idle(&mut self) {
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
    fn on_replicate(
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

    // --------------------------------------------------------------------------------
    // Peer messages

    fn on_peer(&mut self, from: NodeAddr, msg: Msg) {
        match msg {
            Msg::PutBegin { op, name } => self.primary_req(name, PrimaryReq::Grant { from, op }),
            Msg::PutClaim { op, name, version } => {
                self.primary_req(name, PrimaryReq::Claim { from, op, version })
            }
            Msg::PutCommitted {
                op,
                name,
                version,
                holders,
            } => self.primary_req(
                name,
                PrimaryReq::Commit {
                    from,
                    op,
                    version,
                    holders,
                },
            ),
            Msg::PutAbort { name, version } => {
                self.primary_req(name, PrimaryReq::Abort { version })
            }
            Msg::MetaGet { op, name } => self.primary_req(name, PrimaryReq::MetaGet { from, op }),
            Msg::Delete { op, name } => self.primary_req(name, PrimaryReq::Delete { from, op }),
            Msg::PutGrant {
                op,
                name: _,
                version,
            } => {
                if let Some(ClientOp::Put(p)) = self.ops.get_mut(&op) {
                    if matches!(p.stage, PutStage::Granting)
                        && p.ctl.as_ref().is_some_and(|c| c.primary == from)
                    {
                        p.version = Some(version);
                        p.attempts = 0;
                        self.start_attempt(op);
                    }
                }
            }
            Msg::PutAck { op, name, version } => {
                if let Some(ClientOp::Put(p)) = self.ops.get(&op) {
                    if matches!(p.stage, PutStage::Committing) && p.version == Some(version) {
                        self.ops.remove(&op);
                        self.reply(op, Ok(Reply::Put { name, version }));
                    }
                }
            }
            Msg::MetaInfo {
                op,
                name: _,
                versions,
            } => self.on_meta_info(op, versions),
            Msg::Deleted {
                op,
                name,
                tombstone,
            } => {
                if let Some(ClientOp::Delete(_)) = self.ops.get(&op) {
                    self.ops.remove(&op);
                    self.reply(op, Ok(Reply::Deleted { name, tombstone }));
                }
            }
            Msg::Refused { op, error } => self.on_refused(op, error),
            Msg::ListPrefix { op, prefix } => {
                let names = self.store.names_with_prefix(&prefix).unwrap_or_else(|e| {
                    self.out.push(Effect::Log(Event::StoreFailure {
                        what: e.to_string(),
                    }));
                    Vec::new()
                });
                self.send(&from, Msg::ListReply { op, names });
            }
            Msg::ListReply { op, names } => {
                if let Some(ClientOp::List(l)) = self.ops.get_mut(&op) {
                    if l.waiting.remove(&from) {
                        l.names.extend(names);
                    }
                }
                self.maybe_finish_list(op);
            }
            Msg::MetaQuery { qid, name } => {
                let (versions, tombstone, inflight) = self.local_state(&name);
                self.send(
                    &from,
                    Msg::MetaReply {
                        qid,
                        name,
                        versions,
                        tombstone,
                        inflight,
                    },
                );
            }
            Msg::MetaReply {
                qid,
                name,
                versions,
                tombstone,
                inflight,
            } => {
                if let Some(q) = self.queries.get_mut(&qid) {
                    if q.name == name && q.waiting.remove(&from) {
                        merge_reply(q, &from, &versions, tombstone, &inflight);
                    }
                }
                self.maybe_finish_query(qid);
            }
            Msg::DeleteUpTo { job, name, upto } => {
                let keys: Vec<_> = self
                    .incoming
                    .iter()
                    .filter(|(_, i)| i.name == name && i.version <= upto)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    self.abort_incoming(&k, "deleted");
                }
                if let Err(e) = self.store.delete(&name, upto) {
                    self.log(Event::StoreFailure {
                        what: e.to_string(),
                    });
                }
                if job != 0 {
                    self.send(&from, Msg::DeleteDone { job });
                }
            }
            Msg::DeleteDone { job } => {
                if let Some(d) = self.deletes.get_mut(&job) {
                    d.waiting.remove(&from);
                }
                self.maybe_finish_delete(job);
            }
            Msg::DropVersion { name, version } => {
                let keys: Vec<_> = self
                    .incoming
                    .iter()
                    .filter(|(_, i)| i.name == name && i.version == version)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    self.abort_incoming(&k, "writer failed");
                }
                if let Err(e) = self.store.remove_version(&name, version) {
                    self.log(Event::StoreFailure {
                        what: e.to_string(),
                    });
                }
            }
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
            Msg::WriteChunk {
                xfer,
                name,
                version,
                idx,
                crc,
                data,
            } => self.on_write_chunk(
                from,
                ChunkIn {
                    xfer,
                    name,
                    version,
                    idx,
                    crc,
                    data,
                },
            ),
            Msg::WriteEnd {
                xfer,
                name,
                version,
                chunks,
                bytes,
            } => self.on_write_end(from, xfer, name, version, chunks, bytes),
            Msg::WriteAck { xfer, idx } => self.on_write_ack(&from, xfer, idx),
            Msg::WriteDone { xfer } => self.on_write_done(&from, xfer),
            Msg::WriteFailed { xfer, error } => {
                let targeted = self
                    .uploads
                    .get(&xfer)
                    .is_some_and(|u| u.targets.contains_key(&from));
                if targeted {
                    // A deleted name or a lost race cannot be fixed by another replica.
                    let fatal =
                        matches!(error, RemoteError::Deleted { .. } | RemoteError::Conflict);
                    if let (true, Some(UploadFor::Put(op))) =
                        (fatal, self.uploads.get(&xfer).map(|u| &u.purpose))
                    {
                        let op = *op;
                        self.on_refused(op, error);
                    } else {
                        let bad_node = !matches!(error, RemoteError::BadTransfer);
                        self.upload_failed(xfer, Some((from, bad_node, error.to_string())));
                    }
                }
            }
            Msg::WriteAbort { xfer } => {
                // A staged copy of an abandoned put is never committed.
                if self.cfg.staged {
                    let _ = std::fs::remove_file(self.staging_path(&from, xfer));
                }
                if let Some(inc) = self.incoming.remove(&(from, xfer)) {
                    drop(inc);
                }
            }
            Msg::ReadReq {
                xfer,
                name,
                version,
                from_chunk,
            } => self.on_read_req(from, xfer, name, version, from_chunk),
            Msg::ReadChunk {
                xfer,
                idx,
                crc,
                data,
            } => self.on_read_chunk(&from, xfer, idx, crc, data),
            Msg::ReadEnd { xfer, chunks } => self.on_read_end(&from, xfer, chunks),
            Msg::ReadAck { xfer, idx } => {
                let key = (from, xfer);
                let now = self.now;
                if let Some(s) = self.serving.get_mut(&key) {
                    s.acked = s.acked.max(idx.saturating_add(1));
                    s.last = now;
                }
                self.pump_serving(&key);
            }
            Msg::ReadFailed { xfer, error } => {
                let Some(&op) = self.read_xfers.get(&xfer) else {
                    return;
                };
                let current = matches!(self.ops.get(&op), Some(ClientOp::Read(ReadOp { cur: Some(f), .. })) if f.xfer == xfer && f.holder == from);
                if current {
                    let corrupt = matches!(error, RemoteError::Corrupt { .. });
                    self.read_fallback(op, error.to_string(), corrupt);
                }
            }
            Msg::ReadCancel { xfer } => {
                self.serving.remove(&(from, xfer));
            }
            Msg::WriteStaged {
                xfer,
                name,
                version,
                bytes,
                crc,
            } => self.on_write_staged(from, xfer, name, version, bytes, crc),
        }
    }

    fn on_refused(&mut self, op: OpId, error: RemoteError) {
        let now = self.now;
        let backoff = self.cfg.retry_backoff_ms;
        match (self.ops.get_mut(&op), &error) {
            (Some(ClientOp::Put(p)), RemoteError::Conflict)
                if !matches!(p.stage, PutStage::Granting) =>
            {
                // The version was taken (primary failover race) or dropped: start over
                // with a fresh grant.
                if let PutStage::Uploading { xfer } = p.stage {
                    self.cancel_upload(xfer);
                }
                if let Some(ClientOp::Put(p)) = self.ops.get_mut(&op) {
                    p.stage = PutStage::Granting;
                    p.version = None;
                }
                self.ctl_send(op);
            }
            (Some(ClientOp::Put(p)), RemoteError::NotPrimary) => {
                set_backoff(&mut p.ctl, now + backoff)
            }
            (Some(ClientOp::Read(r)), RemoteError::NotPrimary) => {
                set_backoff(&mut r.ctl, now + backoff)
            }
            (Some(ClientOp::Delete(d)), RemoteError::NotPrimary) => {
                set_backoff(&mut d.ctl, now + backoff)
            }
            (Some(ClientOp::Read(r)), RemoteError::NoSuchFile)
            | (Some(ClientOp::Read(r)), RemoteError::NotFound) => {
                let name = r.name.clone();
                self.ops.remove(&op);
                self.reply(op, Err(SdfsError::NoSuchFile(name)));
            }
            (Some(ClientOp::Delete(d)), RemoteError::NoSuchFile) => {
                let name = d.name.clone();
                self.ops.remove(&op);
                self.reply(op, Err(SdfsError::NoSuchFile(name)));
            }
            (Some(_), _) => self.fail_op(op, SdfsError::Remote(error)),
            (None, _) => {}
        }
    }

    fn maybe_finish_list(&mut self, op: OpId) {
        if !matches!(self.ops.get(&op), Some(ClientOp::List(l)) if l.waiting.is_empty()) {
            return;
        }
        if let Some(ClientOp::List(l)) = self.ops.remove(&op) {
            self.reply(op, Ok(Reply::Names(l.names.into_iter().collect())));
        }
    }

    // --------------------------------------------------------------------------------
    // Membership

    fn on_members(&mut self, live: Vec<NodeAddr>) {
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
            .filter(|(_, t)| dead.contains(&t.from) || dead.contains(&t.to))
            .map(|(j, _)| *j)
            .collect();
        for job in failed {
            if let Some(t) = self.repairs.running.remove(&job) {
                self.repair_task_finished(t, false);
            }
        }
        let (stale, keep): (Vec<RepairTask>, Vec<RepairTask>) =
            std::mem::take(&mut self.repairs.queue)
                .into_iter()
                .partition(|t| dead.contains(&t.from) || dead.contains(&t.to));
        self.repairs.queue = keep;
        for t in stale {
            self.repair_task_finished(t, false);
        }

        // Every name this node holds whose placement changed is reported to its
        // primary, which restores m + 1 copies. After at most m failures at least one
        // holder of every version survives to report it.
        self.repairs.since = Some(now);
        self.repairs.checks.clear();
        let holdings = match self.store.holdings() {
            Ok(h) => h,
            Err(e) => {
                self.log(Event::StoreFailure {
                    what: e.to_string(),
                });
                Vec::new()
            }
        };
        let mut reports: BTreeMap<NodeAddr, Vec<Holding>> = BTreeMap::new();
        for h in holdings {
            if old.placement(&h.name, replicas) == self.ring.placement(&h.name, replicas) {
                continue;
            }
            if let Some(p) = self.ring.primary(&h.name) {
                reports.entry(p).or_default().push(h);
            }
        }
        for name in std::mem::take(&mut self.repairs.deferred) {
            if self.primary_of(&name).as_ref() == Some(&me) {
                self.schedule_check(&name);
            }
        }
        for (primary, hs) in reports {
            if primary == me {
                for h in hs {
                    self.schedule_check(&h.name);
                }
            } else {
                for batch in hs.chunks(256) {
                    self.send(
                        &primary,
                        Msg::HoldingReport {
                            holdings: batch.to_vec(),
                        },
                    );
                }
            }
        }
        self.dispatch_repairs();
        self.maybe_repairs_idle();
    }

    // --------------------------------------------------------------------------------
    // Housekeeping

    fn on_sweep(&mut self) {
        let now = self.now;
        let idle = self.cfg.idle_timeout_ms;
        let req_timeout = self.cfg.request_timeout_ms;
        self.out.push(Effect::SetTimer {
            after: self.cfg.sweep_ms,
            timer: Timer::Sweep,
        });

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
            let (resend, read_stalled) = match self.ops.get(&op) {
                Some(ClientOp::Put(PutOp { ctl: Some(c), .. }))
                | Some(ClientOp::Read(ReadOp { ctl: Some(c), .. }))
                | Some(ClientOp::Delete(DeleteOp { ctl: Some(c), .. })) => (
                    match c.backoff_until {
                        Some(until) => now >= until,
                        None => now.saturating_sub(c.sent_at) >= req_timeout,
                    },
                    false,
                ),
                Some(ClientOp::Read(ReadOp {
                    cur: Some(f),
                    ctl: None,
                    ..
                })) => (false, now.saturating_sub(f.last) >= idle),
                _ => (false, false),
            };
            if resend {
                self.ctl_send(op);
            }
            if read_stalled {
                self.read_fallback(op, "transfer stalled".into(), false);
            }
        }
    }
}

fn set_backoff(ctl: &mut Option<Ctl>, until: Millis) {
    if let Some(c) = ctl.as_mut() {
        c.backoff_until = Some(until);
    }
}

fn merge_reply(
    q: &mut Query,
    from: &NodeAddr,
    versions: &[Version],
    tombstone: Version,
    inflight: &[Version],
) {
    for v in versions {
        q.acc.versions.entry(*v).or_default().insert(from.clone());
        q.acc.seen = q.acc.seen.max(*v);
    }
    for v in inflight {
        q.acc.seen = q.acc.seen.max(*v);
    }
    q.acc.tombstone = q.acc.tombstone.max(tombstone);
    q.acc.seen = q.acc.seen.max(tombstone);
    q.node_tombstones.insert(from.clone(), tombstone);
}

// ------------------------------------------------------------------------------------
// Staged transfer (`[sdfs] transfer = "scp"`). Added by the SdfsActor work; the native
// stream above is untouched. A put's upload does not stream chunks: the shell copies the
// whole source into every target's staging directory (over SSH), reports its size and
// CRC-32, and the core tells each target to commit the staged file (`WriteStaged`). The
// target re-chunks it exactly as a native stream would (same chunk size, so chunk
// boundaries match on every copy), checks size and CRC, and commits through the same
// durable path (temp file, fsync, rename, dir fsync) before `WriteDone`. Everything after
// that (commit at the primary, ack) is the native path, so the guarantees are the same.

/// Directory, under a store's root, where staged copies arrive.
pub const STAGING_DIR: &str = "staging";

/// File name of the staged copy sent by `from` for transfer `xfer`. The sender is an
/// authenticated member address; characters outside `[A-Za-z0-9.-]` become `_`, so the
/// name is one plain path component.
pub fn staging_file_name(from: &NodeAddr, xfer: XferId) -> String {
    let safe: String = from
        .as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}-{xfer:016x}.stage")
}

impl SdfsCore {
    /// Path of the staged copy from `from` for `xfer` in this node's store.
    pub fn staging_path(&self, from: &NodeAddr, xfer: XferId) -> PathBuf {
        self.store
            .root()
            .join(STAGING_DIR)
            .join(staging_file_name(from, xfer))
    }

    fn stage_upload(&mut self, op: OpId, xfer: XferId) {
        let Some(u) = self.uploads.get_mut(&xfer) else {
            return;
        };
        // `reading` keeps the sweep from declaring the upload stalled while copies run;
        // the copy itself has its own (SSH) timeouts.
        u.reading = true;
        let targets: Vec<NodeAddr> = u.targets.keys().cloned().collect();
        self.staging.insert(xfer, targets.iter().cloned().collect());
        for to in targets {
            self.out.push(Effect::Stage { op, xfer, to });
        }
    }

    fn on_staged(&mut self, xfer: XferId, to: NodeAddr, result: Result<(u64, u32), String>) {
        let Some(pending) = self.staging.get_mut(&xfer) else {
            return;
        };
        if !pending.remove(&to) {
            return;
        }
        if pending.is_empty() {
            self.staging.remove(&xfer);
        }
        let now = self.now;
        let Some(u) = self.uploads.get_mut(&xfer) else {
            // The attempt was cancelled; a retry stages again under a new xfer.
            self.staging.remove(&xfer);
            return;
        };
        u.last = now;
        let (bytes, crc) = match result {
            Ok(v) => v,
            Err(e) => {
                // Credentials or SSH failures are not a property of one replica: the put
                // fails with the reason instead of being re-placed on other nodes.
                let op = match u.purpose {
                    UploadFor::Put(op) => Some(op),
                    UploadFor::Repair { .. } => None,
                };
                self.staging.remove(&xfer);
                if let Some(op) = op {
                    self.fail_put(op, SdfsError::Transfer(format!("copy to {to}: {e}")));
                }
                return;
            }
        };
        let msg = Msg::WriteStaged {
            xfer,
            name: u.name.clone(),
            version: u.version,
            bytes,
            crc,
        };
        self.send(&to, msg);
    }

    fn on_write_staged(
        &mut self,
        from: NodeAddr,
        xfer: XferId,
        name: SdfsName,
        version: Version,
        bytes: u64,
        crc: u32,
    ) {
        let path = self.staging_path(&from, xfer);
        let result = self.commit_staged(&path, &name, version, bytes, crc);
        // The staged copy is never needed again, whatever happened.
        let _ = std::fs::remove_file(&path);
        match result {
            Ok(()) => self.send(&from, Msg::WriteDone { xfer }),
            Err(error) => {
                self.log(Event::WriteAborted {
                    name,
                    version,
                    from: from.clone(),
                    reason: format!("staged copy rejected: {error}"),
                });
                self.send(&from, Msg::WriteFailed { xfer, error });
            }
        }
    }

    fn commit_staged(
        &mut self,
        path: &std::path::Path,
        name: &SdfsName,
        version: Version,
        bytes: u64,
        crc: u32,
    ) -> Result<(), RemoteError> {
        let mut file = std::fs::File::open(path).map_err(|_| RemoteError::BadTransfer)?;
        let mut writer = self
            .store
            .begin_write(name, version)
            .map_err(|e| store_err(&e))?;
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; self.cfg.chunk_size];
        let mut total = 0u64;
        loop {
            let n =
                read_full(&mut file, &mut buf).map_err(|e| RemoteError::Store(e.to_string()))?;
            if n == 0 {
                break;
            }
            let chunk = buf.get(..n).unwrap_or_default();
            hasher.update(chunk);
            total += n as u64;
            if total > bytes {
                return Err(RemoteError::BadTransfer);
            }
            writer.append(chunk).map_err(|e| store_err(&e))?;
        }
        if total != bytes || hasher.finalize() != crc {
            // Dropping the writer removes its temp file: nothing becomes visible.
            return Err(RemoteError::BadTransfer);
        }
        writer.commit().map_err(|e| store_err(&e))
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let Some(rest) = buf.get_mut(n..) else { break };
        match r.read(rest) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
