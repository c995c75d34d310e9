//! Console commands: one parser shared by the interactive console and `dml ctl`, the
//! typed command sent to a node, and the reply it sends back (text and JSON).
//!
//! What an operator types is a [`Request`]; what travels to a node is a [`Command`]. A
//! request naming a local file (`put`, `get`, `get-versions`, `C4 MODEL DIR`) is run by
//! the tool (`dml_cluster::ask`): it opens the file itself and streams the bytes through
//! the transfer commands, so no command a node receives names a path on its disk.

use serde::{Deserialize, Serialize};

pub mod jobs_text;
pub mod membership_text;
pub mod sdfs_text;

/// A command a node executes for the console or `dml ctl`. None names a local path:
/// files travel as bytes through the transfer commands (`PutBegin` .. `TransferEnd`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    Join,
    Leave,
    ListMem,
    ListSelf,
    Help,
    /// Start a put of `name` whose bytes the tool streams: every answer is either the
    /// next range to send ([`Transfer::Send`], answered with `PutData`) or the put's end.
    PutBegin {
        name: String,
    },
    /// Bytes of a put's source at `offset` (empty: the source ended).
    PutData {
        session: u64,
        offset: u64,
        #[serde(with = "crate::sdfs::msg::bytes")]
        data: Vec<u8>,
    },
    /// Fetch the latest version (`versions: None`) or the newest K versions of `name`,
    /// streamed: every answer is the next [`Piece`]s ([`Transfer::Pieces`], ask for the
    /// ones after with `GetData`) or the read's end ([`Transfer::Done`]).
    GetBegin {
        name: String,
        versions: Option<usize>,
    },
    /// The next piece of a get.
    GetData {
        session: u64,
    },
    /// The tool is done with (or gives up) a transfer: the node drops it, a put that
    /// has not finished fails, a fetched result is deleted.
    TransferEnd {
        session: u64,
    },
    Delete {
        name: String,
    },
    Ls {
        name: String,
    },
    /// Names under `prefix`, one page: those after `after` (all when `None`), at most
    /// `limit` (the node's own cap when `None` or larger). A reply with
    /// [`Transfer::More`] has more pages; the tool asks again from there.
    LsPrefix {
        prefix: String,
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// What this node holds, one page (cursor and limit as for `LsPrefix`).
    Store {
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// C1: query rate over the last 10 s and totals per job/model.
    C1,
    /// C2: processing-time statistics per job/model.
    C2,
    /// C3: batch size of a model for subsequent batches.
    C3 {
        model: String,
        batch: usize,
    },
    /// C4: submit a job over an SDFS prefix (a local directory is stored by the tool
    /// first, see [`Request`]).
    C4 {
        model: String,
        input: String,
    },
    /// One page of a job's results (`from`, at most `limit` queries), read back from
    /// SDFS. `C4 --results JOB` and `results JOB` are tool requests that loop over
    /// pages ([`Request::Results`]), so no reply ever holds a whole job's results.
    C4Results {
        job: String,
        from: u32,
        limit: u32,
    },
    /// C5: the current assignment of nodes to jobs.
    C5,
    /// Traffic and probe counters of this node (bytes per lane, uptime, probes).
    Stats,
    /// Clear this node's tombstone of a member (`forgive ADDR`), so that a node buried
    /// by a bad record can come back without a cluster restart.
    Forgive {
        addr: String,
    },
}

/// What an operator asked for: a node command as is, or one whose local file the tool
/// reads or writes itself. Paths are on the machine running the tool.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Sent to the node unchanged. `C4` whose input is a local directory is stored
    /// under `inputs/<dir name>` by the tool before the job is submitted.
    Node(Command),
    /// Store a local file, or every file under a local directory (under `name/`).
    Put { local: String, name: String },
    /// Fetch the latest version into a local file; an existing file is replaced only
    /// with `force`.
    Get {
        name: String,
        local: String,
        force: bool,
    },
    /// The newest `k` versions into one local file (see [`Request::Get`] for `force`).
    GetVersions {
        name: String,
        k: usize,
        local: String,
        force: bool,
    },
    /// A job's results, page by page (`Command::C4Results`): to the terminal (`C4
    /// --results JOB`), or into a local file as JSON lines or CSV (`results JOB --out
    /// FILE`, by extension), resumable: an interrupted export goes on where it stopped.
    Results {
        job: String,
        out: Option<String>,
        force: bool,
    },
}

impl Command {
    /// `ls-prefix PREFIX` from its first name on, in pages of the node's size.
    pub fn ls_prefix(prefix: impl Into<String>) -> Self {
        Command::LsPrefix {
            prefix: prefix.into(),
            after: None,
            limit: None,
        }
    }

    /// `store`, all of it.
    pub fn store() -> Self {
        Command::Store {
            after: None,
            limit: None,
        }
    }

    /// Whether the answer comes in pages ([`Transfer::More`]).
    pub fn is_listing(&self) -> bool {
        matches!(self, Command::LsPrefix { .. } | Command::Store { .. })
    }

    /// The same listing from the page after `cursor` on.
    pub fn page_after(&self, cursor: String) -> Self {
        let mut next = self.clone();
        if let Command::LsPrefix { after, .. } | Command::Store { after, .. } = &mut next {
            *after = Some(cursor);
        }
        next
    }
}

impl From<Command> for Request {
    fn from(c: Command) -> Self {
        Request::Node(c)
    }
}

/// The transfer step a reply asks the tool to take next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Transfer {
    /// Put: send up to `len` bytes of the source at `offset` with `PutData`.
    Send { session: u64, offset: u64, len: u32 },
    /// Get: the next pieces of the result, in order (what the node had queued, at most
    /// a few MiB of chunks).
    Pieces { session: u64, pieces: Vec<Piece> },
    /// Get: every piece was sent; the read's own answer.
    Done(crate::sdfs::Reply),
    /// A listing's page: more names follow; ask again with `after` as the cursor.
    More { after: String },
}

/// A piece of a get's result, in order: each version is `Begin`, its chunks, `End`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Piece {
    Begin { version: u64 },
    Chunk(#[serde(with = "crate::sdfs::msg::bytes")] Vec<u8>),
    End { version: u64, bytes: u64 },
}

/// A node's answer: human text plus the same content as JSON for `--json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub text: String,
    /// JSON document, carried as a string so any shape crosses MessagePack unchanged.
    pub json: String,
    /// A transfer's next step (put, get), for the tool and never shown.
    pub transfer: Option<Transfer>,
}

impl Reply {
    pub fn new(text: impl Into<String>, json: serde_json::Value) -> Self {
        Reply {
            text: text.into(),
            json: json.to_string(),
            transfer: None,
        }
    }

    /// A reply that only carries a transfer step.
    pub fn transfer(step: Transfer) -> Self {
        Reply {
            text: String::new(),
            json: "null".into(),
            transfer: Some(step),
        }
    }
}

/// What a node sends back: a reply or a one-line error.
pub type Outcome = Result<Reply, String>;

/// One line per command for `help`.
pub const HELP: &[(&str, &str)] = &[
    ("join", "join the cluster through the introducer"),
    ("leave", "leave the cluster voluntarily"),
    (
        "list_mem",
        "list the live members (id, addr, incarnation, state)",
    ),
    ("list_self", "show this node's id and incarnation"),
    (
        "put LOCAL SDFS_NAME",
        "store a file (or a directory under SDFS_NAME/) in SDFS",
    ),
    (
        "get SDFS_NAME LOCAL [--force]",
        "fetch the latest version of a file (--force: replace LOCAL)",
    ),
    ("delete SDFS_NAME", "delete a file (all versions)"),
    ("ls SDFS_NAME", "which nodes hold a file, with its version"),
    (
        "ls-prefix PREFIX [--after NAME] [--limit N]",
        "names stored under a prefix (after NAME; N per page)",
    ),
    (
        "store [--after NAME] [--limit N]",
        "what this node holds (after NAME; N per page)",
    ),
    (
        "get-versions SDFS_NAME K LOCAL [--force]",
        "the last K versions, newest first, in one file",
    ),
    (
        "C1",
        "query rate (last 10 s) and total queries per job/model",
    ),
    (
        "C2",
        "query processing time: mean, std, median, p90, p95, p99",
    ),
    (
        "C3 MODEL N",
        "set the batch size of MODEL for subsequent batches",
    ),
    (
        "C4 MODEL PREFIX_OR_DIR",
        "submit a job (.tar archives count one query per file in them); C4 --results JOB prints a job's outputs",
    ),
    (
        "results JOB [--out FILE] [--force]",
        "a job's results; --out writes JSON lines (CSV for FILE.csv), resuming where it stopped",
    ),
    ("C5", "current assignment: which job/model each node runs"),
    (
        "stats",
        "traffic per lane, uptime, probes sent/acked/missed",
    ),
    (
        "forgive ADDR",
        "clear this node's tombstone of ADDR (host:port) so it can rejoin",
    ),
    ("help", "this list"),
];

/// The command words, for console completion.
pub fn command_words() -> Vec<&'static str> {
    HELP.iter()
        .filter_map(|(usage, _)| usage.split_whitespace().next())
        .collect()
}

/// Help as text.
pub fn help_text() -> String {
    let width = HELP.iter().map(|(u, _)| u.len()).max().unwrap_or(0);
    HELP.iter()
        .map(|(u, d)| format!("  {u:width$}  {d}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses one command line (already split into words). Errors are one line with usage.
/// LOCAL paths are the tool's: see [`Request`].
pub fn parse(words: &[String]) -> Result<Request, String> {
    let Some((head, args)) = words.split_first() else {
        return Err("empty command; type `help`".into());
    };
    // `--force` (get, get-versions) may stand anywhere after the command word.
    let force = matches!(head.as_str(), "get" | "get-versions" | "results")
        && args.iter().any(|a| a == "--force");
    let kept: Vec<String>;
    let args = if force {
        kept = args.iter().filter(|a| *a != "--force").cloned().collect();
        &kept[..]
    } else {
        args
    };
    let want = |n: usize, usage: &str| -> Result<(), String> {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!("usage: {usage}"))
        }
    };
    let a = |i: usize| args.get(i).cloned().unwrap_or_default();
    let cmd = match head.as_str() {
        "join" => want(0, "join").map(|_| Command::Join)?,
        "leave" => want(0, "leave").map(|_| Command::Leave)?,
        "list_mem" => want(0, "list_mem").map(|_| Command::ListMem)?,
        "list_self" => want(0, "list_self").map(|_| Command::ListSelf)?,
        "help" => Command::Help,
        "put" => {
            want(2, "put LOCAL SDFS_NAME")?;
            return Ok(Request::Put {
                local: a(0),
                name: a(1),
            });
        }
        "get" => {
            want(2, "get SDFS_NAME LOCAL [--force]")?;
            return Ok(Request::Get {
                name: a(0),
                local: a(1),
                force,
            });
        }
        "results" => {
            let usage = "results JOB [--out FILE] [--force]";
            return match args {
                [job] => Ok(Request::Results {
                    job: job.clone(),
                    out: None,
                    force,
                }),
                [job, flag, out] if flag == "--out" => Ok(Request::Results {
                    job: job.clone(),
                    out: Some(out.clone()),
                    force,
                }),
                _ => Err(format!("usage: {usage}")),
            };
        }
        "delete" => {
            want(1, "delete SDFS_NAME")?;
            Command::Delete { name: a(0) }
        }
        "ls" => {
            want(1, "ls SDFS_NAME")?;
            Command::Ls { name: a(0) }
        }
        "ls-prefix" => {
            let usage = "ls-prefix PREFIX [--after NAME] [--limit N]";
            let (rest, after, limit) = paging(args, usage)?;
            let [prefix] = rest.as_slice() else {
                return Err(format!("usage: {usage}"));
            };
            Command::LsPrefix {
                prefix: prefix.clone(),
                after,
                limit,
            }
        }
        "store" => {
            let usage = "store [--after NAME] [--limit N]";
            let (rest, after, limit) = paging(args, usage)?;
            if !rest.is_empty() {
                return Err(format!("usage: {usage}"));
            }
            Command::Store { after, limit }
        }
        "get-versions" => {
            want(3, "get-versions SDFS_NAME K LOCAL [--force]")?;
            let k = positive(&a(1), "K")?;
            return Ok(Request::GetVersions {
                name: a(0),
                k,
                local: a(2),
                force,
            });
        }
        "C1" | "c1" => want(0, "C1").map(|_| Command::C1)?,
        "C2" | "c2" => want(0, "C2").map(|_| Command::C2)?,
        "C3" | "c3" => {
            want(2, "C3 MODEL N")?;
            Command::C3 {
                model: a(0),
                batch: positive(&a(1), "N")?,
            }
        }
        "C4" | "c4" => {
            want(2, "C4 MODEL PREFIX_OR_DIR | C4 --results JOB")?;
            if a(0) == "--results" {
                return Ok(Request::Results {
                    job: a(1),
                    out: None,
                    force: false,
                });
            } else {
                Command::C4 {
                    model: a(0),
                    input: a(1),
                }
            }
        }
        "C5" | "c5" => want(0, "C5").map(|_| Command::C5)?,
        "stats" => want(0, "stats").map(|_| Command::Stats)?,
        "forgive" => {
            want(1, "forgive ADDR")?;
            Command::Forgive { addr: a(0) }
        }
        other => {
            let other = crate::sdfs::name::shown(other);
            return Err(format!("unknown command {other:?}; type `help`"));
        }
    };
    Ok(Request::Node(cmd))
}

/// A listing's `--after NAME` and `--limit N`, anywhere after the command word; the
/// other words are returned in order.
#[allow(clippy::type_complexity)]
fn paging(
    args: &[String],
    usage: &str,
) -> Result<(Vec<String>, Option<String>, Option<usize>), String> {
    let (mut rest, mut after, mut limit) = (Vec::new(), None, None);
    let mut words = args.iter();
    while let Some(w) = words.next() {
        match w.as_str() {
            "--after" | "--limit" => {
                let Some(v) = words.next() else {
                    return Err(format!("usage: {usage}"));
                };
                if w == "--after" {
                    after = Some(v.clone());
                } else {
                    limit = Some(positive(v, "--limit")?);
                }
            }
            _ => rest.push(w.clone()),
        }
    }
    Ok((rest, after, limit))
}

fn positive(s: &str, what: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{what} must be a positive integer, got {s:?}")),
    }
}

/// Splits a console line into words; double quotes group words with spaces.
pub fn split_line(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut has = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has {
                    words.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => {
                cur.push(c);
                has = true;
            }
        }
    }
    if in_quotes {
        return Err("unterminated quote".into());
    }
    if has {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Result<Request, String> {
        parse(&split_line(line).unwrap())
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(p("list_mem"), Ok(Command::ListMem.into()));
        assert_eq!(
            p("put \"my file.jpg\" imgs/a.jpg"),
            Ok(Request::Put {
                local: "my file.jpg".into(),
                name: "imgs/a.jpg".into()
            })
        );
        assert_eq!(
            p("get-versions a 3 out"),
            Ok(Request::GetVersions {
                name: "a".into(),
                k: 3,
                local: "out".into(),
                force: false
            })
        );
        assert_eq!(
            p("get a out --force"),
            Ok(Request::Get {
                name: "a".into(),
                local: "out".into(),
                force: true
            })
        );
        assert_eq!(
            p("get-versions --force a 2 out"),
            Ok(Request::GetVersions {
                name: "a".into(),
                k: 2,
                local: "out".into(),
                force: true
            })
        );
        assert_eq!(
            p("C3 resnet50 16"),
            Ok(Command::C3 {
                model: "resnet50".into(),
                batch: 16
            }
            .into())
        );
        assert_eq!(
            p("ls-prefix --limit 5 imgs/ --after imgs/b"),
            Ok(Command::LsPrefix {
                prefix: "imgs/".into(),
                after: Some("imgs/b".into()),
                limit: Some(5)
            }
            .into())
        );
        assert_eq!(p("store"), Ok(Command::store().into()));
        assert_eq!(
            Command::store().page_after("x".into()),
            Command::Store {
                after: Some("x".into()),
                limit: None
            }
        );
        assert_eq!(
            p("C4 --results job-1"),
            Ok(Request::Results {
                job: "job-1".into(),
                out: None,
                force: false
            })
        );
        assert_eq!(
            p("results 3-1 --out r.csv --force"),
            Ok(Request::Results {
                job: "3-1".into(),
                out: Some("r.csv".into()),
                force: true
            })
        );
        assert!(p("results 3-1 --out").is_err());
        // Every command named in help parses with placeholder arguments.
        for (usage, _) in HELP {
            // Optional parts (`[...]`, perhaps several words) are left out.
            let mut depth = 0i32;
            let words: Vec<String> = usage
                .split_whitespace()
                .filter(|w| {
                    let inside = depth > 0 || w.starts_with('[');
                    depth += w.matches('[').count() as i32 - w.matches(']').count() as i32;
                    !inside
                })
                .map(|w| {
                    if w == "K" || w == "N" {
                        "2".into()
                    } else {
                        w.to_string()
                    }
                })
                .collect();
            assert!(parse(&words).is_ok(), "{usage}");
        }
    }

    #[test]
    fn bad_input_is_one_line_error() {
        for line in [
            "",
            "frobnicate",
            "put a",
            "C3 resnet50 zero",
            "C3 resnet50 0",
            "get-versions a -1 b",
            "list_mem extra",
            "get a",
            "get a b c --force",
            "put a b --force",
            "ls-prefix",
            "ls-prefix a b",
            "ls-prefix a --limit",
            "ls-prefix a --limit 0",
            "store extra",
            "store --after",
        ] {
            let e = p(line).unwrap_err();
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(split_line("put \"a b").is_err());
        let huge = format!("x{}", "y".repeat(4 << 20));
        assert!(p(&huge).unwrap_err().len() < 400);
    }
}
