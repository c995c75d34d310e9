//! Console text and JSON of SDFS results (`put`, `get`, `ls`, `store`, ...), for the
//! interactive console and `dml ctl --json`. Formatting only: what a result is, and
//! whether it is an error, is decided by the SDFS core and its shell.

use serde_json::json;

use crate::control::{Reply as CtlReply, Transfer};
use crate::sdfs::dir_put::PutLocalDone;
use crate::sdfs::{Reply, SdfsName};

/// Text and JSON of a core reply; `local` is the file a get wrote, if any.
pub fn reply(r: &Reply, local: Option<&str>) -> CtlReply {
    match r {
        Reply::Put { name, version } => put_file(name.as_str(), *version),
        Reply::Get {
            name,
            version,
            bytes,
        } => CtlReply::new(
            format!(
                "got {name} version {version} ({bytes} bytes) into {}",
                local.unwrap_or("-")
            ),
            json!({"name": name.as_str(), "version": version, "bytes": bytes, "local": local}),
        ),
        Reply::GetVersions { name, versions } => CtlReply::new(
            format!(
                "got {} versions of {name} ({}) into {}",
                versions.len(),
                versions
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                local.unwrap_or("-")
            ),
            json!({"name": name.as_str(), "versions": versions, "local": local}),
        ),
        Reply::Deleted { name, tombstone } => CtlReply::new(
            format!("deleted {name} (versions up to {tombstone})"),
            json!({"name": name.as_str(), "deleted": true, "upto": tombstone}),
        ),
        Reply::Ls { name, versions } => {
            let mut text = format!("{name}:");
            if versions.is_empty() {
                text.push_str(" no versions");
            }
            for v in versions {
                let hs: Vec<&str> = v.holders.iter().map(|h| h.as_str()).collect();
                text.push_str(&format!("\n  version {}: {}", v.version, hs.join(", ")));
            }
            let latest = versions.first();
            CtlReply::new(
                text,
                json!({
                    "name": name.as_str(),
                    "version": latest.map(|v| v.version),
                    "holders": latest.map(|v| v.holders.iter().map(|h| h.as_str()).collect::<Vec<_>>()).unwrap_or_default(),
                    "versions": versions.iter().map(|v| json!({
                        "version": v.version,
                        "holders": v.holders.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                }),
            )
        }
        // Listings come in pages: each page's text is its lines only, and the tool
        // (`dml_cluster`) adds what needs the whole listing ("no names", the count).
        Reply::Names { names, next } => {
            let list: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
            page(list.join("\n"), json!(list), next.as_ref())
        }
        Reply::Store { holdings, next } => {
            // The text lists what is held; deleted names (tombstones) are in the JSON.
            let lines: Vec<String> = holdings
                .iter()
                .filter(|h| !h.versions.is_empty())
                .map(|h| {
                    let vs: Vec<String> = h.versions.iter().map(|v| v.to_string()).collect();
                    format!("  {}  versions {}", h.name, vs.join(", "))
                })
                .collect();
            let json = json!(holdings
                .iter()
                .map(|h| json!({"name": h.name.as_str(), "versions": h.versions, "tombstone": h.tombstone}))
                .collect::<Vec<_>>());
            page(lines.join("\n"), json, next.as_ref())
        }
    }
}

/// A listing page, with the cursor of the next one if there is more.
fn page(text: String, json: serde_json::Value, next: Option<&SdfsName>) -> CtlReply {
    let mut reply = CtlReply::new(text, json);
    reply.transfer = next.map(|n| Transfer::More {
        after: n.to_string(),
    });
    reply
}

/// An operator's put or delete of a name only the jobs layer writes.
pub fn jobs_only(name: &crate::sdfs::SdfsName) -> String {
    format!(
        "{name}: names under {} are written only by the jobs layer; an operator may read them, \
         not put or delete them",
        crate::sdfs::name::JOBS_ONLY.join(" and ")
    )
}

fn put_file(name: &str, version: u64) -> CtlReply {
    CtlReply::new(
        format!("put {name}: version {version}"),
        json!({"name": name, "version": version}),
    )
}

/// Text and JSON of a finished put of a local file or directory.
pub fn put_local(done: &PutLocalDone) -> CtlReply {
    match done {
        PutLocalDone::File { name, version } => put_file(name, *version),
        PutLocalDone::Dir { prefix, stored } => {
            let total = stored.len();
            let mut text = format!("put {total} files under {prefix}/ ({total} stored, 0 failed)");
            for (i, (n, v)) in stored.iter().enumerate() {
                text.push_str(&format!("\n  [{}/{total}] {n} v{v}", i + 1));
            }
            let stored: Vec<_> = stored
                .iter()
                .map(|(n, v)| json!({"name": n, "version": v}))
                .collect();
            CtlReply::new(
                text,
                json!({"name": prefix, "files": total, "stored": stored}),
            )
        }
    }
}
