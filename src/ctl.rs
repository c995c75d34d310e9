//! `dml ctl`: runs one console command against a running node over the authenticated
//! transport and prints the answer (text, or JSON with `--json`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use dml_actors::config::Config;
use dml_actors::control::{self, Command, Outcome};
use dml_actors::msg::Body;
use dml_actors::transport::Client;

/// Sends one command and waits for the outcome.
pub fn call(config: &Config, node: &str, cmd: Command, timeout: Duration) -> anyhow::Result<Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    rt.block_on(async {
        let mut client = Client::<Body>::connect(node, &config.secret, Duration::from_secs(5))
            .await
            .with_context(|| format!("cannot reach node {node}"))?;
        match client.request(Body::Command(cmd), timeout).await {
            Ok(Body::Outcome(o)) => Ok(o),
            Ok(other) => Err(anyhow!("node {node} sent an unexpected answer: {}", other.kind())),
            Err(e) => Err(anyhow!("node {node}: {e}")),
        }
    })
}

/// How many members the node lists as alive.
pub fn alive_count(config: &Config, node: &str) -> anyhow::Result<usize> {
    let reply = call(config, node, Command::ListMem, Duration::from_secs(2))?
        .map_err(|e| anyhow!(e))?;
    let v: serde_json::Value = serde_json::from_str(&reply.json)?;
    Ok(v.as_array()
        .map(|a| a.iter().filter(|m| m["state"] == "alive").count())
        .unwrap_or(0))
}

pub fn run(config: &Config, node: &str, json: bool, timeout: f64, words: &[String]) -> anyhow::Result<ExitCode> {
    let cmd = absolute_locals(control::parse(words).map_err(|e| anyhow!(e))?);
    if cmd == Command::Help {
        println!("{}", control::help_text());
        return Ok(ExitCode::SUCCESS);
    }
    let timeout = Duration::from_secs_f64(timeout.clamp(0.1, 86_400.0));
    match call(config, node, cmd, timeout)? {
        Ok(reply) => {
            if json {
                println!("{}", reply.json);
            } else if !reply.text.is_empty() {
                println!("{}", reply.text);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({ "error": e }));
            }
            eprintln!("dml: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// The node resolves local paths against its own working directory, which is not the
/// caller's: send `put`/`get`/`get-versions` paths as absolute paths.
pub fn absolute_locals(cmd: Command) -> Command {
    let abs = |p: String| {
        std::path::absolute(&p)
            .map(|a| a.display().to_string())
            .unwrap_or(p)
    };
    match cmd {
        Command::Put { local, name } => Command::Put { local: abs(local), name },
        Command::Get { name, local } => Command::Get { name, local: abs(local) },
        Command::GetVersions { name, k, local } => Command::GetVersions { name, k, local: abs(local) },
        other => other,
    }
}
