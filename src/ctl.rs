//! `dml ctl`: runs one console command against a running node over the authenticated
//! transport and prints the answer (text, or JSON with `--json`). LOCAL paths of `put`,
//! `get`, `get-versions` and `C4 MODEL DIR` are this machine's: `dml ctl` reads and
//! writes them itself and streams the bytes (`dml_cluster::ask`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use dml_actors::config::Config;
use dml_actors::control::{self, Command, Outcome, Request};

/// How long a connection and its handshake may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// Sends one command (streaming its local file, if it names one) and waits for the
/// outcome.
pub fn call(
    config: &Config,
    node: &str,
    cmd: impl Into<Request>,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    dml_cluster::ask(
        node,
        &config.tool_credential()?,
        cmd,
        CONNECT_WITHIN,
        timeout,
    )
}

pub fn run(
    config: &Config,
    node: &str,
    json: bool,
    timeout: f64,
    detach: bool,
    words: &[String],
) -> anyhow::Result<ExitCode> {
    let req = control::parse(words).map_err(|e| anyhow!(e))?;
    if req == Request::Node(Command::Help) {
        println!("{}", control::help_text());
        return Ok(ExitCode::SUCCESS);
    }
    let timeout = Duration::from_secs_f64(timeout.clamp(0.1, 86_400.0));
    if matches!(req, Request::Node(Command::C4 { .. })) && !detach {
        return submit_and_wait(config, node, json, timeout, req);
    }
    if let Request::Results { job, out: None, .. } = &req {
        return show_results(config, node, job, json, timeout);
    }
    // Ctrl-C ends a transfer as an error, so its temp file is removed.
    let outcome = dml_cluster::ask_interruptible(
        node,
        &config.tool_credential()?,
        req,
        CONNECT_WITHIN,
        timeout,
    )?;
    match outcome {
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

/// C4 as a user expects it: submit, print the job id, follow its progress (a bar on a
/// terminal), then print the outputs read back from SDFS.
fn submit_and_wait(
    config: &Config,
    node: &str,
    json: bool,
    timeout: Duration,
    cmd: Request,
) -> anyhow::Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    let accepted = match call(config, node, cmd, timeout)? {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dml: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let v: serde_json::Value = serde_json::from_str(&accepted.json)?;
    let job = v["job"].as_str().unwrap_or_default().to_string();
    if !json {
        println!("{}", accepted.text);
    }
    let tty = std::io::stdout().is_terminal() && !json;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        // The coordinator may be changing hands: keep asking.
        let Ok(Ok(rates)) = call(config, node, Command::C1, Duration::from_secs(10)) else {
            continue;
        };
        let rows: serde_json::Value = serde_json::from_str(&rates.json).unwrap_or_default();
        let Some(row) = rows
            .as_array()
            .and_then(|a| a.iter().find(|r| r["job"] == job.as_str()))
        else {
            continue;
        };
        let done = row["processed"].as_u64().unwrap_or(0) + row["failed"].as_u64().unwrap_or(0);
        let total = row["total"].as_u64().unwrap_or(0).max(1);
        if tty {
            let width = 40;
            let filled = (done * width / total) as usize;
            print!(
                "\r[{}{}] {done}/{total} queries, {:.1} q/s ",
                "#".repeat(filled),
                " ".repeat(width as usize - filled),
                row["rate_qps"].as_f64().unwrap_or(0.0)
            );
            let _ = std::io::stdout().flush();
        }
        if row["complete"].as_bool().unwrap_or(false) {
            if tty {
                println!();
            }
            break;
        }
    }
    show_results(config, node, &job, json, timeout)
}

/// Every result of `job` on stdout, page by page (text lines, or one JSON array).
fn show_results(
    config: &Config,
    node: &str,
    job: &str,
    json: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let cred = config.tool_credential()?;
    match dml_cluster::print_results(node, &cred, job, json, CONNECT_WITHIN, timeout)? {
        Ok(r) => {
            if !json {
                eprintln!("{}", r.text);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("dml: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
