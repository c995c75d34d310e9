//! The history of a chaos run, Jepsen-style: every client operation with its invoke and
//! complete times, the node asked and its result, and every nemesis event, on one clock
//! (ms since the run started). The checker judges reads against it.

use std::collections::HashMap;
use std::time::Instant;

/// An operation's index in [`History::ops`].
pub type OpId = usize;

/// What a client asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One file of the initial directory put.
    Load,
    Put,
    Get,
    Delete,
    GetVersions,
}

/// One version a read returned, already compared with what its put wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub version: u64,
    /// The put whose bytes these claim to be (from the payload's header).
    pub from: Option<OpId>,
    /// The bytes equal what that put wrote.
    pub intact: bool,
    pub len: usize,
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Res {
    Pending,
    /// Acknowledged put, at this version.
    Put(u64),
    Read(Read),
    /// `get-versions`, newest first.
    Versions(Vec<Read>),
    /// Acknowledged delete.
    Deleted,
    /// The node said the name does not exist.
    NoSuchFile,
    /// The node refused with an error: for a put or delete it may still have happened.
    Failed(String),
    /// No answer (transport error or timeout): it may or may not have happened.
    Indeterminate(String),
}

#[derive(Debug, Clone)]
pub struct Op {
    pub id: OpId,
    /// Client thread (`usize::MAX` for the loader and the final reader).
    pub client: usize,
    pub kind: Kind,
    pub name: String,
    pub node: String,
    pub invoke: u64,
    pub complete: Option<u64>,
    pub res: Res,
    /// Bytes a put wrote.
    pub size: usize,
}

impl Op {
    /// The version of an acknowledged put.
    pub fn acked_version(&self) -> Option<u64> {
        match self.res {
            Res::Put(v) if matches!(self.kind, Kind::Put | Kind::Load) => Some(v),
            _ => None,
        }
    }

    pub fn is_write(&self) -> bool {
        matches!(self.kind, Kind::Put | Kind::Load)
    }
}

/// A nemesis event: what was done, when.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: u64,
    pub what: String,
}

/// Everything that happened in a run.
#[derive(Debug)]
pub struct History {
    start: Instant,
    pub ops: Vec<Op>,
    pub by_name: HashMap<String, Vec<OpId>>,
    /// Every name a put was invoked on, in first-put order (what clients read from).
    pub names: Vec<String>,
    pub nemesis: Vec<Event>,
}

impl History {
    pub fn new(start: Instant) -> Self {
        History {
            start,
            ops: Vec::new(),
            by_name: HashMap::new(),
            names: Vec::new(),
            nemesis: Vec::new(),
        }
    }

    /// Ms since the run started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Records an invocation; its id.
    pub fn invoke(
        &mut self,
        client: usize,
        kind: Kind,
        name: &str,
        node: &str,
        size: usize,
    ) -> OpId {
        let id = self.ops.len();
        let invoke = self.now();
        self.ops.push(Op {
            id,
            client,
            kind,
            name: name.to_string(),
            node: node.to_string(),
            invoke,
            complete: None,
            res: Res::Pending,
            size,
        });
        let ops = self.by_name.entry(name.to_string()).or_default();
        if ops.is_empty() && matches!(kind, Kind::Put | Kind::Load) {
            self.names.push(name.to_string());
        }
        ops.push(id);
        id
    }

    pub fn complete(&mut self, id: OpId, res: Res) {
        let now = self.now();
        let op = &mut self.ops[id];
        op.complete = Some(now);
        op.res = res;
    }

    /// Logs a nemesis event (and prints it with its time).
    pub fn note(&mut self, what: String) {
        let at = self.now();
        println!("[{:>8.1}s] nemesis: {what}", at as f64 / 1000.0);
        self.nemesis.push(Event { at, what });
    }

    /// The ops on `name`, in invoke order.
    pub fn on(&self, name: &str) -> impl Iterator<Item = &Op> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .map(|id| &self.ops[*id])
    }
}

/// One line of an op, for violation reports.
pub fn describe(op: &Op) -> String {
    let complete = op
        .complete
        .map_or("-".to_string(), |c| format!("{:.3}", c as f64 / 1000.0));
    let client = if op.client == usize::MAX {
        "-".to_string()
    } else {
        op.client.to_string()
    };
    format!(
        "op {:>6} client {client:>2} {:?} {} on {} [{:.3}s .. {complete}s] size {} -> {:?}",
        op.id,
        op.kind,
        op.name,
        op.node,
        op.invoke as f64 / 1000.0,
        op.size,
        op.res
    )
}
