//! Everything between two nodes' actors: the bytes ([`wire`]), the authenticated TCP
//! connections ([`transport`]), the message body every protocol shares ([`body`]) and
//! the actor that hands each inbound message to its subsystem ([`transport_actor`]).

pub mod body;
pub mod route;
pub mod security;
pub mod transport;
pub mod transport_actor;
pub mod wire;
