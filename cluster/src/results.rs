//! The tool's side of a job's results: `C4 --results JOB` (to the terminal) and
//! `results JOB --out FILE` (JSON lines or CSV). A node answers one page at a time
//! (`Command::C4Results { from, limit }`), so no reply holds a whole job's results; the
//! tool keeps a few pages in flight, writes the rows in query order as they arrive, and
//! holds at most those pages in memory. An export records how far it got in a sidecar
//! file after every page, so an interrupted export goes on where it stopped.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use dml_actors::control::{Command, Outcome, Reply};
use dml_actors::jobs::types::QueryResult;
use dml_actors::jobs::QueryId;
use dml_actors::net::body::Body;
use dml_actors::net::transport::{Client, Lane};
use serde::{Deserialize, Serialize};

use crate::progress::{Mode, Progress};
use crate::transfer::Node;

/// Queries per page: a page of rows is about 0.5 KB per row, so ~2.5 MB per answer,
/// far below the frame limit.
pub const PAGE: u32 = 5_000;
/// Pages asked for at once (each on its own connection).
const IN_FLIGHT: usize = 4;

/// One page of results as a node sends it.
#[derive(Debug, Clone, Deserialize)]
pub struct Page {
    /// The job.
    pub job: String,
    /// Its model.
    pub model: String,
    /// Its number of queries.
    pub total: u32,
    /// Queries with a result, in the whole job.
    pub ok: u64,
    /// Queries that failed every attempt, in the whole job.
    pub failed: u64,
    /// Whether every query has an outcome.
    pub complete: bool,
    /// The first query of the page.
    pub from: QueryId,
    /// Where the next page starts (`None`: this was the last).
    pub next: Option<QueryId>,
    /// The rows, in query order (a query without an outcome yet has none).
    pub rows: Vec<QueryResult>,
}

/// How rows are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `INPUT: label (p), ...`, one line per query.
    Text,
    /// One JSON array (what `--json` prints), written as it streams.
    JsonArray,
    /// One JSON object per line.
    JsonLines,
    /// A header line, then one row per query.
    Csv,
}

impl Format {
    /// The format an export file's name asks for: `.csv`, else JSON lines.
    pub fn for_file(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => Format::Csv,
            _ => Format::JsonLines,
        }
    }
}

/// How an export ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Rows written (this run and, for a resumed export, before).
    pub rows: u64,
    /// Rows that are errors (failed queries, inputs that are not images).
    pub errors: u64,
    /// The job's number of queries.
    pub total: u32,
    /// Whether the job was complete.
    pub complete: bool,
}

/// Asks for one page.
async fn page(
    client: &mut Client<Body>,
    node: &Node,
    job: &str,
    from: QueryId,
) -> anyhow::Result<Result<Page, String>> {
    let cmd = Command::C4Results {
        job: job.to_string(),
        from,
        limit: PAGE,
    };
    let outcome: Outcome = match client.request(Body::Command(cmd), node.reply).await {
        Ok(Body::Outcome(o)) => o,
        Ok(other) => {
            return Err(anyhow!(
                "node {} sent an unexpected answer: {}",
                node.addr,
                other.kind()
            ))
        }
        Err(e) => return Err(anyhow!("node {}: {e}", node.addr)),
    };
    match outcome {
        Ok(reply) => {
            let p: Page = serde_json::from_str(&reply.json)
                .with_context(|| format!("node {} sent a page that does not parse", node.addr))?;
            Ok(Ok(p))
        }
        Err(e) => Ok(Err(e)),
    }
}

/// A page request's connection (for the next request) and answer.
type PageTask = anyhow::Result<(Client<Body>, Result<Page, String>)>;

/// Streams every page of `job` from query `from` on into `each`, in order, with up to
/// [`IN_FLIGHT`] pages requested at once. The node's refusal is the inner `Err`.
pub(crate) async fn each_page(
    node: &Node,
    job: &str,
    from: QueryId,
    mut each: impl FnMut(Page) -> anyhow::Result<()>,
) -> anyhow::Result<Result<(), String>> {
    let mut first_client = node.connect(Lane::Control).await?;
    let first = match page(&mut first_client, node, job, from).await? {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let total = first.total;
    let mut next_start = first.next;
    each(first)?;
    let mut idle = vec![first_client];
    let mut running: VecDeque<tokio::task::JoinHandle<PageTask>> = VecDeque::new();
    loop {
        while running.len() < IN_FLIGHT {
            let Some(start) = next_start.filter(|s| *s < total) else {
                break;
            };
            next_start = Some(start.saturating_add(PAGE));
            let client = match idle.pop() {
                Some(c) => c,
                None => node.connect(Lane::Control).await?,
            };
            let (node, job) = (node.clone(), job.to_string());
            running.push_back(tokio::spawn(async move {
                let mut client = client;
                let p = page(&mut client, &node, &job, start).await?;
                Ok((client, p))
            }));
        }
        let Some(h) = running.pop_front() else {
            return Ok(Ok(()));
        };
        let (client, p) = h.await.context("a page request stopped")??;
        idle.push(client);
        match p {
            Ok(p) => each(p)?,
            Err(e) => return Ok(Err(e)),
        }
    }
}

/// Every result of `job`, in memory (tests, `dml demo`: jobs of thousands of queries).
pub(crate) async fn collect(
    node: &Node,
    job: &str,
) -> anyhow::Result<Result<(Vec<QueryResult>, Summary), String>> {
    let mut rows = Vec::new();
    let mut summary = Summary::default();
    let r = each_page(node, job, 0, |p| {
        summary.total = p.total;
        summary.complete = p.complete;
        summary.errors += p.rows.iter().filter(|r| r.error.is_some()).count() as u64;
        summary.rows += p.rows.len() as u64;
        rows.extend(p.rows);
        Ok(())
    })
    .await?;
    Ok(r.map(|()| (rows, summary)))
}

/// Writes rows in one [`Format`]; the JSON array needs its brackets and commas.
struct RowWriter<W: Write> {
    out: W,
    format: Format,
    rows: u64,
}

impl<W: Write> RowWriter<W> {
    fn new(out: W, format: Format, rows_before: u64, header: bool) -> anyhow::Result<Self> {
        let mut w = RowWriter {
            out,
            format,
            rows: rows_before,
        };
        match format {
            Format::JsonArray => w.out.write_all(b"[")?,
            Format::Csv if header => w.out.write_all(CSV_HEADER.as_bytes())?,
            _ => {}
        }
        Ok(w)
    }

    fn row(&mut self, r: &QueryResult) -> anyhow::Result<()> {
        match self.format {
            Format::Text => writeln!(
                self.out,
                "{}",
                dml_actors::control::jobs_text::result_line(r)
            )?,
            Format::JsonLines => {
                serde_json::to_writer(&mut self.out, r)?;
                self.out.write_all(b"\n")?;
            }
            Format::JsonArray => {
                self.out
                    .write_all(if self.rows == 0 { b"\n" } else { b",\n" })?;
                serde_json::to_writer(&mut self.out, r)?;
            }
            Format::Csv => self.out.write_all(csv_row(r).as_bytes())?,
        }
        self.rows += 1;
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<W> {
        if self.format == Format::JsonArray {
            self.out.write_all(b"\n]\n")?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

const CSV_HEADER: &str = "q,input,label1,prob1,label2,prob2,label3,prob3,label4,prob4,label5,prob5,error,worker,per_query_ms,synthetic,weights_version,weights\n";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_row(r: &QueryResult) -> String {
    let mut f = vec![r.q.to_string(), csv_field(&r.query)];
    for i in 0..5 {
        match r.top5.get(i) {
            Some(t) => {
                f.push(csv_field(&t.label));
                f.push(format!("{:.6}", t.prob));
            }
            None => f.extend([String::new(), String::new()]),
        }
    }
    f.push(csv_field(r.error.as_deref().unwrap_or("")));
    f.push(csv_field(&r.worker));
    f.push(format!("{:.3}", r.per_query_ms));
    f.push(r.synthetic.to_string());
    f.push(r.weights_version.map_or(String::new(), |v| v.to_string()));
    f.push(csv_field(&r.weights));
    f.join(",") + "\n"
}

/// Prints every result of `job` to stdout (text lines, or one JSON array).
pub(crate) async fn print(node: &Node, job: &str, json: bool) -> anyhow::Result<Outcome> {
    let stdout = std::io::stdout();
    let format = if json {
        Format::JsonArray
    } else {
        Format::Text
    };
    let mut w = RowWriter::new(BufWriter::new(stdout.lock()), format, 0, true)?;
    let mut summary = Summary::default();
    let r = each_page(node, job, 0, |p| {
        summary.total = p.total;
        summary.complete = p.complete;
        for row in &p.rows {
            summary.errors += u64::from(row.error.is_some());
            w.row(row)?;
        }
        summary.rows += p.rows.len() as u64;
        Ok(())
    })
    .await?;
    w.finish()?;
    Ok(r.map(|()| summary_reply(job, &summary, None)))
}

/// How far an export got: written next to the output after every page.
#[derive(Debug, Serialize, Deserialize)]
struct Mark {
    job: String,
    /// The first query not yet exported.
    next: QueryId,
    /// The output's length up to the last whole page.
    bytes: u64,
    /// Rows and error rows written so far.
    rows: u64,
    errors: u64,
}

fn mark_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".dml-export");
    out.with_file_name(name)
}

/// Exports every result of `job` into the local file `out` (JSON lines, or CSV for a
/// `.csv` name). A job still running is refused (its rows would be missing for good
/// from a resumed export). An existing `out` is refused unless `force`, or unless it is
/// an interrupted export of the same job, which goes on where it stopped.
pub(crate) async fn export(
    node: &Node,
    job: &str,
    out: &Path,
    force: bool,
) -> anyhow::Result<Outcome> {
    let mark_file = mark_path(out);
    let mark: Option<Mark> = fs::read(&mark_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|m: &Mark| m.job == job);
    let resume = mark.filter(|_| !force && out.exists());
    if resume.is_none() && out.exists() && !force {
        return Ok(Err(format!(
            "{} already exists (use --force to replace it)",
            out.display()
        )));
    }
    let format = Format::for_file(out);
    let (from, mut mark) = match resume {
        Some(m) => (m.next, m),
        None => (
            0,
            Mark {
                job: job.to_string(),
                next: 0,
                bytes: 0,
                rows: 0,
                errors: 0,
            },
        ),
    };
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(from == 0)
        .open(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    // Anything after the last whole page is from the interrupted page: written again.
    file.set_len(mark.bytes)?;
    file.seek(SeekFrom::Start(mark.bytes))?;
    let mut w = RowWriter::new(BufWriter::new(file), format, mark.rows, from == 0)?;
    // Shown from the first page on: a refused export (unknown job) shows only its error.
    let mut progress: Option<Progress> = None;
    let mut total = 0;
    let mut complete = true;
    let r = each_page(node, job, from, |p| {
        total = p.total;
        if !p.complete {
            complete = false;
            return Err(anyhow!(
                "job {job} is still running ({} of {} queries done); export it when C1 shows it complete",
                p.ok + p.failed,
                p.total
            ));
        }
        for row in &p.rows {
            mark.errors += u64::from(row.error.is_some());
            w.row(row)?;
        }
        mark.rows += p.rows.len() as u64;
        mark.next = p.next.unwrap_or(p.total);
        w.out.flush()?;
        mark.bytes = w.out.get_ref().metadata()?.len();
        fs::write(&mark_file, serde_json::to_vec(&mark)?)
            .with_context(|| format!("cannot write {}", mark_file.display()))?;
        let p = progress.get_or_insert_with(|| {
            Progress::new(format!("results of job {job}"), u64::from(total), Mode::detect())
        });
        p.update(mark.rows, mark.errors);
        Ok(())
    })
    .await;
    let r = match r {
        Ok(r) => r,
        Err(e) if !complete => {
            drop(w);
            if from == 0 {
                let _ = fs::remove_file(&mark_file);
                let _ = fs::remove_file(out);
            }
            return Ok(Err(format!("{e:#}")));
        }
        Err(e) => return Err(e),
    };
    if let Err(e) = r {
        return Ok(Err(e));
    }
    let file: File = w.finish()?.into_inner().map_err(|e| anyhow!("{e}"))?;
    file.sync_all()?;
    if let Some(p) = progress.as_mut() {
        p.finish();
    }
    let _ = fs::remove_file(&mark_file);
    let summary = Summary {
        rows: mark.rows,
        errors: mark.errors,
        total,
        complete,
    };
    Ok(Ok(summary_reply(job, &summary, Some(out))))
}

fn summary_reply(job: &str, s: &Summary, out: Option<&Path>) -> Reply {
    let whereto = out.map_or_else(String::new, |o| format!(" into {}", o.display()));
    let state = if s.complete {
        ""
    } else {
        " (the job is still running)"
    };
    Reply::new(
        format!(
            "job {job}: {} of {} results{whereto}, {} errors{state}",
            s.rows, s.total, s.errors
        ),
        serde_json::json!({
            "job": job,
            "rows": s.rows,
            "total": s.total,
            "errors": s.errors,
            "complete": s.complete,
            "out": out.map(|o| o.display().to_string()),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dml_actors::jobs::types::QueryResult;

    fn row(q: u32, query: &str, error: Option<&str>) -> QueryResult {
        QueryResult {
            job: "1-1".into(),
            q,
            query: query.into(),
            model: "resnet50".into(),
            top5: if error.is_some() {
                vec![]
            } else {
                vec![dml_models::TopClass {
                    index: 1,
                    label: "goldfish, Carassius auratus".into(),
                    prob: 0.5,
                }]
            },
            error: error.map(str::to_string),
            synthetic: true,
            weights_version: None,
            weights: "synthetic".into(),
            bench_fixed_logits: false,
            precision: Some("fp32".into()),
            per_query_ms: 1.0,
            worker: "n:1".into(),
            at_wall_ms: 0,
        }
    }

    #[test]
    fn csv_quotes_what_needs_quoting_and_json_array_is_valid() {
        let line = csv_row(&row(3, "in/a,\"b\".jpg", None));
        assert!(
            line.starts_with("3,\"in/a,\"\"b\"\".jpg\",\"goldfish, Carassius auratus\",0.500000,"),
            "{line}"
        );
        assert_eq!(
            line.matches(',').count() - 2,
            CSV_HEADER.matches(',').count()
        );
        let mut w = RowWriter::new(Vec::new(), Format::JsonArray, 0, true).unwrap();
        w.row(&row(0, "a", None)).unwrap();
        w.row(&row(1, "b", Some("not an image"))).unwrap();
        let bytes = w.finish().unwrap();
        let v: Vec<QueryResult> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].error.as_deref(), Some("not an image"));
        let empty = RowWriter::new(Vec::new(), Format::JsonArray, 0, true)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Vec<QueryResult>>(&empty).unwrap(),
            vec![]
        );
    }
}
