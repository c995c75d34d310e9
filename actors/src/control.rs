//! Console commands: one parser shared by the interactive console and `dml ctl`, the
//! typed command sent to a node, and the reply it sends back (text and JSON).

use serde::{Deserialize, Serialize};

pub mod jobs_text;
pub mod membership_text;
pub mod sdfs_text;

/// A command a node executes for the console or `dml ctl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    Join,
    Leave,
    ListMem,
    ListSelf,
    Help,
    Put {
        local: String,
        name: String,
    },
    Get {
        name: String,
        local: String,
    },
    Delete {
        name: String,
    },
    Ls {
        name: String,
    },
    LsPrefix {
        prefix: String,
    },
    Store,
    GetVersions {
        name: String,
        k: usize,
        local: String,
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
    /// C4: submit a job over an SDFS prefix or a local directory.
    C4 {
        model: String,
        input: String,
    },
    /// `C4 --results JOB`: a finished job's outputs, read back from SDFS.
    C4Results {
        job: String,
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

/// A node's answer: human text plus the same content as JSON for `--json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub text: String,
    /// JSON document, carried as a string so any shape crosses MessagePack unchanged.
    pub json: String,
}

impl Reply {
    pub fn new(text: impl Into<String>, json: serde_json::Value) -> Self {
        Reply {
            text: text.into(),
            json: json.to_string(),
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
    ("get SDFS_NAME LOCAL", "fetch the latest version of a file"),
    ("delete SDFS_NAME", "delete a file (all versions)"),
    ("ls SDFS_NAME", "which nodes hold a file, with its version"),
    ("ls-prefix PREFIX", "names stored under a prefix"),
    ("store", "what this node holds"),
    (
        "get-versions SDFS_NAME K LOCAL",
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
        "submit a job; C4 --results JOB prints a job's outputs",
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
pub fn parse(words: &[String]) -> Result<Command, String> {
    let Some((head, args)) = words.split_first() else {
        return Err("empty command; type `help`".into());
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
            Command::Put {
                local: a(0),
                name: a(1),
            }
        }
        "get" => {
            want(2, "get SDFS_NAME LOCAL")?;
            Command::Get {
                name: a(0),
                local: a(1),
            }
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
            want(1, "ls-prefix PREFIX")?;
            Command::LsPrefix { prefix: a(0) }
        }
        "store" => want(0, "store").map(|_| Command::Store)?,
        "get-versions" => {
            want(3, "get-versions SDFS_NAME K LOCAL")?;
            let k = positive(&a(1), "K")?;
            Command::GetVersions {
                name: a(0),
                k,
                local: a(2),
            }
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
                Command::C4Results { job: a(1) }
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
        other => return Err(format!("unknown command {other:?}; type `help`")),
    };
    Ok(cmd)
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

    fn p(line: &str) -> Result<Command, String> {
        parse(&split_line(line).unwrap())
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(p("list_mem"), Ok(Command::ListMem));
        assert_eq!(
            p("put \"my file.jpg\" imgs/a.jpg"),
            Ok(Command::Put {
                local: "my file.jpg".into(),
                name: "imgs/a.jpg".into()
            })
        );
        assert_eq!(
            p("get-versions a 3 out"),
            Ok(Command::GetVersions {
                name: "a".into(),
                k: 3,
                local: "out".into()
            })
        );
        assert_eq!(
            p("C3 resnet50 16"),
            Ok(Command::C3 {
                model: "resnet50".into(),
                batch: 16
            })
        );
        assert_eq!(
            p("C4 --results job-1"),
            Ok(Command::C4Results {
                job: "job-1".into()
            })
        );
        // Every command named in help parses with placeholder arguments.
        for (usage, _) in HELP {
            let words: Vec<String> = usage
                .split_whitespace()
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
        ] {
            let e = p(line).unwrap_err();
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(split_line("put \"a b").is_err());
    }
}
