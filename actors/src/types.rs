//! Identifiers shared by every layer of a node (`NodeAddr`, `Incarnation`, `Millis`):
//! defined in `dml-wire` because they cross the wire.

pub use dml_wire::types::*;
