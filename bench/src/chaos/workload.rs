//! The chaos clients: threads that keep putting new files and new versions, getting,
//! deleting and asking `get-versions` of random names on random live nodes, recording
//! every operation in the history and having the checker judge each read as it ends.

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dml_actors::control::{Command, Request};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::checker::{classify, parse_versions, payload};
use super::history::{Kind, OpId, Res};
use super::Ctx;

/// Bounds connecting to a node and its handshake.
const CONNECT: Duration = Duration::from_secs(2);
/// Sizes of the files put (bytes).
pub const SIZES: std::ops::RangeInclusive<usize> = 200..=30_000;
/// Reads go to one of this many most recently created names half the time, so that the
/// names the workload writes are read while they churn (not only the initial files).
const RECENT: usize = 200;

/// A node's answer to one command.
pub enum Answer {
    Ok(serde_json::Value),
    /// The node answered with an error.
    Refused(String),
    /// No answer: the node is unreachable, or the answer did not come in time.
    Lost(String),
}

pub fn ask(ctx: &Ctx, addr: &str, cmd: impl Into<Request>) -> Answer {
    match dml_cluster::ask(addr, &ctx.credential, cmd, CONNECT, ctx.op_timeout) {
        Ok(Ok(reply)) => match serde_json::from_str(&reply.json) {
            Ok(v) => Answer::Ok(v),
            Err(e) => Answer::Refused(format!("answer is not JSON: {e}")),
        },
        Ok(Err(e)) => Answer::Refused(e),
        Err(e) => Answer::Lost(format!("{e:#}")),
    }
}

fn refusal(e: String) -> Res {
    if e.contains("no such file") {
        Res::NoSuchFile
    } else {
        Res::Failed(e)
    }
}

/// One client: ops until `ctx.stop`.
pub fn client(ctx: &Ctx, id: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed.wrapping_add(1_000 + id as u64));
    let dir = ctx.work.join(format!("client{id}"));
    if let Err(e) = fs::create_dir_all(&dir) {
        eprintln!("client {id}: cannot create {}: {e}", dir.display());
        return;
    }
    let mut fresh = 0;
    while !ctx.stop.load(Ordering::Relaxed) {
        let Some(node) = ctx.pick_node(&mut rng) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let roll = rng.gen_range(0..100);
        let name = if roll < 15 {
            fresh += 1;
            format!("chaos/c{id}/n{fresh}")
        } else {
            let h = ctx.history.lock().unwrap_or_else(|p| p.into_inner());
            if h.names.is_empty() {
                continue;
            }
            let i = if rng.gen_bool(0.5) {
                rng.gen_range(h.names.len().saturating_sub(RECENT)..h.names.len())
            } else {
                rng.gen_range(0..h.names.len())
            };
            h.names[i].clone()
        };
        match roll {
            0..40 => put(ctx, id, &dir, &node, &name, rng.gen_range(SIZES)),
            40..85 => get(ctx, id, &dir, &node, &name),
            85..95 => get_versions(ctx, id, &dir, &node, &name, rng.gen_range(1..=4)),
            _ => delete(ctx, id, &node, &name),
        }
    }
}

fn put(ctx: &Ctx, client: usize, dir: &Path, node: &str, name: &str, size: usize) {
    let id = ctx.invoke(client, Kind::Put, name, node, size);
    let local = dir.join(format!("put{id}"));
    if let Err(e) = fs::write(&local, payload(ctx.seed, id, name, size)) {
        ctx.complete(
            id,
            Res::Failed(format!("cannot write {}: {e}", local.display())),
        );
        return;
    }
    let cmd = Request::Put {
        local: local.display().to_string(),
        name: name.to_string(),
    };
    let res = match ask(ctx, node, cmd) {
        Answer::Ok(v) => match v["version"].as_u64() {
            Some(version) => Res::Put(version),
            None => Res::Failed(format!("put answer without a version: {v}")),
        },
        Answer::Refused(e) => Res::Failed(e),
        Answer::Lost(e) => Res::Indeterminate(e),
    };
    let _ = fs::remove_file(&local);
    ctx.complete(id, res);
}

/// A `get`, judged by the checker as soon as it ends; also the final read of a name.
pub fn get(ctx: &Ctx, client: usize, dir: &Path, node: &str, name: &str) {
    let id = ctx.invoke(client, Kind::Get, name, node, 0);
    let local = dir.join(format!("get{id}"));
    let cmd = Request::Get {
        name: name.to_string(),
        local: local.display().to_string(),
        force: true,
    };
    let res = match ask(ctx, node, cmd) {
        Answer::Ok(v) => match (v["version"].as_u64(), fs::read(&local)) {
            (Some(version), Ok(bytes)) => {
                let h = ctx.history.lock().unwrap_or_else(|p| p.into_inner());
                Res::Read(classify(&h, ctx.seed, version, &bytes))
            }
            (None, _) => Res::Failed(format!("get answer without a version: {v}")),
            (_, Err(e)) => Res::Failed(format!("get wrote no readable file: {e}")),
        },
        Answer::Refused(e) => refusal(e),
        Answer::Lost(e) => Res::Indeterminate(e),
    };
    let _ = fs::remove_file(&local);
    ctx.complete_read(id, res);
}

fn get_versions(ctx: &Ctx, client: usize, dir: &Path, node: &str, name: &str, k: usize) {
    let id = ctx.invoke(client, Kind::GetVersions, name, node, 0);
    let local = dir.join(format!("versions{id}"));
    let cmd = Request::GetVersions {
        name: name.to_string(),
        k,
        local: local.display().to_string(),
        force: true,
    };
    let res = match ask(ctx, node, cmd) {
        Answer::Ok(v) => match fs::read(&local)
            .map_err(|e| e.to_string())
            .and_then(|b| parse_versions(&b, name))
        {
            Ok(versions) => {
                let listed: Vec<u64> = v["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_u64())
                    .collect();
                let h = ctx.history.lock().unwrap_or_else(|p| p.into_inner());
                let reads: Vec<_> = versions
                    .iter()
                    .map(|(version, b)| classify(&h, ctx.seed, *version, b))
                    .collect();
                if listed == versions.iter().map(|(v, _)| *v).collect::<Vec<_>>() {
                    Res::Versions(reads)
                } else {
                    ctx.violation(
                        name,
                        format!("get-versions listed {listed:?} but its file holds other versions"),
                        None,
                    );
                    Res::Versions(reads)
                }
            }
            Err(e) => Res::Failed(format!("get-versions file: {e}")),
        },
        Answer::Refused(e) => refusal(e),
        Answer::Lost(e) => Res::Indeterminate(e),
    };
    let _ = fs::remove_file(&local);
    ctx.complete_read(id, res);
}

fn delete(ctx: &Ctx, client: usize, node: &str, name: &str) {
    let id: OpId = ctx.invoke(client, Kind::Delete, name, node, 0);
    let res = match ask(
        ctx,
        node,
        Command::Delete {
            name: name.to_string(),
        },
    ) {
        Answer::Ok(_) => Res::Deleted,
        Answer::Refused(e) => refusal(e),
        Answer::Lost(e) => Res::Indeterminate(e),
    };
    ctx.complete(id, res);
}
