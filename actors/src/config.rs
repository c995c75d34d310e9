//! The deployment's configuration: the raw form read from `config.toml` (plus `DML_*`
//! environment variables and flags) and the validated, typed form every layer uses.
//!
//! Validation happens once, at start: every bad value is a one-line error that names the
//! key, so a deployment never runs half-configured.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::types::NodeAddr;

mod http;
mod keys;
mod load;
pub use http::HttpConfig;
pub use load::load;

/// A configuration error; `key` is the dotted config key at fault.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("config: {key}: {msg}")]
pub struct ConfigError {
    pub key: String,
    pub msg: String,
}

fn err(key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        msg: msg.into(),
    }
}

/// `config.toml` as written, before validation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub cluster: RawCluster,
    #[serde(default)]
    pub introducer: RawIntroducer,
    #[serde(default)]
    pub nodes: Vec<RawNode>,
    #[serde(default)]
    pub failure_detector: RawFailureDetector,
    /// Optional explicit monitor table: node name -> names it monitors.
    #[serde(default)]
    pub topology: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub inference: RawInference,
    #[serde(default)]
    pub sdfs: RawSdfs,
    #[serde(default)]
    pub security: RawSecurity,
    #[serde(default)]
    pub ctl: RawCtl,
    #[serde(default)]
    pub http: RawHttp,
}

/// `[http]`: the nodes' HTTP endpoints (each node's address is its `[[nodes]]` `http`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// The bearer token clients must send (one line; private like every key file).
    pub token_file: Option<String>,
    /// Largest request body accepted, bytes (default 64 MiB).
    pub max_body_bytes: Option<i64>,
    /// The longest a request waits in the dynamic batcher for others, ms (default 5).
    pub max_queue_delay_ms: Option<i64>,
    /// TLS: the certificate chain (PEM); with `key_file`, the endpoints speak HTTPS only.
    pub cert_file: Option<String>,
    /// TLS: the certificate's private key (PEM; private like every key file).
    pub key_file: Option<String>,
}

/// `[security]`: who may connect besides the nodes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecurity {
    /// `NAME ROLE HEX_KEY` lines: the operators whose tools a node accepts.
    pub operators_file: Option<String>,
    /// Let tools prove the cluster secret instead of an operator key (as admins).
    pub allow_secret_for_tools: Option<bool>,
    /// The operator key files are the public samples shipped in `samples/`.
    pub sample_keys: Option<bool>,
}

/// `[ctl]`: the operator side (`dml ctl`, `dml up`, `dml demo`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCtl {
    /// A `NAME HEX_KEY` line: the operator credential `dml ctl` proves.
    pub credential_file: Option<String>,
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub secret: Option<String>,
    pub secret_file: Option<String>,
    /// Older (or newer) cluster secrets still accepted during a key rotation.
    pub accept_secrets: Option<Vec<String>>,
    /// The same, read from files.
    pub accept_secret_files: Option<Vec<String>>,
    pub data_dir: Option<String>,
    pub log_dir: Option<String>,
}

/// Written by hand so that no `{:?}` (a log line, a panic message) shows the secret.
impl std::fmt::Debug for RawCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawCluster")
            .field("secret", &self.secret.as_ref().map(|_| Redacted))
            .field("secret_file", &self.secret_file)
            .field("data_dir", &self.data_dir)
            .field("log_dir", &self.log_dir)
            .finish()
    }
}

/// Stands in for a secret in `Debug` output.
struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntroducer {
    pub host: Option<String>,
    pub port: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub name: String,
    pub host: String,
    pub port: i64,
    /// `HOST:PORT` of the node's HTTP endpoint (KServe v2, metrics); none: no endpoint.
    pub http: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailureDetector {
    pub m: Option<i64>,
    pub ping_timeout: Option<f64>,
    pub ping_duration: Option<f64>,
    pub cleanup_time: Option<f64>,
    /// Fraction of outgoing pings/acks to drop on purpose (loss experiments only).
    pub drop_rate: Option<f64>,
    /// `false` removes a peer at its first missed ack (no suspect phase); only to measure
    /// what suspicion buys.
    pub suspicion: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInference {
    pub threads: Option<i64>,
    pub precision: Option<String>,
    pub weights_dir: Option<String>,
    /// Serve synthetic weights for a model with no weights at all (tests, demos).
    pub synthetic_weights: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSdfs {
    pub transfer: Option<String>,
    pub credentials: Option<String>,
    pub ssh_key: Option<String>,
    pub ssh_user: Option<String>,
    pub ssh_port: Option<i64>,
    pub versions_kept: Option<i64>,
    /// OpenSSH known_hosts file the scp transfer checks host keys against.
    pub known_hosts: Option<String>,
}

/// One node of the deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub addr: NodeAddr,
    /// Its HTTP endpoint, if it has one.
    pub http: Option<std::net::SocketAddr>,
}

/// Failure-detector timings and completeness.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureDetectorConfig {
    /// How many simultaneous failures the detector stays complete under (monitors per node).
    pub m: usize,
    pub ping_timeout: Duration,
    pub ping_duration: Duration,
    pub cleanup_time: Duration,
    pub drop_rate: f64,
    /// Suspect before removing (the normal detector); `false` only for experiments.
    pub suspicion: bool,
}

/// How SDFS moves file data between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transfer {
    Native,
    Scp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdfsConfig {
    pub transfer: Transfer,
    /// The seed's `password.txt` (`username,password`).
    pub credentials: Option<PathBuf>,
    pub ssh_key: Option<PathBuf>,
    pub ssh_user: Option<String>,
    pub ssh_port: u16,
    pub versions_kept: usize,
    /// Host keys the scp transfer accepts (`sdfs.known_hosts`, default
    /// `~/.ssh/known_hosts`; `None` when neither is set nor `$HOME` known).
    pub known_hosts: Option<PathBuf>,
}

/// The validated configuration. `Debug` (by hand, below) never shows the secret.
#[derive(Clone)]
pub struct Config {
    pub secret: Vec<u8>,
    pub data_dir: PathBuf,
    pub log_dir: PathBuf,
    pub introducer: NodeAddr,
    /// Ring order: the order of `[[nodes]]`.
    pub nodes: Vec<NodeSpec>,
    pub fd: FailureDetectorConfig,
    /// Explicit monitor table by address, when given.
    pub topology: Option<BTreeMap<NodeAddr, Vec<NodeAddr>>>,
    pub threads: usize,
    /// `[inference] precision`: what the convolutions compute in. Whether this CPU has a
    /// path for it is checked when the models load (a config is shared by machines that
    /// may differ).
    pub precision: dml_models::Precision,
    pub weights_dir: PathBuf,
    /// `inference.synthetic_weights` (or `dml node --synthetic-weights`): a model with
    /// no local file and nothing published runs on synthetic weights instead of not
    /// being served; results and C5 say so.
    pub synthetic_weights: bool,
    pub sdfs: SdfsConfig,
    /// Cluster secrets accepted besides `secret` (the one this node dials with).
    pub accept_secrets: Vec<Vec<u8>>,
    /// Operators whose tools this node accepts.
    pub operators: Vec<dml_wire::OperatorKey>,
    /// Whether tools may prove the cluster secret (off unless configured).
    pub allow_secret_for_tools: bool,
    /// `[security] sample_keys`: the operator files are the public samples of the
    /// repository, whose file mode is not checked (a fresh clone cannot keep mode 600,
    /// and keys everybody has protect nothing); nodes warn about it at start.
    pub sample_keys: bool,
    /// The operator credential `dml ctl` proves, read when a tool needs it (nodes do
    /// not need the operator's key file).
    pub credential_file: Option<PathBuf>,
    /// `[http]`.
    pub http: HttpConfig,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("secret", &Redacted)
            .field("accept_secrets", &self.accept_secrets.len())
            .field("operators", &self.operators.len())
            .field("data_dir", &self.data_dir)
            .field("log_dir", &self.log_dir)
            .field("introducer", &self.introducer)
            .field("nodes", &self.nodes)
            .field("fd", &self.fd)
            .field("topology", &self.topology)
            .field("threads", &self.threads)
            .field("precision", &self.precision)
            .field("weights_dir", &self.weights_dir)
            .field("synthetic_weights", &self.synthetic_weights)
            .field("sdfs", &self.sdfs)
            .field("http", &self.http)
            .finish()
    }
}

/// Refuses a key file (`key` names the setting) that its owner's group or others may
/// read: a secret anyone on the host can read is no secret.
pub(super) fn check_private(key: &str, path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| err(key, format!("cannot read {}: {e}", path.display())))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(
            key,
            format!(
                "{} is readable by group or others (mode {mode:o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Reads `cluster.secret_file`. The file must be private to its owner
/// ([`check_private`]). Its bytes are the secret exactly, binary or not, except one
/// trailing newline (`\n` or `\r\n`) that editors and `echo` add; a file starting with
/// `hex:` holds the secret as hex digits (whitespace ignored). Never decoded lossily:
/// two different keys stay different.
pub(super) fn read_secret_file(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let cannot = |e: std::io::Error| err(key, format!("cannot read {}: {e}", path.display()));
    check_private(key, path)?;
    let bytes = std::fs::read(path).map_err(cannot)?;
    if let Some(hex) = bytes.strip_prefix(b"hex:") {
        return decode_hex(hex).ok_or_else(|| {
            err(
                key,
                format!(
                    "{}: not an even number of hex digits after `hex:`",
                    path.display()
                ),
            )
        });
    }
    let raw = bytes
        .strip_suffix(b"\r\n")
        .or_else(|| bytes.strip_suffix(b"\n"))
        .unwrap_or(&bytes);
    Ok(raw.to_vec())
}

/// Hex digits to bytes, ASCII whitespace ignored; `None` if anything else is there.
fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .map(|c| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok()))
        .collect::<Option<_>>()?;
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    Some(digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect())
}

impl Config {
    /// The node with this address, if it is part of the deployment.
    pub fn node(&self, addr: &NodeAddr) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| &n.addr == addr)
    }

    /// Ring order of all configured nodes.
    pub fn ring(&self) -> Vec<NodeAddr> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Data directory of one node (`data_dir/<name>`).
    pub fn node_data_dir(&self, spec: &NodeSpec) -> PathBuf {
        self.data_dir.join(&spec.name)
    }

    /// Replicas per SDFS file: enough to survive `m` simultaneous failures.
    pub fn replicas(&self) -> usize {
        self.fd.m + 1
    }
}

fn port(key: &str, v: i64) -> Result<u16, ConfigError> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| err(key, format!("port {v} is out of range 1..=65535")))
}

fn seconds(key: &str, v: Option<f64>, default: f64) -> Result<Duration, ConfigError> {
    let v = v.unwrap_or(default);
    if !v.is_finite() || v <= 0.0 || v > 86_400.0 {
        return Err(err(
            key,
            format!("must be a positive number of seconds, got {v}"),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

fn host(key: &str, h: &str) -> Result<String, ConfigError> {
    let h = h.trim();
    if h.is_empty() || h.contains(char::is_whitespace) || h.contains('/') {
        return Err(err(key, format!("invalid host {h:?}")));
    }
    Ok(h.to_string())
}

/// Resolves relative paths against the config file's directory, so `dml` behaves the same
/// whatever directory it is started from.
fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl RawConfig {
    /// Validates into a [`Config`]. `base` is the directory relative paths are taken from.
    pub fn validate(self, base: &Path) -> Result<Config, ConfigError> {
        let secret = match (&self.cluster.secret, &self.cluster.secret_file) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "cluster.secret",
                    "give either cluster.secret or cluster.secret_file, not both",
                ))
            }
            (Some(s), None) => s.as_bytes().to_vec(),
            (None, Some(f)) => read_secret_file("cluster.secret_file", &resolve(base, f))?,
            (None, None) => {
                return Err(err(
                    "cluster.secret",
                    "missing: set cluster.secret or cluster.secret_file (every node needs the same one)",
                ))
            }
        };
        if secret.len() < 16 {
            return Err(err("cluster.secret", "must be at least 16 bytes long"));
        }

        let ihost = host(
            "introducer.host",
            self.introducer.host.as_deref().unwrap_or("127.0.0.1"),
        )?;
        let iport = port("introducer.port", self.introducer.port.unwrap_or(8888))?;
        let introducer = NodeAddr::new(&ihost, iport);

        if self.nodes.is_empty() {
            return Err(err("nodes", "no [[nodes]] configured"));
        }
        let mut nodes = Vec::with_capacity(self.nodes.len());
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let name = n.name.trim().to_string();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(err(
                    format!("nodes[{i}].name"),
                    format!("invalid name {:?} (letters, digits, - and _)", n.name),
                ));
            }
            let h = host(&format!("nodes[{i}].host"), &n.host)?;
            let p = port(&format!("nodes[{i}].port"), n.port)?;
            let addr = NodeAddr::new(&h, p);
            if !names.insert(name.clone()) {
                return Err(err(
                    format!("nodes[{i}].name"),
                    format!("duplicate node name {name}"),
                ));
            }
            if !addrs.insert(addr.clone()) || addr == introducer {
                return Err(err(
                    format!("nodes[{i}].port"),
                    format!("address {addr} is used twice"),
                ));
            }
            let http = match &n.http {
                None => None,
                Some(a) => Some(a.trim().parse::<std::net::SocketAddr>().map_err(|_| {
                    err(
                        format!("nodes[{i}].http"),
                        format!("{a:?} is not an IP:PORT address"),
                    )
                })?),
            };
            nodes.push(NodeSpec { name, addr, http });
        }

        let fd = &self.failure_detector;
        let m = fd.m.unwrap_or(3);
        if m < 1 {
            return Err(err(
                "failure_detector.m",
                format!("must be at least 1, got {m}"),
            ));
        }
        let m = m as usize;
        let ping_timeout = seconds("failure_detector.ping_timeout", fd.ping_timeout, 2.0)?;
        let ping_duration = seconds("failure_detector.ping_duration", fd.ping_duration, 2.5)?;
        let cleanup_time = seconds("failure_detector.cleanup_time", fd.cleanup_time, 10.0)?;
        if ping_timeout > ping_duration {
            return Err(err(
                "failure_detector.ping_timeout",
                "must not exceed failure_detector.ping_duration (one probe at a time)",
            ));
        }
        let drop_rate = fd.drop_rate.unwrap_or(0.0);
        if !(0.0..1.0).contains(&drop_rate) {
            return Err(err("failure_detector.drop_rate", "must be in [0, 1)"));
        }

        let by_name = |key: &str, name: &str| -> Result<NodeAddr, ConfigError> {
            nodes
                .iter()
                .find(|n| n.name == name)
                .map(|n| n.addr.clone())
                .ok_or_else(|| err(key, format!("unknown node {name}")))
        };
        let topology = if self.topology.is_empty() {
            None
        } else {
            let mut t = BTreeMap::new();
            for (from, tos) in &self.topology {
                let key = format!("topology.{from}");
                let f = by_name(&key, from)?;
                let mut v = Vec::new();
                for to in tos {
                    let a = by_name(&key, to)?;
                    if a == f {
                        return Err(err(key, format!("{from} cannot monitor itself")));
                    }
                    v.push(a);
                }
                t.insert(f, v);
            }
            Some(t)
        };

        let threads = self.inference.threads.unwrap_or(2);
        if !(1..=256).contains(&threads) {
            return Err(err(
                "inference.threads",
                format!("must be in 1..=256, got {threads}"),
            ));
        }

        let precision =
            dml_models::Precision::parse(self.inference.precision.as_deref().unwrap_or("fp32"))
                .map_err(|e| err("inference.precision", e))?;

        let s = &self.sdfs;
        let transfer = match s.transfer.as_deref().unwrap_or("native") {
            "native" => Transfer::Native,
            "scp" => Transfer::Scp,
            other => {
                return Err(err(
                    "sdfs.transfer",
                    format!("must be \"native\" or \"scp\", got {other:?}"),
                ))
            }
        };
        let versions_kept = s.versions_kept.unwrap_or(5);
        if !(1..=1000).contains(&versions_kept) {
            return Err(err("sdfs.versions_kept", "must be in 1..=1000"));
        }
        let sdfs = SdfsConfig {
            transfer,
            credentials: s.credentials.as_deref().map(|p| resolve(base, p)),
            ssh_key: s.ssh_key.as_deref().map(|p| resolve(base, p)),
            ssh_user: s.ssh_user.clone(),
            ssh_port: port("sdfs.ssh_port", s.ssh_port.unwrap_or(22))?,
            versions_kept: versions_kept as usize,
            known_hosts: match s.known_hosts.as_deref() {
                Some(p) => Some(resolve(base, p)),
                None => std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .map(|h| PathBuf::from(h).join(".ssh").join("known_hosts")),
            },
        };
        if sdfs.transfer == Transfer::Scp && sdfs.credentials.is_none() && sdfs.ssh_key.is_none() {
            return Err(err(
                "sdfs.credentials",
                "transfer = \"scp\" needs sdfs.credentials (password.txt) or sdfs.ssh_key",
            ));
        }

        let keys = keys::load(&self, base)?;
        let http = http::validate(&self.http, base, keys.sample_keys)?;
        Ok(Config {
            accept_secrets: keys.accept_secrets,
            operators: keys.operators,
            allow_secret_for_tools: keys.allow_secret_for_tools,
            sample_keys: keys.sample_keys,
            credential_file: keys.credential_file,
            http,
            secret,
            data_dir: resolve(base, self.cluster.data_dir.as_deref().unwrap_or("data")),
            log_dir: resolve(base, self.cluster.log_dir.as_deref().unwrap_or("logs")),
            introducer,
            nodes,
            fd: FailureDetectorConfig {
                m,
                ping_timeout,
                ping_duration,
                cleanup_time,
                drop_rate,
                suspicion: fd.suspicion.unwrap_or(true),
            },
            topology,
            threads: threads as usize,
            precision,
            weights_dir: resolve(
                base,
                self.inference.weights_dir.as_deref().unwrap_or("weights"),
            ),
            synthetic_weights: self.inference.synthetic_weights.unwrap_or(false),
            sdfs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawConfig {
        RawConfig {
            cluster: RawCluster {
                secret: Some("0123456789abcdef-test".into()),
                ..Default::default()
            },
            nodes: (1..=4)
                .map(|i| RawNode {
                    name: format!("H{i}"),
                    host: "127.0.0.1".into(),
                    port: 8000 + i,
                    http: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn key_of(r: RawConfig) -> String {
        r.validate(Path::new(".")).unwrap_err().key
    }

    #[test]
    fn defaults_are_the_seed_timings() {
        let c = raw().validate(Path::new("/x")).unwrap();
        assert_eq!(c.fd.m, 3);
        assert_eq!(c.fd.ping_timeout, Duration::from_secs(2));
        assert_eq!(c.fd.ping_duration, Duration::from_millis(2500));
        assert_eq!(c.fd.cleanup_time, Duration::from_secs(10));
        assert_eq!(c.introducer.as_str(), "127.0.0.1:8888");
        assert_eq!(c.replicas(), 4);
        assert_eq!(c.data_dir, Path::new("/x/data"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut r = raw();
        r.failure_detector.m = Some(0);
        assert_eq!(key_of(r), "failure_detector.m");
        let mut r = raw();
        r.failure_detector.ping_timeout = Some(-1.0);
        assert_eq!(key_of(r), "failure_detector.ping_timeout");
        let mut r = raw();
        r.failure_detector.cleanup_time = Some(f64::NAN);
        assert_eq!(key_of(r), "failure_detector.cleanup_time");
        let mut r = raw();
        r.nodes[2].port = 70000;
        assert_eq!(key_of(r), "nodes[2].port");
        let mut r = raw();
        r.cluster.secret = None;
        assert_eq!(key_of(r), "cluster.secret");
        let mut r = raw();
        r.topology.insert("H1".into(), vec!["H9".into()]);
        assert_eq!(key_of(r), "topology.H1");
        let mut r = raw();
        r.nodes[1].port = r.nodes[0].port;
        assert_eq!(key_of(r), "nodes[1].port");
        let mut r = raw();
        r.sdfs.transfer = Some("ftp".into());
        assert_eq!(key_of(r), "sdfs.transfer");
        let mut r = raw();
        r.inference.threads = Some(0);
        assert_eq!(key_of(r), "inference.threads");
        let mut r = raw();
        r.inference.precision = Some("fp16".into());
        assert_eq!(key_of(r), "inference.precision");
        let mut r = raw();
        r.nodes[0].http = Some("localhost:9001".into());
        assert_eq!(key_of(r), "nodes[0].http");
    }

    #[test]
    fn topology_is_resolved_to_addresses() {
        let mut r = raw();
        r.topology
            .insert("H1".into(), vec!["H2".into(), "H4".into()]);
        let c = r.validate(Path::new(".")).unwrap();
        let t = c.topology.unwrap();
        assert_eq!(
            t[&NodeAddr::from("127.0.0.1:8001")],
            vec![
                NodeAddr::from("127.0.0.1:8002"),
                NodeAddr::from("127.0.0.1:8004")
            ]
        );
    }

    /// A config whose secret is the file `body` with mode `mode`.
    fn with_secret_file(
        dir: &Path,
        name: &str,
        body: &[u8],
        mode: u32,
    ) -> Result<Config, ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut r = raw();
        r.cluster.secret = None;
        r.cluster.secret_file = Some(name.into());
        r.validate(dir)
    }

    /// Issue 14, finding 10: two binary keys that differ only in bytes that are not
    /// UTF-8 were the same secret after `from_utf8_lossy`. Now the bytes are the secret.
    #[test]
    fn secret_files_are_raw_bytes_and_never_merged() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = vec![0xffu8; 24];
        a[3] = 0x01;
        let mut b = vec![0xfeu8; 24];
        b[3] = 0x01;
        let ka = with_secret_file(dir.path(), "a", &a, 0o600).unwrap().secret;
        let kb = with_secret_file(dir.path(), "b", &b, 0o400).unwrap().secret;
        assert_eq!(ka, a);
        assert_eq!(kb, b);
        assert_ne!(ka, kb);
        // One trailing newline is an editor's, the rest is the secret's.
        let k = with_secret_file(dir.path(), "c", b"  0123456789abcdef \n", 0o600).unwrap();
        assert_eq!(k.secret, b"  0123456789abcdef ");
        let k = with_secret_file(dir.path(), "d", b"0123456789abcdef\r\n", 0o600).unwrap();
        assert_eq!(k.secret, b"0123456789abcdef");
        // hex: for keys that are easier to carry as text.
        let k = with_secret_file(
            dir.path(),
            "e",
            b"hex:00ff 10ab\n00112233445566778899aabb\n",
            0o600,
        )
        .unwrap();
        assert_eq!(k.secret[..4], [0x00, 0xff, 0x10, 0xab]);
        assert_eq!(k.secret.len(), 16);
        let e = with_secret_file(dir.path(), "f", b"hex:0g", 0o600).unwrap_err();
        assert_eq!(e.key, "cluster.secret_file");
        // Too short after decoding is still too short.
        let e = with_secret_file(dir.path(), "g", b"hex:0011", 0o600).unwrap_err();
        assert_eq!(e.key, "cluster.secret");
    }

    #[test]
    fn a_secret_file_open_to_group_or_others_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o660] {
            let e = with_secret_file(dir.path(), "s", b"0123456789abcdef-x", mode).unwrap_err();
            assert_eq!(e.key, "cluster.secret_file");
            let line = e.to_string();
            assert!(line.contains("readable by group or others"), "{line}");
            assert!(line.contains("chmod 600"), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }

    /// The operators file and the tool's credential hold keys like the secret does: a
    /// copy others on the host can read is refused the same way.
    #[test]
    fn operator_key_files_open_to_group_or_others_are_refused_naming_the_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let ops = dir.path().join("operators.txt");
        std::fs::write(&ops, format!("alice admin {key}\n")).unwrap();
        let cred = dir.path().join("alice.credential");
        std::fs::write(&cred, format!("alice {key}\n")).unwrap();
        let config = || {
            let mut r = raw();
            r.security.operators_file = Some("operators.txt".into());
            r.ctl.credential_file = Some("alice.credential".into());
            r.validate(dir.path())
        };
        let chmod = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        chmod(&cred, 0o600);
        for mode in [0o644, 0o640, 0o604] {
            chmod(&ops, mode);
            let e = config().unwrap_err();
            assert_eq!(e.key, "security.operators_file");
            let line = e.to_string();
            assert!(line.contains("readable by group or others"), "{line}");
            assert!(line.contains("chmod 600"), "{line}");
        }
        chmod(&ops, 0o600);
        let c = config().unwrap();
        assert_eq!(c.operators.len(), 1);
        assert!(c.tool_credential().is_ok());
        for mode in [0o644, 0o640, 0o604] {
            chmod(&cred, mode);
            let e = c.tool_credential().unwrap_err();
            assert_eq!(e.key, "ctl.credential_file");
            assert!(e.to_string().contains("readable by group or others"), "{e}");
        }
        // The repository's public sample keys, said to be so, are not mode-checked (a
        // fresh clone cannot keep mode 600); nothing else changes.
        chmod(&ops, 0o644);
        let mut r = raw();
        r.security.operators_file = Some("operators.txt".into());
        r.ctl.credential_file = Some("alice.credential".into());
        r.security.sample_keys = Some(true);
        let c = r.validate(dir.path()).unwrap();
        assert!(c.sample_keys);
        assert_eq!(c.operators.len(), 1);
        assert!(c.tool_credential().is_ok());
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let secret = "0123456789abcdef-test";
        let r = raw();
        assert!(!format!("{r:?}").contains(secret));
        assert!(format!("{r:?}").contains("<redacted>"));
        let c = r.validate(Path::new("/x")).unwrap();
        assert!(!format!("{c:?}").contains(secret));
        assert!(
            !format!("{c:#?}").contains("48, 49, 50"),
            "bytes of the secret"
        );
    }
}
