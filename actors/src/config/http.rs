//! `[http]`: the nodes' HTTP endpoints (token, body limit, batching delay), validated.

use std::path::{Path, PathBuf};

use super::{check_private, err, resolve, ConfigError, RawHttp, Redacted};

/// `[http]`, validated.
#[derive(Clone, Default)]
pub struct HttpConfig {
    /// The bearer token (`None`: the endpoints are open, and nodes say so at start).
    pub token: Option<String>,
    pub max_body: usize,
    pub max_queue_delay_ms: u64,
    /// (certificate chain, private key) PEM files: HTTPS instead of HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("token", &self.token.as_ref().map(|_| Redacted))
            .field("max_body", &self.max_body)
            .field("max_queue_delay_ms", &self.max_queue_delay_ms)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Validates `[http]`; the token file must be private unless it is one of the shipped
/// samples (`[security] sample_keys`).
pub(super) fn validate(
    raw: &RawHttp,
    base: &Path,
    sample_keys: bool,
) -> Result<HttpConfig, ConfigError> {
    let token = match raw.token_file.as_deref() {
        None => None,
        Some(p) => {
            let path = resolve(base, p);
            if !sample_keys {
                check_private("http.token_file", &path)?;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| {
                err(
                    "http.token_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let token = text.trim().to_string();
            if token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic()) {
                return Err(err(
                    "http.token_file",
                    format!(
                        "{}: the token must be one line of at least 16 printable characters",
                        path.display()
                    ),
                ));
            }
            Some(token)
        }
    };
    let max_body = raw.max_body_bytes.unwrap_or(64 << 20);
    if !(1024..=(1 << 30)).contains(&max_body) {
        return Err(err("http.max_body_bytes", "must be in 1024..=1073741824"));
    }
    let delay = raw.max_queue_delay_ms.unwrap_or(5);
    if !(0..=10_000).contains(&delay) {
        return Err(err("http.max_queue_delay_ms", "must be in 0..=10000"));
    }
    let tls = match (raw.cert_file.as_deref(), raw.key_file.as_deref()) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let (cert, key) = (resolve(base, cert), resolve(base, key));
            if !sample_keys {
                check_private("http.key_file", &key)?;
            }
            for (k, p) in [("http.cert_file", &cert), ("http.key_file", &key)] {
                if !p.is_file() {
                    return Err(err(k, format!("{} is not a readable file", p.display())));
                }
            }
            Some((cert, key))
        }
        (Some(_), None) => return Err(err("http.key_file", "cert_file needs key_file")),
        (None, Some(_)) => return Err(err("http.cert_file", "key_file needs cert_file")),
    };
    Ok(HttpConfig {
        token,
        max_body: max_body as usize,
        max_queue_delay_ms: delay as u64,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    fn raw(token_file: Option<&str>) -> RawHttp {
        RawHttp {
            token_file: token_file.map(String::from),
            ..RawHttp::default()
        }
    }

    #[test]
    fn the_token_file_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir();
        let p = d.path().join("t");
        std::fs::write(&p, "a-long-enough-token-123\n").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = validate(&raw(Some("t")), d.path(), false).expect_err("world-readable");
        assert_eq!(e.key, "http.token_file");
        assert!(e.msg.contains("chmod 600"), "{}", e.msg);
        // The shipped sample is public anyway: its mode is not checked.
        let c = validate(&raw(Some("t")), d.path(), true).expect("sample");
        assert_eq!(c.token.as_deref(), Some("a-long-enough-token-123"));
        assert!(
            !format!("{c:?}").contains("a-long"),
            "Debug shows the token"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(validate(&raw(Some("t")), d.path(), false).is_ok());
        std::fs::write(&p, "short\n").expect("write");
        let e = validate(&raw(Some("t")), d.path(), false).expect_err("short");
        assert!(e.msg.contains("at least 16"), "{}", e.msg);
        let e = validate(&raw(Some("missing")), d.path(), false).expect_err("missing");
        assert_eq!(e.key, "http.token_file");
    }

    #[test]
    fn limits_are_checked() {
        let d = dir();
        let mut r = raw(None);
        r.max_body_bytes = Some(10);
        assert_eq!(
            validate(&r, d.path(), false).expect_err("tiny").key,
            "http.max_body_bytes"
        );
        let mut r = raw(None);
        r.max_queue_delay_ms = Some(-1);
        assert_eq!(
            validate(&r, d.path(), false).expect_err("negative").key,
            "http.max_queue_delay_ms"
        );
        let c = validate(&raw(None), d.path(), false).expect("defaults");
        assert_eq!(
            (c.token, c.max_body, c.max_queue_delay_ms),
            (None, 64 << 20, 5)
        );
        assert!(c.tls.is_none());
        let mut r = raw(None);
        r.cert_file = Some("cert.pem".into());
        assert_eq!(
            validate(&r, d.path(), false).expect_err("no key").key,
            "http.key_file"
        );
    }
}
