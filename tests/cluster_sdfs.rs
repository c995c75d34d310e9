//! SDFS on a real 8-node loopback cluster (the built binary, fast failure-detector
//! timings): put/get byte for byte, ls, versions, concurrent puts, name escapes, bit rot,
//! delete, kill -9 of three holders with re-replication, and a writer killed mid-put.
//! One cluster runs the steps in order. `sdfs_bench` (ignored) is the benchmark.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{seeded_bytes, Cluster, Timings};
use serde_json::Value;

const NAME: &str = "data/file.bin";

fn write(dir: &Path, file: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(file);
    fs::write(&p, bytes).unwrap();
    p
}

fn holders(v: &Value) -> Vec<String> {
    let mut h: Vec<String> = v["holders"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    h.sort();
    h
}

/// Splits a get-versions file into (version, bytes), checking every delimiter line.
fn parse_versions(mut s: &[u8], name: &str) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let nl = s.iter().position(|b| *b == b'\n').expect("delimiter line");
        let header = std::str::from_utf8(&s[..nl]).unwrap();
        let rest = header
            .strip_prefix(&format!("==== {name} version "))
            .and_then(|r| r.strip_suffix(" bytes) ===="))
            .unwrap_or_else(|| panic!("bad delimiter {header:?}"));
        let (v, n) = rest.split_once(" (").unwrap();
        let (v, n): (u64, usize) = (v.parse().unwrap(), n.parse().unwrap());
        let data = s[nl + 1..nl + 1 + n].to_vec();
        assert_eq!(s[nl + 1 + n], b'\n', "newline after version {v}");
        out.push((v, data));
        s = &s[nl + 2 + n..];
    }
    out
}

#[test]
fn sdfs_on_a_real_cluster() {
    let t = Timings::fast();
    let mut c = Cluster::start("sdfs", 8, &t, "");
    let all: Vec<String> = c.nodes.iter().map(|(_, a)| a.clone()).collect();
    c.wait_views(&all, Duration::from_secs(120), "formation", |v| {
        v.len() == 8 && v.iter().all(|(_, _, s)| s == "alive")
    });
    let work = c.dir.join("work");
    fs::create_dir_all(&work).unwrap();
    let a = |n: &str| c.addr(n);

    // Put on one node, get from another, byte for byte.
    let v1 = seeded_bytes(1, 3 * 1024 * 1024 + 123);
    let src = write(&work, "v1.bin", &v1);
    let r = c
        .sdfs(&a("H1"), &format!("put {} {NAME}", src.display()))
        .unwrap();
    assert_eq!(
        (r["name"].as_str(), r["version"].as_u64()),
        (Some(NAME), Some(1)),
        "{r}"
    );
    let out = work.join("got1.bin");
    let r = c
        .sdfs(&a("H5"), &format!("get {NAME} {}", out.display()))
        .unwrap();
    assert_eq!(r["version"], 1);
    assert!(fs::read(&out).unwrap() == v1, "get returned other bytes");

    // ls: four holders as host:port, with the version.
    let r = c.sdfs(&a("H3"), &format!("ls {NAME}")).unwrap();
    assert_eq!(r["version"], 1);
    let hs = holders(&r);
    assert_eq!(hs.len(), 4, "{r}");
    assert!(hs.iter().all(|h| all.contains(h)), "{r}");

    // A second put is version 2; get-versions returns both, newest first, delimited.
    let v2 = seeded_bytes(2, 1024 * 1024 + 7);
    let src2 = write(&work, "v2.bin", &v2);
    let r = c
        .sdfs(&a("H2"), &format!("put {} {NAME}", src2.display()))
        .unwrap();
    assert_eq!(r["version"], 2);
    let out = work.join("versions.bin");
    let r = c
        .sdfs(
            &a("H6"),
            &format!("get-versions {NAME} 2 {}", out.display()),
        )
        .unwrap();
    assert_eq!(r["versions"], serde_json::json!([2, 1]));
    let got = parse_versions(&fs::read(&out).unwrap(), NAME);
    assert_eq!(got.len(), 2);
    assert!(
        got[0] == (2, v2.clone()) && got[1] == (1, v1.clone()),
        "versions differ"
    );

    // Concurrent puts to one name from four nodes: distinct, ordered versions.
    let conc: Vec<(String, PathBuf)> = (0..4u64)
        .map(|i| {
            let p = write(&work, &format!("c{i}.bin"), &seeded_bytes(100 + i, 200_000));
            (a(&format!("H{}", i + 1)), p)
        })
        .collect();
    let versions: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = conc
            .iter()
            .map(|(node, p)| {
                let c = &c;
                s.spawn(move || {
                    let r = c
                        .sdfs(node, &format!("put {} data/conc", p.display()))
                        .unwrap();
                    r["version"].as_u64().unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: BTreeSet<u64> = versions.iter().copied().collect();
    assert_eq!(distinct, (1..=4).collect(), "versions {versions:?}");
    let latest = conc[versions.iter().position(|v| *v == 4).unwrap()]
        .1
        .clone();
    let out = work.join("conc.bin");
    let r = c
        .sdfs(&a("H7"), &format!("get data/conc {}", out.display()))
        .unwrap();
    assert_eq!(r["version"], 4);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&latest).unwrap());

    // Names that try to escape are refused, and nothing is written.
    for bad in ["../x", "/etc/passwd", "a/../../x", "\"\""] {
        let e = c
            .sdfs(&a("H1"), &format!("put {} {bad}", src.display()))
            .unwrap_err();
        assert!(
            e.contains("bad SDFS name") && !e.contains('\n'),
            "{bad}: {e}"
        );
        let e = c
            .sdfs(
                &a("H1"),
                &format!("get {bad} {}", work.join("esc").display()),
            )
            .unwrap_err();
        assert!(e.contains("bad SDFS name"), "{bad}: {e}");
    }
    assert!(!work.join("esc").exists());
    assert!(!c.dir.join("x").exists() && !c.dir.join("data").join("x").exists());

    // ls-prefix and store.
    let r = c.sdfs(&a("H8"), "ls-prefix data/").unwrap();
    let names: Vec<&str> = r
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(names, vec!["data/conc", NAME], "{r}");
    let holder = c.name_of(&hs[0]);
    let r = c.sdfs(&hs[0], "store").unwrap();
    assert!(
        r.as_array().unwrap().iter().any(|h| h["name"] == NAME),
        "{holder}: {r}"
    );

    // Bit rot: flip a byte of one holder's v2; a get on that node (it reads its own copy
    // first) returns the right bytes, and the copy is repaired from a good one.
    let bad_node = holder;
    let bad_file = c.version_file(&bad_node, NAME, 2).expect("holder has v2");
    let good_node = c.name_of(&hs[1]);
    let good_file = c.version_file(&good_node, NAME, 2).unwrap();
    dml_actors::sdfs::store::flip_byte(&bad_file, dml_actors::sdfs::store::FIRST_DATA_OFFSET + 10)
        .unwrap();
    assert_ne!(fs::read(&bad_file).unwrap(), fs::read(&good_file).unwrap());
    let out = work.join("rot.bin");
    let r = c
        .sdfs(&hs[0], &format!("get {NAME} {}", out.display()))
        .unwrap();
    assert_eq!(r["version"], 2);
    assert!(fs::read(&out).unwrap() == v2, "bit rot reached the reader");
    common::wait_for(Duration::from_secs(15), "repair of the rotten copy", || {
        let now = c
            .version_file(&bad_node, NAME, 2)
            .and_then(|p| fs::read(p).ok())?;
        (now == fs::read(&good_file).ok()?).then_some(())
    });
    assert!(
        c.log(&bad_node).contains("checksum mismatch"),
        "mismatch not logged"
    );

    // Delete, then get: a clear error.
    let r = c.sdfs(&a("H2"), "delete data/conc").unwrap();
    assert_eq!(r["deleted"], true);
    let e = c
        .sdfs(
            &a("H3"),
            &format!("get data/conc {}", work.join("gone").display()),
        )
        .unwrap_err();
    assert!(e.contains("no such file"), "{e}");
    assert!(!work.join("gone").exists());

    // kill -9 three of the four holders at once: get returns v2 byte for byte, and the
    // file is back on four live nodes.
    let r = c.sdfs(&a("H1"), &format!("ls {NAME}")).unwrap();
    let hs = holders(&r);
    assert_eq!(hs.len(), 4);
    let victims: Vec<String> = hs[..3].to_vec();
    for v in &victims {
        let n = c.name_of(v);
        c.kill9(&n);
    }
    let live: Vec<String> = all
        .iter()
        .filter(|x| !victims.contains(x))
        .cloned()
        .collect();
    let out = work.join("after-kill.bin");
    let r = c
        .sdfs(&live[0], &format!("get {NAME} {}", out.display()))
        .unwrap();
    assert_eq!(r["version"], 2);
    assert!(fs::read(&out).unwrap() == v2, "acknowledged bytes lost");
    let (_, took) = common::wait_for(
        Duration::from_secs(30),
        "re-replication to 4 live nodes",
        || {
            let r = c.sdfs(&live[1], &format!("ls {NAME}")).ok()?;
            let h = holders(&r);
            (r["version"] == 2 && h.len() == 4 && h.iter().all(|x| live.contains(x))).then_some(())
        },
    );
    eprintln!("re-replicated onto 4 live nodes {took:?} after the get");
    // The primary logs the time once its check round confirms the copies.
    common::wait_for(
        Duration::from_secs(10),
        "re-replication time in the log",
        || {
            live.iter()
                .any(|x| {
                    c.log(&c.name_of(x))
                        .contains(&format!("re-replication of {NAME} took"))
                })
                .then_some(())
        },
    );

    // A writer killed mid-put: no torn or phantom version; versions stay monotonic.
    let big_a = seeded_bytes(7, 24 * 1024 * 1024);
    let big_b = seeded_bytes(8, 24 * 1024 * 1024);
    let pa = write(&work, "big-a.bin", &big_a);
    let pb = write(&work, "big-b.bin", &big_b);
    let writer = live[2].clone();
    let started = Instant::now();
    c.sdfs(&writer, &format!("put {} data/big", pa.display()))
        .unwrap();
    let put_time = started.elapsed();
    let (writer_name, w2) = (c.name_of(&writer), writer.clone());
    let line = format!("put {} data/big", pb.display());
    let th = std::thread::spawn(move || common::ctl(&w2, common::parse(&line)));
    std::thread::sleep(put_time / 3);
    c.kill9(&writer_name);
    let _ = th.join();
    let rest: Vec<String> = live.iter().filter(|x| **x != writer).cloned().collect();
    let out = work.join("big.bin");
    let check = |c: &Cluster| {
        let r = c
            .sdfs(
                &rest[0],
                // Asked twice into one file: the second replaces the first.
                &format!("get-versions data/big 5 {} --force", out.display()),
            )
            .unwrap();
        let got = parse_versions(&fs::read(&out).unwrap(), "data/big");
        let vs: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert!(vs.windows(2).all(|w| w[0] > w[1]), "not monotonic: {vs:?}");
        assert_eq!(r["versions"], serde_json::json!(vs));
        for (v, bytes) in &got {
            let ok = (*v == 1 && *bytes == big_a) || (*v == 2 && *bytes == big_b);
            assert!(ok, "version {v} is torn or foreign ({} bytes)", bytes.len());
        }
        vs
    };
    let first = check(&c);
    // Once the writer is removed, its unacknowledged version never appears later.
    std::thread::sleep(t.bound() + Duration::from_secs(1));
    let later = check(&c);
    assert!(
        first.iter().all(|v| later.contains(v)),
        "{first:?} then {later:?}"
    );
    eprintln!(
        "writer killed {:?} into a {put_time:?} put; versions then {first:?}, later {later:?}",
        put_time / 3
    );
    for x in &rest {
        let tmp = c.data_dir(&c.name_of(x)).join("sdfs").join("tmp");
        let left = fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "temp files left on {x}");
    }
}

/// Peak RSS growth (MiB) of a set of processes, sampled every 20 ms on a thread.
struct RssWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<f64>,
}

impl RssWatch {
    fn start(pids: Vec<u32>) -> RssWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let base: Vec<u64> = pids
                .iter()
                .map(|p| dml_bench::scale::rss_kb(*p).unwrap_or(0))
                .collect();
            let mut worst = 0u64;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                for (p, b) in pids.iter().zip(&base) {
                    if let Some(now) = dml_bench::scale::rss_kb(*p) {
                        worst = worst.max(now.saturating_sub(*b));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            worst as f64 / 1024.0
        });
        RssWatch { stop, handle }
    }

    fn finish(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// Writes `len` seeded bytes in 16 MiB pieces (a 1 GiB source never sits in memory).
fn write_big(p: &Path, seed: u64, len: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(fs::File::create(p).unwrap());
    let piece = 16 << 20;
    let mut done = 0;
    let mut i = 0;
    while done < len {
        let n = piece.min(len - done);
        f.write_all(&seeded_bytes(seed * 1000 + i, n)).unwrap();
        done += n;
        i += 1;
    }
    f.flush().unwrap();
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = fa.read(&mut ba).unwrap();
        let mut nb = 0;
        while nb < na {
            let k = fb.read(&mut bb[nb..na]).unwrap();
            if k == 0 {
                return false;
            }
            nb += k;
        }
        if na == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
        if ba[..na] != bb[..na] {
            return false;
        }
    }
}

/// The SDFS benchmark (not a timed test). Release build:
/// `cargo test --release --test cluster_sdfs -- --ignored --nocapture sdfs_bench`.
/// Sizes in MiB from `DML_BENCH_SIZES` (default `100,1024`); transfers from
/// `DML_BENCH_TRANSFERS` (default `native,scp`). Prints one `BENCH` line per result.
#[test]
#[ignore]
fn sdfs_bench() {
    let sizes: Vec<usize> = std::env::var("DML_BENCH_SIZES")
        .unwrap_or_else(|_| "100,1024".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let transfers = std::env::var("DML_BENCH_TRANSFERS").unwrap_or_else(|_| "native,scp".into());
    let work = std::env::temp_dir().join(format!("dml-bench-sdfs-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    for transfer in transfers.split(',') {
        let (sshd, extra) = if transfer == "scp" {
            let sshd = common::start_sshd(&work);
            common::set_ssh_password("bench-password-1");
            let creds = work.join("password.txt");
            fs::write(&creds, format!("{},bench-password-1\n", common::SSH_USER)).unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&creds, fs::Permissions::from_mode(0o600)).unwrap();
            let extra = format!(
                "[sdfs]\ntransfer = \"scp\"\ncredentials = \"{}\"\nssh_port = {}\n",
                creds.display(),
                sshd.port
            );
            (Some(sshd), extra)
        } else {
            (None, String::new())
        };
        let mut c = Cluster::start(&format!("bench-{transfer}"), 10, &Timings::fast(), &extra);
        let all: Vec<String> = c.nodes.iter().map(|(_, a)| a.clone()).collect();
        c.wait_views(&all, Duration::from_secs(120), "formation", |v| {
            v.len() == 10
        });
        let pids: Vec<u32> = c.nodes.iter().map(|(n, _)| c.pid(n)).collect();
        for (i, mb) in sizes.iter().enumerate() {
            let len = mb << 20;
            let src = work.join(format!("src-{mb}.bin"));
            if !src.exists() {
                write_big(&src, i as u64 + 1, len);
            }
            let name = format!("bench/{mb}");
            let watch = RssWatch::start(pids.clone());
            let t0 = Instant::now();
            c.sdfs(&all[0], &format!("put {} {name}", src.display()))
                .unwrap();
            let put = t0.elapsed().as_secs_f64();
            let rss_put = watch.finish();
            let out = work.join("out.bin");
            let watch = RssWatch::start(pids.clone());
            let t0 = Instant::now();
            c.sdfs(&all[5], &format!("get {name} {}", out.display()))
                .unwrap();
            let get = t0.elapsed().as_secs_f64();
            let rss_get = watch.finish();
            assert!(same_file(&src, &out), "{name}: get returned other bytes");
            let _ = fs::remove_file(&out);
            let mbs = |secs: f64| len as f64 / 1e6 / secs;
            eprintln!(
                "BENCH transfer={transfer} size={mb}MiB put={put:.2}s ({:.0} MB/s) get={get:.2}s ({:.0} MB/s) \
                 max_node_rss_growth put={rss_put:.1}MiB get={rss_get:.1}MiB",
                mbs(put),
                mbs(get)
            );
        }
        // Bulk transfers run on their own connections: with the shortest failure-detector
        // timings, not one node was suspected while gigabytes moved.
        let suspicions: usize = c
            .nodes
            .iter()
            .map(|(n, _)| {
                c.log(n)
                    .lines()
                    .filter(|l| l.contains("event=suspected"))
                    .count()
            })
            .sum();
        eprintln!("BENCH transfer={transfer} suspicions during transfers: {suspicions}");
        assert_eq!(suspicions, 0, "a bulk transfer caused a false suspicion");
        // Re-replication of the largest file after one holder (not the primary) is killed.
        let mb = sizes.iter().max().copied().unwrap_or(0);
        let name = format!("bench/{mb}");
        let r = c.sdfs(&all[0], &format!("ls {name}")).unwrap();
        let hs = holders(&r);
        let victim = hs
            .iter()
            .find(|h| **h != all[0] && **h != all[5])
            .unwrap()
            .clone();
        let victim_name = c.name_of(&victim);
        let killed = common::wall_ms();
        c.kill9(&victim_name);
        let live: Vec<String> = all.iter().filter(|a| **a != victim).cloned().collect();
        let needle = format!("re-replication of {name} took");
        let (line, _) = common::wait_for(Duration::from_secs(300), "re-replication", || {
            live.iter().find_map(|a| {
                c.log(&c.name_of(a))
                    .lines()
                    .find(|l| l.contains(&needle))
                    .map(String::from)
            })
        });
        let done_wall: u64 = line
            .split("wall=")
            .nth(1)
            .and_then(|s| s.split(|ch: char| !ch.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let took_ms: String = line
            .split(" took ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap_or("?")
            .to_string();
        let r = c.sdfs(&live[0], &format!("ls {name}")).unwrap();
        assert_eq!(holders(&r).len(), 4);
        eprintln!(
            "BENCH transfer={transfer} rereplicate={mb}MiB copy_after_detection={took_ms}ms \
             kill_to_restored={}ms",
            done_wall.saturating_sub(killed)
        );
        drop(c);
        drop(sshd);
    }
    let _ = fs::remove_dir_all(&work);
}
