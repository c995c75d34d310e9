//! The checker: what each put wrote (payloads rebuilt from the seed), the rules a read
//! must obey against the history (acknowledged puts stay readable at their version or
//! newer with their exact bytes, deleted names stay deleted, `get-versions` strictly
//! newest first), replica counts from every live node's `store`, and violation reports
//! that carry the seed and the history behind them.

use std::collections::{BTreeMap, BTreeSet};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::history::{describe, History, Kind, Op, OpId, Read, Res};

/// The bytes put `op` writes to `name`: a header naming the put, then bytes drawn from
/// (seed, op). Keyed by the put rather than the version because the primary assigns
/// the version only when it acknowledges; the header lets a reader tell which put (and
/// so which version) any bytes it got claim to be.
pub fn payload(seed: u64, op: OpId, name: &str, size: usize) -> Vec<u8> {
    let mut out = format!("chaos op={op} name={name}\n").into_bytes();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (op as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let body = size.saturating_sub(out.len());
    let start = out.len();
    out.resize(start + body, 0);
    rng.fill_bytes(&mut out[start..]);
    out
}

/// The put a payload's header names.
fn header_op(bytes: &[u8]) -> Option<OpId> {
    let line = bytes.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.strip_prefix("chaos op=")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// Compares read bytes with what the put they name wrote.
pub fn classify(h: &History, seed: u64, version: u64, bytes: &[u8]) -> Read {
    let from = header_op(bytes).filter(|id| h.ops.get(*id).is_some_and(Op::is_write));
    let intact = from.is_some_and(|id| {
        let p = &h.ops[id];
        bytes == payload(seed, id, &p.name, p.size).as_slice()
    });
    Read {
        version,
        from,
        intact,
        len: bytes.len(),
    }
}

/// Splits a `get-versions` output file into (version, bytes), newest first as written.
pub fn parse_versions(mut s: &[u8], name: &str) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let prefix = format!("==== {name} version ");
    while !s.is_empty() {
        let nl = s
            .iter()
            .position(|b| *b == b'\n')
            .ok_or("no delimiter line")?;
        let header = std::str::from_utf8(&s[..nl]).map_err(|_| "delimiter is not text")?;
        let rest = header
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(" bytes) ===="))
            .ok_or_else(|| format!("bad delimiter {header:?}"))?;
        let (v, n) = rest.split_once(" (").ok_or("bad delimiter")?;
        let v: u64 = v.parse().map_err(|_| "bad version")?;
        let n: usize = n.parse().map_err(|_| "bad length")?;
        let end = nl + 1 + n;
        if s.len() <= end || s[end] != b'\n' {
            return Err(format!("version {v} is cut short"));
        }
        out.push((v, s[nl + 1..end].to_vec()));
        s = &s[end + 1..];
    }
    Ok(out)
}

/// A broken promise, with what it is about.
#[derive(Debug, Clone)]
pub struct Violation {
    pub name: String,
    pub what: String,
    /// The read that showed it, if any (for the time window of the report).
    pub op: Option<OpId>,
}

/// Judges a completed read (`get`, `get-versions`) against the history.
pub fn check_read(h: &History, id: OpId) -> Vec<Violation> {
    let g = &h.ops[id];
    let done = g.complete.unwrap_or(u64::MAX);
    let mut out = Vec::new();
    let mut bad = |what: String| {
        out.push(Violation {
            name: g.name.clone(),
            what,
            op: Some(id),
        })
    };
    let acked_before: Vec<&Op> = h
        .on(&g.name)
        .filter(|p| p.acked_version().is_some() && p.complete.is_some_and(|c| c < g.invoke))
        .collect();
    match &g.res {
        Res::NoSuchFile => {
            if let Some(q) = surviving_ack(h, &g.name, g.invoke, done) {
                bad(format!(
                    "no such file, but op {} was acknowledged as version {} and no delete can follow it",
                    q.id,
                    q.acked_version().unwrap_or(0)
                ));
            }
        }
        Res::Read(r) => check_version(h, g, r, true, &acked_before, &mut bad),
        Res::Versions(rs) => {
            if rs.is_empty() {
                bad("get-versions returned no version".into());
            }
            for w in rs.windows(2) {
                if w[0].version <= w[1].version {
                    bad(format!(
                        "get-versions not strictly newest first: {} then {}",
                        w[0].version, w[1].version
                    ));
                }
            }
            for (i, r) in rs.iter().enumerate() {
                check_version(h, g, r, i == 0, &acked_before, &mut bad);
            }
        }
        _ => {}
    }
    out
}

/// An acknowledged put of `name`, complete before `invoke`, that no delete invoked
/// before `done` can have followed: while there is one, the name must exist. Times are
/// in ms, so ties count as overlaps (a violation must be certain).
pub fn surviving_ack<'h>(h: &'h History, name: &str, invoke: u64, done: u64) -> Option<&'h Op> {
    h.on(name)
        .filter(|q| q.acked_version().is_some() && q.complete.is_some_and(|c| c < invoke))
        .find(|q| {
            !h.on(name).any(|d| {
                d.kind == Kind::Delete
                    && d.invoke <= done
                    && d.complete.is_none_or(|c| c >= q.invoke)
                    && !matches!(d.res, Res::NoSuchFile)
            })
        })
}

/// One returned version: its bytes are some put's, that put could have been seen, its
/// acknowledged version is this one, and (for the newest) it is not older than what was
/// acknowledged before the read, nor from before an acknowledged delete.
fn check_version(
    h: &History,
    g: &Op,
    r: &Read,
    newest: bool,
    acked_before: &[&Op],
    bad: &mut impl FnMut(String),
) {
    let done = g.complete.unwrap_or(u64::MAX);
    let Some(pid) = r.from else {
        bad(format!(
            "version {} ({} bytes) is no put's bytes",
            r.version, r.len
        ));
        return;
    };
    let p = &h.ops[pid];
    if p.name != g.name {
        bad(format!(
            "version {} holds the bytes of {} (op {pid})",
            r.version, p.name
        ));
        return;
    }
    if !r.intact {
        bad(format!(
            "version {} is op {pid}'s but its {} bytes differ from the {} put",
            r.version, r.len, p.size
        ));
    }
    if p.invoke > done {
        bad(format!(
            "version {} comes from op {pid}, invoked after the read",
            r.version
        ));
    }
    if let Some(v) = p.acked_version() {
        if v != r.version {
            bad(format!(
                "op {pid} was acknowledged as version {v}, read back as version {}",
                r.version
            ));
        }
    }
    if !newest {
        return;
    }
    if let Some(q) = acked_before
        .iter()
        .filter(|q| q.acked_version() > Some(r.version))
        .max_by_key(|q| q.acked_version())
    {
        bad(format!(
            "stale read: version {} although op {} was acknowledged as version {} before the read",
            r.version,
            q.id,
            q.acked_version().unwrap_or(0)
        ));
    }
    let deleted_after = h.on(&g.name).find(|d| {
        d.kind == Kind::Delete
            && d.res == Res::Deleted
            && d.complete.is_some_and(|c| c < g.invoke)
            && p.complete.is_some_and(|c| c < d.invoke)
    });
    if let Some(d) = deleted_after {
        bad(format!(
            "version {} (op {pid}) came back after delete op {} was acknowledged",
            r.version, d.id
        ));
    }
}

/// The report of one violation: the seed, the ops on that name and the nemesis events
/// from 10 s before its first op to 10 s after the read.
pub fn report(h: &History, seed: u64, v: &Violation) -> String {
    let mut s = format!(
        "VIOLATION (seed {seed}) on {}: {}\n  history of {}:\n",
        v.name, v.what, v.name
    );
    let ops: Vec<&Op> = h.on(&v.name).collect();
    for op in &ops {
        s.push_str(&format!("    {}\n", describe(op)));
    }
    let from = ops.first().map_or(0, |o| o.invoke).saturating_sub(10_000);
    let to =
        v.op.and_then(|id| h.ops[id].complete)
            .unwrap_or(u64::MAX)
            .saturating_add(10_000);
    s.push_str("  nemesis around it:\n");
    for e in h.nemesis.iter().filter(|e| e.at >= from && e.at <= to) {
        s.push_str(&format!("    [{:.3}s] {}\n", e.at as f64 / 1000.0, e.what));
    }
    s
}

/// Replica state of every stored name, from the `store` answers of the live nodes.
#[derive(Debug, Default)]
pub struct Replicas {
    /// name -> (latest live version, nodes holding it).
    pub latest: BTreeMap<String, (u64, BTreeSet<String>)>,
}

impl Replicas {
    /// Builds it from (node, `store` JSON) pairs. A version at or below the highest
    /// tombstone any holder reports is deleted.
    pub fn from_stores(stores: &[(String, serde_json::Value)]) -> Replicas {
        let mut tomb: BTreeMap<String, u64> = BTreeMap::new();
        let mut held: BTreeMap<String, Vec<(String, Vec<u64>)>> = BTreeMap::new();
        for (node, v) in stores {
            for h in v.as_array().into_iter().flatten() {
                let Some(name) = h["name"].as_str() else {
                    continue;
                };
                let t = h["tombstone"].as_u64().unwrap_or(0);
                let e = tomb.entry(name.to_string()).or_default();
                *e = (*e).max(t);
                let versions = h["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_u64())
                    .collect();
                held.entry(name.to_string())
                    .or_default()
                    .push((node.clone(), versions));
            }
        }
        let mut latest = BTreeMap::new();
        for (name, holders) in held {
            let t = tomb.get(&name).copied().unwrap_or(0);
            let Some(top) = holders
                .iter()
                .flat_map(|(_, vs)| vs.iter().copied())
                .filter(|v| *v > t)
                .max()
            else {
                continue;
            };
            let nodes = holders
                .iter()
                .filter(|(_, vs)| vs.contains(&top))
                .map(|(n, _)| n.clone())
                .collect();
            latest.insert(name, (top, nodes));
        }
        Replicas { latest }
    }

    /// Names (but those in `skip`) whose latest version has fewer than `want` holders.
    pub fn under(&self, want: usize, skip: &BTreeSet<String>) -> Vec<(&String, usize)> {
        self.latest
            .iter()
            .filter(|(n, _)| !skip.contains(*n))
            .filter(|(_, (_, hs))| hs.len() < want)
            .map(|(n, (_, hs))| (n, hs.len()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn put(h: &mut History, name: &str, res: Res) -> OpId {
        let id = h.invoke(0, Kind::Put, name, "n", 300);
        h.complete(id, res);
        id
    }

    fn read(h: &mut History, name: &str, seed: u64, version: u64, bytes: Option<Vec<u8>>) -> OpId {
        let id = h.invoke(1, Kind::Get, name, "n", 0);
        let res = match bytes {
            Some(b) => Res::Read(classify(h, seed, version, &b)),
            None => Res::NoSuchFile,
        };
        h.complete(id, res);
        id
    }

    fn bytes_of(h: &History, seed: u64, id: OpId) -> Vec<u8> {
        payload(seed, id, &h.ops[id].name, h.ops[id].size)
    }

    #[test]
    fn payloads_are_reproducible_and_distinct() {
        let a = payload(7, 3, "x", 500);
        assert_eq!(a.len(), 500);
        assert_eq!(a, payload(7, 3, "x", 500));
        assert_ne!(a, payload(8, 3, "x", 500));
        assert_eq!(header_op(&a), Some(3));
    }

    #[test]
    fn a_good_history_passes_and_a_stale_or_corrupt_read_does_not() {
        let mut h = History::new(Instant::now());
        let p1 = put(&mut h, "a", Res::Put(1));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let p2 = put(&mut h, "a", Res::Put(2));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b2 = bytes_of(&h, 9, p2);
        let ok = read(&mut h, "a", 9, 2, Some(b2.clone()));
        assert!(check_read(&h, ok).is_empty());
        let b1 = bytes_of(&h, 9, p1);
        let stale = read(&mut h, "a", 9, 1, Some(b1));
        assert!(check_read(&h, stale)[0].what.contains("stale"));
        let mut rotten = b2.clone();
        rotten[100] ^= 1;
        let r = read(&mut h, "a", 9, 2, Some(rotten));
        assert!(check_read(&h, r)[0].what.contains("differ"));
        let wrong_version = read(&mut h, "a", 9, 3, Some(b2));
        assert!(check_read(&h, wrong_version)[0]
            .what
            .contains("acknowledged as version 2"));
        let lost = read(&mut h, "a", 9, 0, None);
        assert!(check_read(&h, lost)[0].what.contains("no such file"));
        let report = report(&h, 9, &check_read(&h, lost)[0]);
        assert!(report.contains("seed 9") && report.contains(&format!("op {:>6}", p1)));
    }

    #[test]
    fn deletes_cover_missing_files_and_forbid_resurrection() {
        let mut h = History::new(Instant::now());
        let p = put(&mut h, "a", Res::Put(1));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let d = h.invoke(0, Kind::Delete, "a", "n", 0);
        let gone = read(&mut h, "a", 1, 0, None);
        assert!(
            check_read(&h, gone).is_empty(),
            "a delete in flight may have happened"
        );
        h.complete(d, Res::Deleted);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = bytes_of(&h, 1, p);
        let back = read(&mut h, "a", 1, 1, Some(b));
        assert!(check_read(&h, back)[0].what.contains("came back"));
    }

    #[test]
    fn indeterminate_puts_may_be_read_and_versions_must_descend() {
        let mut h = History::new(Instant::now());
        let p = put(&mut h, "a", Res::Indeterminate("timeout".into()));
        let b = bytes_of(&h, 4, p);
        let r = read(&mut h, "a", 4, 5, Some(b.clone()));
        assert!(check_read(&h, r).is_empty());
        let id = h.invoke(1, Kind::GetVersions, "a", "n", 0);
        let one = classify(&h, 4, 5, &b);
        h.complete(id, Res::Versions(vec![one.clone(), one]));
        assert!(check_read(&h, id)[0].what.contains("newest first"));
    }

    #[test]
    fn versions_files_parse_and_cut_ones_do_not() {
        let mut f = b"==== a version 2 (3 bytes) ====\nxyz\n".to_vec();
        f.extend_from_slice(b"==== a version 1 (1 bytes) ====\nq\n");
        let v = parse_versions(&f, "a").unwrap();
        assert_eq!(v, vec![(2, b"xyz".to_vec()), (1, b"q".to_vec())]);
        assert!(parse_versions(&f[..f.len() - 2], "a").is_err());
    }

    #[test]
    fn replicas_count_holders_of_the_latest_live_version() {
        let j = |s: &str| serde_json::from_str(s).unwrap();
        let stores = vec![
            (
                "A".to_string(),
                j(
                    r#"[{"name":"x","versions":[2,1],"tombstone":0},{"name":"d","versions":[1],"tombstone":0}]"#,
                ),
            ),
            (
                "B".to_string(),
                j(
                    r#"[{"name":"x","versions":[1],"tombstone":0},{"name":"d","versions":[],"tombstone":1}]"#,
                ),
            ),
        ];
        let r = Replicas::from_stores(&stores);
        assert_eq!(r.latest["x"].0, 2);
        assert_eq!(r.latest["x"].1.len(), 1);
        assert!(
            !r.latest.contains_key("d"),
            "deleted names are not stored names"
        );
        assert_eq!(r.under(2, &BTreeSet::new()).len(), 1);
        assert!(r.under(2, &["x".to_string()].into()).is_empty());
    }
}
