//! The console client: one command to one node over the authenticated transport, the way
//! `dml ctl`, the interactive console, the local-cluster commands, the benchmarks and the
//! tests all ask a node.

use std::time::Duration;

use anyhow::{anyhow, Context};
use dml_actors::control::{Command, Outcome};
use dml_actors::net::body::Body;
use dml_actors::net::transport::Client;
use dml_actors::net::wire::Credential;

/// Sends `cmd` to the node at `addr` and waits for its outcome: `connect` bounds the
/// connection and handshake, `reply` the answer. An error is a transport failure; the
/// node's own refusal is the `Err` of the [`Outcome`]. `cred` is an operator credential
/// (or the cluster key, where the node allows tools to prove it).
pub fn ask(
    addr: &str,
    cred: &Credential,
    cmd: Command,
    connect: Duration,
    reply: Duration,
) -> anyhow::Result<Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    rt.block_on(async {
        let mut client = Client::<Body>::connect(addr, cred, connect)
            .await
            .with_context(|| format!("cannot reach node {addr}"))?;
        match client.request(Body::Command(cmd), reply).await {
            Ok(Body::Outcome(o)) => Ok(o),
            Ok(other) => Err(anyhow!(
                "node {addr} sent an unexpected answer: {}",
                other.kind()
            )),
            Err(e) => Err(anyhow!("node {addr}: {e}")),
        }
    })
}
