//! Loading the configuration: `config.toml`, then `DML_<SECTION>__<KEY>` environment
//! variables, then `--set KEY=VALUE` flags, merged by the `config` crate into a
//! [`RawConfig`] and validated once into a [`Config`]. Every failure is one
//! [`ConfigError`] naming the key.

use std::path::Path;

use ::config::{Config as Layers, Environment, File, FileFormat};

use super::{Config, ConfigError, RawConfig};

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
fn config_env() -> ::config::Map<String, String> {
    std::env::vars()
        .filter(|(k, _)| {
            k.strip_prefix("DML_")
                .is_some_and(|rest| rest.contains("__"))
        })
        .collect()
}

/// Flags are strings; numbers and booleans are given their type so `--set
/// failure_detector.m=2` means the integer 2.
fn parse_value(v: &str) -> ::config::Value {
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

fn to_config_error(e: ::config::ConfigError) -> ConfigError {
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
