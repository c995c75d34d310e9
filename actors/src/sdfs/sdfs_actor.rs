//! SdfsActor: the thin shell around the SDFS core ([`crate::sdfs::SdfsCore`]). It runs on
//! its own arbiter (store calls block on fsync), feeds the core peer messages, console
//! commands and membership views, and executes its effects: sends, reads of a put's
//! local source, writes to a get's local sink, replies, timers, logs, and (with
//! `transfer = "scp"`) copies over SSH on threads of their own.

#[path = "scp.rs"]
pub mod scp;

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::prelude::*;
use rand::Rng;
use serde_json::json;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::clock;
use crate::config::{Config, Transfer};
use crate::control::{Command, Outcome, Reply as CtlReply};
use crate::membership::membership_actor::View;
use crate::net::body::Body;
use crate::sdfs::core::staging_file_name;
use crate::sdfs::msg::XferId;
use crate::sdfs::{
    Command as SdfsCommand, Delivery, Effect, Event, Input, LocalStore, OpId, Reply, SdfsConfig,
    SdfsCore, SdfsError, SdfsName, StoreConfig,
};
use crate::net::transport::Transport;
use crate::types::NodeAddr;
use crate::net::wire::Lane;

/// Inputs handled per mailbox turn before yielding, so a long local stream (a put whose
/// every replica is this node) cannot starve other messages.
const INPUTS_PER_TURN: usize = 256;
/// Files of a directory put in flight at once.
const DIR_PARALLELISM: usize = 4;

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

/// Where a put's bytes come from.
enum Source {
    None,
    File { path: PathBuf, file: File },
    Bytes(std::sync::Arc<Vec<u8>>),
}

/// A local file being fetched: written to `tmp` and renamed onto `dest` on success.
struct FileSink {
    dest: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    /// get-versions: the current version goes to a side file first, so its delimiter
    /// line can carry its size.
    part: Option<(PathBuf, BufWriter<File>)>,
    versions: bool,
    name: String,
    /// The first write error; the op then fails and the output is discarded.
    error: Option<String>,
}

enum Sink {
    None,
    File(Box<FileSink>),
    Memory(Vec<u8>),
}

/// Who is waiting for an op, and how they want the answer.
enum Done {
    Exec(oneshot::Sender<Outcome>),
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

/// A directory put: files queued, in flight, and the results so far.
struct DirPut {
    prefix: String,
    queue: VecDeque<(PathBuf, SdfsName)>,
    running: usize,
    total: usize,
    stored: Vec<(String, u64)>,
    errors: Vec<String>,
    reply: oneshot::Sender<Outcome>,
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
    dirs: HashMap<u64, DirPut>,
    queue: VecDeque<Input>,
    continue_pending: bool,
    scp: Option<ScpShell>,
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
                let staging = root.join(crate::sdfs::core::STAGING_DIR);
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
            scp,
        })
    }

    fn feed(&mut self, input: Input, ctx: &mut Context<Self>) {
        self.queue.push_back(input);
        self.pump(ctx);
    }

    /// Runs queued inputs through the core and executes the effects. Sends to this node
    /// and source reads come back as new queued inputs, never as recursion.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        for _ in 0..INPUTS_PER_TURN {
            let Some(input) = self.queue.pop_front() else {
                return;
            };
            let effects = self.core.handle(clock::now(), input);
            for e in effects {
                self.execute(e, ctx);
            }
        }
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
                // A refused send is a lost message: the protocol's timeouts retry.
                if let Err(e) = self.transport.send(&to, lane, Body::Sdfs(msg)) {
                    warn!(peer = %to, "sdfs send dropped: {e}");
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
            Effect::SetTimer { after, timer } => {
                ctx.run_later(Duration::from_millis(after), move |act, ctx| {
                    act.feed(Input::Timer(timer), ctx)
                });
            }
            Effect::Log(ev) => log_event(&ev),
            Effect::Stage { op, xfer, to } => self.stage(op, xfer, to, ctx),
        }
    }

    fn read_source(&mut self, op: OpId, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let st = self
            .ops
            .get_mut(&op)
            .ok_or_else(|| "the put is gone".to_string())?;
        match &mut st.source {
            Source::File { path, file } => {
                let mut read = || -> io::Result<Vec<u8>> {
                    file.seek(SeekFrom::Start(offset))?;
                    let mut buf = Vec::with_capacity(len);
                    Read::by_ref(file).take(len as u64).read_to_end(&mut buf)?;
                    Ok(buf)
                };
                read().map_err(|e| format!("{}: {e}", path.display()))
            }
            Source::Bytes(b) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let end = start.saturating_add(len).min(b.len());
                Ok(b.get(start..end).unwrap_or_default().to_vec())
            }
            Source::None => Err("this op has no source".into()),
        }
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
            .join(crate::sdfs::core::STAGING_DIR)
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
                local = Some(f.dest.display().to_string());
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
                // `ls` of a name with no version is an error, like `get` of it.
                if let Ok(Reply::Ls { name, versions }) = &result {
                    if versions.is_empty() {
                        result = Err(SdfsError::NoSuchFile(name.clone()).to_string());
                    }
                }
                let _ = tx.send(result.map(|r| ctl_reply(&r, local.as_deref())));
            }
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
                Ok(sdfs) => return self.exec_put(&local, sdfs, reply, ctx),
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

    fn exec_put(
        &mut self,
        local: &str,
        name: SdfsName,
        reply: oneshot::Sender<Outcome>,
        ctx: &mut Context<Self>,
    ) {
        let path = absolute(local);
        if path.is_dir() {
            match dir_files(&path, name.as_str()) {
                Ok(files) if files.is_empty() => {
                    let _ = reply.send(Err(format!("{}: no files to put", path.display())));
                }
                Ok(files) => {
                    let id = self.next_op.wrapping_add(1);
                    self.next_op = id;
                    self.dirs.insert(
                        id,
                        DirPut {
                            prefix: name.to_string(),
                            total: files.len(),
                            queue: files.into(),
                            running: 0,
                            stored: Vec::new(),
                            errors: Vec::new(),
                            reply,
                        },
                    );
                    self.dir_pump(id, ctx);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
            return;
        }
        match File::open(&path) {
            Ok(file) => {
                let op = self.new_op(Source::File { path, file }, Sink::None, Done::Exec(reply));
                self.start(op, SdfsCommand::Put { name }, ctx);
            }
            Err(e) => {
                let _ = reply.send(Err(format!("cannot read {}: {e}", path.display())));
            }
        }
    }

    /// Starts the next files of a directory put, or answers when all are done.
    fn dir_pump(&mut self, dir: u64, ctx: &mut Context<Self>) {
        let mut starts = Vec::new();
        if let Some(d) = self.dirs.get_mut(&dir) {
            while d.running < DIR_PARALLELISM {
                let Some(next) = d.queue.pop_front() else {
                    break;
                };
                d.running += 1;
                starts.push(next);
            }
            if d.running == 0 && d.queue.is_empty() {
                if let Some(d) = self.dirs.remove(&dir) {
                    answer_dir(d);
                }
                return;
            }
        }
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
                    let err = Err(format!("cannot read {}: {e}", path.display()));
                    self.dir_file_done(dir, name.to_string(), err, ctx);
                }
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
        let Some(d) = self.dirs.get_mut(&dir) else {
            return;
        };
        d.running = d.running.saturating_sub(1);
        match result {
            Ok(Reply::Put { version, .. }) => {
                d.stored.push((name.clone(), version));
                info!(
                    "put {}: [{}/{}] {name} v{version}",
                    d.prefix,
                    d.stored.len() + d.errors.len(),
                    d.total
                );
            }
            Ok(other) => d.errors.push(format!("{name}: unexpected reply {other:?}")),
            Err(e) => d.errors.push(format!("{name}: {e}")),
        }
        self.dir_pump(dir, ctx);
    }
}

/// Where a staging copy reads from.
enum StageSource {
    File(PathBuf),
    Bytes(std::sync::Arc<Vec<u8>>),
}

impl StageSource {
    fn push(
        &self,
        creds: &scp::Credentials,
        host: &str,
        remote: &Path,
    ) -> Result<(u64, u32), scp::ScpError> {
        match self {
            StageSource::File(p) => {
                let f = File::open(p).map_err(scp::ScpError::Source)?;
                let size = f.metadata().map_err(scp::ScpError::Source)?.len();
                scp::push(creds, host, remote, io::BufReader::new(f), size)
            }
            StageSource::Bytes(b) => scp::push(creds, host, remote, b.as_slice(), b.len() as u64),
        }
    }
}

/// The staging directory is written by the SSH account: sticky and writable by all
/// (like /tmp) when the node's user may differ. A staged file is only ever committed if
/// its size and CRC match what the writer announced over the authenticated transport.
fn prepare_staging(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir)?;
    // Leftovers of puts that never committed (crash, failed copy).
    for entry in fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_file() {
            let _ = fs::remove_file(&p);
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o1777))?;
    // The account must be able to reach the directory, too.
    let mut up = dir.parent();
    for _ in 0..2 {
        if let Some(p) = up {
            let mode = fs::metadata(p)?.permissions().mode();
            fs::set_permissions(p, fs::Permissions::from_mode(mode | 0o011))?;
            up = p.parent();
        }
    }
    Ok(())
}

fn log_event(ev: &Event) {
    let wall = clock::wall_ms();
    match ev {
        Event::ChecksumMismatch { .. } | Event::DataLost { .. } | Event::StoreFailure { .. } => {
            warn!(wall, "sdfs: {ev}")
        }
        _ => info!(wall, "sdfs: {ev}"),
    }
}

/// Resolves a local path against the node's working directory (`dml ctl` already sends
/// absolute paths; the interactive console may not).
fn absolute(local: &str) -> PathBuf {
    std::path::absolute(local).unwrap_or_else(|_| PathBuf::from(local))
}

/// Every regular file under `root` (symlinks are not followed), sorted, with its SDFS
/// name `prefix/relative/path`. Any name that fails validation fails the whole put, so
/// nothing is stored.
fn dir_files(root: &Path, prefix: &str) -> Result<Vec<(PathBuf, SdfsName)>, String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            let path = entry.path();
            let ft = entry
                .file_type()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let rel = path
                    .strip_prefix(root)
                    .ok()
                    .and_then(|r| r.to_str())
                    .ok_or_else(|| format!("{}: not a UTF-8 path", path.display()))?;
                let full = format!("{}/{rel}", prefix.trim_end_matches('/'));
                let name =
                    SdfsName::parse(&full).map_err(|e| format!("bad SDFS name {full:?}: {e}"))?;
                out.push((path, name));
            }
        }
    }
    out.sort_by(|a, b| a.1.as_str().cmp(b.1.as_str()));
    Ok(out)
}

fn answer_dir(d: DirPut) {
    let mut text = format!(
        "put {} files under {}/ ({} stored, {} failed)",
        d.total,
        d.prefix,
        d.stored.len(),
        d.errors.len()
    );
    for (i, (n, v)) in d.stored.iter().enumerate() {
        text.push_str(&format!("\n  [{}/{}] {n} v{v}", i + 1, d.total));
    }
    if let Some(first) = d.errors.first() {
        let _ = d.reply.send(Err(format!(
            "put {}/: {} of {} files failed; first: {first}",
            d.prefix,
            d.errors.len(),
            d.total
        )));
        return;
    }
    let stored: Vec<_> = d
        .stored
        .iter()
        .map(|(n, v)| json!({"name": n, "version": v}))
        .collect();
    let _ = d.reply.send(Ok(CtlReply::new(
        text,
        json!({"name": d.prefix, "files": d.total, "stored": stored}),
    )));
}

/// Opens the sink of a get: a temp file next to `local`, renamed onto it on success.
fn open_sink(local: &str, name: &str, versions: bool) -> Result<Sink, String> {
    let dest = absolute(local);
    let file_name = dest
        .file_name()
        .and_then(|f| f.to_str())
        .ok_or_else(|| format!("{local}: not a file path"))?;
    let parent = dest.parent().unwrap_or(Path::new("/"));
    let nonce: u64 = rand::thread_rng().gen();
    let tmp = parent.join(format!(".{file_name}.dml-{nonce:016x}.tmp"));
    let file = File::create(&tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    Ok(Sink::File(Box::new(FileSink {
        dest,
        tmp,
        out: BufWriter::new(file),
        part: None,
        versions,
        name: name.to_string(),
        error: None,
    })))
}

fn deliver(sink: &mut Sink, item: Delivery) {
    match sink {
        Sink::None => {}
        Sink::Memory(buf) => {
            if let Delivery::Chunk(data) = item {
                buf.extend_from_slice(&data);
            }
        }
        Sink::File(f) => {
            if f.error.is_some() {
                return;
            }
            if let Err(e) = deliver_file(f, item) {
                f.error = Some(format!("writing {}: {e}", f.dest.display()));
            }
        }
    }
}

fn deliver_file(f: &mut FileSink, item: Delivery) -> io::Result<()> {
    match item {
        Delivery::Begin { .. } if f.versions => {
            let part = f.tmp.with_extension("part");
            let file = File::create(&part)?;
            f.part = Some((part, BufWriter::new(file)));
        }
        Delivery::Begin { .. } => {}
        Delivery::Chunk(data) => match &mut f.part {
            Some((_, w)) => w.write_all(&data)?,
            None => f.out.write_all(&data)?,
        },
        Delivery::End { version, bytes } => {
            if let Some((path, w)) = f.part.take() {
                let file = w.into_inner().map_err(|e| e.into_error())?;
                drop(file);
                writeln!(
                    f.out,
                    "==== {} version {version} ({bytes} bytes) ====",
                    f.name
                )?;
                let mut r = File::open(&path)?;
                io::copy(&mut r, &mut f.out)?;
                f.out.write_all(b"\n")?;
                let _ = fs::remove_file(&path);
            }
        }
    }
    Ok(())
}

/// Commits (rename onto the destination) or discards a file sink; `Err` if the output
/// could not be written. A failed op leaves nothing behind.
fn close_sink(f: FileSink, commit: bool) -> Result<(), String> {
    let FileSink {
        dest,
        tmp,
        out,
        part,
        error,
        ..
    } = f;
    if let Some((p, _)) = part {
        let _ = fs::remove_file(p);
    }
    let flushed = out
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|file| file.sync_all());
    let result = match (error, flushed) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(format!("writing {}: {e}", dest.display())),
        (None, Ok(())) => Ok(()),
    };
    match result {
        Ok(()) if commit => {
            fs::rename(&tmp, &dest).map_err(|e| format!("cannot write {}: {e}", dest.display()))
        }
        Ok(()) => {
            let _ = fs::remove_file(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Text and JSON of a reply for the console and `dml ctl --json`.
fn ctl_reply(r: &Reply, local: Option<&str>) -> CtlReply {
    match r {
        Reply::Put { name, version } => CtlReply::new(
            format!("put {name}: version {version}"),
            json!({"name": name.as_str(), "version": version}),
        ),
        Reply::Get {
            name,
            version,
            bytes,
        } => CtlReply::new(
            format!(
                "got {name} version {version} ({bytes} bytes) into {}",
                local.unwrap_or("-")
            ),
            json!({"name": name.as_str(), "version": version, "bytes": bytes, "local": local}),
        ),
        Reply::GetVersions { name, versions } => CtlReply::new(
            format!(
                "got {} versions of {name} ({}) into {}",
                versions.len(),
                versions
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                local.unwrap_or("-")
            ),
            json!({"name": name.as_str(), "versions": versions, "local": local}),
        ),
        Reply::Deleted { name, tombstone } => CtlReply::new(
            format!("deleted {name} (versions up to {tombstone})"),
            json!({"name": name.as_str(), "deleted": true, "upto": tombstone}),
        ),
        Reply::Ls { name, versions } => {
            let mut text = format!("{name}:");
            if versions.is_empty() {
                text.push_str(" no versions");
            }
            for v in versions {
                let hs: Vec<&str> = v.holders.iter().map(|h| h.as_str()).collect();
                text.push_str(&format!("\n  version {}: {}", v.version, hs.join(", ")));
            }
            let latest = versions.first();
            CtlReply::new(
                text,
                json!({
                    "name": name.as_str(),
                    "version": latest.map(|v| v.version),
                    "holders": latest.map(|v| v.holders.iter().map(|h| h.as_str()).collect::<Vec<_>>()).unwrap_or_default(),
                    "versions": versions.iter().map(|v| json!({
                        "version": v.version,
                        "holders": v.holders.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                }),
            )
        }
        Reply::Names(names) => {
            let list: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
            CtlReply::new(
                if list.is_empty() {
                    "no names".to_string()
                } else {
                    list.join("\n")
                },
                json!(list),
            )
        }
        Reply::Store(holdings) => {
            let mut text = format!("{} names stored here:", holdings.len());
            for h in holdings {
                let vs: Vec<String> = h.versions.iter().map(|v| v.to_string()).collect();
                text.push_str(&format!("\n  {}  versions {}", h.name, vs.join(", ")));
            }
            CtlReply::new(
                text,
                json!(holdings
                    .iter()
                    .map(|h| json!({"name": h.name.as_str(), "versions": h.versions, "tombstone": h.tombstone}))
                    .collect::<Vec<_>>()),
            )
        }
    }
}

impl Actor for SdfsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for e in self.core.start(clock::now()) {
            self.execute(e, ctx);
        }
        self.pump(ctx);
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
        let live = m.live();
        self.feed(Input::Members { live }, ctx);
    }
}
