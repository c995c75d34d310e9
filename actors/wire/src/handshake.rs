//! The mutual handshake that opens every connection: both sides prove they hold a key
//! (the cluster key for nodes, an operator's own key for tools) over a transcript of fresh
//! nonces, X25519 ephemeral keys, addresses, role, lane, key id and operator name, before
//! a single envelope is accepted; then both derive the secure [`crate::channel`]'s two
//! direction keys from the key, the ephemeral Diffie-Hellman secret and the transcript.
//! Pure functions and state machines over frames; randomness is passed in.

use hmac::{Hmac, Mac};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf;
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::{decode_exact, encode_with_max, Lane, Role, WireError, PROTOCOL_VERSION};
use crate::channel::{Channel, Opener, Sealer, CHANNEL_KEY_LEN};
use crate::keys::{Access, Authority, Credential, Grant, Key, KeyId, MAX_OPERATOR_LEN};
use crate::types::NodeAddr;

/// Largest handshake payload. Small, because an unauthenticated peer must not make us
/// buffer more than this before it has proved anything.
pub const HANDSHAKE_MAX_FRAME: usize = 1024;

/// Longest `host:port` a peer may announce in its hello.
pub const MAX_ADDR_LEN: usize = 255;

/// Size of each side's handshake nonce.
pub const NONCE_LEN: usize = 32;

/// Size of an X25519 public key.
pub const PUBLIC_LEN: usize = 32;

/// Longest refusal reason a server sends (and a client shows).
pub const MAX_REASON_LEN: usize = 200;

/// Domain-separation label mixed into every handshake MAC and key derivation.
const MAC_LABEL: &[u8] = b"dml-handshake-v2";

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
    /// The peer's proof does not verify: it does not hold the key it named, or it
    /// replayed or reflected an old proof.
    #[error("peer failed to prove knowledge of the key (wrong secret or credential?)")]
    BadProof,
    /// The announced address is empty or longer than [`MAX_ADDR_LEN`].
    #[error("announced address has invalid length {0}")]
    BadAddr(usize),
    /// The secret cannot key the MAC (it is empty).
    #[error("the cluster secret is empty")]
    EmptySecret,
    /// This side refuses the hello (unknown key id or operator, tools not allowed...);
    /// the reason is also sent to the peer.
    #[error("refused: {0}")]
    Refused(String),
    /// The peer refused our hello and said why.
    #[error("the node refused the connection: {0}")]
    RefusedByPeer(String),
    /// Key agreement or derivation failed (a malformed or low-order ephemeral key).
    #[error("key agreement failed")]
    KeyAgreement,
}

//
// Client (the side that dialled)          Server (the listener)
//   Hello { nc, ec, client addr, role, lane, key id, operator } ->
//                                        <- Challenge { ns, es, server addr, proof_s }
//                                           (or Refused { reason })
//   Finish { proof_c }                    ->
//
// T = every field of Hello and Challenge (both nonces, both ephemeral public keys, both
// addresses, role, lane, key id, operator name), length-prefixed where variable.
// proof_x = HMAC-SHA256(key, label || x || T), x = b'S' or b'C'.
// Both nonces are in every proof, so an old proof never verifies again (replay); the side
// byte differs, so a proof cannot be bounced back to the node that made it (reflection);
// everything else is bound, so nothing can be swapped in flight (in particular not the
// ephemeral keys: no one in the middle can substitute its own). The server proves first:
// its proof covers a nonce it just drew, so it teaches an unauthenticated client nothing
// it can reuse.
// Channel keys: PRK = HKDF-Extract(salt = SHA-256(label || T), key || X25519(e, e'));
// client->server = Expand(PRK, "dml c2s"), server->client = Expand(PRK, "dml s2c").
// The ephemeral secret gives forward secrecy (a leaked key does not open recorded
// traffic); the key keeps a man in the middle out; two directions mean a reflected frame
// never opens.

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
        /// Id of the key the client proves (a cluster key, or the operator's key).
        key_id: KeyId,
        /// The operator a tool speaks for; `None` for a cluster key.
        operator: Option<String>,
        /// The client's X25519 ephemeral public key.
        ephemeral: [u8; PUBLIC_LEN],
    },
    /// The server's answer: its nonce, its ephemeral key and its proof.
    Challenge {
        /// The server's [`PROTOCOL_VERSION`].
        version: u16,
        /// Fresh random nonce.
        nonce: [u8; NONCE_LEN],
        /// The server's advertised `host:port`.
        addr: String,
        /// The server's X25519 ephemeral public key.
        ephemeral: [u8; PUBLIC_LEN],
        /// `proof_s`.
        proof: [u8; 32],
    },
    /// The client's proof; after it the connection carries sealed envelopes.
    Finish {
        /// `proof_c`.
        proof: [u8; 32],
    },
    /// The server will not go on, and says why (at most [`MAX_REASON_LEN`] bytes), so
    /// that an operator sees a clear error instead of a closed connection.
    Refused {
        /// Why.
        reason: String,
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
    /// What the peer may do (on the server side; a client sees [`Access::Node`]).
    pub access: Access,
}

/// A fresh X25519 key pair for one handshake.
pub struct Ephemeral {
    private: EphemeralPrivateKey,
    public: [u8; PUBLIC_LEN],
}

impl std::fmt::Debug for Ephemeral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ephemeral(..)")
    }
}

impl Ephemeral {
    /// Draws a key pair from `rng` (a cryptographic generator, e.g. `SystemRandom`).
    pub fn generate(rng: &dyn SecureRandom) -> Result<Self, HandshakeError> {
        let private = EphemeralPrivateKey::generate(&X25519, rng)
            .map_err(|_| HandshakeError::KeyAgreement)?;
        let public_key = private
            .compute_public_key()
            .map_err(|_| HandshakeError::KeyAgreement)?;
        let mut public = [0u8; PUBLIC_LEN];
        if public_key.as_ref().len() != PUBLIC_LEN {
            return Err(HandshakeError::KeyAgreement);
        }
        public.copy_from_slice(public_key.as_ref());
        Ok(Ephemeral { private, public })
    }

    /// The public half.
    pub fn public(&self) -> [u8; PUBLIC_LEN] {
        self.public
    }
}

/// Everything both proofs and the channel keys are computed over.
#[derive(Clone, Debug)]
struct Transcript {
    client_nonce: [u8; NONCE_LEN],
    server_nonce: [u8; NONCE_LEN],
    client_eph: [u8; PUBLIC_LEN],
    server_eph: [u8; PUBLIC_LEN],
    client_addr: String,
    server_addr: String,
    role: Role,
    lane: Lane,
    key_id: KeyId,
    operator: Option<String>,
}

impl Transcript {
    /// The canonical bytes: fixed-size fields, then length-prefixed strings, so that
    /// ("ab", "c") and ("a", "bc") differ.
    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(256);
        b.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        b.extend_from_slice(&self.client_nonce);
        b.extend_from_slice(&self.server_nonce);
        b.extend_from_slice(&self.client_eph);
        b.extend_from_slice(&self.server_eph);
        b.push(match self.role {
            Role::Node => 0,
            Role::Tool => 1,
        });
        b.push(match self.lane {
            Lane::Control => 0,
            Lane::Bulk => 1,
        });
        b.extend_from_slice(&self.key_id);
        let op = self.operator.as_deref();
        b.push(u8::from(op.is_some()));
        for s in [
            self.client_addr.as_str(),
            self.server_addr.as_str(),
            op.unwrap_or(""),
        ] {
            b.extend_from_slice(&u64::try_from(s.len()).unwrap_or(u64::MAX).to_be_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        b
    }
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
    mac.update(&t.bytes());
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

/// Output length for HKDF: one direction key.
struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        CHANNEL_KEY_LEN
    }
}

/// The two direction keys: (client to server, server to client).
struct DirectionKeys([u8; CHANNEL_KEY_LEN], [u8; CHANNEL_KEY_LEN]);

fn derive(
    secret: &[u8],
    mine: Ephemeral,
    theirs: &[u8; PUBLIC_LEN],
    t: &Transcript,
) -> Result<DirectionKeys, HandshakeError> {
    let mut salt = Sha256::new();
    salt.update(MAC_LABEL);
    salt.update(t.bytes());
    let salt = salt.finalize();
    let peer = UnparsedPublicKey::new(&X25519, theirs);
    // ring refuses an all-zero shared secret (a low-order point), so a peer cannot force
    // a known result.
    let prk = agreement::agree_ephemeral(mine.private, &peer, |dh| {
        let mut ikm = Vec::with_capacity(secret.len() + dh.len());
        ikm.extend_from_slice(secret);
        ikm.extend_from_slice(dh);
        hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(&ikm)
    })
    .map_err(|_| HandshakeError::KeyAgreement)?;
    let expand = |info: &[u8]| -> Result<[u8; CHANNEL_KEY_LEN], HandshakeError> {
        let mut out = [0u8; CHANNEL_KEY_LEN];
        prk.expand(&[info], KeyLen)
            .and_then(|okm| okm.fill(&mut out))
            .map_err(|_| HandshakeError::KeyAgreement)?;
        Ok(out)
    };
    Ok(DirectionKeys(expand(b"dml c2s")?, expand(b"dml s2c")?))
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

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
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

/// The frame a server sends before closing after `err`, when the peer deserves to know
/// why (a refusal or a version mismatch); `None` for errors that must stay silent.
pub fn refusal_frame(err: &HandshakeError) -> Option<Vec<u8>> {
    let reason = match err {
        HandshakeError::Refused(r) => r.clone(),
        HandshakeError::VersionMismatch { got, expected } => {
            format!("protocol version {got} is not supported (this node speaks {expected})")
        }
        _ => return None,
    };
    encode_handshake(&HandshakeMsg::Refused {
        reason: truncate_utf8(&reason, MAX_REASON_LEN).to_string(),
    })
    .ok()
}

/// The dialling side, after it sent its hello and while it waits for the challenge.
#[derive(Debug)]
pub struct ClientHandshake {
    nonce: [u8; NONCE_LEN],
    ephemeral: Ephemeral,
    addr: String,
    role: Role,
    lane: Lane,
    cred: Credential,
}

impl ClientHandshake {
    /// Starts a handshake: returns the state and the `Hello` frame to send. `nonce` and
    /// `ephemeral` must be fresh, from a cryptographic generator.
    pub fn start(
        local: &NodeAddr,
        role: Role,
        lane: Lane,
        cred: &Credential,
        nonce: [u8; NONCE_LEN],
        ephemeral: Ephemeral,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        check_addr(local.as_str())?;
        if let Some(op) = &cred.operator {
            if op.is_empty() || op.len() > MAX_OPERATOR_LEN {
                return Err(HandshakeError::Refused("invalid operator name".into()));
            }
        }
        let frame = encode_handshake(&HandshakeMsg::Hello {
            version: PROTOCOL_VERSION,
            nonce,
            addr: local.0.clone(),
            role,
            lane,
            key_id: cred.key.id(),
            operator: cred.operator.clone(),
            ephemeral: ephemeral.public(),
        })?;
        let state = ClientHandshake {
            nonce,
            ephemeral,
            addr: local.0.clone(),
            role,
            lane,
            cred: cred.clone(),
        };
        Ok((state, frame))
    }

    /// Verifies the server's challenge. On success returns what was established (the
    /// server's announced address), the channel, and the `Finish` frame to send.
    pub fn on_challenge(
        self,
        payload: &[u8],
    ) -> Result<(Established, Channel, Vec<u8>), HandshakeError> {
        let (version, nonce, addr, ephemeral, proof) = match decode_handshake(payload)? {
            HandshakeMsg::Challenge {
                version,
                nonce,
                addr,
                ephemeral,
                proof,
            } => (version, nonce, addr, ephemeral, proof),
            HandshakeMsg::Refused { reason } => {
                return Err(HandshakeError::RefusedByPeer(
                    truncate_utf8(&reason, MAX_REASON_LEN).to_string(),
                ))
            }
            _ => {
                return Err(HandshakeError::Unexpected {
                    expected: "Challenge",
                })
            }
        };
        check_version(version)?;
        check_addr(&addr)?;
        let t = Transcript {
            client_nonce: self.nonce,
            server_nonce: nonce,
            client_eph: self.ephemeral.public(),
            server_eph: ephemeral,
            client_addr: self.addr,
            server_addr: addr,
            role: self.role,
            lane: self.lane,
            key_id: self.cred.key.id(),
            operator: self.cred.operator.clone(),
        };
        let secret = self.cred.key.bytes();
        check_proof(secret, Side::Server, &t, &proof)?;
        let finish = encode_handshake(&HandshakeMsg::Finish {
            proof: make_proof(secret, Side::Client, &t)?,
        })?;
        let DirectionKeys(c2s, s2c) = derive(secret, self.ephemeral, &ephemeral, &t)?;
        let channel = Channel {
            sealer: Sealer::new(&c2s)?,
            opener: Opener::new(&s2c)?,
        };
        let est = Established {
            peer: NodeAddr(t.server_addr),
            role: Role::Node,
            lane: t.lane,
            access: Access::Node,
        };
        Ok((est, channel, finish))
    }
}

/// Chooses the key a hello names, and what a peer proving it may do.
fn select<'a>(
    auth: &'a Authority,
    role: Role,
    key_id: &KeyId,
    operator: Option<&str>,
) -> Result<(&'a Key, Access), HandshakeError> {
    let refuse = |s: &str| HandshakeError::Refused(s.to_string());
    match (role, operator) {
        (Role::Node, Some(_)) => Err(refuse("a node proves a cluster key, not an operator's")),
        (Role::Node, None) => auth
            .ring
            .find(key_id)
            .map(|k| (k, Access::Node))
            .ok_or_else(|| refuse("unknown cluster key id (is this node's keyring up to date?)")),
        (Role::Tool, Some(name)) => match auth.operator(name) {
            Some(op) if op.key.id() == *key_id => Ok((
                &op.key,
                Access::Operator {
                    name: op.name.clone(),
                    grant: op.grant,
                },
            )),
            _ if auth.operators.is_empty() => Err(refuse(
                "this node has no operators configured ([security] operators_file)",
            )),
            _ => Err(refuse("unknown operator or wrong key")),
        },
        (Role::Tool, None) if auth.allow_secret_for_tools => auth
            .ring
            .find(key_id)
            .map(|k| {
                (
                    k,
                    Access::Operator {
                        name: "cluster-secret".into(),
                        grant: Grant::Admin,
                    },
                )
            })
            .ok_or_else(|| refuse("unknown cluster key id")),
        (Role::Tool, None) => Err(refuse(
            "tools must present an operator credential (dml ctl --credential FILE, or \
             [ctl] credential_file), not the cluster secret",
        )),
    }
}

/// The listening side, after it answered a hello and while it waits for the client's proof.
pub struct ServerHandshake {
    t: Transcript,
    key: Key,
    access: Access,
    keys: DirectionKeys,
}

impl std::fmt::Debug for ServerHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ServerHandshake({}, {:?})",
            self.t.client_addr, self.access
        )
    }
}

impl ServerHandshake {
    /// Answers a client's `Hello`: returns the state and the `Challenge` frame to send.
    /// `nonce` and `ephemeral` must be fresh, from a cryptographic generator. A
    /// [`HandshakeError::Refused`] should be told to the client ([`refusal_frame`]).
    pub fn on_hello(
        auth: &Authority,
        local: &NodeAddr,
        nonce: [u8; NONCE_LEN],
        ephemeral: Ephemeral,
        payload: &[u8],
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let HandshakeMsg::Hello {
            version,
            nonce: client_nonce,
            addr,
            role,
            lane,
            key_id,
            operator,
            ephemeral: client_eph,
        } = decode_handshake(payload)?
        else {
            return Err(HandshakeError::Unexpected { expected: "Hello" });
        };
        check_version(version)?;
        check_addr(&addr)?;
        check_addr(local.as_str())?;
        let (key, access) = select(auth, role, &key_id, operator.as_deref())?;
        let key = key.clone();
        let t = Transcript {
            client_nonce,
            server_nonce: nonce,
            client_eph,
            server_eph: ephemeral.public(),
            client_addr: addr,
            server_addr: local.0.clone(),
            role,
            lane,
            key_id,
            operator,
        };
        let challenge = encode_handshake(&HandshakeMsg::Challenge {
            version: PROTOCOL_VERSION,
            nonce,
            addr: local.0.clone(),
            ephemeral: ephemeral.public(),
            proof: make_proof(key.bytes(), Side::Server, &t)?,
        })?;
        let keys = derive(key.bytes(), ephemeral, &client_eph, &t)?;
        Ok((
            ServerHandshake {
                t,
                key,
                access,
                keys,
            },
            challenge,
        ))
    }

    /// Verifies the client's `Finish`. Only after this succeeds may anything the client
    /// sends be processed.
    pub fn on_finish(self, payload: &[u8]) -> Result<(Established, Channel), HandshakeError> {
        let HandshakeMsg::Finish { proof } = decode_handshake(payload)? else {
            return Err(HandshakeError::Unexpected { expected: "Finish" });
        };
        check_proof(self.key.bytes(), Side::Client, &self.t, &proof)?;
        let DirectionKeys(c2s, s2c) = &self.keys;
        let channel = Channel {
            sealer: Sealer::new(s2c)?,
            opener: Opener::new(c2s)?,
        };
        Ok((
            Established {
                peer: NodeAddr(self.t.client_addr),
                role: self.t.role,
                lane: self.t.lane,
                access: self.access,
            },
            channel,
        ))
    }
}
