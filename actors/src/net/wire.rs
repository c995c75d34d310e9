//! The bytes on the wire: the versioned envelope, the length-prefixed frame codec and the
//! mutual HMAC handshake. Everything here is a pure function over byte slices (no sockets,
//! no clock, no randomness of its own), so it is property-tested and fuzzed without I/O;
//! `transport` only moves these bytes.
//!
//! Frame: `u32` big-endian payload length, then the payload. A data payload is an
//! [`Envelope`] in MessagePack (rmp-serde, structs as arrays). A handshake payload is a
//! [`HandshakeMsg`], framed the same way but capped at [`HANDSHAKE_MAX_FRAME`].
#![deny(missing_docs)]

use std::fmt;
use std::io::Cursor;

use hmac::{Hmac, Mac};
use serde::de::{DeserializeOwned, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::Sha256;
use thiserror::Error;

use crate::types::NodeAddr;

/// Version of the envelope layout and of the handshake. Peers with another version are
/// refused: rmp-serde encodes structs as positional arrays, so layouts do not mix.
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest payload a frame may carry (16 MiB). SDFS chunks (about 1 MiB) fit with room.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Size of the length prefix in front of every payload.
pub const LEN_PREFIX: usize = 4;

/// Largest handshake payload. Small, because an unauthenticated peer must not make us
/// buffer more than this before it has proved anything.
pub const HANDSHAKE_MAX_FRAME: usize = 1024;

/// Longest `host:port` a peer may announce in its hello.
pub const MAX_ADDR_LEN: usize = 255;

/// Size of each side's handshake nonce.
pub const NONCE_LEN: usize = 32;

/// Nesting limit for decoding. Our messages are shallow; the limit keeps a hostile
/// payload of nested arrays from exhausting the stack (rmp-serde's default is 1024).
const MAX_DEPTH: usize = 64;

/// Domain-separation label mixed into every handshake MAC.
const MAC_LABEL: &[u8] = b"dml-handshake-v1";

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
}

/// Errors of the handshake. Any of them closes the connection before anything else on it
/// is processed.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// The handshake frame itself was malformed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {got}, this node speaks {expected}")]
    VersionMismatch {
        /// The peer's version.
        got: u16,
        /// [`PROTOCOL_VERSION`].
        expected: u16,
    },
    /// A message arrived out of order (e.g. a `Finish` where a `Hello` was due).
    #[error("unexpected handshake message: expected {expected}")]
    Unexpected {
        /// The message that was due.
        expected: &'static str,
    },
    /// The peer's proof does not verify: it does not hold the cluster secret, or it
    /// replayed or reflected an old proof.
    #[error("peer failed to prove knowledge of the cluster secret")]
    BadProof,
    /// The announced address is empty or longer than [`MAX_ADDR_LEN`].
    #[error("announced address has invalid length {0}")]
    BadAddr(usize),
    /// The secret cannot key the MAC (it is empty).
    #[error("the cluster secret is empty")]
    EmptySecret,
}

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

// ---------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------
//
// Client (the side that dialled)          Server (the listener)
//   Hello { nc, client addr, role, lane } ->
//                                        <- Challenge { ns, server addr, proof_s }
//   Finish { proof_c }                    ->
//
// proof_x = HMAC-SHA256(secret, label || x || version || nc || ns || role || lane ||
//                       client addr || server addr), x = b'S' or b'C'.
// Both nonces are in every proof, so an old proof never verifies again (replay); the side
// byte differs, so a proof cannot be bounced back to the node that made it (reflection);
// addresses, role and lane are bound, so none of them can be swapped in flight. The
// server proves first: its proof covers a nonce it just drew, so it teaches an
// unauthenticated client nothing it can reuse.

/// A handshake message (the payload of a handshake frame).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeMsg {
    /// First message, from the dialling side.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        version: u16,
        /// Fresh random nonce.
        nonce: [u8; NONCE_LEN],
        /// The client's advertised `host:port` (a node) or a label (a tool).
        addr: String,
        /// Node or tool.
        role: Role,
        /// Which lane this connection carries.
        lane: Lane,
    },
    /// The server's answer: its nonce and its proof.
    Challenge {
        /// The server's [`PROTOCOL_VERSION`].
        version: u16,
        /// Fresh random nonce.
        nonce: [u8; NONCE_LEN],
        /// The server's advertised `host:port`.
        addr: String,
        /// `proof_s`.
        proof: [u8; 32],
    },
    /// The client's proof; after it the connection carries envelopes.
    Finish {
        /// `proof_c`.
        proof: [u8; 32],
    },
}

/// What an accepted handshake established about the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Established {
    /// The address the peer announced (for a tool, just a label).
    pub peer: NodeAddr,
    /// Node or tool.
    pub role: Role,
    /// The lane of this connection.
    pub lane: Lane,
}

/// Everything both proofs are computed over.
#[derive(Clone, Debug)]
struct Transcript {
    client_nonce: [u8; NONCE_LEN],
    server_nonce: [u8; NONCE_LEN],
    client_addr: String,
    server_addr: String,
    role: Role,
    lane: Lane,
}

#[derive(Clone, Copy)]
enum Side {
    Server,
    Client,
}

fn keyed_mac(secret: &[u8], side: Side, t: &Transcript) -> Result<Hmac<Sha256>, HandshakeError> {
    if secret.is_empty() {
        return Err(HandshakeError::EmptySecret);
    }
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).map_err(|_| HandshakeError::EmptySecret)?;
    mac.update(MAC_LABEL);
    mac.update(match side {
        Side::Server => b"S",
        Side::Client => b"C",
    });
    mac.update(&PROTOCOL_VERSION.to_be_bytes());
    mac.update(&t.client_nonce);
    mac.update(&t.server_nonce);
    mac.update(&[
        match t.role {
            Role::Node => 0,
            Role::Tool => 1,
        },
        match t.lane {
            Lane::Control => 0,
            Lane::Bulk => 1,
        },
    ]);
    // Length-prefixed so that ("ab", "c") and ("a", "bc") differ.
    for s in [&t.client_addr, &t.server_addr] {
        mac.update(&u64::try_from(s.len()).unwrap_or(u64::MAX).to_be_bytes());
        mac.update(s.as_bytes());
    }
    Ok(mac)
}

fn make_proof(secret: &[u8], side: Side, t: &Transcript) -> Result<[u8; 32], HandshakeError> {
    Ok(keyed_mac(secret, side, t)?.finalize().into_bytes().into())
}

/// Constant-time check of a peer's proof.
fn check_proof(
    secret: &[u8],
    side: Side,
    t: &Transcript,
    proof: &[u8; 32],
) -> Result<(), HandshakeError> {
    keyed_mac(secret, side, t)?
        .verify_slice(proof)
        .map_err(|_| HandshakeError::BadProof)
}

fn check_addr(addr: &str) -> Result<(), HandshakeError> {
    if addr.is_empty() || addr.len() > MAX_ADDR_LEN {
        return Err(HandshakeError::BadAddr(addr.len()));
    }
    Ok(())
}

fn check_version(got: u16) -> Result<(), HandshakeError> {
    if got != PROTOCOL_VERSION {
        return Err(HandshakeError::VersionMismatch {
            got,
            expected: PROTOCOL_VERSION,
        });
    }
    Ok(())
}

/// Encodes a handshake message as a frame (length prefix included).
pub fn encode_handshake(msg: &HandshakeMsg) -> Result<Vec<u8>, WireError> {
    encode_with_max(msg, HANDSHAKE_MAX_FRAME)
}

/// Decodes a handshake payload (without its length prefix).
pub fn decode_handshake(payload: &[u8]) -> Result<HandshakeMsg, WireError> {
    if payload.len() > HANDSHAKE_MAX_FRAME {
        return Err(WireError::FrameTooLarge {
            len: payload.len(),
            max: HANDSHAKE_MAX_FRAME,
        });
    }
    decode_exact(payload)
}

/// The dialling side, after it sent its hello and while it waits for the challenge.
#[derive(Debug)]
pub struct ClientHandshake {
    nonce: [u8; NONCE_LEN],
    addr: String,
    role: Role,
    lane: Lane,
}

impl ClientHandshake {
    /// Starts a handshake: returns the state and the `Hello` frame to send.
    /// `nonce` must be fresh randomness from a cryptographic generator.
    pub fn start(
        local: &NodeAddr,
        role: Role,
        lane: Lane,
        nonce: [u8; NONCE_LEN],
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        check_addr(local.as_str())?;
        let frame = encode_handshake(&HandshakeMsg::Hello {
            version: PROTOCOL_VERSION,
            nonce,
            addr: local.0.clone(),
            role,
            lane,
        })?;
        let state = ClientHandshake {
            nonce,
            addr: local.0.clone(),
            role,
            lane,
        };
        Ok((state, frame))
    }

    /// Verifies the server's challenge. On success returns what was established (the
    /// server's announced address) and the `Finish` frame to send.
    pub fn on_challenge(
        self,
        secret: &[u8],
        payload: &[u8],
    ) -> Result<(Established, Vec<u8>), HandshakeError> {
        let HandshakeMsg::Challenge {
            version,
            nonce,
            addr,
            proof,
        } = decode_handshake(payload)?
        else {
            return Err(HandshakeError::Unexpected {
                expected: "Challenge",
            });
        };
        check_version(version)?;
        check_addr(&addr)?;
        let t = Transcript {
            client_nonce: self.nonce,
            server_nonce: nonce,
            client_addr: self.addr,
            server_addr: addr,
            role: self.role,
            lane: self.lane,
        };
        check_proof(secret, Side::Server, &t, &proof)?;
        let finish = encode_handshake(&HandshakeMsg::Finish {
            proof: make_proof(secret, Side::Client, &t)?,
        })?;
        let est = Established {
            peer: NodeAddr(t.server_addr),
            role: Role::Node,
            lane: t.lane,
        };
        Ok((est, finish))
    }
}

/// The listening side, after it answered a hello and while it waits for the client's proof.
#[derive(Debug)]
pub struct ServerHandshake {
    t: Transcript,
}

impl ServerHandshake {
    /// Answers a client's `Hello`: returns the state and the `Challenge` frame to send.
    /// `nonce` must be fresh randomness from a cryptographic generator.
    pub fn on_hello(
        secret: &[u8],
        local: &NodeAddr,
        nonce: [u8; NONCE_LEN],
        payload: &[u8],
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let HandshakeMsg::Hello {
            version,
            nonce: client_nonce,
            addr,
            role,
            lane,
        } = decode_handshake(payload)?
        else {
            return Err(HandshakeError::Unexpected { expected: "Hello" });
        };
        check_version(version)?;
        check_addr(&addr)?;
        check_addr(local.as_str())?;
        let t = Transcript {
            client_nonce,
            server_nonce: nonce,
            client_addr: addr,
            server_addr: local.0.clone(),
            role,
            lane,
        };
        let challenge = encode_handshake(&HandshakeMsg::Challenge {
            version: PROTOCOL_VERSION,
            nonce,
            addr: local.0.clone(),
            proof: make_proof(secret, Side::Server, &t)?,
        })?;
        Ok((ServerHandshake { t }, challenge))
    }

    /// Verifies the client's `Finish`. Only after this succeeds may anything the client
    /// sends be processed.
    pub fn on_finish(self, secret: &[u8], payload: &[u8]) -> Result<Established, HandshakeError> {
        let HandshakeMsg::Finish { proof } = decode_handshake(payload)? else {
            return Err(HandshakeError::Unexpected { expected: "Finish" });
        };
        check_proof(secret, Side::Client, &self.t, &proof)?;
        Ok(Established {
            peer: NodeAddr(self.t.client_addr),
            role: self.t.role,
            lane: self.t.lane,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    /// A stand-in for the cluster's body enum, with every shape serde can produce.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    enum TestBody {
        Unit,
        Ping { seq: u64, from: NodeAddr },
        Text(String),
        Bytes(Vec<u8>),
        Nested(Option<Box<TestBody>>),
        Pair(i64, bool),
        Float(f64),
    }

    /// Any nesting of values, to feed the decoder hostile depth.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    enum Tree {
        Leaf,
        Node(Vec<Tree>),
    }

    fn config() -> Config {
        Config {
            cases: 256,
            rng_seed: RngSeed::Fixed(0x0d31_2024),
            failure_persistence: None,
            ..Config::default()
        }
    }

    fn body() -> impl Strategy<Value = TestBody> {
        let leaf = prop_oneof![
            Just(TestBody::Unit),
            (any::<u64>(), "[a-z0-9.]{1,20}:[0-9]{1,5}").prop_map(|(seq, a)| TestBody::Ping {
                seq,
                from: NodeAddr(a)
            }),
            any::<String>().prop_map(TestBody::Text),
            proptest::collection::vec(any::<u8>(), 0..512).prop_map(TestBody::Bytes),
            (any::<i64>(), any::<bool>()).prop_map(|(a, b)| TestBody::Pair(a, b)),
            // NaN != NaN would make the round-trip comparison fail for the wrong reason.
            any::<f64>()
                .prop_filter("not NaN", |f| !f.is_nan())
                .prop_map(TestBody::Float),
        ];
        leaf.prop_recursive(4, 16, 1, |inner| {
            proptest::option::of(inner.prop_map(Box::new)).prop_map(TestBody::Nested)
        })
    }

    fn envelope() -> impl Strategy<Value = Envelope<TestBody>> {
        (any::<u64>(), any::<Option<u64>>(), any::<bool>(), body()).prop_map(
            |(id, reply_to, expects_reply, body)| Envelope {
                version: PROTOCOL_VERSION,
                id,
                reply_to,
                expects_reply,
                body,
            },
        )
    }

    fn prefix(len: u32) -> Vec<u8> {
        len.to_be_bytes().to_vec()
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn envelope_round_trips_with_exact_length(env in envelope()) {
            let frame = encode_frame(&env).unwrap();
            let announced = frame_len(&frame, MAX_FRAME).unwrap().unwrap();
            prop_assert_eq!(announced + LEN_PREFIX, frame.len());
            prop_assert_eq!(announced, rmp_serde::to_vec(&env).unwrap().len());
            let (back, used) = decode_frame::<TestBody>(&frame, MAX_FRAME).unwrap().unwrap();
            prop_assert_eq!(used, frame.len());
            prop_assert_eq!(back, env);
        }

        #[test]
        fn every_strict_prefix_needs_more_bytes(env in envelope(), cut in any::<prop::sample::Index>()) {
            let frame = encode_frame(&env).unwrap();
            let cut = cut.index(frame.len());
            prop_assert!(decode_frame::<TestBody>(&frame[..cut], MAX_FRAME).unwrap().is_none());
        }

        #[test]
        fn trailing_bytes_inside_a_frame_are_rejected(
            env in envelope(),
            extra in proptest::collection::vec(any::<u8>(), 1..64),
        ) {
            let mut payload = rmp_serde::to_vec(&env).unwrap();
            payload.extend_from_slice(&extra);
            let mut frame = prefix(payload.len() as u32);
            frame.extend_from_slice(&payload);
            let err = decode_frame::<TestBody>(&frame, MAX_FRAME).unwrap_err();
            prop_assert!(matches!(err, WireError::TrailingBytes { extra: n } if n == extra.len()), "{err:?}");
        }

        #[test]
        fn bytes_after_a_frame_belong_to_the_next_one(
            env in envelope(),
            extra in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut buf = encode_frame(&env).unwrap();
            let len = buf.len();
            buf.extend_from_slice(&extra);
            let (back, used) = decode_frame::<TestBody>(&buf, MAX_FRAME).unwrap().unwrap();
            prop_assert_eq!(used, len);
            prop_assert_eq!(back, env);
        }

        #[test]
        fn oversized_prefix_is_rejected_from_four_bytes(len in (MAX_FRAME as u32 + 1)..=u32::MAX) {
            let err = decode_frame::<TestBody>(&prefix(len), MAX_FRAME).unwrap_err();
            prop_assert!(matches!(err, WireError::FrameTooLarge { .. }), "{err:?}");
            let mut dec = FrameDecoder::new(MAX_FRAME);
            dec.push(&prefix(len));
            prop_assert!(dec.next_payload().is_err());
        }

        #[test]
        fn random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..2048)) {
            match decode_frame::<TestBody>(&buf, MAX_FRAME) {
                Ok(Some((_, used))) => prop_assert!(used <= buf.len()),
                Ok(None) => {
                    // "Need more" only when the announced frame is really incomplete.
                    let incomplete = match frame_len(&buf, MAX_FRAME) {
                        Ok(None) => buf.len() < LEN_PREFIX,
                        Ok(Some(n)) => buf.len() < LEN_PREFIX + n,
                        Err(_) => false,
                    };
                    prop_assert!(incomplete);
                }
                Err(_) => {}
            }
            let _ = decode_handshake(&buf);
        }

        #[test]
        fn random_payload_in_a_valid_frame_is_an_error_or_a_message(
            payload in proptest::collection::vec(any::<u8>(), 1..512),
        ) {
            let mut frame = prefix(payload.len() as u32);
            frame.extend_from_slice(&payload);
            // Either outcome is fine; what is checked is that neither panics nor hangs,
            // and that a success consumed the whole frame.
            if let Ok(Some((_, used))) = decode_frame::<TestBody>(&frame, MAX_FRAME) {
                prop_assert_eq!(used, frame.len());
            }
        }

        #[test]
        fn decoder_reassembles_any_chunking(
            envs in proptest::collection::vec(envelope(), 1..8),
            chunk in 1usize..97,
        ) {
            let stream: Vec<u8> = envs.iter().flat_map(|e| encode_frame(e).unwrap()).collect();
            let mut dec = FrameDecoder::new(MAX_FRAME);
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                dec.push(piece);
                while let Some(e) = dec.next_envelope::<TestBody>().unwrap() {
                    out.push(e);
                }
            }
            prop_assert_eq!(dec.buffered(), 0);
            prop_assert_eq!(out, envs);
        }
    }

    #[test]
    fn four_gib_prefix_costs_nothing() {
        let mut dec = FrameDecoder::new(MAX_FRAME);
        dec.push(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            dec.next_payload(),
            Err(WireError::FrameTooLarge { len, .. }) if len == u32::MAX as usize
        ));
        assert_eq!(dec.buffered(), 4);
    }

    #[test]
    fn empty_frame_is_rejected() {
        assert!(matches!(
            decode_frame::<TestBody>(&[0, 0, 0, 0], MAX_FRAME),
            Err(WireError::EmptyFrame)
        ));
    }

    #[test]
    fn encoder_refuses_payloads_over_the_cap() {
        let env = Envelope::message(1, TestBody::Bytes(vec![7; 100]));
        assert!(matches!(
            encode_frame_max(&env, 50),
            Err(WireError::FrameTooLarge { max: 50, .. })
        ));
        assert!(encode_frame_max(&env, 500).is_ok());
    }

    #[test]
    fn decoder_respects_a_lower_cap() {
        let frame = encode_frame(&Envelope::message(1, TestBody::Bytes(vec![1; 64]))).unwrap();
        let mut dec = FrameDecoder::new(16);
        dec.push(&frame);
        assert!(matches!(
            dec.next_payload(),
            Err(WireError::FrameTooLarge { max: 16, .. })
        ));
        dec.set_max(MAX_FRAME);
        assert!(dec.next_envelope::<TestBody>().unwrap().is_some());
    }

    #[test]
    fn other_versions_are_refused_before_the_body_is_decoded() {
        let mut env = Envelope::message(9, TestBody::Unit);
        env.version = PROTOCOL_VERSION + 1;
        let frame = encode_frame(&env).unwrap();
        assert!(matches!(
            decode_frame::<TestBody>(&frame, MAX_FRAME),
            Err(WireError::VersionMismatch { got, .. }) if got == PROTOCOL_VERSION + 1
        ));
        // A future layout with a different shape is still reported as a version problem.
        let future = (PROTOCOL_VERSION + 1, "something else entirely");
        let payload = rmp_serde::to_vec(&future).unwrap();
        assert!(matches!(
            decode_payload::<TestBody>(&payload),
            Err(WireError::VersionMismatch { .. })
        ));
    }

    #[test]
    fn unknown_body_is_an_error() {
        #[derive(Serialize)]
        enum Other {
            NotInTestBody(u8),
        }
        let frame = encode_frame(&Envelope::message(3, Other::NotInTestBody(1))).unwrap();
        assert!(matches!(
            decode_frame::<TestBody>(&frame, MAX_FRAME),
            Err(WireError::Decode(_))
        ));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // [version, id, nil, false, body] where body nests 100 000 one-element arrays.
        let mut payload = vec![0x95, 0x01, 0x00, 0xc0, 0xc2];
        payload.extend(std::iter::repeat_n(0x91u8, 100_000));
        payload.push(0xc0);
        let err = decode_payload::<Tree>(&payload).unwrap_err();
        assert!(err.to_string().contains("depth"), "{err}");
        // Within the limit the same shape decodes.
        let shallow = Envelope::message(1, Tree::Node(vec![Tree::Node(vec![Tree::Leaf])]));
        let frame = encode_frame(&shallow).unwrap();
        assert_eq!(
            decode_frame::<Tree>(&frame, MAX_FRAME).unwrap().unwrap().0,
            shallow
        );
    }

    #[test]
    fn huge_inner_lengths_do_not_allocate() {
        // A str32 header announcing 4 GiB inside a tiny frame: must fail on EOF.
        let payload = [0x95, 0x01, 0x00, 0xc0, 0xc2, 0xdb, 0xff, 0xff, 0xff, 0xff];
        assert!(decode_payload::<TestBody>(&payload).is_err());
        // Same for an array32 header announcing 4 billion elements.
        let payload = [
            0x95, 0x01, 0x00, 0xc0, 0xc2, 0x81, 0xa5, b'B', b'y', b't', b'e', b's', 0xdd, 0xff,
            0xff, 0xff, 0xff,
        ];
        assert!(decode_payload::<TestBody>(&payload).is_err());
    }

    // ---- handshake ----

    const SECRET: &[u8] = b"cluster secret";

    fn payload_of(frame: &[u8]) -> &[u8] {
        split_frame(frame, HANDSHAKE_MAX_FRAME).unwrap().unwrap().0
    }

    fn addr(s: &str) -> NodeAddr {
        NodeAddr(s.to_string())
    }

    /// Runs a full handshake; returns (client's view, server's view).
    fn run(
        client_secret: &[u8],
        server_secret: &[u8],
    ) -> Result<(Established, Established), HandshakeError> {
        let (c, hello) =
            ClientHandshake::start(&addr("10.0.0.1:8001"), Role::Node, Lane::Bulk, [1; 32])?;
        let (s, challenge) = ServerHandshake::on_hello(
            server_secret,
            &addr("10.0.0.2:8002"),
            [2; 32],
            payload_of(&hello),
        )?;
        let (client_view, finish) = c.on_challenge(client_secret, payload_of(&challenge))?;
        let server_view = s.on_finish(server_secret, payload_of(&finish))?;
        Ok((client_view, server_view))
    }

    #[test]
    fn handshake_with_the_same_secret_succeeds() {
        let (c, s) = run(SECRET, SECRET).unwrap();
        assert_eq!(c.peer, addr("10.0.0.2:8002"));
        assert_eq!(s.peer, addr("10.0.0.1:8001"));
        assert_eq!((s.role, s.lane), (Role::Node, Lane::Bulk));
        assert_eq!(c.lane, Lane::Bulk);
    }

    #[test]
    fn wrong_secret_fails_on_either_side() {
        // The client checks the server's proof first, so a client with the wrong secret
        // notices before it sends anything but its hello.
        assert!(matches!(
            run(b"wrong", SECRET),
            Err(HandshakeError::BadProof)
        ));
        assert!(matches!(
            run(SECRET, b"wrong"),
            Err(HandshakeError::BadProof)
        ));
    }

    #[test]
    fn server_rejects_a_forged_finish() {
        // An attacker without the secret completes the exchange with made-up proofs.
        let (_, hello) =
            ClientHandshake::start(&addr("evil:1"), Role::Node, Lane::Control, [3; 32]).unwrap();
        let (s, _) =
            ServerHandshake::on_hello(SECRET, &addr("a:1"), [4; 32], payload_of(&hello)).unwrap();
        let finish = encode_handshake(&HandshakeMsg::Finish { proof: [0; 32] }).unwrap();
        assert!(matches!(
            s.on_finish(SECRET, payload_of(&finish)),
            Err(HandshakeError::BadProof)
        ));
    }

    #[test]
    fn replayed_finish_fails_against_a_new_server_nonce() {
        let hello_of =
            || ClientHandshake::start(&addr("b:1"), Role::Node, Lane::Control, [5; 32]).unwrap();
        // Session 1 is recorded.
        let (c, hello) = hello_of();
        let (s, challenge) =
            ServerHandshake::on_hello(SECRET, &addr("a:1"), [6; 32], payload_of(&hello)).unwrap();
        let (_, finish) = c.on_challenge(SECRET, payload_of(&challenge)).unwrap();
        s.on_finish(SECRET, payload_of(&finish)).unwrap();
        // The attacker replays hello and finish; the server drew a new nonce.
        let (_, hello) = hello_of();
        let (s2, _) =
            ServerHandshake::on_hello(SECRET, &addr("a:1"), [7; 32], payload_of(&hello)).unwrap();
        assert!(matches!(
            s2.on_finish(SECRET, payload_of(&finish)),
            Err(HandshakeError::BadProof)
        ));
    }

    #[test]
    fn reflected_server_proof_fails() {
        // An attacker sends back the server's own proof as its Finish.
        let (_, hello) =
            ClientHandshake::start(&addr("b:1"), Role::Node, Lane::Control, [8; 32]).unwrap();
        let (s, challenge) =
            ServerHandshake::on_hello(SECRET, &addr("a:1"), [9; 32], payload_of(&hello)).unwrap();
        let HandshakeMsg::Challenge { proof, .. } =
            decode_handshake(payload_of(&challenge)).unwrap()
        else {
            panic!("not a challenge");
        };
        let finish = encode_handshake(&HandshakeMsg::Finish { proof }).unwrap();
        assert!(matches!(
            s.on_finish(SECRET, payload_of(&finish)),
            Err(HandshakeError::BadProof)
        ));
    }

    #[test]
    fn tampered_challenge_fails() {
        let (c, hello) =
            ClientHandshake::start(&addr("b:1"), Role::Node, Lane::Control, [10; 32]).unwrap();
        let (_, challenge) =
            ServerHandshake::on_hello(SECRET, &addr("a:1"), [11; 32], payload_of(&hello)).unwrap();
        let HandshakeMsg::Challenge {
            version,
            nonce,
            proof,
            ..
        } = decode_handshake(payload_of(&challenge)).unwrap()
        else {
            panic!("not a challenge");
        };
        let forged = encode_handshake(&HandshakeMsg::Challenge {
            version,
            nonce,
            addr: "someone-else:1".into(),
            proof,
        })
        .unwrap();
        assert!(matches!(
            c.on_challenge(SECRET, payload_of(&forged)),
            Err(HandshakeError::BadProof)
        ));
    }

    #[test]
    fn out_of_order_messages_and_bad_versions_are_refused() {
        let finish = encode_handshake(&HandshakeMsg::Finish { proof: [0; 32] }).unwrap();
        assert!(matches!(
            ServerHandshake::on_hello(SECRET, &addr("a:1"), [0; 32], payload_of(&finish)),
            Err(HandshakeError::Unexpected { .. })
        ));
        let old = encode_handshake(&HandshakeMsg::Hello {
            version: PROTOCOL_VERSION + 1,
            nonce: [0; 32],
            addr: "b:1".into(),
            role: Role::Node,
            lane: Lane::Control,
        })
        .unwrap();
        assert!(matches!(
            ServerHandshake::on_hello(SECRET, &addr("a:1"), [0; 32], payload_of(&old)),
            Err(HandshakeError::VersionMismatch { .. })
        ));
        let long = "x".repeat(MAX_ADDR_LEN + 1);
        assert!(matches!(
            ClientHandshake::start(&NodeAddr(long), Role::Node, Lane::Control, [0; 32]),
            Err(HandshakeError::BadAddr(_))
        ));
    }

    #[test]
    fn empty_secret_is_refused() {
        assert!(matches!(run(b"", b""), Err(HandshakeError::EmptySecret)));
    }

    #[test]
    fn handshake_frames_fit_their_cap() {
        let (_, hello) = ClientHandshake::start(
            &NodeAddr("h".repeat(MAX_ADDR_LEN)),
            Role::Tool,
            Lane::Bulk,
            [0xff; 32],
        )
        .unwrap();
        assert!(hello.len() <= HANDSHAKE_MAX_FRAME + LEN_PREFIX);
    }
}
