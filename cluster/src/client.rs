//! The console client: one command to one node over the authenticated transport, the way
//! `dml ctl`, the interactive console, the local-cluster commands, the benchmarks and the
//! tests all ask a node. Requests that name local files are run by this side
//! (`transfer.rs`): the node never opens a path it was sent.

use std::time::Duration;

use anyhow::{anyhow, Context};
use dml_actors::control::{Outcome, Request};
use dml_actors::net::wire::Credential;

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
    let rt = runtime()?;
    let node = node(addr, cred, connect, reply);
    rt.block_on(async {
        if !interruptible {
            return transfer::run(&node, req).await;
        }
        // Installed before the request starts (a temp file may exist from its first
        // step on), so no Ctrl-C finds the default action that would leave it behind.
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot handle SIGINT")?;
        tokio::select! {
            r = transfer::run(&node, req) => r,
            _ = sigint.recv() => Err(anyhow!("interrupted")),
        }
    })
}
