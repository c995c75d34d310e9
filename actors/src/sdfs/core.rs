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
//! Roles per name (see docs/ARCHITECTURE.md, "SDFS"): the first node of the name's placement
//! is its *primary*; it sequences versions, records commits and drives re-replication.
//! Every replica keeps the version files themselves, so a new primary rebuilds the
//! metadata by asking the placement nodes (`MetaQuery`).
//!
//! This file holds the types, the state and the dispatch; each role lives in a file of
//! `core/`: `ops` (client commands, requests to primaries, retries), `put` (client side
//! of a put), `upload` (streaming to replicas), `replica` (receiving writes), `read`
//! (fetching and serving versions), `primary` (versions, commits, metadata, deletes),
//! `repair` (re-replication), `members` (membership changes and the sweep), `scrub`
//! (background verification of stored copies, full disks), `staged` (scp transfers),
//! `event` (log events).

mod event;
mod members;
mod ops;
mod primary;
mod put;
mod read;
mod repair;
mod replica;
mod scrub;
mod staged;
mod upload;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::msg::{CopyOutcome, JobId, Lane, Msg, OpId, RemoteError, VersionInfo, XferId};
use super::name::SdfsName;
use super::ring::Ring;
use super::store::{
    Holding, LocalStore, StoreError, Version, VersionReader, VersionWriter, MAX_CHUNK,
};
use crate::machine::Machine;
use crate::types::{Millis, NodeAddr};

pub use event::Event;
pub use staged::{staging_file_name, STAGING_DIR};

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
    /// A gap this long between two inputs means the process was paused (SIGSTOP, a
    /// stalled VM) long enough to be declared failed and replaced as primary: cached
    /// metadata is dropped and learnt again, never served stale.
    pub pause_ms: Millis,
    /// Names a primary checks at once after a membership change (each check asks the
    /// placement for its metadata): thousands of names must not burst into the peers'
    /// send queues at once.
    pub check_window: usize,
    /// High bits of this run's ids, so ids of a restarted node do not collide with
    /// the ones peers may still remember (the shell passes something random).
    pub id_seed: u32,
    /// Puts move their data by staging (scp): the shell copies the source into each
    /// replica's staging directory ([`Effect::Stage`]) and the replica commits it from
    /// there; see `core/staged.rs`.
    pub staged: bool,
    /// Background scrub: bytes of stored versions re-verified per sweep (0: off).
    pub scrub_bytes_per_sweep: u64,
    /// A scrub round starts at most this often.
    pub scrub_round_ms: Millis,
    /// Incoming transfers (each an open temp file) one sender may run at once here.
    /// Legitimate senders stay far below it (a few puts plus `repair_parallelism`
    /// copies per primary); a flood of new transfer ids is refused past it, so it cannot
    /// exhaust this node's file descriptors.
    pub max_incoming_per_peer: usize,
    /// Incoming transfers from all senders together.
    pub max_incoming_total: usize,
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
            pause_ms: 1_500,
            check_window: 64,
            id_seed: 0,
            staged: false,
            scrub_bytes_per_sweep: 1 << 20,
            scrub_round_ms: 10_000,
            max_incoming_per_peer: 128,
            max_incoming_total: 512,
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
    /// One page of the live names under `prefix` across the cluster: those after
    /// `after`, at most `limit` (capped at [`PAGE_MAX`]).
    LsPrefix {
        prefix: String,
        after: Option<String>,
        limit: usize,
    },
    /// One page of what this node holds (cursor and limit as for `LsPrefix`).
    Store {
        after: Option<String>,
        limit: usize,
    },
}

/// Most names in one listing page (a node's answer to a listing and the merged page);
/// [`crate::sdfs::PAGE_BYTES`] bounds the page's bytes as well.
pub const PAGE_MAX: usize = 10_000;

/// Timers the core asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Housekeeping: retries, idle transfers, backoffs.
    Sweep,
}

/// Everything that can happen to the core.
#[derive(Debug, Clone)]
pub enum Input {
    /// The first input of a core's life: starts the housekeeping timer.
    Start,
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
    /// A page of names; `next`: more follow, from after this name.
    Names {
        names: Vec<SdfsName>,
        next: Option<SdfsName>,
    },
    /// A page of this node's holdings; `next` as for `Names`.
    Store {
        holdings: Vec<Holding>,
        next: Option<SdfsName>,
    },
}

/// Why a client command failed. Nothing partial becomes visible on failure; a failed
/// get may have delivered part of a file, which the shell discards.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdfsError {
    #[error("this node is not in the cluster (not joined yet, or left)")]
    NoMembers,
    #[error("{0}: no such file")]
    NoSuchFile(SdfsName),
    #[error("{name}: no replica could serve v{version}")]
    Unavailable { name: SdfsName, version: Version },
    #[error("{name}: every live node refused the write ({refused} of them); last: {last}")]
    AllRefused {
        name: String,
        refused: usize,
        last: String,
    },
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
    /// Hand `timer` back as an input at the absolute time `at`.
    SetTimer {
        at: Millis,
        timer: Timer,
    },
    Event(Event),
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
    /// Why the last of them failed it, for the error once no node is left.
    refused: Option<String>,
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

/// A read's own metadata query to the name's holders, made when the primary does not
/// answer in time (dead but not yet detected, or busy).
#[derive(Debug)]
struct Direct {
    qid: JobId,
    waiting: BTreeSet<NodeAddr>,
    asked_at: Millis,
    acc: Meta,
    /// Asked of every live node, not only the placement (see `ReadOp::wide_checked`).
    wide: bool,
}

#[derive(Debug)]
struct ReadOp {
    name: SdfsName,
    kind: ReadKind,
    ctl: Option<Ctl>,
    direct: Option<Box<Direct>>,
    /// An empty answer was double-checked with every live node. A primary or a reader
    /// whose view just changed (restarted, resumed, partitioned) can find no holder in
    /// the placement while the file is alive elsewhere: "no such file" is only said once
    /// no live node holds a version.
    wide_checked: bool,
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
    /// A send of this delete got no answer (timeout, or its primary died): the delete
    /// may have run.
    unanswered: bool,
}

#[derive(Debug)]
struct ListOp {
    prefix: String,
    after: Option<String>,
    limit: usize,
    waiting: BTreeSet<NodeAddr>,
    names: BTreeSet<SdfsName>,
    /// The smallest last name of the answers that had more: names past it may be
    /// missing from this page, so it ends there at the latest.
    cut: Option<SdfsName>,
    /// When the nodes still `waiting` were last asked (a lost answer is asked again).
    asked_at: Millis,
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
        from: NodeAddr,
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
    /// Nodes whose answer is still missing.
    waiting: BTreeSet<NodeAddr>,
    /// When `MetaQuery` last went to the `waiting` nodes: a query or answer lost on the
    /// way (a full send queue drops it) is asked again from the sweep, never forgotten,
    /// since every request for the name waits on this query.
    asked_at: Millis,
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
    /// When the nodes still `waiting` were last told (a lost answer is asked again).
    asked_at: Millis,
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

/// A copy a primary ordered and is waiting on.
#[derive(Debug, Clone)]
struct Running {
    task: RepairTask,
    /// Last word from the holder (or when the order was last sent): a silent holder is
    /// sent the order again, so a lost order or answer never leaves the task hanging.
    heard: Millis,
}

/// The holder side of a `Replicate` order, kept by (requester, job) so that a repeated
/// order is answered instead of copied twice.
#[derive(Debug, Clone, Copy)]
enum Replicating {
    Copying,
    Done { outcome: CopyOutcome, at: Millis },
}

#[derive(Debug, Default)]
struct Repairs {
    queue: Vec<RepairTask>,
    running: HashMap<JobId, Running>,
    outstanding: HashMap<SdfsName, (usize, usize)>,
    /// Checks of a name since the last membership change; past a bound a name is
    /// checked again only after a pause (`later`), never given up.
    checks: HashMap<SdfsName, u32>,
    /// Nodes outside the placement that reported holding a name: extra sources.
    sources: HashMap<SdfsName, BTreeSet<NodeAddr>>,
    /// Names waiting for a check; at most `check_window` are `checking` at once.
    pending: BTreeSet<SdfsName>,
    checking: BTreeSet<SdfsName>,
    /// Names to check again at a time (repairs that keep failing).
    later: BTreeMap<SdfsName, Millis>,
    /// Nodes that refused a copy of a name (full or failing disk) since the last
    /// membership change: the copy goes to the next node of the ring instead.
    refused: HashMap<SdfsName, BTreeSet<NodeAddr>>,
    /// When the current round started (the membership change), for the log.
    since: Option<Millis>,
    /// Copies made and bytes copied in the current round.
    made: usize,
    bytes: u64,
    /// When progress was last logged.
    logged_at: Millis,
    /// `pump_checks` is running: a check that completes at once (no other node to ask)
    /// must not start the next one from inside the last, or thousands of names nest
    /// calls until the stack overflows (issue 13's soak: a node cut off alone).
    pumping: bool,
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
    /// Deletes answered lately, by (client, op) -> (name, tombstone, when): a client
    /// that asks again (its answer was slow or lost) gets the same answer, not "no such
    /// file" for the name it just deleted.
    /// Incoming transfers refused since the last sweep because of the caps, per sender.
    busy_refusals: BTreeMap<NodeAddr, u64>,
    deleted: HashMap<(NodeAddr, OpId), (SdfsName, Version, Millis)>,
    repairs: Repairs,
    /// Holder side of replication orders.
    replicating: HashMap<(NodeAddr, JobId), Replicating>,
    /// Holder side of re-replication: names whose placement changed, to be reported to
    /// their primary until it acknowledges them; `Some((primary, at))` once sent.
    reports: BTreeMap<SdfsName, Option<(NodeAddr, Millis)>>,
    /// Reads' direct metadata queries -> the op.
    read_queries: HashMap<JobId, OpId>,
    uploads: HashMap<XferId, Upload>,
    incoming: HashMap<(NodeAddr, XferId), Incoming>,
    serving: HashMap<(NodeAddr, XferId), Serving>,
    /// Staged puts: targets whose staging copy has not been reported yet.
    staging: HashMap<XferId, BTreeSet<NodeAddr>>,
    /// Background scrub and disk-full state (`core/scrub.rs`).
    health: scrub::Health,
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
    /// A core with no members yet; feed it [`Input::Start`], then `Members`.
    pub fn new(mut cfg: SdfsConfig, store: LocalStore) -> Self {
        cfg.chunk_size = cfg.chunk_size.clamp(1, MAX_CHUNK);
        cfg.window = cfg.window.max(1);
        cfg.replicas = cfg.replicas.max(1);
        cfg.repair_parallelism = cfg.repair_parallelism.max(1);
        cfg.check_window = cfg.check_window.max(1);
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
            deleted: HashMap::new(),
            busy_refusals: BTreeMap::new(),
            repairs: Repairs::default(),
            replicating: HashMap::new(),
            reports: BTreeMap::new(),
            read_queries: HashMap::new(),
            uploads: HashMap::new(),
            incoming: HashMap::new(),
            serving: HashMap::new(),
            staging: HashMap::new(),
            health: scrub::Health::default(),
        }
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

    /// The read op that receives transfer `xfer`, if this node is reading it (the shell
    /// holds back the chunks of a read whose consumer lags, by op).
    pub fn reader_op(&self, xfer: XferId) -> Option<OpId> {
        self.read_xfers.get(&xfer).copied()
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
            && self.repairs.pending.is_empty()
            && self.repairs.checking.is_empty()
            && self.repairs.later.is_empty()
            && self.reports.is_empty()
    }

    /// What keeps this node from being idle, for failure messages of tests.
    pub fn pending_work(&self) -> String {
        format!(
            "ops {}, uploads {}, incoming {}, serving {}, queries {}, deletes {}, \
             repairs queued {} running {} pending {} checking {} later {}, reports {}",
            self.ops.len(),
            self.uploads.len(),
            self.incoming.len(),
            self.serving.len(),
            self.queries.len(),
            self.deletes.len(),
            self.repairs.queue.len(),
            self.repairs.running.len(),
            self.repairs.pending.len(),
            self.repairs.checking.len(),
            self.repairs.later.len(),
            self.reports.len(),
        )
    }

    /// Asks for the next housekeeping sweep, `sweep_ms` from now.
    fn set_sweep_timer(&mut self) {
        self.out.push(Effect::SetTimer {
            at: self.now.saturating_add(self.cfg.sweep_ms),
            timer: Timer::Sweep,
        });
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
        self.out.push(Effect::Event(e));
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

    /// Routes a peer message to the role that handles it.
    fn on_peer(&mut self, from: NodeAddr, msg: Msg) {
        match msg {
            msg @ (Msg::PutBegin { .. }
            | Msg::PutClaim { .. }
            | Msg::PutCommitted { .. }
            | Msg::PutAbort { .. }
            | Msg::MetaGet { .. }
            | Msg::Delete { .. }
            | Msg::MetaQuery { .. }
            | Msg::MetaReply { .. }
            | Msg::DeleteDone { .. }) => self.on_primary_msg(from, msg),
            msg @ (Msg::Deleted { .. }
            | Msg::Refused { .. }
            | Msg::ListPrefix { .. }
            | Msg::ListReply { .. }) => self.on_ops_msg(from, msg),
            msg @ (Msg::PutGrant { .. } | Msg::PutAck { .. }) => self.on_put_msg(from, msg),
            msg @ (Msg::MetaInfo { .. }
            | Msg::ReadReq { .. }
            | Msg::ReadChunk { .. }
            | Msg::ReadEnd { .. }
            | Msg::ReadAck { .. }
            | Msg::ReadFailed { .. }
            | Msg::ReadCancel { .. }) => self.on_read_msg(from, msg),
            msg @ (Msg::DeleteUpTo { .. }
            | Msg::DropVersion { .. }
            | Msg::WriteChunk { .. }
            | Msg::WriteEnd { .. }
            | Msg::WriteAbort { .. }) => self.on_replica_msg(from, msg),
            msg @ (Msg::WriteAck { .. } | Msg::WriteDone { .. } | Msg::WriteFailed { .. }) => {
                self.on_upload_msg(from, msg)
            }
            msg @ (Msg::HoldingReport { .. }
            | Msg::HoldingAck { .. }
            | Msg::Replicate { .. }
            | Msg::ReplicateBusy { .. }
            | Msg::ReplicateDone { .. }) => self.on_repair_msg(from, msg),
            msg @ Msg::WriteStaged { .. } => self.on_staged_msg(from, msg),
        }
    }
}

impl Machine for SdfsCore {
    type Input = Input;
    type Effect = Effect;

    /// Feeds one input; returns the effects to execute, in order.
    fn handle(&mut self, now: Millis, input: Input) -> Vec<Effect> {
        let gap = now.saturating_sub(self.now);
        if self.now > 0 && gap >= self.cfg.pause_ms && !self.meta.is_empty() {
            self.meta.clear();
            self.log(Event::Paused { gap_ms: gap });
        }
        self.now = self.now.max(now);
        match input {
            Input::Start => self.set_sweep_timer(),
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
}
