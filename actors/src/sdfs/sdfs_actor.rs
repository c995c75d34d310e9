//! SdfsActor: the thin shell around the SDFS core ([`crate::sdfs::SdfsCore`]). It runs on
//! its own arbiter (store calls block on fsync), feeds the core peer messages, console
//! commands and membership views, and executes its effects: sends, reads of a put's
//! source (bytes in memory, or a tool's file pulled range by range through its transfer
//! session, `sessions.rs`), deliveries to a get's sink (memory, or a tool's session,
//! whose lagging reads hold the holders' chunks back), replies, timers, logs, and (with `transfer = "scp"`) copies over SSH on
//! threads of their own. It never opens a path named in a command. Console text is made
//! in [`crate::control::sdfs_text`]; every protocol decision is the core's.
//!
//! Not under `actix::Supervisor`: a supervisor restarts only an actor that stopped
//! itself, and this one never does (a panic unwinds its arbiter thread, which no
//! supervisor survives). A rebuilt actor would also lose the in-memory protocol state
//! (ops in flight and their waiting callers, grants, uploads) and would have no
//! membership view until the next change, so recovery is a node restart: the store on
//! disk is reopened and the cluster treats the gap as a crash it already re-replicates.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rand::Rng;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::clock;
use crate::config::{Config, Transfer};
use crate::control::{self, sdfs_text, Command, Outcome, Reply as CtlReply};
use crate::machine::Machine;
use crate::membership::membership_actor::View;
use crate::net::body::Body;
use crate::net::transport::Transport;
use crate::net::wire::Lane;
use crate::sdfs::core::{staging_file_name, STAGING_DIR};
use crate::sdfs::local_io::{deliver, prepare_staging, Sink, Source, StageSource};
use crate::sdfs::msg::XferId;
use crate::sdfs::name::bad_name;
use crate::sdfs::scp;
use crate::sdfs::sessions::{Data, Kind, Sessions, Want, SPOOL_DIR};
use crate::sdfs::{
    Command as SdfsCommand, Effect, Event, Input, LocalStore, OpId, Reply, SdfsConfig, SdfsCore,
    SdfsError, SdfsName, StoreConfig, PAGE_MAX,
};
use crate::types::Millis;
use crate::types::NodeAddr;

/// Inputs handled per mailbox turn before yielding, so a long local stream (a put whose
/// every replica is this node) cannot starve other messages.
const INPUTS_PER_TURN: usize = 256;

/// An SDFS protocol message from a peer (or from this node to itself).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromPeer {
    pub from: NodeAddr,
    pub msg: crate::sdfs::Msg,
}

/// A console command: the transfers of put, get and get-versions, delete, ls,
/// ls-prefix, store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Exec {
    pub cmd: Command,
    pub reply: oneshot::Sender<Outcome>,
}

/// Store bytes held in memory as a new version of `name` (used by inference jobs).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PutBytes {
    pub name: String,
    pub data: Vec<u8>,
    /// The stored version, or a one-line error.
    pub reply: oneshot::Sender<Result<u64, String>>,
}

/// Fetch the latest version of `name` into memory (used by inference jobs).
#[derive(Message)]
#[rtype(result = "()")]
pub struct GetBytes {
    pub name: String,
    /// The version read and its bytes, or a one-line error.
    pub reply: oneshot::Sender<Result<(u64, Vec<u8>), String>>,
}

/// One page of the names under a prefix, after `after` (used by inference jobs): the
/// names and the cursor of the next page, if any.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ListPrefix {
    pub prefix: String,
    pub after: Option<String>,
    pub reply: oneshot::Sender<Result<NamesPage, String>>,
}

/// A page of names and the cursor of the next one.
pub type NamesPage = (Vec<String>, Option<String>);

/// A staging copy (scp) finished on its thread.
#[derive(Message)]
#[rtype(result = "()")]
struct Staged {
    xfer: XferId,
    to: NodeAddr,
    result: Result<(u64, u32), String>,
}

/// Continue draining the input queue on the next mailbox turn.
#[derive(Message)]
#[rtype(result = "()")]
struct Continue;

/// Who is waiting for an op, and how they want the answer.
enum Done {
    Exec(oneshot::Sender<Outcome>),
    /// A tool's put: the answer goes to the session's waiting request.
    Transfer(u64),
    /// A tool's get: the answer follows the session's last piece.
    Stream(u64),
    PutBytes(oneshot::Sender<Result<u64, String>>),
    GetBytes(oneshot::Sender<Result<(u64, Vec<u8>), String>>),
    List(oneshot::Sender<Result<NamesPage, String>>),
}

struct OpState {
    source: Source,
    sink: Sink,
    done: Done,
}

/// What the scp transfer needs: credentials and every node's staging directory.
struct ScpShell {
    creds: scp::Credentials,
    config: Config,
}

pub struct SdfsActor {
    me: NodeAddr,
    transport: Transport<Body>,
    core: SdfsCore,
    next_op: OpId,
    ops: HashMap<OpId, OpState>,
    /// Tools' puts and gets in flight.
    sessions: Sessions,
    queue: VecDeque<Input>,
    continue_pending: bool,
    /// Inside [`SdfsActor::pump`]: new inputs only queue.
    pumping: bool,
    scp: Option<ScpShell>,
    /// Sends refused by a full peer queue since the last log line, and when that was:
    /// the protocol sends them again, so a burst is one line a second, not one per drop.
    dropped: u64,
    dropped_logged: Millis,
}

impl SdfsActor {
    /// Opens the node's store under `config.node_data_dir(..)/sdfs`.
    pub fn new(config: &Config, me: NodeAddr, transport: Transport<Body>) -> Result<Self, String> {
        let spec = config
            .node(&me)
            .ok_or_else(|| format!("{me} is not a configured node"))?;
        let root = config.node_data_dir(spec).join("sdfs");
        let store = LocalStore::open(
            &root,
            StoreConfig {
                keep_versions: config.sdfs.versions_kept,
            },
        )
        .map_err(|e| format!("cannot open the store at {}: {e}", root.display()))?;
        let scp = match config.sdfs.transfer {
            Transfer::Native => None,
            Transfer::Scp => {
                let creds = scp::load(&config.sdfs).map_err(|e| e.to_string())?;
                // Copies arrive as the SSH account, which may not be the node's user.
                let staging = root.join(STAGING_DIR);
                prepare_staging(&staging)
                    .map_err(|e| format!("cannot prepare {}: {e}", staging.display()))?;
                Some(ScpShell {
                    creds,
                    config: config.clone(),
                })
            }
        };
        let spool = root.join(SPOOL_DIR);
        let sessions = Sessions::open(spool.clone())
            .map_err(|e| format!("cannot prepare {}: {e}", spool.display()))?;
        let mut rng = rand::thread_rng();
        let mut cfg = SdfsConfig::new(me.clone());
        cfg.replicas = config.replicas();
        cfg.keep_versions = config.sdfs.versions_kept;
        cfg.id_seed = rng.gen();
        cfg.staged = scp.is_some();
        Ok(SdfsActor {
            me,
            transport,
            core: SdfsCore::new(cfg, store),
            // Op ids travel to primaries; a fresh random base keeps a restarted node's
            // ids apart from answers meant for its previous life.
            next_op: u64::from(rng.gen::<u32>()) << 32,
            ops: HashMap::new(),
            sessions,
            queue: VecDeque::new(),
            continue_pending: false,
            pumping: false,
            scp,
            dropped: 0,
            dropped_logged: 0,
        })
    }

    fn feed(&mut self, input: Input, ctx: &mut Context<Self>) {
        self.queue.push_back(input);
        // An effect that starts a new command (a directory put's next file, after a reply)
        // feeds from inside `pump`: the input waits in the queue instead of nesting
        // another pump, so a chain of thousands of synchronous answers cannot grow the
        // stack of the SDFS thread.
        if !self.pumping {
            self.pump(ctx);
        }
    }

    /// Runs queued inputs through the core and executes the effects. Sends to this node
    /// and source reads come back as new queued inputs, never as recursion.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        self.pumping = true;
        for _ in 0..INPUTS_PER_TURN {
            let Some(input) = self.queue.pop_front() else {
                break;
            };
            // A lagging tool's get: its chunks wait before the core acknowledges them.
            let Some(input) = self.hold_back(input) else {
                continue;
            };
            let effects = self.core.handle(clock::now(), input);
            for e in effects {
                self.execute(e, ctx);
            }
        }
        self.pumping = false;
        if !self.queue.is_empty() && !self.continue_pending {
            self.continue_pending = true;
            ctx.notify(Continue);
        }
    }

    fn execute(&mut self, effect: Effect, ctx: &mut Context<Self>) {
        match effect {
            Effect::Send { to, msg } => {
                if to == self.me {
                    self.queue.push_back(Input::Peer {
                        from: self.me.clone(),
                        msg,
                    });
                    return;
                }
                crate::metrics::sdfs_msg(false, &msg);
                let lane = match msg.lane() {
                    crate::sdfs::Lane::Control => Lane::Control,
                    crate::sdfs::Lane::Bulk => Lane::Bulk,
                };
                // A refused send is a lost message: the protocol sends it again (every
                // request, report and order is resent until answered).
                if let Err(e) = self.transport.send(&to, lane, Body::Sdfs(msg)) {
                    self.dropped += 1;
                    let now = clock::now();
                    if now.saturating_sub(self.dropped_logged) >= 1_000 {
                        warn!(
                            peer = %to,
                            "sdfs sends dropped (peer queue full): {} since the last such \
                             line, last: {e}; the protocol sends them again",
                            self.dropped
                        );
                        self.dropped = 0;
                        self.dropped_logged = now;
                    }
                }
            }
            Effect::ReadSource { op, offset, len } => {
                if let Some(Source::Remote(session)) = self.ops.get(&op).map(|s| &s.source) {
                    // The tool sends the range with its next request.
                    match self.sessions.want(*session, offset, len) {
                        Want::Gone => {
                            let error = "the dml ctl side ended the put".to_string();
                            self.queue.push_back(Input::SourceFailed { op, error });
                        }
                        Want::Asked => {}
                        Want::Ready(data) => {
                            self.queue.push_back(Input::Source { op, offset, data });
                        }
                    }
                    return;
                }
                let input = match self.read_source(op, offset, len) {
                    Ok(data) => Input::Source { op, offset, data },
                    Err(error) => Input::SourceFailed { op, error },
                };
                self.queue.push_back(input);
            }
            Effect::Deliver { op, item } => {
                if let Some(st) = self.ops.get_mut(&op) {
                    if let Sink::Remote(session) = st.sink {
                        self.sessions.piece(session, piece(item));
                    } else {
                        deliver(&mut st.sink, item);
                    }
                }
            }
            Effect::Reply { op, result } => self.finish(op, result),
            Effect::SetTimer { at, timer } => {
                let after = at.saturating_sub(clock::now());
                ctx.run_later(Duration::from_millis(after), move |act, ctx| {
                    act.feed(Input::Timer(timer), ctx)
                });
            }
            Effect::Event(ev) => log_event(&ev),
            Effect::Stage { op, xfer, to } => self.stage(op, xfer, to, ctx),
        }
    }

    fn read_source(&mut self, op: OpId, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let st = self
            .ops
            .get_mut(&op)
            .ok_or_else(|| "the put is gone".to_string())?;
        st.source.read(offset, len)
    }

    /// Starts a copy of op's source into `to`'s staging directory on a thread; the
    /// result comes back as [`Staged`].
    fn stage(&mut self, op: OpId, xfer: XferId, to: NodeAddr, ctx: &mut Context<Self>) {
        let addr = ctx.address();
        let fail = |error: String| Staged {
            xfer,
            to: to.clone(),
            result: Err(error),
        };
        let Some(shell) = &self.scp else {
            addr.do_send(fail("scp transfer is not configured".into()));
            return;
        };
        let Some(spec) = shell.config.node(&to) else {
            addr.do_send(fail(format!("{to} is not a configured node")));
            return;
        };
        let remote = shell
            .config
            .node_data_dir(spec)
            .join("sdfs")
            .join(STAGING_DIR)
            .join(staging_file_name(&self.me, xfer));
        let host = to
            .as_str()
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or("")
            .to_string();
        let source = match self.ops.get(&op).map(|s| &s.source) {
            Some(Source::File { path, .. }) => StageSource::File(path.clone()),
            Some(Source::Bytes(b)) => StageSource::Bytes(b.clone()),
            _ => {
                addr.do_send(fail("the put has no source".into()));
                return;
            }
        };
        let creds = shell.creds.clone();
        let spawned = std::thread::Builder::new()
            .name("sdfs-scp".into())
            .spawn(move || {
                let result = source
                    .push(&creds, &host, &remote)
                    .map_err(|e| e.to_string());
                addr.do_send(Staged { xfer, to, result });
            });
        if let Err(e) = spawned {
            warn!("cannot start an scp thread: {e}");
        }
    }

    fn new_op(&mut self, source: Source, sink: Sink, done: Done) -> OpId {
        self.next_op = self.next_op.wrapping_add(1);
        let op = self.next_op;
        self.ops.insert(op, OpState { source, sink, done });
        op
    }

    fn start(&mut self, op: OpId, cmd: SdfsCommand, ctx: &mut Context<Self>) {
        self.feed(Input::Command { op, cmd }, ctx);
    }

    /// Ends an op and answers whoever waits.
    fn finish(&mut self, op: OpId, result: Result<Reply, SdfsError>) {
        let Some(st) = self.ops.remove(&op) else {
            return;
        };
        let result = result.map_err(|e| e.to_string());
        let bytes = match st.sink {
            Sink::Memory(b) => Some(b),
            Sink::None | Sink::Remote(_) => None,
        };
        match st.done {
            Done::Exec(tx) => {
                let _ = tx.send(result.map(|r| sdfs_text::reply(&r, None)));
            }
            Done::Transfer(session) => {
                let outcome = result.map(|r| sdfs_text::reply(&r, None));
                self.sessions.put_ended(session, outcome);
            }
            Done::Stream(session) => {
                let outcome = result.map(|r| CtlReply::transfer(control::Transfer::Done(r)));
                self.sessions.get_ended(session, outcome);
            }
            Done::PutBytes(tx) => {
                let _ = tx.send(result.and_then(|r| match r {
                    Reply::Put { version, .. } => Ok(version),
                    other => Err(format!("unexpected reply {other:?}")),
                }));
            }
            Done::GetBytes(tx) => {
                let _ = tx.send(result.and_then(|r| match r {
                    Reply::Get { version, .. } => Ok((version, bytes.unwrap_or_default())),
                    other => Err(format!("unexpected reply {other:?}")),
                }));
            }
            Done::List(tx) => {
                let _ = tx.send(result.and_then(|r| match r {
                    Reply::Names { names, next } => Ok((
                        names.into_iter().map(|n| n.to_string()).collect(),
                        next.map(|n| n.to_string()),
                    )),
                    other => Err(format!("unexpected reply {other:?}")),
                }));
            }
        }
    }

    /// `Some(input)` to feed to the core now, `None` if it is a chunk (or the end) of a
    /// tool's get whose queue is full: parked in the session until the tool reads on.
    fn hold_back(&mut self, input: Input) -> Option<Input> {
        let xfer = match &input {
            Input::Peer {
                msg:
                    crate::sdfs::Msg::ReadChunk { xfer, .. } | crate::sdfs::Msg::ReadEnd { xfer, .. },
                ..
            } => *xfer,
            _ => return Some(input),
        };
        let session = match self.core.reader_op(xfer).and_then(|op| self.ops.get(&op)) {
            Some(OpState {
                sink: Sink::Remote(session),
                ..
            }) => *session,
            _ => return Some(input),
        };
        self.sessions.park(session, input)
    }

    // ---- console commands ----

    fn exec(&mut self, cmd: Command, reply: oneshot::Sender<Outcome>, ctx: &mut Context<Self>) {
        let name = |s: &str| SdfsName::parse(s).map_err(|e| bad_name(s, &e));
        // An operator may read what the jobs layer wrote, never write or delete it.
        let writable = |s: &str| {
            name(s).and_then(|n| {
                if n.is_jobs_only() {
                    Err(sdfs_text::jobs_only(&n))
                } else {
                    Ok(n)
                }
            })
        };
        let prepared = match cmd {
            Command::PutBegin { name: n } => match writable(&n) {
                Ok(sdfs) => return self.put_begin(sdfs, reply, ctx),
                Err(e) => Err(e),
            },
            Command::PutData {
                session,
                offset,
                data,
            } => {
                match self.sessions.data(session, offset, data, reply) {
                    Data::Feed { op, offset, data } => {
                        self.feed(Input::Source { op, offset, data }, ctx)
                    }
                    Data::Spooled { name, path } => self.put_spooled(session, name, path, ctx),
                    Data::Nothing => {}
                }
                return;
            }
            Command::GetBegin { name: n, versions } => match name(&n) {
                Ok(sdfs) => return self.get_begin(sdfs, versions, reply, ctx),
                Err(e) => Err(e),
            },
            Command::GetData { session } => {
                let parked = self.sessions.next_piece(session, reply);
                if !parked.is_empty() {
                    self.queue.extend(parked);
                    self.pump(ctx);
                }
                return;
            }
            Command::TransferEnd { session } => {
                if let Some(s) = self.sessions.remove(session) {
                    if let Kind::Pull { op, .. } | Kind::Spooled { op, .. } = s.kind {
                        let error = "the dml ctl side ended the put".to_string();
                        self.feed(Input::SourceFailed { op, error }, ctx);
                    }
                }
                let _ = reply.send(Ok(CtlReply::new("", serde_json::json!({}))));
                return;
            }
            Command::Delete { name: n } => writable(&n)
                .map(|sdfs| (Source::None, Sink::None, SdfsCommand::Delete { name: sdfs })),
            Command::Ls { name: n } => {
                name(&n).map(|sdfs| (Source::None, Sink::None, SdfsCommand::Ls { name: sdfs }))
            }
            Command::LsPrefix {
                prefix,
                after,
                limit,
            } => {
                let limit = limit.unwrap_or(PAGE_MAX);
                let cmd = SdfsCommand::LsPrefix {
                    prefix,
                    after,
                    limit,
                };
                Ok((Source::None, Sink::None, cmd))
            }
            Command::Store { after, limit } => {
                let limit = limit.unwrap_or(PAGE_MAX);
                let cmd = SdfsCommand::Store { after, limit };
                Ok((Source::None, Sink::None, cmd))
            }
            other => Err(format!("{other:?} is not an SDFS command")),
        };
        match prepared {
            Ok((source, sink, cmd)) => {
                let op = self.new_op(source, sink, Done::Exec(reply));
                self.start(op, cmd, ctx);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// A tool's put: the core pulls the source from the tool range by range; with the
    /// scp transfer, which copies whole files, it is spooled here first.
    fn put_begin(
        &mut self,
        name: SdfsName,
        reply: oneshot::Sender<Outcome>,
        ctx: &mut Context<Self>,
    ) {
        if self.scp.is_some() {
            if let Err(e) = self.sessions.start_spool(name, reply) {
                warn!("sdfs: {e}");
            }
            return;
        }
        let session = self.sessions.new_id();
        let op = self.new_op(Source::Remote(session), Sink::None, Done::Transfer(session));
        self.sessions.insert(session, Kind::pull(op), Some(reply));
        self.start(op, SdfsCommand::Put { name }, ctx);
    }

    /// A tool's get (`versions`: get-versions' K), streamed piece by piece.
    fn get_begin(
        &mut self,
        name: SdfsName,
        versions: Option<usize>,
        reply: oneshot::Sender<Outcome>,
        ctx: &mut Context<Self>,
    ) {
        let session = self.sessions.new_id();
        let cmd = match versions {
            Some(k) => SdfsCommand::GetVersions { name, k },
            None => SdfsCommand::Get { name },
        };
        let op = self.new_op(Source::None, Sink::Remote(session), Done::Stream(session));
        self.sessions.insert(session, Kind::stream(), Some(reply));
        self.start(op, cmd, ctx);
    }

    /// The spooled source of a put (scp transfer) is complete: store it.
    fn put_spooled(
        &mut self,
        session: u64,
        name: SdfsName,
        path: PathBuf,
        ctx: &mut Context<Self>,
    ) {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let outcome = Err(format!("cannot read the spooled put back: {e}"));
                self.sessions.put_ended(session, outcome);
                return;
            }
        };
        let source = Source::File {
            path: path.clone(),
            file,
        };
        let op = self.new_op(source, Sink::None, Done::Transfer(session));
        if let Some(s) = self.sessions.get_mut(session) {
            s.kind = Kind::Spooled { op, path };
        }
        self.start(op, SdfsCommand::Put { name }, ctx);
    }

    /// Gives up transfers no tool asked about for a while (the tool died or hung).
    fn expire_sessions(&mut self, ctx: &mut Context<Self>) {
        for op in self.sessions.expire(Instant::now()) {
            let error = "the dml ctl side went away".to_string();
            self.queue.push_back(Input::SourceFailed { op, error });
        }
        self.pump(ctx);
    }
}

/// A delivery as the tool receives it.
fn piece(item: crate::sdfs::Delivery) -> control::Piece {
    use crate::sdfs::Delivery;
    match item {
        Delivery::Begin { version } => control::Piece::Begin { version },
        Delivery::Chunk(data) => control::Piece::Chunk(data),
        Delivery::End { version, bytes } => control::Piece::End { version, bytes },
    }
}

fn log_event(ev: &Event) {
    crate::metrics::sdfs_event(ev);
    let wall = clock::wall_ms();
    match ev {
        Event::ChecksumMismatch { .. }
        | Event::DataLost { .. }
        | Event::StoreFailure { .. }
        | Event::RepairDeferred { .. }
        | Event::DiskFull { .. }
        | Event::ScrubDamage { .. }
        | Event::IncomingRefused { .. } => {
            warn!(wall, "sdfs: {ev}")
        }
        _ => info!(wall, "sdfs: {ev}"),
    }
}

impl Actor for SdfsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.feed(Input::Start, ctx);
        ctx.run_interval(Duration::from_secs(5), |act, ctx| act.expire_sessions(ctx));
        // For `/metrics`: a listing of the whole store, so every 15 s and on a thread of
        // its own (the store is shared by its clones), never on this actor's.
        let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let count = move |act: &mut Self| {
            if busy.swap(true, std::sync::atomic::Ordering::AcqRel) {
                return;
            }
            let (store, done) = (act.core.store().clone(), busy.clone());
            let spawned = std::thread::Builder::new()
                .name("dml-sdfs-count".into())
                .spawn(move || {
                    if let Ok(names) = store.names() {
                        crate::metrics::sdfs_stored(names.len());
                    }
                    done.store(false, std::sync::atomic::Ordering::Release);
                });
            if spawned.is_err() {
                busy.store(false, std::sync::atomic::Ordering::Release);
            }
        };
        count(self);
        ctx.run_interval(Duration::from_secs(15), move |act, _| count(act));
    }
}

impl Handler<FromPeer> for SdfsActor {
    type Result = ();
    fn handle(&mut self, m: FromPeer, ctx: &mut Context<Self>) {
        crate::metrics::sdfs_msg(true, &m.msg);
        self.feed(
            Input::Peer {
                from: m.from,
                msg: m.msg,
            },
            ctx,
        );
    }
}

impl Handler<Continue> for SdfsActor {
    type Result = ();
    fn handle(&mut self, _m: Continue, ctx: &mut Context<Self>) {
        self.continue_pending = false;
        self.pump(ctx);
    }
}

impl Handler<Staged> for SdfsActor {
    type Result = ();
    fn handle(&mut self, m: Staged, ctx: &mut Context<Self>) {
        if let Err(e) = &m.result {
            warn!(peer = %m.to, "sdfs: scp copy failed: {e}");
        }
        self.feed(
            Input::Staged {
                xfer: m.xfer,
                to: m.to,
                result: m.result,
            },
            ctx,
        );
    }
}

impl Handler<Exec> for SdfsActor {
    type Result = ();
    fn handle(&mut self, m: Exec, ctx: &mut Context<Self>) {
        self.exec(m.cmd, m.reply, ctx);
    }
}

impl Handler<PutBytes> for SdfsActor {
    type Result = ();
    fn handle(&mut self, m: PutBytes, ctx: &mut Context<Self>) {
        match SdfsName::parse(&m.name) {
            Ok(name) => {
                let source = Source::Bytes(std::sync::Arc::new(m.data));
                let op = self.new_op(source, Sink::None, Done::PutBytes(m.reply));
                self.start(op, SdfsCommand::Put { name }, ctx);
            }
            Err(e) => {
                let _ = m.reply.send(Err(bad_name(&m.name, &e)));
            }
        }
    }
}

impl Handler<GetBytes> for SdfsActor {
    type Result = ();
    fn handle(&mut self, m: GetBytes, ctx: &mut Context<Self>) {
        match SdfsName::parse(&m.name) {
            Ok(name) => {
                let op = self.new_op(
                    Source::None,
                    Sink::Memory(Vec::new()),
                    Done::GetBytes(m.reply),
                );
                self.start(op, SdfsCommand::Get { name }, ctx);
            }
            Err(e) => {
                let _ = m.reply.send(Err(bad_name(&m.name, &e)));
            }
        }
    }
}

impl Handler<ListPrefix> for SdfsActor {
    type Result = ();
    fn handle(&mut self, m: ListPrefix, ctx: &mut Context<Self>) {
        let op = self.new_op(Source::None, Sink::None, Done::List(m.reply));
        let cmd = SdfsCommand::LsPrefix {
            prefix: m.prefix,
            after: m.after,
            limit: PAGE_MAX,
        };
        self.start(op, cmd, ctx);
    }
}

impl Handler<View> for SdfsActor {
    type Result = ();
    fn handle(&mut self, m: View, ctx: &mut Context<Self>) {
        // Not in the cluster: no members at all, so commands fail with a clear error.
        let live = if m.joined { m.live() } else { Vec::new() };
        self.feed(Input::Members { live }, ctx);
    }
}
