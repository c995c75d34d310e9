//! The mutual HMAC handshake that opens every connection: both sides prove they hold
//! the cluster secret over a transcript of fresh nonces, addresses, role and lane,
//! before a single envelope is accepted. Pure functions and state machines over frames.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;

use super::{decode_exact, encode_with_max, Lane, Role, WireError, PROTOCOL_VERSION};
use crate::types::NodeAddr;

/// Largest handshake payload. Small, because an unauthenticated peer must not make us
/// buffer more than this before it has proved anything.
pub const HANDSHAKE_MAX_FRAME: usize = 1024;

/// Longest `host:port` a peer may announce in its hello.
pub const MAX_ADDR_LEN: usize = 255;

/// Size of each side's handshake nonce.
pub const NONCE_LEN: usize = 32;

/// Domain-separation label mixed into every handshake MAC.
const MAC_LABEL: &[u8] = b"dml-handshake-v1";

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
