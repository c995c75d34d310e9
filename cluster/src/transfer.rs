//! The tool's side of `put`, `get`, `get-versions` and `C4 MODEL DIR`: the tool (not the
//! node) opens the operator's files and streams their bytes to and from the node with
//! the transfer commands (`PutBegin`/`PutData`, `GetBegin`/`GetData`, `TransferEnd`) on
//! the bulk lane, one chunk in memory at a time. A get writes a temp file next to its
//! destination and renames it into place only when every byte arrived; it replaces an
//! existing file only when forced, and leaves no temp file behind on any failure.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use dml_actors::control::{
    jobs_text, sdfs_text, Command, Outcome, Piece, Reply, Request, Transfer,
};
use dml_actors::net::body::Body;
use dml_actors::net::transport::{Client, Lane, TransportError};
use dml_actors::net::wire::Credential;
use dml_actors::sdfs::dir_put::{dir_files, DirPut, PutLocalDone, PARALLELISM};
use dml_actors::sdfs::MAX_CHUNK;

use crate::progress::{Mode, Progress};

/// How to reach a node: its address, the operator credential, and the connect and reply
/// bounds.
#[derive(Clone)]
pub(crate) struct Node {
    pub addr: String,
    pub cred: Credential,
    pub connect: Duration,
    pub reply: Duration,
    /// Show the progress of a directory put on stderr (an operator's tool).
    pub progress: bool,
}

impl Node {
    pub(crate) async fn connect(&self, lane: Lane) -> anyhow::Result<Client<Body>> {
        Client::<Body>::connect_lane(&self.addr, lane, &self.cred, self.connect)
            .await
            .with_context(|| format!("cannot reach node {}", self.addr))
    }
}

/// One command and its outcome on an open connection.
pub(crate) async fn request(
    client: &mut Client<Body>,
    node: &Node,
    cmd: Command,
) -> anyhow::Result<Outcome> {
    outcome(client.request(Body::Command(cmd), node.reply).await, node)
}

/// The outcome a node's answer carries.
fn outcome(answer: Result<Body, TransportError>, node: &Node) -> anyhow::Result<Outcome> {
    match answer {
        Ok(Body::Outcome(o)) => Ok(o),
        Ok(other) => Err(anyhow!(
            "node {} sent an unexpected answer: {}",
            node.addr,
            other.kind()
        )),
        Err(e) => Err(anyhow!("node {}: {e}", node.addr)),
    }
}

/// Runs `req` against `node`: an error is a transport failure, the node's (or the local
/// file's) refusal is the `Err` of the [`Outcome`].
pub(crate) async fn run(node: &Node, req: Request) -> anyhow::Result<Outcome> {
    match req {
        Request::Node(Command::C4 { model, input }) if Path::new(&input).is_dir() => {
            let dir = Path::new(&input);
            let base = dir
                .file_name()
                .map(|b| b.to_string_lossy().to_string())
                .unwrap_or_else(|| "input".into());
            let prefix = format!("inputs/{base}");
            if let Err(e) = put(node, dir, &prefix).await? {
                return Ok(Err(jobs_text::not_stored(&input, &e)));
            }
            let mut client = node.connect(Lane::Control).await?;
            let cmd = Command::C4 {
                model,
                input: prefix,
            };
            request(&mut client, node, cmd).await
        }
        Request::Node(cmd) if cmd.is_listing() => crate::listing::collect(node, cmd).await,
        Request::Node(cmd) => {
            let mut client = node.connect(Lane::Control).await?;
            request(&mut client, node, cmd).await
        }
        Request::Put { local, name } => put(node, Path::new(&local), &name).await,
        Request::Get { name, local, force } => get(node, &name, None, &local, force).await,
        Request::GetVersions {
            name,
            k,
            local,
            force,
        } => get(node, &name, Some(k), &local, force).await,
        Request::Results { job, out, force } => match out {
            None => crate::results::print(node, &job, false).await,
            Some(out) => crate::results::export(node, &job, Path::new(&out), force).await,
        },
    }
}

/// Stores the local file or every file under the local directory `local`.
async fn put(node: &Node, local: &Path, name: &str) -> anyhow::Result<Outcome> {
    if !local.is_dir() {
        let mut client = node.connect(Lane::Bulk).await?;
        return put_file(&mut client, node, local, name).await;
    }
    let prefix = match dml_actors::sdfs::SdfsName::parse(name) {
        Ok(p) => p,
        Err(e) => return Ok(Err(dml_actors::sdfs::name::bad_name(name, &e))),
    };
    let mut dir = match dir_files(local, name).and_then(|f| DirPut::new(local, &prefix, f)) {
        Ok(d) => d,
        Err(e) => return Ok(Err(e)),
    };
    let mut progress = node.progress.then(|| {
        let total = dir.total() as u64;
        Progress::new(format!("put {}/", prefix.as_str()), total, Mode::detect())
    });
    let mut idle: Vec<Client<Body>> = Vec::with_capacity(PARALLELISM);
    let mut running = tokio::task::JoinSet::new();
    loop {
        for (path, name) in dir.start_next() {
            let client = match idle.pop() {
                Some(c) => c,
                None => node.connect(Lane::Bulk).await?,
            };
            let node = node.clone();
            running.spawn(async move {
                let mut client = client;
                let name = name.to_string();
                let r = put_file(&mut client, &node, &path, &name).await;
                (client, name, r)
            });
        }
        if dir.is_done() {
            break;
        }
        let Some(joined) = running.join_next().await else {
            bail!("a directory put lost track of its files");
        };
        let (client, name, r) = joined.context("a file's put stopped")?;
        let result = match r {
            Ok(Ok(reply)) => {
                idle.push(client);
                version_of(&reply)
            }
            Ok(Err(e)) => {
                idle.push(client);
                Err(e)
            }
            // The connection is in an unknown state: the next file gets a new one.
            Err(e) => Err(format!("{e:#}")),
        };
        dir.file_done(&name, result);
        if let Some(p) = progress.as_mut() {
            p.update(dir.finished() as u64, dir.failed() as u64);
        }
    }
    if let Some(p) = progress.as_mut() {
        p.finish();
    }
    Ok(dir.result().map(|d: PutLocalDone| sdfs_text::put_local(&d)))
}

fn version_of(reply: &Reply) -> Result<u64, String> {
    serde_json::from_str::<serde_json::Value>(&reply.json)
        .ok()
        .and_then(|v| v["version"].as_u64())
        .ok_or_else(|| format!("a put answered without a version: {}", reply.json))
}

/// Streams one local file as a new version of `name`: the node asks for each range
/// (from the start again if it re-places the put), the file is read only here.
async fn put_file(
    client: &mut Client<Body>,
    node: &Node,
    path: &Path,
    name: &str,
) -> anyhow::Result<Outcome> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return Ok(Err(format!("cannot read {}: {e}", path.display()))),
    };
    let begin = Command::PutBegin {
        name: name.to_string(),
    };
    let mut answer = request(client, node, begin).await?;
    loop {
        let reply = match answer {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let (session, offset, len) = match reply.transfer {
            None => return Ok(Ok(reply)),
            Some(Transfer::Send {
                session,
                offset,
                len,
            }) => (session, offset, len),
            Some(other) => bail!("node {} answered a put with {other:?}", node.addr),
        };
        let data = match read_at(&mut file, offset, (len as usize).min(MAX_CHUNK)) {
            Ok(d) => d,
            Err(e) => {
                let _ = request(client, node, Command::TransferEnd { session }).await;
                return Ok(Err(format!("cannot read {}: {e}", path.display())));
            }
        };
        let data = Command::PutData {
            session,
            offset,
            data,
        };
        answer = request(client, node, data).await?;
    }
}

fn read_at(file: &mut File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len);
    Read::by_ref(file).take(len as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Fetches the latest version (`versions: None`) or the newest K into `local`.
async fn get(
    node: &Node,
    name: &str,
    versions: Option<usize>,
    local: &str,
    force: bool,
) -> anyhow::Result<Outcome> {
    // The destination is checked, and its temp file made, before the node is asked:
    // a get that cannot be written costs the cluster nothing.
    let mut sink = match LocalSink::create(Path::new(local), force, versions.is_some()) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    let mut client = node.connect(Lane::Bulk).await?;
    let begin = Command::GetBegin {
        name: name.to_string(),
        versions,
    };
    let mut answer = request(&mut client, node, begin).await?;
    let read = loop {
        let (session, pieces) = match answer {
            Err(e) => return Ok(Err(e)),
            Ok(Reply {
                transfer: Some(Transfer::Pieces { session, pieces }),
                ..
            }) => (session, pieces),
            Ok(Reply {
                transfer: Some(Transfer::Done(read)),
                ..
            }) => break read,
            Ok(other) => bail!("node {} answered a get with {other:?}", node.addr),
        };
        // The next pieces are asked for before these are written, so the node's round
        // trip overlaps with the write to disk.
        let next = client
            .start_request(Body::Command(Command::GetData { session }), node.reply)
            .await
            .map_err(|e| anyhow!("node {}: {e}", node.addr))?;
        if let Err(e) = pieces.into_iter().try_for_each(|p| sink.piece(name, p)) {
            let _ = request(&mut client, node, Command::TransferEnd { session }).await;
            return Ok(Err(e));
        }
        answer = outcome(client.reply(next, node.reply).await, node)?;
    };
    let dest = sink.commit()?;
    Ok(Ok(sdfs_text::reply(
        &read,
        Some(&dest.display().to_string()),
    )))
}

/// A get's destination: a temp file beside it, renamed onto it once complete, removed
/// (with get-versions' part file) when dropped uncommitted: any error, an interrupted
/// tool.
struct LocalSink {
    dest: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    force: bool,
    /// get-versions: each version goes to a part file first, so that its delimiter line
    /// can carry its size.
    versions: bool,
    part: Option<(PathBuf, BufWriter<File>)>,
}

static NONCE: AtomicU64 = AtomicU64::new(0);

/// A new file that no other process can have opened (O_EXCL).
fn create_new(path: &Path) -> Result<BufWriter<File>, String> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map(BufWriter::new)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

impl LocalSink {
    fn create(local: &Path, force: bool, versions: bool) -> Result<Self, String> {
        let dest = std::path::absolute(local).unwrap_or_else(|_| local.to_path_buf());
        if dest.is_dir() {
            return Err(format!("{}: is a directory", dest.display()));
        }
        if !force && fs::symlink_metadata(&dest).is_ok() {
            return Err(format!(
                "{}: already exists; use --force to replace it",
                dest.display()
            ));
        }
        let file_name = dest
            .file_name()
            .and_then(|f| f.to_str())
            .ok_or_else(|| format!("{}: not a file path", dest.display()))?;
        let parent = dest.parent().unwrap_or(Path::new("/"));
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32)
            ^ NONCE.fetch_add(1, Ordering::Relaxed);
        let tmp = parent.join(format!(".{file_name}.dml-{nonce:016x}.tmp"));
        let file = create_new(&tmp)?;
        Ok(LocalSink {
            dest,
            tmp,
            file: Some(file),
            force,
            versions,
            part: None,
        })
    }

    fn piece(&mut self, name: &str, piece: Piece) -> Result<(), String> {
        let dest = self.dest.display().to_string();
        let fail = |e: std::io::Error| format!("writing {dest}: {e}");
        let out = self.file.as_mut().ok_or("the get's file is closed")?;
        match piece {
            Piece::Begin { .. } if self.versions => {
                let path = self.tmp.with_extension("part.tmp");
                self.part = Some((path.clone(), create_new(&path)?));
            }
            Piece::Begin { .. } => {}
            Piece::Chunk(data) => match &mut self.part {
                Some((_, w)) => w.write_all(&data).map_err(fail)?,
                None => out.write_all(&data).map_err(fail)?,
            },
            Piece::End { version, bytes } => {
                if let Some((path, w)) = self.part.take() {
                    let copied = w.into_inner().map_err(|e| e.into_error()).and_then(|f| {
                        drop(f);
                        writeln!(out, "==== {name} version {version} ({bytes} bytes) ====")?;
                        std::io::copy(&mut File::open(&path)?, out)?;
                        out.write_all(b"\n")
                    });
                    let _ = fs::remove_file(&path);
                    copied.map_err(fail)?;
                }
            }
        }
        Ok(())
    }

    /// Makes the file durable and puts it in place; without `force`, never over a file
    /// that appeared meanwhile (a hard link fails when the name exists).
    fn commit(mut self) -> anyhow::Result<PathBuf> {
        let f = self.file.take().context("the get's file is closed")?;
        let file = f
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", self.dest.display()))?;
        file.sync_all()
            .with_context(|| format!("writing {}", self.dest.display()))?;
        drop(file);
        if self.force {
            fs::rename(&self.tmp, &self.dest)
        } else {
            fs::hard_link(&self.tmp, &self.dest).and_then(|()| fs::remove_file(&self.tmp))
        }
        .map_err(|e| anyhow!("cannot write {}: {e}", self.dest.display()))?;
        Ok(self.dest.clone())
    }
}

impl Drop for LocalSink {
    fn drop(&mut self) {
        // After a commit the temp name is gone already (renamed or unlinked).
        let _ = fs::remove_file(&self.tmp);
        if let Some((path, _)) = self.part.take() {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "dml-sink-{}-{}",
            std::process::id(),
            NONCE.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn temps(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn an_existing_file_is_kept_unless_forced() {
        let d = scratch();
        let dest = d.join("out");
        fs::write(&dest, b"mine").unwrap();
        let e = LocalSink::create(&dest, false, false).err().unwrap();
        assert!(e.contains("already exists; use --force"), "{e}");
        assert!(!e.contains('\n'));
        assert_eq!(fs::read(&dest).unwrap(), b"mine");
        let mut s = LocalSink::create(&dest, true, false).unwrap();
        s.piece("n", Piece::Chunk(b"theirs".to_vec())).unwrap();
        s.commit().unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"theirs");
        assert!(temps(&d).is_empty());
        let _ = fs::remove_dir_all(d);
    }

    #[test]
    fn an_uncommitted_sink_leaves_nothing() {
        let d = scratch();
        let dest = d.join("out");
        let mut s = LocalSink::create(&dest, false, true).unwrap();
        s.piece("n", Piece::Begin { version: 3 }).unwrap();
        s.piece("n", Piece::Chunk(b"half".to_vec())).unwrap();
        assert_eq!(temps(&d).len(), 2, "the file and get-versions' part");
        drop(s);
        assert!(temps(&d).is_empty());
        assert!(!dest.exists());
        let _ = fs::remove_dir_all(d);
    }

    #[test]
    fn get_versions_frames_each_version_with_its_size() {
        let d = scratch();
        let dest = d.join("out");
        let mut s = LocalSink::create(&dest, false, true).unwrap();
        for (v, data) in [(2u64, &b"new"[..]), (1, b"old!")] {
            s.piece("a/b", Piece::Begin { version: v }).unwrap();
            s.piece("a/b", Piece::Chunk(data.to_vec())).unwrap();
            let bytes = data.len() as u64;
            s.piece("a/b", Piece::End { version: v, bytes }).unwrap();
        }
        s.commit().unwrap();
        assert_eq!(
            fs::read_to_string(&dest).unwrap(),
            "==== a/b version 2 (3 bytes) ====\nnew\n==== a/b version 1 (4 bytes) ====\nold!\n"
        );
        assert!(temps(&d).is_empty());
        let _ = fs::remove_dir_all(d);
    }

    #[test]
    fn a_file_that_appears_meanwhile_is_not_replaced() {
        let d = scratch();
        let dest = d.join("out");
        let mut s = LocalSink::create(&dest, false, false).unwrap();
        s.piece("n", Piece::Chunk(b"fetched".to_vec())).unwrap();
        fs::write(&dest, b"raced").unwrap();
        assert!(s.commit().is_err());
        assert_eq!(fs::read(&dest).unwrap(), b"raced");
        assert!(temps(&d).is_empty());
        let _ = fs::remove_dir_all(d);
    }
}
