//! Config files: loads `config.toml` (with `DML_*` environment variables and `--set
//! KEY=VALUE` flags on top, validated once into a typed [`Config`]), writes the loopback
//! config of a throw-away test or benchmark cluster, and the [`Layout`] a cluster of
//! processes is started from.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

use config::{Config as Layers, Environment, File, FileFormat};
use dml_actors::config::{Config, ConfigError, RawConfig};

/// Reads and validates the configuration. Every failure is a [`ConfigError`] naming the key.
pub fn load(path: &Path, overrides: &[String]) -> Result<Config, ConfigError> {
    if !path.is_file() {
        return Err(ConfigError {
            key: "--config".into(),
            msg: format!("no config file at {}", path.display()),
        });
    }
    let mut builder = Layers::builder()
        .add_source(File::from(path).format(FileFormat::Toml))
        .add_source(
            Environment::with_prefix("DML")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(config_env())),
        );
    for o in overrides {
        let (k, v) = o.split_once('=').ok_or_else(|| ConfigError {
            key: "--set".into(),
            msg: format!("expected KEY=VALUE, got {o:?}"),
        })?;
        builder = builder
            .set_override(k.trim(), parse_value(v.trim()))
            .map_err(|e| ConfigError {
                key: k.trim().into(),
                msg: e.to_string(),
            })?;
    }
    let layers = builder.build().map_err(to_config_error)?;
    let raw: RawConfig = layers.try_deserialize().map_err(to_config_error)?;
    let base = path
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| Path::new(".").to_path_buf());
    raw.validate(&base)
}

/// Only `DML_<SECTION>__<KEY>` variables are configuration; other `DML_*` variables
/// (tools' and tests' own settings) must not be read as unknown keys.
fn config_env() -> config::Map<String, String> {
    std::env::vars()
        .filter(|(k, _)| {
            k.strip_prefix("DML_")
                .is_some_and(|rest| rest.contains("__"))
        })
        .collect()
}

/// Flags are strings; numbers and booleans are given their type so `--set
/// failure_detector.m=2` means the integer 2.
fn parse_value(v: &str) -> config::Value {
    if let Ok(i) = v.parse::<i64>() {
        return i.into();
    }
    if let Ok(f) = v.parse::<f64>() {
        return f.into();
    }
    match v {
        "true" => true.into(),
        "false" => false.into(),
        _ => v.to_string().into(),
    }
}

fn to_config_error(e: config::ConfigError) -> ConfigError {
    // The config crate's messages already carry the key ("... for key `failure_detector.m`");
    // keep its text on one line and pull the key out where it is given.
    let msg = e.to_string().replace('\n', " ");
    let key = msg
        .split("key `")
        .nth(1)
        .and_then(|s| s.split('`').next())
        .or_else(|| {
            msg.split("unknown field `")
                .nth(1)
                .and_then(|s| s.split('`').next())
        })
        .unwrap_or("config")
        .to_string();
    ConfigError { key, msg }
}

/// Where the processes of a cluster are and what they are called: everything the
/// harness needs from a config.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The config file every process is started with.
    pub config: PathBuf,
    pub log_dir: PathBuf,
    pub introducer: String,
    /// (name, `host:port`) of every node, in config order.
    pub nodes: Vec<(String, String)>,
    pub secret: Vec<u8>,
}

impl Layout {
    /// The layout of a loaded config.
    pub fn of(config_path: &Path, config: &Config) -> Layout {
        Layout {
            config: config_path.to_path_buf(),
            log_dir: config.log_dir.clone(),
            introducer: config.introducer.to_string(),
            nodes: config
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.addr.to_string()))
                .collect(),
            secret: config.secret.clone(),
        }
    }

    /// The log file of a process (`introducer` or a node name).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// The address of a node, or the introducer's for `introducer`.
    pub fn addr(&self, name: &str) -> Option<&str> {
        if name == "introducer" {
            return Some(&self.introducer);
        }
        self.nodes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.as_str())
    }

    /// The name of the node at `addr`.
    pub fn name_of(&self, addr: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|(_, a)| a == addr)
            .map(|(n, _)| n.as_str())
    }
}

/// The config of a throw-away cluster on free loopback ports: nodes `H1..Hn`, data and
/// logs next to the config, the given failure-detector timings (seconds).
#[derive(Debug, Clone)]
pub struct TestConfig<'a> {
    pub secret: &'a str,
    pub nodes: usize,
    pub ping_duration: f64,
    pub ping_timeout: f64,
    pub cleanup_time: f64,
    /// More `[failure_detector]` keys (lines).
    pub fd_extra: &'a str,
    /// More sections, after `[failure_detector]`.
    pub extra: &'a str,
}

impl TestConfig<'_> {
    /// Replaces `dir` with a fresh one holding `config.toml` and an empty `logs/`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Layout> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let ports = crate::free_ports(self.nodes + 1).context("cannot bind a loopback port")?;
        let (intro, node_ports) = ports.split_first().context("no ports")?;
        let mut toml = format!(
            "[cluster]\nsecret = \"{}\"\ndata_dir = \"data\"\nlog_dir = \"logs\"\n\n\
             [introducer]\nhost = \"127.0.0.1\"\nport = {intro}\n\n\
             [failure_detector]\nm = 3\nping_duration = {}\nping_timeout = {}\ncleanup_time = {}\n{}\n\n{}\n",
            self.secret,
            self.ping_duration,
            self.ping_timeout,
            self.cleanup_time,
            self.fd_extra,
            self.extra
        );
        let mut nodes = Vec::new();
        for (i, port) in node_ports.iter().enumerate() {
            let name = format!("H{}", i + 1);
            toml.push_str(&format!(
                "[[nodes]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\n\n"
            ));
            nodes.push((name, format!("127.0.0.1:{port}")));
        }
        let config = dir.join("config.toml");
        fs::write(&config, toml).with_context(|| format!("cannot write {}", config.display()))?;
        Ok(Layout {
            config,
            log_dir: dir.join("logs"),
            introducer: format!("127.0.0.1:{intro}"),
            nodes,
            secret: self.secret.as_bytes().to_vec(),
        })
    }
}
