//! The console's words for the job commands (C1-C5, `C4 --results`): the job actors
//! hand over answers and reports as data, and this module turns them into the text and
//! JSON a console shows.

use crate::control::{Outcome, Reply};
use crate::jobs::client::Answer;
use crate::jobs::msg::{Msg, ResultsPage, StatusReport};
use crate::jobs::types::{BatchId, JobId, QueryId, QueryResult};
use crate::types::NodeAddr;

/// The console's reply to a job request that ended with `answer`.
pub fn answer(answer: Answer) -> Outcome {
    match answer {
        Answer::Status(report) => Ok(format_report(report)),
        Answer::BatchSizeSet { model, size } => Ok(Reply::new(
            format!("batch size of {model} is now {size} (applies to the next batches)"),
            serde_json::json!({"model": model, "batch_size": size}),
        )),
        Answer::Accepted {
            job,
            queries,
            model,
            input,
        } => Ok(Reply::new(
            format!("job {job} accepted: {queries} queries of {model} over {input}"),
            serde_json::json!({"job": job.to_string(), "queries": queries, "model": model, "input": input}),
        )),
        Answer::Refused(error) => Err(error.to_string()),
        Answer::Unexpected(msg) => Err(unexpected(&msg)),
        Answer::NoAnswer { coordinator } => Err(no_answer(coordinator.as_ref())),
    }
}

fn unexpected(msg: &Msg) -> String {
    format!("unexpected answer from the coordinator: {msg:?}")
}

fn no_answer(coordinator: Option<&NodeAddr>) -> String {
    let coordinator = coordinator.map_or_else(|| "none yet".to_string(), |c| c.to_string());
    format!(
        "the coordinator ({coordinator}) did not answer; try again (a takeover may be in progress)"
    )
}

/// C4 with a local directory that could not be stored in SDFS.
pub fn not_stored(input: &str, error: &str) -> String {
    format!("cannot store {input} in SDFS: {error}")
}

/// A console command the job actor does not execute.
pub fn not_a_job_command(cmd: &crate::control::Command) -> String {
    format!("{cmd:?} is not a job command")
}

/// `C4 --results` with something that is not a job id.
pub fn not_a_job_id(job: &str) -> String {
    format!("{job:?} is not a job id (like 1-2)")
}

/// A result object the coordinator's index names could not be read.
pub fn result_object_unreadable(job: JobId, batch: BatchId, error: &str) -> String {
    format!(
        "results of job {job}: result object of batch {batch} not readable ({error}); try again"
    )
}

/// The index names an object that has no line for the query.
pub fn result_missing(job: JobId, q: QueryId) -> String {
    format!("results of job {job}: the result object of query {q} has no line for it")
}

/// The row of a query that failed every attempt.
pub fn failed_row(page: &ResultsPage, q: QueryId, name: Option<&&String>) -> QueryResult {
    QueryResult {
        job: page.job.to_string(),
        q,
        query: name.map_or_else(|| format!("#{q}"), |n| n.to_string()),
        model: page.model.clone(),
        top5: Vec::new(),
        error: Some("failed on every attempt (input unreadable or the workers failed)".into()),
        synthetic: false,
        weights_version: None,
        weights: String::new(),
        bench_fixed_logits: false,
        precision: None,
        per_query_ms: 0.0,
        worker: String::new(),
        at_wall_ms: 0,
    }
}

/// One result as a line of text: `INPUT: label (p), ... [weights]` or `INPUT: error: ...`,
/// where `weights` names the version and file hash that produced it.
pub fn result_line(r: &QueryResult) -> String {
    match &r.error {
        Some(e) => format!("{}: error: {e}", r.query),
        None => {
            let tops: Vec<String> = r
                .top5
                .iter()
                .map(|t| format!("{} ({:.3})", t.label, t.prob))
                .collect();
            format!("{}: {} [{}]", r.query, tops.join(", "), provenance(r))
        }
    }
}

/// Which weights produced a result: `weights v3 sha256:1a2b3c4d5e6f`, `local weights
/// sha256:...` (nothing published), or `synthetic weights`; a file that holds synthetic
/// weights says so too.
pub fn provenance(r: &QueryResult) -> String {
    let sha = crate::weights::short(&r.weights);
    let tag = if r.synthetic { " (SYNTHETIC)" } else { "" };
    match (r.weights_version, r.weights.as_str()) {
        (_, "" | crate::jobs::model_actor::SYNTHETIC) => "synthetic weights".into(),
        (Some(v), _) => format!("weights v{v} sha256:{sha}{tag}"),
        (None, _) => format!("local weights sha256:{sha}{tag}"),
    }
}

/// A page of `C4 --results` (what `dml ctl results` loops over): the rows of queries
/// `from..next` in query order. The JSON is what the tool reads; the text is a summary.
pub fn results_page(page: &ResultsPage, rows: Vec<QueryResult>) -> Reply {
    let end = page.from + page.outcome.len() as u32;
    let next = (end < page.total).then_some(end);
    let text = format!(
        "job {}: queries {}..{} of {}: {} rows ({} ok, {} failed in the job{})",
        page.job,
        page.from,
        end,
        page.total,
        rows.len(),
        page.ok,
        page.failed,
        if page.complete {
            ", complete"
        } else {
            ", running"
        }
    );
    Reply::new(
        text,
        serde_json::json!({
            "job": page.job.to_string(),
            "model": page.model,
            "total": page.total,
            "ok": page.ok,
            "failed": page.failed,
            "complete": page.complete,
            "from": page.from,
            "next": next,
            "rows": rows,
        }),
    )
}

/// C1, C2 or C5 as a table.
pub fn format_report(report: StatusReport) -> Reply {
    match report {
        StatusReport::Results(page) => results_page(&page, Vec::new()),
        StatusReport::Rates(rows) => {
            let mut text = String::from(
                "job      model          rate(q/s, 10 s)  processed/total  failed  state",
            );
            for r in &rows {
                text.push_str(&format!(
                    "\n{:<8} {:<14} {:>15.2}  {:>7}/{:<7}  {:>6}  {}",
                    r.job.to_string(),
                    r.model,
                    r.rate_qps,
                    r.processed,
                    r.total,
                    r.failed,
                    if r.complete { "complete" } else { "running" }
                ));
            }
            if rows.is_empty() {
                text.push_str("\n(no jobs)");
            }
            Reply::new(text, serde_json::to_value(&rows).unwrap_or_default())
        }
        StatusReport::Times(rows) => {
            let mut text = String::from("job      model          count   mean(ms)   std(ms)  median(ms)  p90(ms)  p95(ms)  p99(ms)");
            for r in &rows {
                match &r.stats {
                    Some(s) => text.push_str(&format!(
                        "\n{:<8} {:<14} {:>5} {:>10.1} {:>9.1} {:>11.1} {:>8.1} {:>8.1} {:>8.1}",
                        r.job.to_string(),
                        r.model,
                        s.count,
                        s.mean_ms,
                        s.std_ms,
                        s.median_ms,
                        s.p90_ms,
                        s.p95_ms,
                        s.p99_ms
                    )),
                    None => text.push_str(&format!(
                        "\n{:<8} {:<14} (no queries yet)",
                        r.job.to_string(),
                        r.model
                    )),
                }
            }
            if rows.is_empty() {
                text.push_str("\n(no jobs)");
            }
            Reply::new(text, serde_json::to_value(&rows).unwrap_or_default())
        }
        StatusReport::Assignment {
            nodes,
            shares,
            weights,
            batch_sizes,
        } => {
            let mut text = String::from(
                "node                   job      model          precision batch queries",
            );
            for a in &nodes {
                text.push_str(&format!(
                    "\n{:<22} {:<8} {:<14} {:<9} {}",
                    a.node.to_string(),
                    a.job.map_or("-".into(), |j| j.to_string()),
                    a.model.clone().unwrap_or_else(|| "idle".into()),
                    a.precision.as_deref().unwrap_or("-"),
                    if a.queries > 0 {
                        a.queries.to_string()
                    } else {
                        String::new()
                    }
                ));
            }
            for s in &shares {
                text.push_str(&format!(
                    "\njob {} ({}): {:.0} ms/query, target share {:.0}%, {} workers now",
                    s.job,
                    s.model,
                    s.per_query_ms,
                    s.target_share * 100.0,
                    s.workers_now
                ));
            }
            for w in &weights {
                text.push_str(&format!("\nweights: {w}"));
            }
            if !batch_sizes.is_empty() {
                let sizes: Vec<String> = batch_sizes
                    .iter()
                    .map(|(m, b)| format!("{m} {b}"))
                    .collect();
                text.push_str(&format!("\nbatch sizes: {}", sizes.join(", ")));
            }
            Reply::new(
                text,
                serde_json::json!({
                    "nodes": nodes,
                    "shares": shares,
                    "weights": weights,
                    "batch_sizes": batch_sizes,
                }),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_before_the_client_core_existed() {
        let accepted = answer(Answer::Accepted {
            job: JobId { epoch: 2, seq: 1 },
            queries: 3,
            model: "resnet50".into(),
            input: "inputs/imgs".into(),
        })
        .expect("accepted is a reply");
        assert_eq!(
            accepted.text,
            "job 2-1 accepted: 3 queries of resnet50 over inputs/imgs"
        );
        let none = answer(Answer::NoAnswer { coordinator: None }).unwrap_err();
        assert!(
            none.starts_with("the coordinator (none yet) did not answer"),
            "{none}"
        );
        let refused = answer(Answer::Refused(crate::jobs::JobError::NoInputs {
            input: "x/".into(),
        }))
        .unwrap_err();
        assert_eq!(refused, "no input files under `x/` (missing or empty)");
    }
}
