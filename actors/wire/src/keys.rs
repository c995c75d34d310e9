//! Who may open a connection and with which key: the cluster keyring (one key to send
//! with, older ones still accepted, so a key can be rotated without downtime), operator
//! keys (separate from the node secret, each admin or read-only), the credential a client
//! presents, and the text formats of operators files and credential files.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

/// Length of a key id.
pub const KEY_ID_LEN: usize = 8;

/// Shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;

/// Longest operator name.
pub const MAX_OPERATOR_LEN: usize = 64;

/// The public name of a key: the first 8 bytes of HMAC-SHA256(key, "dml-key-id"). It
/// tells a server which of its keys the client uses without revealing anything about it.
pub type KeyId = [u8; KEY_ID_LEN];

/// Errors of keys, keyrings and their file formats. Messages never contain key bytes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    /// A key shorter than [`MIN_KEY_LEN`].
    #[error("a key must be at least {MIN_KEY_LEN} bytes long (got {0})")]
    TooShort(usize),
    /// A line of an operators or credential file is malformed.
    #[error("line {line}: {msg}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// A credential file holds no credential.
    #[error("no credential in the file (expected one line: NAME HEX_KEY)")]
    Empty,
}

/// A secret key with its id. `Debug` never prints the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    id: KeyId,
    bytes: Vec<u8>,
}

impl Key {
    /// A key from its bytes (at least [`MIN_KEY_LEN`]).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, KeyError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort(bytes.len()));
        }
        Ok(Key {
            id: key_id(&bytes),
            bytes,
        })
    }

    /// The key's public id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The secret bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(id {})", hex(&self.id))
    }
}

/// The id of a key (see [`KeyId`]).
pub fn key_id(key: &[u8]) -> KeyId {
    let mut id = [0u8; KEY_ID_LEN];
    // HMAC takes keys of any length, so this cannot fail; an all-zero id would only
    // make the key unusable, never confuse it with another.
    if let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) {
        mac.update(b"dml-key-id");
        let out = mac.finalize().into_bytes();
        if let Some(head) = out.get(..KEY_ID_LEN) {
            id.copy_from_slice(head);
        }
    }
    id
}

/// The cluster keys of one node: it sends (dials) with `send` and accepts peers that use
/// `send` or any of `accept`. Rotation: add the new key to `accept` everywhere, then make
/// it `send` everywhere (the old one moves to `accept`), then drop the old one.
#[derive(Clone, Debug)]
pub struct Keyring {
    send: Key,
    accept: Vec<Key>,
}

impl Keyring {
    /// A keyring that sends with `send` and also accepts `accept`.
    pub fn new(send: Key, accept: Vec<Key>) -> Self {
        Keyring { send, accept }
    }

    /// A keyring of one key.
    pub fn single(send: Key) -> Self {
        Keyring::new(send, Vec::new())
    }

    /// The key this node dials with.
    pub fn send(&self) -> &Key {
        &self.send
    }

    /// The accepted key with this id.
    pub fn find(&self, id: &KeyId) -> Option<&Key> {
        std::iter::once(&self.send)
            .chain(self.accept.iter())
            .find(|k| k.id == *id)
    }
}

/// What an operator may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Grant {
    /// Every console command.
    Admin,
    /// Only commands that change nothing (listings, reads, results, statistics).
    ReadOnly,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Grant::Admin => "admin",
            Grant::ReadOnly => "read-only",
        })
    }
}

/// One line of an operators file: a name, a grant and the operator's own key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorKey {
    /// The operator's name, as it names itself in the hello.
    pub name: String,
    /// What it may do.
    pub grant: Grant,
    /// Its key (never the cluster secret).
    pub key: Key,
}

/// What an authenticated connection may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// A cluster member (proved a cluster key): every message.
    Node,
    /// An operator's tool: console commands only, within its grant.
    Operator {
        /// The operator's name (`cluster-secret` for a tool that used the cluster key
        /// where `allow_secret_for_tools` permits it).
        name: String,
        /// What it may do.
        grant: Grant,
    },
}

/// Everything a listening node checks a hello against.
#[derive(Clone, Debug)]
pub struct Authority {
    /// The cluster keys nodes prove.
    pub ring: Keyring,
    /// The operators tools may prove.
    pub operators: Vec<OperatorKey>,
    /// Whether a tool may prove the cluster key instead of an operator key (then it is an
    /// admin). Off by default: an operator should never hold the node secret.
    pub allow_secret_for_tools: bool,
}

impl Authority {
    /// An authority for `ring` with no operators.
    pub fn nodes_only(ring: Keyring) -> Self {
        Authority {
            ring,
            operators: Vec::new(),
            allow_secret_for_tools: false,
        }
    }

    /// The operator called `name`.
    pub fn operator(&self, name: &str) -> Option<&OperatorKey> {
        self.operators.iter().find(|o| o.name == name)
    }
}

/// What a dialling client proves: a cluster key (nodes) or an operator key (tools).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// `Some(name)` for an operator key, `None` for the cluster key.
    pub operator: Option<String>,
    /// The key proved.
    pub key: Key,
}

impl Credential {
    /// The cluster key (what nodes use; tools only where the node allows it).
    pub fn cluster(key: Key) -> Self {
        Credential {
            operator: None,
            key,
        }
    }

    /// An operator's key.
    pub fn operator(name: impl Into<String>, key: Key) -> Self {
        Credential {
            operator: Some(name.into()),
            key,
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes hex (either case); `None` if it is not an even number of hex digits.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    s.chunks(2)
        .map(|p| match p {
            [h, l] => Some(digit(*h)? << 4 | digit(*l)?),
            _ => None,
        })
        .collect()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_OPERATOR_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

/// Meaningful lines of a key file: 1-based number and words; `#` starts a comment.
fn lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(i, l)| {
        let l = l.split('#').next().unwrap_or_default();
        let words: Vec<&str> = l.split_whitespace().collect();
        (!words.is_empty()).then_some((i + 1, words))
    })
}

fn parse_key(line: usize, word: &str) -> Result<Key, KeyError> {
    let syntax = |msg: &str| KeyError::Syntax {
        line,
        msg: msg.to_string(),
    };
    let bytes = unhex(word).ok_or_else(|| syntax("the key must be hex digits"))?;
    Key::new(bytes).map_err(|e| syntax(&e.to_string()))
}

fn parse_name(line: usize, word: &str) -> Result<String, KeyError> {
    if !valid_name(word) {
        return Err(KeyError::Syntax {
            line,
            msg: format!(
                "invalid operator name (1-{MAX_OPERATOR_LEN} of letters, digits, - _ . @)"
            ),
        });
    }
    Ok(word.to_string())
}

/// Parses an operators file: one `NAME ROLE HEX_KEY` per line, ROLE `admin` or
/// `read-only`, `#` comments. Names must be unique.
pub fn parse_operators(text: &str) -> Result<Vec<OperatorKey>, KeyError> {
    let mut out: Vec<OperatorKey> = Vec::new();
    for (line, words) in lines(text) {
        let [name, role, key] = words.as_slice() else {
            return Err(KeyError::Syntax {
                line,
                msg: "expected NAME ROLE HEX_KEY".into(),
            });
        };
        let name = parse_name(line, name)?;
        let grant = match *role {
            "admin" => Grant::Admin,
            "read-only" | "readonly" => Grant::ReadOnly,
            _ => {
                return Err(KeyError::Syntax {
                    line,
                    msg: "the role must be admin or read-only".into(),
                })
            }
        };
        if out.iter().any(|o| o.name == name) {
            return Err(KeyError::Syntax {
                line,
                msg: format!("operator {name} is listed twice"),
            });
        }
        let key = parse_key(line, key)?;
        out.push(OperatorKey { name, grant, key });
    }
    Ok(out)
}

/// Parses a credential file: one line `NAME HEX_KEY`.
pub fn parse_credential(text: &str) -> Result<Credential, KeyError> {
    let mut found = None;
    for (line, words) in lines(text) {
        let [name, key] = words.as_slice() else {
            return Err(KeyError::Syntax {
                line,
                msg: "expected NAME HEX_KEY".into(),
            });
        };
        if found.is_some() {
            return Err(KeyError::Syntax {
                line,
                msg: "a credential file holds one credential".into(),
            });
        }
        found = Some(Credential::operator(
            parse_name(line, name)?,
            parse_key(line, key)?,
        ));
    }
    found.ok_or(KeyError::Empty)
}
