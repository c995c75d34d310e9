//! SDFS's scp transfer (`[sdfs] transfer = "scp"`): SSH credentials from the seed's
//! `password.txt` (`username,password`) or a private key, and a blocking copy of a byte
//! stream into a file on another host with the `ssh2` crate. The SdfsActor runs copies on
//! threads of their own; the protocol decisions stay in the SDFS core.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::config::SdfsConfig;

/// Limit on connecting and on any single SSH operation, so a dead host fails a put
/// instead of hanging it.
const SSH_TIMEOUT: Duration = Duration::from_secs(20);
/// Bytes read from the source per write to the SSH channel.
const COPY_BUF: usize = 256 * 1024;

/// Why credentials could not be loaded or a copy failed. A failed copy may leave a
/// partial file at the destination; the receiver checks size and CRC before using it.
#[derive(Debug, Error)]
pub enum ScpError {
    #[error("credentials file {path}: {msg}")]
    Credentials { path: PathBuf, msg: String },
    #[error("credentials file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Insecure { path: PathBuf, mode: u32 },
    #[error("no SSH user: set sdfs.ssh_user or use sdfs.credentials")]
    NoUser,
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ssh {what} with {addr}: {source}")]
    Ssh {
        what: &'static str,
        addr: String,
        #[source]
        source: ssh2::Error,
    },
    #[error("ssh authentication as {user} at {addr} failed (wrong password or key?)")]
    Auth { user: String, addr: String },
    #[error("reading the source: {0}")]
    Source(#[source] std::io::Error),
    #[error("writing to {addr}: {source}")]
    Write {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("source ended after {got} of {want} bytes")]
    Short { got: u64, want: u64 },
    #[error("sdfs.known_hosts: {msg}")]
    KnownHosts { msg: String },
    #[error("host key of {host} is not in {path}: nothing sent; if the key is right, add it (ssh-keyscan -p {port} {host} >> {path})")]
    UnknownHostKey {
        host: String,
        port: u16,
        path: PathBuf,
    },
    #[error("host key of {host} does not match {path} (changed key, or someone in between): nothing sent")]
    ChangedHostKey { host: String, path: PathBuf },
}

#[derive(Clone)]
enum Auth {
    Password(String),
    Key(PathBuf),
}

/// Who to log in as and how, and which host keys to trust. The password never reaches
/// a log (`Debug` hides it).
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    auth: Auth,
    pub port: u16,
    /// OpenSSH known_hosts file; a host whose key is not in it gets nothing.
    known_hosts: PathBuf,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match &self.auth {
            Auth::Password(_) => "password".to_string(),
            Auth::Key(p) => format!("key {}", p.display()),
        };
        write!(
            f,
            "Credentials({}@:{}, {how}, known_hosts {})",
            self.user,
            self.port,
            self.known_hosts.display()
        )
    }
}

/// Refuses a secret file that group or others can read: a leaked cluster password is
/// worse than a node that does not start.
pub fn check_private(path: &Path) -> Result<(), ScpError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| ScpError::Credentials {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ScpError::Insecure {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// The known_hosts file the config names, checked to be readable now, so that a node
/// that could never verify a host refuses to start instead of failing every put.
fn known_hosts(cfg: &SdfsConfig) -> Result<PathBuf, ScpError> {
    let Some(path) = cfg.known_hosts.clone() else {
        return Err(ScpError::KnownHosts {
            msg:
                "not set and $HOME is unknown: set sdfs.known_hosts to an OpenSSH known_hosts file"
                    .into(),
        });
    };
    std::fs::read(&path).map_err(|e| ScpError::KnownHosts {
        msg: format!(
            "cannot read {}: {e} (scp checks every host's key against it; fill it with ssh-keyscan)",
            path.display()
        ),
    })?;
    Ok(path)
}

/// Loads the credentials the config names: `password.txt` first (the seed's
/// `username,password`), else `ssh_key` with `ssh_user`; and the known_hosts file.
pub fn load(cfg: &SdfsConfig) -> Result<Credentials, ScpError> {
    let known_hosts = known_hosts(cfg)?;
    if let Some(path) = &cfg.credentials {
        check_private(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| ScpError::Credentials {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let line = text.lines().next().unwrap_or("").trim();
        let Some((user, password)) = line.split_once(',') else {
            return Err(ScpError::Credentials {
                path: path.clone(),
                msg: "expected one line `username,password`".into(),
            });
        };
        let user = cfg
            .ssh_user
            .clone()
            .unwrap_or_else(|| user.trim().to_string());
        if user.is_empty() {
            return Err(ScpError::Credentials {
                path: path.clone(),
                msg: "empty username".into(),
            });
        }
        return Ok(Credentials {
            user,
            auth: Auth::Password(password.to_string()),
            port: cfg.ssh_port,
            known_hosts,
        });
    }
    if let Some(key) = &cfg.ssh_key {
        check_private(key)?;
        let user = cfg.ssh_user.clone().ok_or(ScpError::NoUser)?;
        return Ok(Credentials {
            user,
            auth: Auth::Key(key.clone()),
            port: cfg.ssh_port,
            known_hosts,
        });
    }
    Err(ScpError::Credentials {
        path: PathBuf::new(),
        msg: "neither sdfs.credentials nor sdfs.ssh_key is set".into(),
    })
}

/// An authenticated SSH session to `host`.
fn session(creds: &Credentials, host: &str) -> Result<(ssh2::Session, String), ScpError> {
    let addr = format!("{host}:{}", creds.port);
    let connect_err = |source| ScpError::Connect {
        addr: addr.clone(),
        source,
    };
    let sock = addr
        .to_socket_addrs()
        .map_err(connect_err)?
        .next()
        .ok_or_else(|| connect_err(std::io::Error::other("no address")))?;
    let tcp = TcpStream::connect_timeout(&sock, SSH_TIMEOUT).map_err(connect_err)?;
    let ssh = |what, addr: &str| {
        let addr = addr.to_string();
        move |source| ScpError::Ssh { what, addr, source }
    };
    let mut sess = ssh2::Session::new().map_err(ssh("session", &addr))?;
    sess.set_timeout(SSH_TIMEOUT.as_millis() as u32);
    sess.set_tcp_stream(tcp);
    sess.handshake().map_err(ssh("handshake", &addr))?;
    // Before any credential leaves: a password sent to an impostor is a password lost.
    verify_host(&sess, host, creds.port, &creds.known_hosts)?;
    let auth = match &creds.auth {
        Auth::Password(p) => sess.userauth_password(&creds.user, p),
        Auth::Key(k) => sess.userauth_pubkey_file(&creds.user, None, k, None),
    };
    if auth.is_err() || !sess.authenticated() {
        return Err(ScpError::Auth {
            user: creds.user.clone(),
            addr,
        });
    }
    Ok((sess, addr))
}

/// Checks the key `sess` was offered against `path` (OpenSSH format; `[host]:port`
/// entries for ports other than 22, as ssh-keyscan writes them).
fn verify_host(sess: &ssh2::Session, host: &str, port: u16, path: &Path) -> Result<(), ScpError> {
    let kh_err = |msg: String| ScpError::KnownHosts { msg };
    let (key, _) = sess
        .host_key()
        .ok_or_else(|| kh_err(format!("{host} offered no host key")))?;
    let mut kh = sess
        .known_hosts()
        .map_err(|e| kh_err(format!("cannot start the check: {e}")))?;
    kh.read_file(path, ssh2::KnownHostFileKind::OpenSSH)
        .map_err(|e| kh_err(format!("cannot read {}: {e}", path.display())))?;
    match kh.check_port(host, port, key) {
        ssh2::CheckResult::Match => Ok(()),
        ssh2::CheckResult::NotFound => Err(ScpError::UnknownHostKey {
            host: host.to_string(),
            port,
            path: path.to_path_buf(),
        }),
        ssh2::CheckResult::Mismatch => Err(ScpError::ChangedHostKey {
            host: host.to_string(),
            path: path.to_path_buf(),
        }),
        ssh2::CheckResult::Failure => Err(kh_err(format!(
            "checking the key of {host} against {} failed",
            path.display()
        ))),
    }
}

/// Copies exactly `size` bytes from `source` into `remote` (mode 0600) on `host`, and
/// returns the byte count and CRC-32 of what was sent.
pub fn push(
    creds: &Credentials,
    host: &str,
    remote: &Path,
    mut source: impl Read,
    size: u64,
) -> Result<(u64, u32), ScpError> {
    let (sess, addr) = session(creds, host)?;
    let ssh = |what| {
        let addr = addr.clone();
        move |source| ScpError::Ssh { what, addr, source }
    };
    let mut chan = sess
        .scp_send(remote, 0o600, size, None)
        .map_err(ssh("scp send"))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; COPY_BUF];
    let mut sent = 0u64;
    while sent < size {
        let want = usize::try_from(size - sent)
            .unwrap_or(COPY_BUF)
            .min(COPY_BUF);
        let Some(slot) = buf.get_mut(..want) else {
            break;
        };
        let n = source.read(slot).map_err(ScpError::Source)?;
        if n == 0 {
            return Err(ScpError::Short {
                got: sent,
                want: size,
            });
        }
        let data = slot.get(..n).unwrap_or_default();
        hasher.update(data);
        chan.write_all(data).map_err(|source| ScpError::Write {
            addr: addr.clone(),
            source,
        })?;
        sent += n as u64;
    }
    // The scp protocol's end-of-file status byte; without it the remote `scp -t` sees
    // EOF where it expects the status and exits 1 although the file is complete.
    chan.write_all(&[0]).map_err(|source| ScpError::Write {
        addr: addr.clone(),
        source,
    })?;
    chan.send_eof().map_err(ssh("eof"))?;
    chan.wait_eof().map_err(ssh("eof"))?;
    chan.close().map_err(ssh("close"))?;
    chan.wait_close().map_err(ssh("close"))?;
    if let Some(status) = chan.exit_status().ok().filter(|s| *s != 0) {
        return Err(ScpError::Write {
            addr,
            source: std::io::Error::other(format!("remote scp exited with status {status}")),
        });
    }
    Ok((sent, hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A config naming `creds` and an (empty) known_hosts file beside it.
    fn cfg(creds: &Path) -> SdfsConfig {
        let known_hosts = creds.with_file_name("known_hosts");
        std::fs::write(&known_hosts, "").unwrap();
        SdfsConfig {
            transfer: crate::config::Transfer::Scp,
            credentials: Some(creds.to_path_buf()),
            ssh_key: None,
            ssh_user: None,
            ssh_port: 22,
            versions_kept: 5,
            known_hosts: Some(known_hosts),
        }
    }

    #[test]
    fn a_missing_known_hosts_file_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("password.txt");
        std::fs::write(&p, "alice,secret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut c = cfg(&p);
        c.known_hosts = Some(dir.path().join("nope"));
        let e = load(&c).unwrap_err().to_string();
        assert!(e.starts_with("sdfs.known_hosts: cannot read"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        c.known_hosts = None;
        assert!(load(&c)
            .unwrap_err()
            .to_string()
            .contains("set sdfs.known_hosts"));
    }

    #[test]
    fn credentials_readable_by_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("password.txt");
        std::fs::write(&p, "alice,secret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&cfg(&p)).unwrap_err();
        assert!(matches!(e, ScpError::Insecure { mode: 0o644, .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(load(&cfg(&p)).is_err());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = load(&cfg(&p)).unwrap();
        assert_eq!(c.user, "alice");
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn malformed_credentials_are_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("password.txt");
        std::fs::write(&p, "no-comma-here\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load(&cfg(&p)).unwrap_err().to_string();
        assert!(e.contains("username,password"), "{e}");
    }
}
