//! The node's view of the wire format: everything of the `dml-wire` crate
//! (`actors/wire/`), where the envelope, frame codec and handshake live.

pub use dml_wire::*;
