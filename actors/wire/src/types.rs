//! Identifiers shared by every layer of a node.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's address as `host:port`; the key of a member everywhere in the cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeAddr(pub String);

impl NodeAddr {
    /// `host:port`.
    pub fn new(host: &str, port: u16) -> Self {
        NodeAddr(format!("{host}:{port}"))
    }
    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeAddr {
    fn from(s: &str) -> Self {
        NodeAddr(s.to_string())
    }
}

/// A member's incarnation: only the member itself raises it (to refute a suspicion,
/// or when it rejoins after being removed).
pub type Incarnation = u64;

/// Milliseconds on the caller's clock. Cores never read a clock: actors pass `now` in,
/// tests pass virtual time.
pub type Millis = u64;
