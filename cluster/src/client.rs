//! The console client: one command to one node over the authenticated transport, the way
//! `dml ctl`, the interactive console, the local-cluster commands, the benchmarks and the
//! tests all ask a node. Requests that name local files are run by this side
//! (`transfer.rs`): the node never opens a path it was sent.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use dml_actors::control::{Command, Outcome, Reply, Request};
use dml_actors::net::wire::Credential;

use crate::listing;
use crate::results::Summary;
use crate::transfer::{self, Node};
use dml_actors::jobs::types::QueryResult;

/// Sends `req` to the node at `addr` and waits for its outcome: `connect` bounds each
/// connection and handshake, `reply` each answer. An error is a transport failure; the
/// node's own refusal (or the local file's) is the `Err` of the [`Outcome`]. `cred` is an
/// operator credential (or the cluster key, where the node allows tools to prove it).
pub fn ask(
    addr: &str,
    cred: &Credential,
    req: impl Into<Request>,
    connect: Duration,
    reply: Duration,
) -> anyhow::Result<Outcome> {
    run(addr, cred, req.into(), connect, reply, false)
}

/// Like [`ask`], but Ctrl-C (SIGINT) ends the request as an error, so that a half-written
/// temp file is removed; for a tool process of its own (`dml ctl`), since it installs a
/// SIGINT handler for the rest of the process's life.
pub fn ask_interruptible(
    addr: &str,
    cred: &Credential,
    req: impl Into<Request>,
    connect: Duration,
    reply: Duration,
) -> anyhow::Result<Outcome> {
    run(addr, cred, req.into(), connect, reply, true)
}

/// How an operator's tool (`dml ctl`) asks: long work shows its progress on stderr, the
/// whole request may be bounded by a deadline, and Ctrl-C may end it as an error.
#[derive(Debug, Clone, Copy)]
pub struct ToolAsk {
    /// Ctrl-C (SIGINT) ends the request as an error, as [`ask_interruptible`]; SIGINT
    /// then stays caught for the rest of the process, so only for a process that is done
    /// once the request is.
    pub interruptible: bool,
    /// Bound of each connection and handshake.
    pub connect: Duration,
    /// Bound of each answer.
    pub reply: Duration,
    /// When to give up on the whole request ([`DeadlinePassed`]).
    pub deadline: Option<Instant>,
}

/// The request was given up at the operator's deadline.
#[derive(Debug, thiserror::Error)]
#[error("gave up at the deadline ({} s after the start)", .after.as_secs_f64())]
pub struct DeadlinePassed {
    /// The deadline, from the start of the request.
    pub after: Duration,
}

/// [`ask_interruptible`] as [`ToolAsk`] says, with progress on stderr.
pub fn ask_tool(
    addr: &str,
    cred: &Credential,
    req: impl Into<Request>,
    how: ToolAsk,
) -> anyhow::Result<Outcome> {
    let mut node = node(addr, cred, how.connect, how.reply);
    node.progress = true;
    block(
        how.interruptible,
        how.deadline,
        transfer::run(&node, req.into()),
    )
}

/// A listing (`ls-prefix`, `store`, see [`Command::is_listing`]) asked as [`ToolAsk`]
/// says: each page goes to `page` as it arrives, so the tool can write a listing of any
/// length without holding it (see [`crate::listing::Listing`]).
pub fn ask_listing(
    addr: &str,
    cred: &Credential,
    cmd: Command,
    how: ToolAsk,
    page: &mut dyn FnMut(&Reply) -> anyhow::Result<()>,
) -> anyhow::Result<Result<(), String>> {
    let node = node(addr, cred, how.connect, how.reply);
    block(
        how.interruptible,
        how.deadline,
        listing::pages(&node, cmd, page),
    )
}

/// Every result of `job`, read page by page into memory (tests and `dml demo`, for
/// jobs of thousands of queries; `results JOB --out FILE` streams instead). The node's
/// refusal is the inner `Err`.
pub fn job_results(
    addr: &str,
    cred: &Credential,
    job: &str,
    connect: Duration,
    reply: Duration,
) -> anyhow::Result<Result<(Vec<QueryResult>, Summary), String>> {
    let node = node(addr, cred, connect, reply);
    runtime()?.block_on(crate::results::collect(&node, job))
}

/// `C4 --results JOB` on stdout: text lines, or one JSON array with `json`.
pub fn print_results(
    addr: &str,
    cred: &Credential,
    job: &str,
    json: bool,
    connect: Duration,
    reply: Duration,
) -> anyhow::Result<Outcome> {
    let node = node(addr, cred, connect, reply);
    runtime()?.block_on(crate::results::print(&node, job, json))
}

fn node(addr: &str, cred: &Credential, connect: Duration, reply: Duration) -> Node {
    Node {
        addr: addr.to_string(),
        cred: cred.clone(),
        connect,
        reply,
        progress: false,
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")
}

fn run(
    addr: &str,
    cred: &Credential,
    req: Request,
    connect: Duration,
    reply: Duration,
    interruptible: bool,
) -> anyhow::Result<Outcome> {
    let node = node(addr, cred, connect, reply);
    block(interruptible, None, transfer::run(&node, req))
}

/// Runs `work` on a runtime of its own; with `interruptible`, Ctrl-C (SIGINT) ends it as
/// an error, and so does the `deadline` ([`DeadlinePassed`]).
fn block<T>(
    interruptible: bool,
    deadline: Option<Instant>,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let rt = runtime()?;
    let started = Instant::now();
    rt.block_on(async {
        let work = async {
            let Some(at) = deadline else {
                return work.await;
            };
            match tokio::time::timeout_at(at.into(), work).await {
                Ok(r) => r,
                Err(_) => Err(DeadlinePassed {
                    after: at.saturating_duration_since(started),
                }
                .into()),
            }
        };
        if !interruptible {
            return work.await;
        }
        // Installed before the request starts (a temp file may exist from its first
        // step on), so no Ctrl-C finds the default action that would leave it behind.
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot handle SIGINT")?;
        tokio::select! {
            r = work => r,
            _ = sigint.recv() => Err(anyhow!("interrupted")),
        }
    })
}
