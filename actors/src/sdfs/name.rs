//! SDFS names: opaque keys checked once at the boundary so no layer below ever sees
//! a name that could be mistaken for a path.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest accepted name in bytes. Names are hashed for their on-disk location, so the
/// limit bounds memory and message size, not file-name length.
pub const MAX_NAME_LEN: usize = 1024;

/// Why a string is not an acceptable SDFS name. Nothing is changed by a rejected name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum NameError {
    #[error("SDFS name is empty")]
    Empty,
    #[error("SDFS name is {len} bytes long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("SDFS name contains a NUL byte")]
    Nul,
    #[error("SDFS name contains control character {code:#04x}")]
    Control { code: u32 },
    #[error("SDFS name {0:?} is absolute; names are keys, not paths")]
    Absolute(String),
    #[error("SDFS name {0:?} has a `.` or `..` component; names are keys, not paths")]
    DotComponent(String),
}

/// A validated SDFS name. Deserialising checks it too, so a hostile peer cannot slip a
/// bad name past the wire layer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SdfsName(String);

impl SdfsName {
    /// Checks `s` and wraps it. Rejects what could ever be read as a path escape even
    /// though the store never uses the name as a path: the console shows these names and
    /// `get` joins the *local* destination, so a clear error early is kinder than surprises.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong {
                len: s.len(),
                max: MAX_NAME_LEN,
            });
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Err(if c == '\0' {
                NameError::Nul
            } else {
                NameError::Control { code: c as u32 }
            });
        }
        if s.starts_with('/') || s.starts_with('\\') || s.get(1..2) == Some(":") {
            return Err(NameError::Absolute(s.to_string()));
        }
        if s.split(['/', '\\']).any(|c| c == ".." || c == ".") {
            return Err(NameError::DotComponent(s.to_string()));
        }
        Ok(SdfsName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SdfsName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        SdfsName::parse(&s)
    }
}

impl From<SdfsName> for String {
    fn from(n: SdfsName) -> String {
        n.0
    }
}

impl fmt::Display for SdfsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_keys() {
        for ok in ["a", "images/cat 1.jpg", "x..y", "dir/.hidden", "ünïcode/ß"] {
            assert!(SdfsName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_escapes_and_junk() {
        assert_eq!(SdfsName::parse(""), Err(NameError::Empty));
        assert_eq!(SdfsName::parse("a\0b"), Err(NameError::Nul));
        assert!(matches!(
            SdfsName::parse("a\nb"),
            Err(NameError::Control { code: 10 })
        ));
        assert!(matches!(
            SdfsName::parse("/etc/passwd"),
            Err(NameError::Absolute(_))
        ));
        assert!(matches!(
            SdfsName::parse("\\x"),
            Err(NameError::Absolute(_))
        ));
        assert!(matches!(
            SdfsName::parse("C:x"),
            Err(NameError::Absolute(_))
        ));
        for bad in [
            "..",
            "../x",
            "a/../../b",
            "a/..",
            "a\\..\\b",
            "./a",
            "a/./b",
        ] {
            assert!(
                matches!(SdfsName::parse(bad), Err(NameError::DotComponent(_))),
                "{bad}"
            );
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            SdfsName::parse(&long),
            Err(NameError::TooLong { .. })
        ));
        assert!(SdfsName::parse(&"a".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn deserialising_validates() {
        let bytes = rmp_serde::to_vec(&"../x".to_string()).unwrap();
        assert!(rmp_serde::from_slice::<SdfsName>(&bytes).is_err());
        let bytes = rmp_serde::to_vec(&"ok/x".to_string()).unwrap();
        assert_eq!(
            rmp_serde::from_slice::<SdfsName>(&bytes).unwrap().as_str(),
            "ok/x"
        );
    }
}
