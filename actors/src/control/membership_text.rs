//! Console text and JSON of the membership commands (`list_mem`, `list_self`, `stats`,
//! `join`, `leave`, and the introducer's `list_mem`): the membership and introducer
//! actors hand their data over, the wording lives here beside the command parser.

use serde::Serialize;

use crate::control::{Command, Reply};
use crate::membership::{Member, Status};
use crate::net::transport::TransportStats;
use crate::types::Incarnation;

/// Probes this node's PingActors sent, saw answered and gave up on (`stats`).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct ProbeCounts {
    pub sent: u64,
    pub acked: u64,
    pub missed: u64,
}

/// `list_mem` on a node: its member list.
pub fn members(members: &[Member]) -> Reply {
    let mut text = format!("{} members:", members.len());
    for m in members {
        text.push_str(&format!(
            "\n  {}  incarnation {}  {:?}",
            m.addr, m.incarnation, m.state
        ));
    }
    let json: Vec<_> = members.iter().map(member_json).collect();
    Reply::new(text, serde_json::Value::Array(json))
}

/// `list_self`: this node's own entry and where it stands.
pub fn self_member(me: &Member, status: Status) -> Reply {
    let mut json = member_json(me);
    json["status"] = serde_json::json!(format!("{status:?}").to_lowercase());
    Reply::new(
        format!(
            "{}  incarnation {}  joined {}  {:?}",
            me.addr, me.incarnation, me.joined, status
        ),
        json,
    )
}

/// `join` answered: this node is in.
pub fn joined(incarnation: Incarnation, members: usize) -> Reply {
    Reply::new(
        format!("joined with incarnation {incarnation}; {members} members"),
        serde_json::json!({"joined": true, "incarnation": incarnation, "members": members}),
    )
}

/// `join` could not complete (the introducer did not answer).
pub fn join_failed(reason: &str) -> String {
    format!("join failed: {reason}")
}

/// `join` or `leave` (`what`) was refused before anything changed.
pub fn refused(what: &str, reason: &dyn std::fmt::Display) -> String {
    format!("{what}: {reason}")
}

/// `forgive` done.
pub fn forgiven() -> Reply {
    Reply::new("tombstone cleared", serde_json::json!({"forgiven": true}))
}

/// `leave` done.
pub fn left() -> Reply {
    Reply::new("left the cluster", serde_json::json!({"left": true}))
}

/// A command the membership actor does not execute.
pub fn not_membership(cmd: &Command) -> String {
    format!("{cmd:?} is not a membership command")
}

/// `stats`: traffic between nodes (frame bytes, tools' connections excluded), uptime
/// and probe counts: what the background-traffic benchmark reads.
pub fn stats(t: &TransportStats, uptime_ms: u64, probes: ProbeCounts) -> Reply {
    let sent = t.control.bytes_sent + t.bulk.bytes_sent;
    let received = t.control.bytes_received + t.bulk.bytes_received;
    Reply::new(
        format!(
            "uptime {:.1} s; sent {sent} B (control {}, bulk {}); received {received} B \
             (control {}, bulk {}); probes sent {}, acked {}, missed {}",
            uptime_ms as f64 / 1000.0,
            t.control.bytes_sent,
            t.bulk.bytes_sent,
            t.control.bytes_received,
            t.bulk.bytes_received,
            probes.sent,
            probes.acked,
            probes.missed,
        ),
        serde_json::json!({
            "uptime_ms": uptime_ms,
            "bytes_sent": sent,
            "bytes_received": received,
            "lanes": {"control": t.control, "bulk": t.bulk},
            "probes": probes,
        }),
    )
}

/// `list_mem` on the introducer: the members it would hand a joiner.
pub fn introducer_members(members: &[Member]) -> Reply {
    let text = members
        .iter()
        .map(|m| format!("  {}  incarnation {}  {:?}", m.addr, m.incarnation, m.state))
        .collect::<Vec<_>>()
        .join("\n");
    let json: Vec<_> = members
        .iter()
        .map(|m| {
            serde_json::json!({"id": format!("{}#{}", m.addr, m.joined), "addr": m.addr.as_str(),
                "incarnation": m.incarnation, "state": m.state})
        })
        .collect();
    Reply::new(
        format!("introducer knows {} members:\n{text}", members.len()),
        serde_json::Value::Array(json),
    )
}

/// The introducer answers nothing else.
pub fn introducer_only_list_mem() -> String {
    "the introducer only answers list_mem".to_string()
}

fn member_json(m: &Member) -> serde_json::Value {
    serde_json::json!({
        "id": format!("{}#{}", m.addr, m.joined),
        "addr": m.addr.as_str(),
        "incarnation": m.incarnation,
        "joined": m.joined,
        "state": m.state,
    })
}
