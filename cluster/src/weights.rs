//! The operator's side of `dml weights publish` and `dml weights list`: the tool checks a
//! weight file against the network, stores it in SDFS under its SHA-256 and records it
//! as the model's next version (names and record: `dml_actors::weights`). Every byte goes
//! through the ordinary tool path (`put` streams the local file), so no node ever opens
//! the operator's file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use dml_actors::control::{Command, Reply, Request, Transfer};
use dml_actors::net::wire::Credential;
use dml_actors::weights::{self, WeightsRecord};
use dml_models::{Network, Weights};

/// Which node to ask, as whom, and how long to wait.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: String,
    pub cred: Credential,
    pub connect: Duration,
    /// Bound of each answer (a 100 MB put streams in one request).
    pub reply: Duration,
}

impl Target {
    fn ask(&self, req: impl Into<Request>) -> anyhow::Result<Result<Reply, String>> {
        crate::ask(&self.addr, &self.cred, req, self.connect, self.reply)
    }
}

/// The format a node will load `file` with, from its extension.
fn format_of(file: &Path) -> anyhow::Result<&'static str> {
    match file.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Ok("safetensors"),
        Some("pth" | "pt" | "bin") => Ok("pth"),
        _ => bail!(
            "{}: not a .safetensors or .pth file (the extension says how nodes read it)",
            file.display()
        ),
    }
}

/// A file of our own for a small record, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Self {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Scratch(
            std::env::temp_dir().join(format!("dml-weights-{what}-{}-{nonce}", std::process::id())),
        )
    }

    fn path(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Stores `bytes` as a new version of `name`; returns the version.
fn put_bytes(t: &Target, name: &str, bytes: &[u8]) -> anyhow::Result<u64> {
    let scratch = Scratch::new("put");
    std::fs::write(&scratch.0, bytes).context("cannot write a temporary file")?;
    let reply = t
        .ask(Request::Put {
            local: scratch.path(),
            name: name.to_string(),
        })?
        .map_err(|e| anyhow!("storing {name}: {e}"))?;
    version_of(&reply).with_context(|| format!("storing {name}: no version in the answer"))
}

fn version_of(reply: &Reply) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(&reply.json)
        .ok()?
        .get("version")?
        .as_u64()
}

/// The latest version of `name` and its bytes; `None` when the name has no versions.
fn get_bytes(t: &Target, name: &str) -> anyhow::Result<Option<(u64, Vec<u8>)>> {
    let scratch = Scratch::new("get");
    let outcome = t.ask(Request::Get {
        name: name.to_string(),
        local: scratch.path(),
        force: true,
    })?;
    match outcome {
        Ok(reply) => {
            let version = version_of(&reply).context("no version in the answer")?;
            let bytes = std::fs::read(&scratch.0).context("cannot read the fetched record")?;
            Ok(Some((version, bytes)))
        }
        Err(e) if weights::is_missing(&e) => Ok(None),
        Err(e) => Err(anyhow!("reading {name}: {e}")),
    }
}

/// The model's active (newest) version, if any was published.
pub fn active(t: &Target, model: &str) -> anyhow::Result<Option<WeightsRecord>> {
    let Some((version, bytes)) = get_bytes(t, &weights::versions_name(model))? else {
        return Ok(None);
    };
    let mut r: WeightsRecord = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a weights record", weights::versions_name(model)))?;
    r.version = version;
    Ok(Some(r))
}

/// Checks `file` against `model`'s network (every tensor's name and shape, before
/// anything is stored), stores it under its hash unless SDFS has it already, and records
/// it as the model's next version, which becomes the active one.
pub fn publish(t: &Target, model: &str, file: &Path) -> anyhow::Result<WeightsRecord> {
    let network = Network::parse(model)?;
    let format = format_of(file)?;
    Weights::load(network, file).context("refused, nothing stored")?;
    let sha256 = dml_models::weights::sha256_file(file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let bytes = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let model = network.name();
    let blob = weights::blob_name(model, &sha256, format);
    // Content-addressed: a file SDFS already holds is not sent again.
    match t.ask(Command::Ls { name: blob.clone() })? {
        Ok(_) => {}
        Err(e) if weights::is_missing(&e) => {
            t.ask(Request::Put {
                local: file.to_string_lossy().into_owned(),
                name: blob.clone(),
            })?
            .map_err(|e| anyhow!("storing {blob}: {e}"))?;
        }
        Err(e) => bail!("asking for {blob}: {e}"),
    }
    let mut record = WeightsRecord {
        model: model.to_string(),
        version: 0,
        sha256,
        bytes,
        format: format.to_string(),
        file: file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        published_wall_ms: dml_actors::clock::wall_ms(),
    };
    // The primary of the versions name numbers this put: that number is the version.
    record.version = put_bytes(
        t,
        &weights::versions_name(model),
        &serde_json::to_vec(&record)?,
    )?;
    let history = weights::history_name(model, record.version);
    put_bytes(t, &history, &serde_json::to_vec(&record)?)?;
    Ok(record)
}

/// One row of `dml weights list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    pub record: WeightsRecord,
    pub active: bool,
}

/// Every published version of `models` (all networks when empty), oldest first.
pub fn list(t: &Target, models: &[Network]) -> anyhow::Result<Vec<Listed>> {
    let models = if models.is_empty() {
        Network::ALL.to_vec()
    } else {
        models.to_vec()
    };
    let mut rows = Vec::new();
    for network in models {
        let model = network.name();
        let active = active(t, model)?;
        let mut names: Vec<String> = Vec::new();
        let mut cmd = Command::ls_prefix(weights::history_prefix(model));
        loop {
            let page = t
                .ask(cmd.clone())?
                .map_err(|e| anyhow!("listing {}: {e}", weights::history_prefix(model)))?;
            names.extend(serde_json::from_str::<Vec<String>>(&page.json).unwrap_or_default());
            match page.transfer {
                Some(Transfer::More { after }) => cmd = cmd.page_after(after),
                _ => break,
            }
        }
        let mut records = Vec::new();
        for name in names {
            if let Some((_, bytes)) = get_bytes(t, &name)? {
                let r: WeightsRecord = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{name}: not a weights record"))?;
                records.push(r);
            }
        }
        // A publisher that died between the two records left the active one only in
        // the versions name.
        if let Some(a) = &active {
            if !records.iter().any(|r| r.version == a.version) {
                records.push(a.clone());
            }
        }
        records.sort_by_key(|r| r.version);
        for record in records {
            let is_active = active.as_ref().is_some_and(|a| a.version == record.version);
            rows.push(Listed {
                record,
                active: is_active,
            });
        }
    }
    Ok(rows)
}

/// One line per version, for the terminal.
pub fn list_text(rows: &[Listed]) -> String {
    if rows.is_empty() {
        return "no weights published (dml weights publish MODEL FILE)".into();
    }
    rows.iter()
        .map(|l| {
            let r = &l.record;
            format!(
                "{:<13} v{:<4} sha256 {}  {:>10} bytes  {}{}",
                r.model,
                r.version,
                r.sha256,
                r.bytes,
                r.file,
                if l.active { "  (active)" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
