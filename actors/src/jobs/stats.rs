//! The console statistics: C1 (query rate over the last window, totals) and C2
//! (processing-time statistics) as plain functions over the replicated state, so they
//! survive a takeover, and the rows of C5 (who runs what), which the coordinator fills
//! from its volatile dispatch state.

use serde::{Deserialize, Serialize};

use super::state::CoordState;
use super::types::{BatchId, JobId};
use crate::types::{Millis, NodeAddr};

/// One row of C1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRate {
    /// The job.
    pub job: JobId,
    /// Its model.
    pub model: String,
    /// Queries committed in the last window, per second.
    pub rate_qps: f64,
    /// Queries with a committed outcome (result or final failure).
    pub processed: u64,
    /// Of those, failed ones.
    pub failed: u64,
    /// Queries in the job.
    pub total: u64,
    /// Whether every query has an outcome.
    pub complete: bool,
}

/// Processing-time statistics of a set of queries (ms).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimeStats {
    /// Number of queries measured.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Population standard deviation.
    pub std_ms: f64,
    /// Median (nearest rank).
    pub median_ms: f64,
    /// 90th percentile (nearest rank).
    pub p90_ms: f64,
    /// 95th percentile (nearest rank).
    pub p95_ms: f64,
    /// 99th percentile (nearest rank).
    pub p99_ms: f64,
}

/// One row of C2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobTimes {
    /// The job.
    pub job: JobId,
    /// Its model.
    pub model: String,
    /// `None` before the first result.
    pub stats: Option<TimeStats>,
}

/// One row of C5.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// A live worker.
    pub node: NodeAddr,
    /// The job of the batch it runs, if any.
    pub job: Option<JobId>,
    /// The model of that batch.
    pub model: Option<String>,
    /// The batch.
    pub batch: Option<BatchId>,
    /// Queries in that batch.
    pub queries: u32,
    /// The precision the node's model computes in, once it has reported a batch.
    #[serde(default)]
    pub precision: Option<String>,
}

/// The fair-time target of one running job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobShare {
    /// The job.
    pub job: JobId,
    /// Its model.
    pub model: String,
    /// Measured (or prior) processing time per query (ms).
    pub per_query_ms: f64,
    /// Fraction of the cluster's worker time that gives it the same query rate as the
    /// other running jobs.
    pub target_share: f64,
    /// Workers running one of its batches right now.
    pub workers_now: u32,
}

/// C1: per job, the rate over the `window_ms` before `now`, and totals.
pub fn c1(state: &CoordState, now: Millis, window_ms: Millis) -> Vec<JobRate> {
    let from = now.saturating_sub(window_ms);
    let secs = window_ms.max(1) as f64 / 1000.0;
    state
        .jobs
        .values()
        .map(|j| {
            let recent: u64 = j
                .commits
                .iter()
                // Not `take_while` from the end: after a takeover commits carry another
                // node's clock and need not be in time order.
                .filter(|c| c.at > from && c.at <= now)
                .map(|c| u64::from(c.ok) + u64::from(c.failed))
                .sum();
            let processed = j.processed();
            JobRate {
                job: j.manifest.id,
                model: j.manifest.model.clone(),
                rate_qps: recent as f64 / secs,
                processed,
                failed: j.failed,
                total: j.total(),
                complete: j.is_complete(),
            }
        })
        .collect()
}

/// C2: per job, statistics of the per-query processing time of its committed results.
pub fn c2(state: &CoordState) -> Vec<JobTimes> {
    state
        .jobs
        .values()
        .map(|j| {
            let samples: Vec<(f64, u64)> = j
                .commits
                .iter()
                .filter(|c| c.ok > 0)
                .map(|c| (c.per_query_ms, u64::from(c.ok)))
                .collect();
            JobTimes {
                job: j.manifest.id,
                model: j.manifest.model.clone(),
                stats: weighted_stats(&samples),
            }
        })
        .collect()
}

/// Mean, standard deviation and nearest-rank percentiles of `(value, weight)` samples:
/// a batch of n queries contributes its per-query time n times without n copies.
pub fn weighted_stats(samples: &[(f64, u64)]) -> Option<TimeStats> {
    let mut v: Vec<(f64, u64)> = samples
        .iter()
        .copied()
        .filter(|(x, w)| x.is_finite() && *w > 0)
        .collect();
    let count: u64 = v.iter().map(|(_, w)| *w).sum();
    if count == 0 {
        return None;
    }
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = count as f64;
    let mean = v.iter().map(|(x, w)| x * *w as f64).sum::<f64>() / n;
    let var = v
        .iter()
        .map(|(x, w)| (x - mean) * (x - mean) * *w as f64)
        .sum::<f64>()
        / n;
    let pct = |p: f64| -> f64 {
        // Nearest rank: the smallest value with at least p% of the samples at or below.
        let rank = ((p / 100.0) * n).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (x, w) in &v {
            seen += w;
            if seen >= rank {
                return *x;
            }
        }
        v.last().map_or(0.0, |(x, _)| *x)
    };
    Some(TimeStats {
        count,
        mean_ms: mean,
        std_ms: var.sqrt(),
        median_ms: pct(50.0),
        p90_ms: pct(90.0),
        p95_ms: pct(95.0),
        p99_ms: pct(99.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_stats_match_the_expanded_sample() {
        // 1..=100 once each: nearest-rank percentiles are the values themselves.
        let samples: Vec<(f64, u64)> = (1..=100).map(|i| (i as f64, 1)).collect();
        let s = weighted_stats(&samples).unwrap();
        assert_eq!(s.count, 100);
        assert_eq!(s.mean_ms, 50.5);
        assert_eq!(s.median_ms, 50.0);
        assert_eq!(s.p90_ms, 90.0);
        assert_eq!(s.p95_ms, 95.0);
        assert_eq!(s.p99_ms, 99.0);
        assert!((s.std_ms - 28.866).abs() < 0.01);

        // Weights behave like repetitions.
        let s = weighted_stats(&[(10.0, 3), (20.0, 1)]).unwrap();
        assert_eq!(s.count, 4);
        assert_eq!(s.mean_ms, 12.5);
        assert_eq!(s.median_ms, 10.0);
        assert_eq!(s.p90_ms, 20.0);
        assert!((s.std_ms - 4.330).abs() < 0.01);
        assert!(weighted_stats(&[]).is_none());
        assert!(weighted_stats(&[(f64::NAN, 3)]).is_none());
    }
}
