//! The keys of a deployment besides the cluster secret: secrets still accepted during a
//! rotation (`[cluster] accept_secrets` / `accept_secret_files`), the operators a node
//! accepts (`[security] operators_file`) and the credential `dml ctl` proves
//! (`[ctl] credential_file`, read only when a tool needs it).

use std::path::{Path, PathBuf};

use dml_wire::{parse_credential, parse_operators, Credential, Key, OperatorKey, MIN_KEY_LEN};

use super::{check_private, err, read_secret_file, resolve, Config, ConfigError, RawConfig};

/// The validated keys.
pub(super) struct Keys {
    pub accept_secrets: Vec<Vec<u8>>,
    pub operators: Vec<OperatorKey>,
    pub allow_secret_for_tools: bool,
    pub credential_file: Option<PathBuf>,
    pub sample_keys: bool,
}

pub(super) fn load(raw: &RawConfig, base: &Path) -> Result<Keys, ConfigError> {
    let mut accept_secrets: Vec<Vec<u8>> = raw
        .cluster
        .accept_secrets
        .iter()
        .flatten()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    for f in raw.cluster.accept_secret_files.iter().flatten() {
        // Read like `secret_file`: private to its owner, raw bytes or `hex:`.
        accept_secrets.push(read_secret_file(
            "cluster.accept_secret_files",
            &resolve(base, f),
        )?);
    }
    if accept_secrets.iter().any(|s| s.len() < MIN_KEY_LEN) {
        return Err(err(
            "cluster.accept_secrets",
            format!("every accepted secret must be at least {MIN_KEY_LEN} bytes long"),
        ));
    }
    let sample_keys = raw.security.sample_keys.unwrap_or(false);
    let operators = match &raw.security.operators_file {
        None => Vec::new(),
        Some(f) => {
            let path = resolve(base, f);
            // The operators' keys let a tool act as that operator: private like a secret
            // (unless they are the public samples, which nobody can keep private).
            if !sample_keys {
                check_private("security.operators_file", &path)?;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| {
                err(
                    "security.operators_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            parse_operators(&text).map_err(|e| {
                err(
                    "security.operators_file",
                    format!("{}: {e}", path.display()),
                )
            })?
        }
    };
    Ok(Keys {
        accept_secrets,
        operators,
        allow_secret_for_tools: raw.security.allow_secret_for_tools.unwrap_or(false),
        credential_file: raw.ctl.credential_file.as_deref().map(|f| resolve(base, f)),
        sample_keys,
    })
}

impl Config {
    /// What `dml ctl` and the other tools prove: the operator credential of
    /// `[ctl] credential_file`, or else the cluster secret (which nodes refuse unless
    /// `[security] allow_secret_for_tools = true`).
    pub fn tool_credential(&self) -> Result<Credential, ConfigError> {
        match &self.credential_file {
            Some(path) => {
                if !self.sample_keys {
                    check_private("ctl.credential_file", path)?;
                }
                let text = std::fs::read_to_string(path).map_err(|e| {
                    err(
                        "ctl.credential_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                parse_credential(&text)
                    .map_err(|e| err("ctl.credential_file", format!("{}: {e}", path.display())))
            }
            None => Key::new(self.secret.clone())
                .map(Credential::cluster)
                .map_err(|e| err("cluster.secret", e.to_string())),
        }
    }
}
