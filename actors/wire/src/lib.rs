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

/// The frame under construction. Every write reserves room for the seal's tag as well, so
/// sealing a bulk frame appends its tag without moving the payload to a bigger buffer.
struct FrameBuf(Vec<u8>);

impl std::io::Write for FrameBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.reserve(data.len().saturating_add(TAG_LEN));
        self.0.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Serialises `msg` and puts a length prefix in front, refusing payloads over `max`.
fn encode_with_max<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, WireError> {
    let mut out = FrameBuf(vec![0u8; LEN_PREFIX]);
    rmp_serde::encode::write(&mut out, msg)?;
    let mut out = out.0;
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
    // Fast path: the end of the first value is found by walking the markers (no copies),
    // and the value is decoded straight from the slice, so a chunk's bytes are copied
    // once, into the message. Input the walk does not accept takes the slow path below,
    // which decides exactly as before.
    if let Some(end) = value_end(payload, 0, MAX_DEPTH) {
        let mut de = rmp_serde::Deserializer::from_read_ref(payload.get(..end).unwrap_or_default());
        de.set_max_depth(MAX_DEPTH);
        let value = T::deserialize(&mut de)?;
        let extra = payload.len().saturating_sub(end);
        if extra > 0 {
            return Err(WireError::TrailingBytes { extra });
        }
        return Ok(value);
    }
    decode_exact_reader(payload)
}

/// [`decode_exact`] the slow way, for any input.
fn decode_exact_reader<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
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

/// `n` bytes starting at `at`, if `buf` has them: the end offset.
fn skip(buf: &[u8], at: usize, n: usize) -> Option<usize> {
    let end = at.checked_add(n)?;
    (end <= buf.len()).then_some(end)
}

/// A big-endian length of `N` bytes at `at`: (length, offset after it).
fn be_len<const N: usize>(buf: &[u8], at: usize) -> Option<(usize, usize)> {
    let bytes = buf.get(at..skip(buf, at, N)?)?;
    let len = bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    Some((usize::try_from(len).ok()?, at + N))
}

/// The offset just past the MessagePack value starting at `at`, or `None` if the value is
/// malformed, truncated or nested deeper than `depth`. Each element costs at least one
/// byte of `buf`, so a hostile count ends the walk within `buf.len()` steps.
fn value_end(buf: &[u8], at: usize, depth: usize) -> Option<usize> {
    let marker = *buf.get(at)?;
    let at = at + 1;
    let (items, at) = match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => return Some(at),
        0xcc | 0xd0 => return skip(buf, at, 1),
        0xcd | 0xd1 => return skip(buf, at, 2),
        0xca | 0xce | 0xd2 => return skip(buf, at, 4),
        0xcb | 0xcf | 0xd3 => return skip(buf, at, 8),
        0xd4 => return skip(buf, at, 2),
        0xd5 => return skip(buf, at, 3),
        0xd6 => return skip(buf, at, 5),
        0xd7 => return skip(buf, at, 9),
        0xd8 => return skip(buf, at, 17),
        0xa0..=0xbf => return skip(buf, at, usize::from(marker & 0x1f)),
        0xc4 | 0xd9 => return be_len::<1>(buf, at).and_then(|(n, at)| skip(buf, at, n)),
        0xc5 | 0xda => return be_len::<2>(buf, at).and_then(|(n, at)| skip(buf, at, n)),
        0xc6 | 0xdb => return be_len::<4>(buf, at).and_then(|(n, at)| skip(buf, at, n)),
        // ext: length, type byte, data
        0xc7 => return be_len::<1>(buf, at).and_then(|(n, at)| skip(buf, at, n.checked_add(1)?)),
        0xc8 => return be_len::<2>(buf, at).and_then(|(n, at)| skip(buf, at, n.checked_add(1)?)),
        0xc9 => return be_len::<4>(buf, at).and_then(|(n, at)| skip(buf, at, n.checked_add(1)?)),
        0x90..=0x9f => (usize::from(marker & 0x0f), at),
        0x80..=0x8f => (usize::from(marker & 0x0f).checked_mul(2)?, at),
        0xdc => be_len::<2>(buf, at)?,
        0xdd => be_len::<4>(buf, at)?,
        0xde => be_len::<2>(buf, at).and_then(|(n, at)| Some((n.checked_mul(2)?, at)))?,
        0xdf => be_len::<4>(buf, at).and_then(|(n, at)| Some((n.checked_mul(2)?, at)))?,
        // 0xc1 is never used
        _ => return None,
    };
    let depth = depth.checked_sub(1)?;
    let mut at = at;
    for _ in 0..items {
        at = value_end(buf, at, depth)?;
    }
    Some(at)
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

/// Decodes one envelope from a frame's payload (without its length prefix), rejecting
/// trailing bytes and other versions. The outcome is that of checking the version first
/// and decoding the body after, but a good payload is decoded only once: the version is
/// looked at separately only when the payload did not decode.
pub fn decode_payload<B: DeserializeOwned>(payload: &[u8]) -> Result<Envelope<B>, WireError> {
    let mismatch = |got| WireError::VersionMismatch {
        got,
        expected: PROTOCOL_VERSION,
    };
    match decode_exact::<Envelope<B>>(payload) {
        Ok(env) if env.version == PROTOCOL_VERSION => Ok(env),
        Ok(env) => Err(mismatch(env.version)),
        Err(e) => match decode_exact::<VersionPeek>(payload) {
            Ok(VersionPeek(got)) if got != PROTOCOL_VERSION => Err(mismatch(got)),
            Ok(_) => Err(e),
            Err(peek) => Err(peek),
        },
    }
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
/// Frames are handed out in place (no copy per frame), and a socket can read straight
/// into the buffer ([`FrameDecoder::read_buf`]).
#[derive(Debug)]
pub struct FrameDecoder {
    /// Storage; `buf[start..end]` are the bytes received and not yet returned. What lies
    /// past `end` was zeroed once and is reused by later reads.
    buf: Vec<u8>,
    /// Start of the unconsumed bytes. Consumed frames are cut off lazily, when a read
    /// needs room, so a read holding many small frames costs one shift instead of one per
    /// frame, and the frame last returned stays where it is until the next read.
    start: usize,
    end: usize,
    max: usize,
}

impl FrameDecoder {
    /// A decoder that accepts payloads of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max,
        }
    }

    /// Changes the cap, e.g. from [`HANDSHAKE_MAX_FRAME`] to the data maximum once the
    /// peer is authenticated. Bytes already buffered are kept.
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Room for the next `len` received bytes; write them there, then call
    /// [`FrameDecoder::filled`] with how many were written.
    pub fn read_buf(&mut self, len: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let room = |d: &Self| d.buf.len().saturating_sub(d.end);
        if room(self) < len && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let want = self.end.saturating_add(len);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        self.buf.get_mut(self.end..want).unwrap_or_default()
    }

    /// Takes `n` bytes written into the last [`FrameDecoder::read_buf`] as received.
    pub fn filled(&mut self, n: usize) {
        self.end = self.end.saturating_add(n).min(self.buf.len());
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.read_buf(data.len()).copy_from_slice(data);
        self.filled(data.len());
    }

    /// Bytes buffered and not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    /// The next complete payload, in place in the buffer, consumed: `Ok(None)` if more
    /// bytes are needed.
    pub fn next_payload_mut(&mut self) -> Result<Option<&mut [u8]>, WireError> {
        let unconsumed = self.buf.get(self.start..self.end).unwrap_or_default();
        let Some((payload, used)) = split_frame(unconsumed, self.max)? else {
            return Ok(None);
        };
        let from = self.start.saturating_add(LEN_PREFIX);
        let to = from.saturating_add(payload.len());
        self.start = self.start.saturating_add(used).min(self.end);
        Ok(Some(self.buf.get_mut(from..to).unwrap_or_default()))
    }

    /// The next complete payload, `Ok(None)` if more bytes are needed.
    pub fn next_payload(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        Ok(self.next_payload_mut()?.map(|p| p.to_vec()))
    }

    /// The next complete envelope, `Ok(None)` if more bytes are needed.
    pub fn next_envelope<B: DeserializeOwned>(&mut self) -> Result<Option<Envelope<B>>, WireError> {
        match self.next_payload_mut()? {
            None => Ok(None),
            Some(payload) => decode_payload(payload).map(Some),
        }
    }
}

#[cfg(test)]
mod tests;
