//! Parsers for what the benchmarks read back from a cluster: the nodes' `event=...` log
//! lines and the JSON of the console's C1 and C5 answers.

use std::collections::BTreeMap;

use anyhow::Context;

/// One `event=...` line of a node's log with its `key=value` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    pub kind: String,
    pub wall: u64,
    pub fields: BTreeMap<String, String>,
}

impl LogEvent {
    /// The value of field `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

/// Parses a tracing line such as
/// `... INFO dml_actors::jobs::coordinator_actor: event=role wall=17 role=Primary epoch=2
/// coordinator=127.0.0.1:9001 standby=Some("127.0.0.1:9002")`. Quotes and `Some(..)` are
/// stripped from values. Lines without `event=` and a numeric `wall=` are not events.
pub fn parse_event(line: &str) -> Option<LogEvent> {
    let mut kind = None;
    let mut wall = None;
    let mut fields = BTreeMap::new();
    for word in line.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        let value = value
            .strip_prefix("Some(")
            .and_then(|v| v.strip_suffix(')'))
            .unwrap_or(value)
            .trim_matches('"');
        match key {
            "event" if kind.is_none() => kind = Some(value.to_string()),
            "wall" => wall = value.parse().ok(),
            _ => {
                fields.insert(key.to_string(), value.to_string());
            }
        }
    }
    Some(LogEvent {
        kind: kind?,
        wall: wall?,
        fields,
    })
}

/// Every event in a log text, in order.
pub fn parse_events(text: &str) -> Vec<LogEvent> {
    text.lines().filter_map(parse_event).collect()
}

/// The coordinator and standby of the newest reign any node has announced.
pub fn current_reign(events: &[LogEvent]) -> Option<(String, Option<String>)> {
    events
        .iter()
        .filter(|e| e.kind == "role")
        .filter_map(|e| {
            let epoch: u64 = e.get("epoch")?.parse().ok()?;
            Some((epoch, e.wall, e))
        })
        .max_by_key(|(epoch, wall, _)| (*epoch, *wall))
        .and_then(|(_, _, e)| {
            let coordinator = e.get("coordinator")?.to_string();
            let standby = e
                .get("standby")
                .filter(|s| *s != "None")
                .map(str::to_string);
            Some((coordinator, standby))
        })
}

/// The earliest `event=failed` about `peer` at or after `since`.
pub fn first_failed(events: &[LogEvent], peer: &str, since: u64) -> Option<u64> {
    events
        .iter()
        .filter(|e| e.kind == "failed" && e.get("peer") == Some(peer) && e.wall >= since)
        .map(|e| e.wall)
        .min()
}

/// The earliest `event=role role=Primary` at or after `since` (in one node's log).
pub fn first_primary(events: &[LogEvent], since: u64) -> Option<u64> {
    events
        .iter()
        .filter(|e| e.kind == "role" && e.get("role") == Some("Primary") && e.wall >= since)
        .map(|e| e.wall)
        .min()
}

/// One row of C1 (`--json`), the fields the benchmark reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    pub job: String,
    pub model: String,
    pub rate_qps: f64,
    pub processed: u64,
    pub complete: bool,
}

/// Parses C1's JSON rows.
pub fn parse_c1(json: &str) -> anyhow::Result<Vec<Rate>> {
    let v: serde_json::Value = serde_json::from_str(json).context("C1 is not JSON")?;
    let rows = v.as_array().context("C1 is not a list")?;
    rows.iter()
        .map(|r| {
            Ok(Rate {
                job: r["job"].as_str().context("C1 row without job")?.to_string(),
                model: r["model"].as_str().unwrap_or_default().to_string(),
                rate_qps: r["rate_qps"].as_f64().unwrap_or(0.0),
                processed: r["processed"].as_u64().unwrap_or(0),
                complete: r["complete"].as_bool().unwrap_or(false),
            })
        })
        .collect()
}

/// Parses C5's JSON into (node, job of the batch it runs).
pub fn parse_c5(json: &str) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let v: serde_json::Value = serde_json::from_str(json).context("C5 is not JSON")?;
    let nodes = v["nodes"].as_array().context("C5 without nodes")?;
    Ok(nodes
        .iter()
        .filter_map(|n| {
            let node = n["node"].as_str()?.to_string();
            Some((node, n["job"].as_str().map(str::to_string)))
        })
        .collect())
}
