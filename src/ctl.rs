//! `dml ctl`: runs one console command against a running node over the authenticated
//! transport and prints the answer (text, or JSON with `--json`). LOCAL paths of `put`,
//! `get`, `get-versions` and `C4 MODEL DIR` are this machine's: `dml ctl` reads and
//! writes them itself and streams the bytes (`dml_cluster::ask`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use dml_actors::config::Config;
use dml_actors::control::{self, Command, Outcome, Request};
use dml_actors::net::wire::Credential;
use dml_cluster::listing::{Format, Listing};
use dml_cluster::progress::{Mode, Progress};
use dml_cluster::{DeadlinePassed, ToolAsk};

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

/// What `dml ctl` was asked to do besides the command itself.
pub struct Opts {
    pub json: bool,
    /// Seconds to wait for each answer.
    pub timeout: f64,
    /// C4: return once the job is accepted.
    pub detach: bool,
    /// Seconds after which the whole command is given up (`--deadline`).
    pub deadline: Option<f64>,
}

/// Exit code when the deadline passed before the work ended.
pub const DEADLINE_EXIT: u8 = 3;

pub fn run(config: &Config, node: &str, opts: &Opts, words: &[String]) -> anyhow::Result<ExitCode> {
    let req = control::parse(words).map_err(|e| anyhow!(e))?;
    if req == Request::Node(Command::Help) {
        println!("{}", control::help_text());
        return Ok(ExitCode::SUCCESS);
    }
    let how = ToolAsk {
        // Ctrl-C ends a transfer as an error, so its temp file is removed.
        interruptible: true,
        connect: CONNECT_WITHIN,
        reply: Duration::from_secs_f64(seconds(opts.timeout, "--timeout")?.clamp(0.1, 86_400.0)),
        deadline: match opts.deadline {
            Some(d) => {
                let d = Duration::from_secs_f64(seconds(d, "--deadline")?.min(1e9));
                Instant::now().checked_add(d)
            }
            None => None,
        },
    };
    let json = opts.json;
    if matches!(req, Request::Node(Command::C4 { .. })) && !opts.detach {
        return submit_and_wait(config, node, json, how, req);
    }
    if let Request::Results { job, out: None, .. } = &req {
        return show_results(config, node, job, json, how.reply);
    }
    let cred = config.tool_credential()?;
    let outcome = match req {
        Request::Node(cmd) if cmd.is_listing() => return listing(node, &cred, json, how, cmd),
        req => dml_cluster::ask_tool(node, &cred, req, how),
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) if e.is::<DeadlinePassed>() => {
            eprintln!("dml: {e}");
            return Ok(ExitCode::from(DEADLINE_EXIT));
        }
        Err(e) => return Err(e),
    };
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

/// A number of seconds from the command line: finite and not negative.
fn seconds(v: f64, flag: &str) -> anyhow::Result<f64> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(anyhow!("{flag} must be a number of seconds, got {v}"))
    }
}

/// `ls-prefix` and `store`: written page by page as they arrive (one JSON array with
/// `--json`), so a listing of any length takes one page of memory.
fn listing(
    node: &str,
    cred: &Credential,
    json: bool,
    how: ToolAsk,
    cmd: Command,
) -> anyhow::Result<ExitCode> {
    let format = if json { Format::Json } else { Format::Text };
    let mut out = Listing::new(std::io::stdout().lock(), format, &cmd);
    let got = dml_cluster::ask_listing(node, cred, cmd, how, &mut |page| out.page(page));
    let failure = match got {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some((e, 1)),
        Err(e) if e.is::<DeadlinePassed>() => Some((e.to_string(), DEADLINE_EXIT)),
        Err(e) => Some((format!("{e:#}"), 1)),
    };
    match failure {
        None => {
            drop(out.finish()?);
            Ok(ExitCode::SUCCESS)
        }
        Some((e, code)) => {
            // What was written stays a valid document; the error says it is not all.
            if json && !out.started() {
                drop(out);
                println!("{}", serde_json::json!({ "error": e }));
            } else if json {
                drop(out.finish()?);
            }
            eprintln!("dml: {e}");
            Ok(ExitCode::from(code))
        }
    }
}

/// How many failed C1 polls in a row make the follow loop say so (and every that many
/// after): one miss is a coordinator changing hands, several are worth a line.
const QUIET_MISSES: u32 = 3;

/// C4 as a user expects it: submit, print the job id, follow its progress (a bar on a
/// terminal, plain lines otherwise), then print the outputs read back from SDFS. Exits
/// non-zero when a query failed, or when the deadline passes first (the job keeps
/// running; the message names it).
fn submit_and_wait(
    config: &Config,
    node: &str,
    json: bool,
    how: ToolAsk,
    cmd: Request,
) -> anyhow::Result<ExitCode> {
    let cred = config.tool_credential()?;
    // Ctrl-C keeps its default (the process ends, the job runs on) while following.
    let how = ToolAsk {
        interruptible: false,
        ..how
    };
    let accepted = match dml_cluster::ask_tool(node, &cred, cmd, how) {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("dml: {e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) if e.is::<DeadlinePassed>() => {
            eprintln!("dml: no job accepted before the deadline ({e}); `dml ctl C1` lists jobs");
            return Ok(ExitCode::from(DEADLINE_EXIT));
        }
        Err(e) => return Err(e),
    };
    let v: serde_json::Value = serde_json::from_str(&accepted.json)?;
    let job = v["job"]
        .as_str()
        .ok_or_else(|| anyhow!("the node accepted a job without an id: {}", accepted.json))?
        .to_string();
    if !json {
        println!("{}", accepted.text);
    }
    let mut progress = Progress::new(
        format!("job {job}"),
        v["queries"].as_u64().unwrap_or(0),
        Mode::detect(),
    );
    let mut misses = 0u32;
    let failed = loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = Instant::now();
        if how.deadline.is_some_and(|at| now >= at) {
            progress.finish();
            eprintln!(
                "dml: job {job} did not finish before the deadline; it keeps running: follow \
                 it with `dml ctl C1`, fetch its results later with {}",
                results_hint(&job)
            );
            return Ok(ExitCode::from(DEADLINE_EXIT));
        }
        // The coordinator may be changing hands: keep asking, and say so when it lasts.
        let poll = how
            .deadline
            .map_or(C1_WITHIN, |at| {
                at.saturating_duration_since(now).min(C1_WITHIN)
            })
            .max(Duration::from_millis(100));
        let row = match c1_row(config, node, &job, poll) {
            Ok(row) => {
                misses = 0;
                row
            }
            Err(e) => {
                misses += 1;
                if misses.is_multiple_of(QUIET_MISSES) {
                    progress.note(&format!(
                        "dml: job {job}: {misses} progress polls in a row failed; last: {e}"
                    ));
                }
                continue;
            }
        };
        let count = |k: &str| row[k].as_u64().unwrap_or(0);
        progress.set_total(count("total"));
        progress.update(count("processed"), count("failed"));
        if row["complete"].as_bool().unwrap_or(false) {
            break count("failed");
        }
    };
    progress.finish();
    // C1's failures are rows of the results too; should the results not show them,
    // C1's count still fails the command.
    let code = show_results(config, node, &job, json, how.reply)?;
    if code == ExitCode::SUCCESS && failed > 0 {
        return Ok(report_failed(&job, failed));
    }
    Ok(code)
}

/// Says how many queries of `job` failed and where their errors are; the exit code.
fn report_failed(job: &str, failed: u64) -> ExitCode {
    eprintln!(
        "dml: {failed} queries failed; see {} (error field)",
        results_hint(job)
    );
    ExitCode::from(1)
}

/// Where a job's results (and each failed query's error) are read.
fn results_hint(job: &str) -> String {
    format!("`dml ctl results {job}`")
}

/// How long one progress poll may take.
const C1_WITHIN: Duration = Duration::from_secs(10);

/// `job`'s row of C1, or why there is none.
fn c1_row(
    config: &Config,
    node: &str,
    job: &str,
    within: Duration,
) -> anyhow::Result<serde_json::Value> {
    let rates = call(config, node, Command::C1, within)?.map_err(|e| anyhow!(e))?;
    let rows: serde_json::Value = serde_json::from_str(&rates.json)?;
    rows.as_array()
        .and_then(|a| a.iter().find(|r| r["job"] == job))
        .cloned()
        .ok_or_else(|| anyhow!("C1 does not list the job (yet)"))
}

/// Every result of `job` on stdout, page by page (text lines, or one JSON array); exit
/// code 1 (with [`report_failed`]) when a query's result is an error (a failed query, an
/// input that is no image).
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
            let summary: serde_json::Value = serde_json::from_str(&r.json)?;
            Ok(match summary["errors"].as_u64().unwrap_or(0) {
                0 => ExitCode::SUCCESS,
                n => report_failed(job, n),
            })
        }
        Err(e) => {
            eprintln!("dml: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_finite_and_not_negative() {
        assert_eq!(seconds(2.5, "--deadline").unwrap(), 2.5);
        assert_eq!(seconds(0.0, "--deadline").unwrap(), 0.0);
        for bad in [f64::NAN, f64::INFINITY, -1.0] {
            let e = seconds(bad, "--deadline").unwrap_err().to_string();
            assert!(
                e.starts_with("--deadline must be a number of seconds"),
                "{e}"
            );
        }
    }
}
