//! SDFS names: opaque keys checked once at the boundary so no layer below ever sees
//! a name that could be mistaken for a path.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest accepted name in bytes. Names are hashed for their on-disk location, so the
/// limit bounds memory and message size, not file-name length.
pub const MAX_NAME_LEN: usize = 1024;

/// Most bytes of a rejected name an error shows: a hostile 4 MB name must not come back
/// whole in a log line or a reply.
pub const SHOWN_NAME_BYTES: usize = 200;

/// Prefixes that only the jobs layer writes (manifests, results): an operator's put or
/// delete there could forge or destroy a job's durable state. Reading them is allowed.
pub const JOBS_ONLY: [&str; 2] = ["jobs/", "results/"];

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
    /// Bidi overrides, zero-width and other invisible format characters (Unicode
    /// category Cf) make a name look like another one on a terminal.
    #[error("SDFS name contains invisible format character U+{code:04X}")]
    Format { code: u32 },
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

/// Names order as their text, so a sorted set of names can be searched by text.
impl std::borrow::Borrow<str> for SdfsName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

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
        if let Some(c) = s.chars().find(|c| is_format_char(*c)) {
            return Err(NameError::Format { code: c as u32 });
        }
        if s.starts_with('/') || s.starts_with('\\') || s.get(1..2) == Some(":") {
            return Err(NameError::Absolute(shown(s)));
        }
        if s.split(['/', '\\']).any(|c| c == ".." || c == ".") {
            return Err(NameError::DotComponent(shown(s)));
        }
        Ok(SdfsName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether only the jobs layer may write or delete this name (see [`JOBS_ONLY`]).
    pub fn is_jobs_only(&self) -> bool {
        JOBS_ONLY.iter().any(|p| self.0.starts_with(p))
    }
}

/// At most [`SHOWN_NAME_BYTES`] of `s` (cut at a character boundary), saying how long
/// the whole was, for errors that echo a name they refused.
pub fn shown(s: &str) -> String {
    if s.len() <= SHOWN_NAME_BYTES {
        return s.to_string();
    }
    let mut end = SHOWN_NAME_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}... ({} bytes in all)",
        s.get(..end).unwrap_or_default(),
        s.len()
    )
}

/// "bad SDFS name ...: why", with the name cut to [`SHOWN_NAME_BYTES`] and debug-escaped
/// (so a control or format character shows as an escape, not as itself).
pub fn bad_name(s: &str, e: &NameError) -> String {
    format!("bad SDFS name {:?}: {e}", shown(s))
}

/// Unicode general category Cf (format characters), as of Unicode 15: invisible
/// characters that change how the text around them is shown.
pub fn is_format_char(c: char) -> bool {
    matches!(
        c as u32,
        0xAD | 0x600..=0x605
            | 0x61C
            | 0x6DD
            | 0x70F
            | 0x890..=0x891
            | 0x8E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
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
    fn rejects_bidi_and_other_format_characters() {
        for c in [
            '\u{202E}',
            '\u{202A}',
            '\u{200B}',
            '\u{200F}',
            '\u{2066}',
            '\u{2069}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{E0041}',
        ] {
            let name = format!("report{c}gpj.exe");
            assert_eq!(
                SdfsName::parse(&name),
                Err(NameError::Format { code: c as u32 }),
                "U+{:04X}",
                c as u32
            );
        }
        // C1 controls are controls, not format characters.
        assert!(matches!(
            SdfsName::parse("a\u{85}b"),
            Err(NameError::Control { code: 0x85 })
        ));
        // Visible non-ASCII letters and marks stay fine.
        assert!(SdfsName::parse("caf\u{e9}/\u{5d0}\u{5d1}/e\u{301}").is_ok());
    }

    #[test]
    fn errors_echo_at_most_a_short_prefix_of_a_bad_name() {
        let huge = format!("/{}", "x".repeat(4 << 20));
        let e = SdfsName::parse(&huge).unwrap_err().to_string();
        assert!(e.len() < SHOWN_NAME_BYTES + 100, "{} bytes", e.len());
        // Errors that quote the name quote only its start.
        let long = format!("/{}", "x".repeat(1000));
        let e = SdfsName::parse(&long).unwrap_err().to_string();
        assert!(e.len() < SHOWN_NAME_BYTES + 100, "{} bytes", e.len());
        assert!(e.contains("1001 bytes in all"), "{e}");
        let msg = bad_name(
            &huge,
            &NameError::TooLong {
                len: huge.len(),
                max: MAX_NAME_LEN,
            },
        );
        assert!(
            msg.len() < 2 * SHOWN_NAME_BYTES + 100,
            "{} bytes",
            msg.len()
        );
        // A cut never splits a character.
        let wide = "\u{e9}".repeat(300);
        assert!(shown(&wide).starts_with(&"\u{e9}".repeat(100)));
    }

    #[test]
    fn jobs_and_results_are_the_jobs_layers() {
        for (n, reserved) in [
            ("jobs/1-1.manifest", true),
            ("results/1-1/a", true),
            ("inputs/a", false),
            ("myjobs/a", false),
            ("jobs", false),
        ] {
            assert_eq!(SdfsName::parse(n).unwrap().is_jobs_only(), reserved, "{n}");
        }
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
