//! The node's clocks: a monotonic millisecond clock for the cores' `now`, and wall time
//! for incarnations that must grow across restarts.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::types::Millis;

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Milliseconds since this process started (monotonic).
pub fn now() -> Millis {
    origin().elapsed().as_millis() as Millis
}

/// How long until `at` on the [`now`] clock (zero if it has passed).
pub fn until(at: Millis) -> Duration {
    Duration::from_millis(at.saturating_sub(now()))
}

/// Wall-clock milliseconds since the Unix epoch: a restarted node's first incarnation is
/// above anything its previous life used.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}
