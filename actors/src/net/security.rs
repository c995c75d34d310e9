//! The node's transport settings from its configuration: the cluster keyring (the secret
//! it dials with and those it still accepts), the operators it accepts, and the addresses
//! whose handshakes are served first in a flood (the configured nodes and the introducer).

use std::net::{IpAddr, ToSocketAddrs};

use crate::config::Config;
use crate::net::transport::TransportConfig;
use crate::types::NodeAddr;

/// The IP addresses of the configured nodes and the introducer (names resolved once, at
/// start; an unresolvable one is simply not preferred).
fn configured_ips(config: &Config) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = config
        .nodes
        .iter()
        .map(|n| &n.addr)
        .chain(std::iter::once(&config.introducer))
        .filter_map(|a| a.as_str().to_socket_addrs().ok())
        .flatten()
        .map(|s| s.ip())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The transport configuration of the node (or introducer) at `me`.
pub fn transport_config(config: &Config, me: &NodeAddr) -> TransportConfig {
    let mut t = TransportConfig::new(me.clone(), config.secret.clone());
    t.accept_secrets = config.accept_secrets.clone();
    t.operators = config.operators.clone();
    t.allow_secret_for_tools = config.allow_secret_for_tools;
    t.priority_ips = configured_ips(config);
    t
}
