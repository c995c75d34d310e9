//! `dml-wire`, the bytes on the wire: the versioned envelope, the length-prefixed frame
//! codec, the mutual HMAC handshake ([`handshake`], re-exported here) and the identifiers
//! every layer shares ([`types`]). Everything here
//! is a pure function over byte slices (no sockets, no clock, no randomness of its own),
//! so it is property-tested and fuzzed without I/O; the node's `net::transport` only
//! moves these bytes. It is a crate of its own so that the fuzz target depends on exactly
//! what ships without building actix, tokio or ssh2.
//!
//! Frame: `u32` big-endian payload length, then the payload. A data payload is an
//! [`Envelope`] in MessagePack (rmp-serde, structs as arrays). A handshake payload is a
//! [`HandshakeMsg`], framed the same way but capped at [`HANDSHAKE_MAX_FRAME`]. After the
//! handshake every payload is sealed by the secure [`channel`] (AES-256-GCM, one key and
//! one frame counter per direction), so a frame's length prefix announces the sealed size.
//! Randomness (nonces, ephemeral keys) is always passed in by the caller.
#![deny(missing_docs)]

use std::fmt;
use std::io::Cursor;

use serde::de::{DeserializeOwned, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

/// Version of the envelope layout and of the handshake. Peers with another version are
/// refused: rmp-serde encodes structs as positional arrays, so layouts do not mix.
pub const PROTOCOL_VERSION: u16 = 2;

/// Largest payload a frame may carry (16 MiB). SDFS chunks (about 1 MiB) fit with room.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Size of the length prefix in front of every payload.
pub const LEN_PREFIX: usize = 4;

/// Nesting limit for decoding. Our messages are shallow; the limit keeps a hostile
/// payload of nested arrays from exhausting the stack (rmp-serde's default is 1024).
const MAX_DEPTH: usize = 64;

/// Errors of the byte layer. Every one means "this connection's input is unusable";
/// none of them is a reason for the node to stop.
#[derive(Debug, Error)]
pub enum WireError {
    /// A length prefix (or an encoded payload) is larger than the allowed maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The announced or encoded length.
        len: usize,
        /// The maximum in force.
        max: usize,
    },
    /// A frame with a zero length prefix: no valid message encodes to nothing.
    #[error("empty frame")]
    EmptyFrame,
    /// The payload decoded, but bytes were left over inside the frame.
    #[error("{extra} trailing bytes after the message inside the frame")]
    TrailingBytes {
        /// How many bytes were left.
        extra: usize,
    },
    /// The envelope was written by a peer speaking another protocol version.
    #[error("protocol version {got} is not supported (this node speaks {expected})")]
    VersionMismatch {
        /// Version found in the envelope.
        got: u16,
        /// [`PROTOCOL_VERSION`].
        expected: u16,
    },
    /// The payload is not valid MessagePack for the expected type.
    #[error("undecodable payload: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// The message could not be serialised.
    #[error("unencodable message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// A sealed frame did not open: it was tampered with, replayed, reordered, injected
    /// or sealed with another key. The connection cannot be trusted any more.
    #[error("a frame failed authentication (tampered, replayed, reordered or injected)")]
    Unauthentic,
    /// The per-direction frame counter ran out (2^64 frames); the connection must be
    /// reopened with fresh keys.
    #[error("frame counter exhausted; reconnect")]
    CounterExhausted,
}

pub mod channel;
pub mod handshake;
pub mod keys;
pub mod types;

pub use channel::*;
pub use handshake::*;
pub use keys::*;
/// The cryptographic generator to draw nonces, [`Ephemeral`] keys and new keys from.
pub use ring::rand::{SecureRandom, SystemRandom};

/// The envelope around every data message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<B> {
    /// Always [`PROTOCOL_VERSION`] when we write it; checked before the body is decoded.
    pub version: u16,
    /// Unique per sending transport; the key a reply refers to.
    pub id: u64,
    /// For a reply: the id of the request it answers.
    pub reply_to: Option<u64>,
    /// The sender waits for a reply (set by `request`), so the receiver gets a responder.
    pub expects_reply: bool,
    /// The application message.
    pub body: B,
}

impl<B> Envelope<B> {
    /// A one-way message.
    pub fn message(id: u64, body: B) -> Self {
        Envelope {
            version: PROTOCOL_VERSION,
            id,
            reply_to: None,
            expects_reply: false,
            body,
        }
    }

    /// A request that expects a reply.
    pub fn request(id: u64, body: B) -> Self {
        Envelope {
            expects_reply: true,
            ..Envelope::message(id, body)
        }
    }

    /// A reply to the request with id `reply_to`.
    pub fn reply(id: u64, reply_to: u64, body: B) -> Self {
        Envelope {
            reply_to: Some(reply_to),
            ..Envelope::message(id, body)
        }
    }
}

/// Which TCP connection a message travels on. Bulk data (file chunks, image batches) has
/// its own connection so that it can never sit in front of a ping or an ack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Lane {
    /// Pings, acks, membership and small commands.
    Control,
    /// Large transfers.
    Bulk,
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lane::Control => "control",
            Lane::Bulk => "bulk",
        })
    }
}

/// What kind of peer opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A cluster member, which also listens at the address it announces.
    Node,
    /// A one-shot tool (`dml ctl`) that does not listen; it only gets replies.
    Tool,
}

// ---------------------------------------------------------------------------------------
// Frame codec
// ---------------------------------------------------------------------------------------

/// Serialises `msg` and puts a length prefix in front, refusing payloads over `max`.
fn encode_with_max<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, WireError> {
    let mut out = vec![0u8; LEN_PREFIX];
    rmp_serde::encode::write(&mut out, msg)?;
    let len = out.len() - LEN_PREFIX;
    let too_large = WireError::FrameTooLarge { len, max };
    if len > max {
        return Err(too_large);
    }
    let prefix = u32::try_from(len).map_err(|_| too_large)?.to_be_bytes();
    out.get_mut(..LEN_PREFIX)
        .ok_or(WireError::EmptyFrame)?
        .copy_from_slice(&prefix);
    Ok(out)
}

/// Encodes an envelope as one frame (length prefix included), at most [`MAX_FRAME`].
pub fn encode_frame<B: Serialize>(env: &Envelope<B>) -> Result<Vec<u8>, WireError> {
    encode_frame_max(env, MAX_FRAME)
}

/// Encodes an envelope as one frame whose payload is at most `max` bytes.
pub fn encode_frame_max<B: Serialize>(env: &Envelope<B>, max: usize) -> Result<Vec<u8>, WireError> {
    encode_with_max(env, max.min(MAX_FRAME))
}

/// Reads the length prefix at the start of `buf`. `Ok(None)`: fewer than 4 bytes so far.
/// The length is judged here, before anyone reserves memory for it.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, WireError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let mut be = [0u8; LEN_PREFIX];
    be.copy_from_slice(prefix);
    // u32 always fits usize on the 32/64-bit targets we build for; saturate otherwise.
    let len = usize::try_from(u32::from_be_bytes(be)).unwrap_or(usize::MAX);
    if len == 0 {
        return Err(WireError::EmptyFrame);
    }
    if len > max {
        return Err(WireError::FrameTooLarge { len, max });
    }
    Ok(Some(len))
}

/// Splits the first complete frame off `buf`: `Ok(Some((payload, consumed)))`, or
/// `Ok(None)` when more bytes are needed, or an error when the prefix is invalid.
pub fn split_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, WireError> {
    let Some(len) = frame_len(buf, max)? else {
        return Ok(None);
    };
    let end = LEN_PREFIX.saturating_add(len);
    Ok(buf.get(LEN_PREFIX..end).map(|payload| (payload, end)))
}

/// Decodes exactly one `T` from `payload`, rejecting leftover bytes and deep nesting.
fn decode_exact<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    // A reader-based deserializer copies strings out of the slice (bounded by the slice
    // length, so a hostile length costs nothing) and can tell how far it got.
    let mut de = rmp_serde::Deserializer::new(Cursor::new(payload));
    de.set_max_depth(MAX_DEPTH);
    let value = T::deserialize(&mut de)?;
    let used = usize::try_from(de.position()).unwrap_or(usize::MAX);
    let extra = payload.len().saturating_sub(used);
    if extra > 0 {
        return Err(WireError::TrailingBytes { extra });
    }
    Ok(value)
}

/// The version field of an envelope of any layout: the first element of the top array,
/// everything after it skipped. Lets a version mismatch be reported as such instead of as
/// an undecodable body.
struct VersionPeek(u16);

impl<'de> Deserialize<'de> for VersionPeek {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = VersionPeek;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an envelope array starting with a version")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<VersionPeek, A::Error> {
                let version: u16 = seq
                    .next_element()?
                    .ok_or_else(|| serde::de::Error::invalid_length(0, &self))?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(VersionPeek(version))
            }
        }
        d.deserialize_seq(V)
    }
}

/// Decodes one envelope from a frame's payload (without its length prefix): checks the
/// version first, then decodes the body and rejects trailing bytes.
pub fn decode_payload<B: DeserializeOwned>(payload: &[u8]) -> Result<Envelope<B>, WireError> {
    let VersionPeek(got) = decode_exact(payload)?;
    if got != PROTOCOL_VERSION {
        return Err(WireError::VersionMismatch {
            got,
            expected: PROTOCOL_VERSION,
        });
    }
    decode_exact(payload)
}

/// Decodes the first frame of `buf`: `Ok(Some((envelope, bytes consumed)))`, `Ok(None)`
/// when the frame is not complete yet, `Err` when it can never become valid.
pub fn decode_frame<B: DeserializeOwned>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(Envelope<B>, usize)>, WireError> {
    match split_frame(buf, max)? {
        None => Ok(None),
        Some((payload, used)) => Ok(Some((decode_payload(payload)?, used))),
    }
}

/// Reassembles frames from a byte stream that arrives in arbitrary pieces. It only ever
/// holds bytes that were actually received, and refuses a frame as soon as its prefix
/// announces more than `max`, so memory per connection stays below `max` plus one read.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes. Consumed frames are cut off lazily, in `push`, so a
    /// read holding many small frames costs one shift instead of one per frame.
    start: usize,
    max: usize,
}

impl FrameDecoder {
    /// A decoder that accepts payloads of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// Changes the cap, e.g. from [`HANDSHAKE_MAX_FRAME`] to the data maximum once the
    /// peer is authenticated. Bytes already buffered are kept.
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start.min(self.buf.len()));
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    fn unconsumed(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    fn consume(&mut self, used: usize) {
        self.start = self.start.saturating_add(used).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// The next complete payload, `Ok(None)` if more bytes are needed.
    pub fn next_payload(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        let Some((payload, used)) = split_frame(self.unconsumed(), self.max)? else {
            return Ok(None);
        };
        let payload = payload.to_vec();
        self.consume(used);
        Ok(Some(payload))
    }

    /// The next complete envelope, `Ok(None)` if more bytes are needed.
    pub fn next_envelope<B: DeserializeOwned>(&mut self) -> Result<Option<Envelope<B>>, WireError> {
        let Some((payload, used)) = split_frame(self.unconsumed(), self.max)? else {
            return Ok(None);
        };
        let env = decode_payload(payload);
        self.consume(used);
        env.map(Some)
    }
}

#[cfg(test)]
mod tests;
