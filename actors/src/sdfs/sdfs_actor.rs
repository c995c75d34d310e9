//! SdfsActor: the thin shell around the SDFS core ([`crate::sdfs::SdfsCore`]). It runs on
//! its own arbiter (store calls block on fsync), feeds the core peer messages, console
//! commands and membership views, and executes its effects: sends, reads of a put's
//! local source, writes to a get's local sink, replies, timers, logs, and (with
//! `transfer = "scp"`) copies over SSH on threads of their own. Console text is made in
//! [`crate::control::sdfs_text`]; every protocol decision is the core's.
//!
//! Not under `actix::Supervisor`: a supervisor restarts only an actor that stopped
//! itself, and this one never does (a panic unwinds its arbiter thread, which no
//! supervisor survives). A rebuilt actor would also lose the in-memory protocol state
//! (ops in flight and their waiting callers, grants, uploads) and would have no
//! membership view until the next change, so recovery is a node restart: the store on
//! disk is reopened and the cluster treats the gap as a crash it already re-replicates.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::time::Duration;

use actix::prelude::*;
use rand::Rng;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::clock;
use crate::config::{Config, Transfer};
use crate::control::{sdfs_text, Command, Outcome};
use crate::machine::Machine;
use crate::membership::membership_actor::View;
use crate::net::body::Body;
use crate::net::transport::Transport;
use crate::net::wire::Lane;
use crate::sdfs::core::{staging_file_name, STAGING_DIR};
use crate::sdfs::dir_put::{DirPut, PutLocalDone};
use crate::sdfs::local_io::{
    absolute, close_sink, deliver, dir_files, open_sink, prepare_staging, Sink, Source, StageSource,
};
use crate::sdfs::msg::XferId;
use crate::sdfs::scp;
use crate::sdfs::{
    Command as SdfsCommand, Effect, Event, Input, LocalStore, OpId, Reply, SdfsConfig, SdfsCore,
    SdfsError, SdfsName, StoreConfig,
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

/// A console command (put, get, delete, ls, ls-prefix, store, get-versions).
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
    pub reply: oneshot::Sender<Result<Vec<u8>, String>>,
}

/// Names under a prefix (used by inference jobs).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ListPrefix {
    pub prefix: String,
    pub reply: oneshot::Sender<Result<Vec<String>, String>>,
}

/// Store a local file, or every file under a local directory, as new versions (used by
/// [`crate::sdfs::client::SdfsClient::put_local`]; the console's `put` runs the same path).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PutLocal {
    /// A path on this node's disk.
    pub local: String,
    /// The SDFS name (a directory's files go under `name/...`).
    pub name: String,
    pub reply: oneshot::Sender<Result<PutLocalDone, String>>,
}

/// Who waits for a local put: the console (text) or an actor (typed).
enum PutReply {
    Console(oneshot::Sender<Outcome>),
    Typed(oneshot::Sender<Result<PutLocalDone, String>>),
}

impl PutReply {
    fn send(self, result: Result<PutLocalDone, String>) {
        match self {
            PutReply::Console(tx) => {
                let _ = tx.send(result.map(|d| sdfs_text::put_local(&d)));
            }
            PutReply::Typed(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

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
    /// A put of one local file.
    PutLocal(PutReply),
    PutBytes(oneshot::Sender<Result<u64, String>>),
    GetBytes(oneshot::Sender<Result<Vec<u8>, String>>),
    List(oneshot::Sender<Result<Vec<String>, String>>),
    /// One file of a directory put.
    DirFile {
        dir: u64,
        name: String,
    },
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
    /// Directory puts in flight, and who waits for each.
    dirs: HashMap<u64, (DirPut, PutReply)>,
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
            dirs: HashMap::new(),
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
                let input = match self.read_source(op, offset, len) {
                    Ok(data) => Input::Source { op, offset, data },
                    Err(error) => Input::SourceFailed { op, error },
                };
                self.queue.push_back(input);
            }
            Effect::Deliver { op, item } => {
                if let Some(st) = self.ops.get_mut(&op) {
                    deliver(&mut st.sink, item);
                }
            }
            Effect::Reply { op, result } => self.finish(op, result, ctx),
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

    /// Ends an op: finishes or discards its sink and answers whoever waits.
    fn finish(&mut self, op: OpId, result: Result<Reply, SdfsError>, ctx: &mut Context<Self>) {
        let Some(st) = self.ops.remove(&op) else {
            return;
        };
        let mut result = result.map_err(|e| e.to_string());
        let mut local = None;
        let mut bytes = None;
        match st.sink {
            Sink::File(f) => {
                local = Some(f.dest().display().to_string());
                if let Err(e) = close_sink(*f, result.is_ok()) {
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
            Sink::Memory(b) => bytes = Some(b),
            Sink::None => {}
        }
        match st.done {
            Done::Exec(tx) => {
                let _ = tx.send(result.map(|r| sdfs_text::reply(&r, local.as_deref())));
            }
            Done::PutLocal(tx) => tx.send(result.and_then(|r| match r {
                Reply::Put { name, version } => Ok(PutLocalDone::File {
                    name: name.to_string(),
                    version,
                }),
                other => Err(format!("unexpected reply {other:?}")),
            })),
            Done::PutBytes(tx) => {
                let _ = tx.send(result.and_then(|r| match r {
                    Reply::Put { version, .. } => Ok(version),
                    other => Err(format!("unexpected reply {other:?}")),
                }));
            }
            Done::GetBytes(tx) => {
                let _ = tx.send(result.map(|_| bytes.unwrap_or_default()));
            }
            Done::List(tx) => {
                let _ = tx.send(result.and_then(|r| match r {
                    Reply::Names(names) => Ok(names.into_iter().map(|n| n.to_string()).collect()),
                    other => Err(format!("unexpected reply {other:?}")),
                }));
            }
            Done::DirFile { dir, name } => self.dir_file_done(dir, name, result, ctx),
        }
    }

    // ---- console commands ----

    fn exec(&mut self, cmd: Command, reply: oneshot::Sender<Outcome>, ctx: &mut Context<Self>) {
        let name = |s: &str| SdfsName::parse(s).map_err(|e| format!("bad SDFS name {s:?}: {e}"));
        let prepared = match cmd {
            Command::Put { local, name: n } => match name(&n) {
                Ok(sdfs) => return self.put_local(&local, sdfs, PutReply::Console(reply), ctx),
                Err(e) => Err(e),
            },
            Command::Get { name: n, local } => name(&n).and_then(|sdfs| {
                let sink = open_sink(&local, &n, false)?;
                Ok((Source::None, sink, SdfsCommand::Get { name: sdfs }))
            }),
            Command::GetVersions { name: n, k, local } => name(&n).and_then(|sdfs| {
                let sink = open_sink(&local, &n, true)?;
                Ok((
                    Source::None,
                    sink,
                    SdfsCommand::GetVersions { name: sdfs, k },
                ))
            }),
            Command::Delete { name: n } => {
                name(&n).map(|sdfs| (Source::None, Sink::None, SdfsCommand::Delete { name: sdfs }))
            }
            Command::Ls { name: n } => {
                name(&n).map(|sdfs| (Source::None, Sink::None, SdfsCommand::Ls { name: sdfs }))
            }
            Command::LsPrefix { prefix } => {
                Ok((Source::None, Sink::None, SdfsCommand::LsPrefix { prefix }))
            }
            Command::Store => Ok((Source::None, Sink::None, SdfsCommand::Store)),
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

    /// Puts a local file, or every file under a local directory, as new versions.
    fn put_local(&mut self, local: &str, name: SdfsName, reply: PutReply, ctx: &mut Context<Self>) {
        let path = absolute(local);
        if path.is_dir() {
            match dir_files(&path, name.as_str()).and_then(|f| DirPut::new(&path, &name, f)) {
                Ok(d) => {
                    let id = self.next_op.wrapping_add(1);
                    self.next_op = id;
                    self.dirs.insert(id, (d, reply));
                    self.dir_pump(id, ctx);
                }
                Err(e) => reply.send(Err(e)),
            }
            return;
        }
        match File::open(&path) {
            Ok(file) => {
                let source = Source::File { path, file };
                let op = self.new_op(source, Sink::None, Done::PutLocal(reply));
                self.start(op, SdfsCommand::Put { name }, ctx);
            }
            Err(e) => reply.send(Err(format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// Starts the next files of a directory put, or answers when all are done.
    fn dir_pump(&mut self, dir: u64, ctx: &mut Context<Self>) {
        // A loop, not recursion through `dir_file_done`: a directory of thousands of
        // unreadable files must not grow the stack.
        loop {
            let Some((d, _)) = self.dirs.get_mut(&dir) else {
                return;
            };
            let starts = d.start_next();
            if d.is_done() {
                if let Some((d, reply)) = self.dirs.remove(&dir) {
                    reply.send(d.result());
                }
                return;
            }
            let mut unreadable = false;
            for (path, name) in starts {
                match File::open(&path) {
                    Ok(file) => {
                        let done = Done::DirFile {
                            dir,
                            name: name.to_string(),
                        };
                        let op = self.new_op(Source::File { path, file }, Sink::None, done);
                        self.start(op, SdfsCommand::Put { name }, ctx);
                    }
                    Err(e) => {
                        let err = format!("cannot read {}: {e}", path.display());
                        if let Some((d, _)) = self.dirs.get_mut(&dir) {
                            d.file_done(name.as_str(), Err(err));
                        }
                        unreadable = true;
                    }
                }
            }
            if !unreadable {
                return;
            }
        }
    }

    fn dir_file_done(
        &mut self,
        dir: u64,
        name: String,
        result: Result<Reply, String>,
        ctx: &mut Context<Self>,
    ) {
        let Some((d, _)) = self.dirs.get_mut(&dir) else {
            return;
        };
        let result = result.and_then(|r| match r {
            Reply::Put { version, .. } => Ok(version),
            other => Err(format!("unexpected reply {other:?}")),
        });
        if let Some(line) = d.file_done(&name, result) {
            info!("{line}");
        }
        self.dir_pump(dir, ctx);
    }
}

fn log_event(ev: &Event) {
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
    }
}

impl Handler<FromPeer> for SdfsActor {
    type Result = ();
    fn handle(&mut self, m: FromPeer, ctx: &mut Context<Self>) {
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

impl Handler<PutLocal> for SdfsActor {
    type Result = ();
    fn handle(&mut self, m: PutLocal, ctx: &mut Context<Self>) {
        match SdfsName::parse(&m.name) {
            Ok(name) => self.put_local(&m.local, name, PutReply::Typed(m.reply), ctx),
            Err(e) => {
                let _ = m
                    .reply
                    .send(Err(format!("bad SDFS name {:?}: {e}", m.name)));
            }
        }
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
                let _ = m
                    .reply
                    .send(Err(format!("bad SDFS name {:?}: {e}", m.name)));
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
                let _ = m
                    .reply
                    .send(Err(format!("bad SDFS name {:?}: {e}", m.name)));
            }
        }
    }
}

impl Handler<ListPrefix> for SdfsActor {
    type Result = ();
    fn handle(&mut self, m: ListPrefix, ctx: &mut Context<Self>) {
        let op = self.new_op(Source::None, Sink::None, Done::List(m.reply));
        self.start(op, SdfsCommand::LsPrefix { prefix: m.prefix }, ctx);
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
