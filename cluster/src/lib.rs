//! Local clusters of `dml` processes, shared by `dml up`, `dml demo`, the benchmarks and
//! the cluster tests: config files ([`config_file`]), the introducer and nodes as child
//! processes of a `dml` binary ([`Cluster`]), optionally one network namespace per node
//! so that tests can partition the network ([`netns`]), and the console client ([`ask`],
//! which streams local files itself: `transfer.rs`).

pub mod client;
pub mod config_file;
pub mod injector;
pub mod listing;
pub mod netns;
pub mod process;
pub mod progress;
pub mod results;
mod transfer;
pub mod weights;

use std::net::TcpListener;
use std::time::{Duration, Instant};

pub use client::{
    ask, ask_interruptible, ask_listing, ask_tool, job_results, print_results, DeadlinePassed,
    ToolAsk,
};
pub use config_file::{test_operator, Layout, TestConfig};
pub use netns::Net;
pub use process::{Cluster, Member, Options, Stop};

/// How often waits poll.
pub const POLL: Duration = Duration::from_millis(100);

/// Free loopback ports: bound to port 0 together, then released (another process could
/// take one in between; unlikely, and start-up would then fail loudly).
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Polls `cond` every [`POLL`] until it holds; returns how long that took, or an error
/// once `within` has passed.
pub fn wait_until(
    within: Duration,
    mut cond: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if cond()? {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(start.elapsed() <= within, "not reached within {within:?}");
        std::thread::sleep(POLL);
    }
}

/// Waits until something accepts connections on `addr`.
pub fn wait_listening(addr: &str, within: Duration) -> anyhow::Result<()> {
    wait_until(within, || Ok(std::net::TcpStream::connect(addr).is_ok()))
        .map(drop)
        .map_err(|_| anyhow::anyhow!("nothing listens on {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports = free_ports(5).unwrap();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), 5);
        for p in ports {
            assert!(TcpListener::bind(("127.0.0.1", p)).is_ok());
        }
    }

    #[test]
    fn wait_listening_fails_on_a_closed_port() {
        let port = free_ports(1).unwrap()[0];
        let e = wait_listening(&format!("127.0.0.1:{port}"), Duration::from_millis(200));
        assert!(e.unwrap_err().to_string().contains("nothing listens"));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        assert!(wait_listening(&addr, Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn test_config_round_trips_through_the_loader() {
        let dir = std::env::temp_dir().join(format!("dml-cluster-unit-{}", std::process::id()));
        let layout = TestConfig {
            secret: "unit-secret-0123456789abcdef",
            nodes: 3,
            ping_duration: 0.5,
            ping_timeout: 0.3,
            cleanup_time: 1.5,
            fd_extra: "suspicion = true",
            extra: "[inference]\nthreads = 1\n",
        }
        .write(&dir)
        .unwrap();
        let config = dml_actors::config::load(&layout.config, &[]).unwrap();
        let again = Layout::of(&layout.config, &config).unwrap();
        assert_eq!(again.nodes, layout.nodes);
        assert_eq!(again.introducer, layout.introducer);
        assert_eq!(again.secret, layout.secret);
        assert_eq!(again.credential, layout.credential);
        assert_eq!(layout.name_of(&layout.nodes[1].1), Some("H2"));
        assert_eq!(layout.addr("introducer"), Some(layout.introducer.as_str()));
        assert_eq!(config.threads, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
