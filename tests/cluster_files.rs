//! The node never opens an operator's path (issue 14, finding 3) and SDFS names stay
//! honest (finding 10), on a real 4-node loopback cluster driven by `dml ctl` processes
//! run from a directory of their own: `put /proc/self/cmdline` stores the ctl's bytes,
//! not the node's; a get lands where the ctl stands, never in a node's working directory;
//! an existing file is replaced only with --force; a get that fails or is interrupted
//! midway leaves no temp file; files and a 1,000-file directory go round trip byte for
//! byte; bidi names are refused with a short error; operators cannot write the jobs
//! layer's names.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{seeded_bytes, Cluster, Timings};
use dml_actors::control::{Command as Cmd, Request};

/// `dml ctl --node ADDR ARGS..` run in `cwd`.
fn ctl_cmd(c: &Cluster, cwd: &Path, addr: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(common::dml_bin());
    cmd.current_dir(cwd)
        .args(["ctl", "--config"])
        .arg(&c.config)
        .args(["--node", addr, "--json"])
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn ctl(c: &Cluster, cwd: &Path, addr: &str, args: &[&str]) -> Output {
    ctl_cmd(c, cwd, addr, args).output().expect("run dml ctl")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

fn ok(o: &Output, what: &str) -> serde_json::Value {
    assert!(o.status.success(), "{what}: {}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A refusal: exit 1 with one short `dml: ...` line.
fn refused(o: &Output, what: &str) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what} was not refused: {}",
        stderr(o)
    );
    let e = stderr(o);
    assert!(!e.contains('\n') && e.starts_with("dml: "), "{what}: {e:?}");
    e
}

/// Temp files of gets (`.NAME.dml-*.tmp`) in `dir`.
fn temps(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".dml-") && n.ends_with(".tmp"))
        .collect()
}

fn node_cwd(c: &Cluster, name: &str) -> PathBuf {
    fs::read_link(format!("/proc/{}/cwd", c.pid(name))).expect("a node's cwd")
}

#[test]
fn operators_files_stay_on_the_operators_side() {
    let t = Timings::fast();
    let c = Cluster::start("files", 4, &t, "");
    let all: Vec<String> = c.nodes.iter().map(|(_, a)| a.clone()).collect();
    c.wait_views(&all, Duration::from_secs(120), "formation", |v| {
        v.len() == 4 && v.iter().all(|(_, _, s)| s == "alive")
    });
    // The operator's directory is neither the nodes' working directory nor the test's.
    let op = c.dir.join("operator");
    fs::create_dir_all(&op).unwrap();
    let (h1, h3) = (c.addr("H1"), c.addr("H3"));
    let cwds: Vec<PathBuf> = c.nodes.iter().map(|(n, _)| node_cwd(&c, n)).collect();
    assert!(cwds.iter().all(|d| *d != op));

    // 1. `put /proc/self/cmdline` stores the ctl process's command line: the node never
    // opened the path.
    let args = ["put", "/proc/self/cmdline", "probe/cmdline"];
    let r = ok(&ctl(&c, &op, &h1, &args), "put /proc/self/cmdline");
    assert_eq!(r["version"], 1, "{r}");
    let mut want: Vec<u8> = Vec::new();
    for a in [common::dml_bin(), "ctl", "--config"]
        .into_iter()
        .map(String::from)
        .chain([c.config.display().to_string()])
        .chain(["--node", &h1, "--json"].map(String::from))
        .chain(args.map(String::from))
    {
        want.extend_from_slice(a.as_bytes());
        want.push(0);
    }
    let node_cmdline = fs::read(format!("/proc/{}/cmdline", c.pid("H1"))).unwrap();
    ok(
        &ctl(&c, &op, &h3, &["get", "probe/cmdline", "cmdline.got"]),
        "get cmdline",
    );
    let stored = fs::read(op.join("cmdline.got")).unwrap();
    assert_ne!(stored, node_cmdline, "the node's command line was stored");
    assert_eq!(
        String::from_utf8_lossy(&stored),
        String::from_utf8_lossy(&want),
        "not the ctl's command line"
    );

    // 2. A get is written where the ctl stands: a relative path and /proc/self/cwd are
    // the ctl's, and nothing appears in any node's working directory.
    for dest in ["planted.txt", "/proc/self/cwd/planted2.txt"] {
        ok(&ctl(&c, &op, &h1, &["get", "probe/cmdline", dest]), dest);
    }
    for f in ["planted.txt", "planted2.txt"] {
        assert_eq!(fs::read(op.join(f)).unwrap(), stored, "{f}");
        for d in &cwds {
            assert!(
                !d.join(f).exists(),
                "{f} was written into a node's cwd {}",
                d.display()
            );
        }
    }

    // 3. An existing file is kept unless --force; the error names it.
    let keep = op.join("keep.txt");
    fs::write(&keep, b"mine").unwrap();
    let e = refused(
        &ctl(&c, &op, &h1, &["get", "probe/cmdline", "keep.txt"]),
        "get onto an existing file",
    );
    assert!(
        e.contains(&keep.display().to_string()) && e.contains("--force"),
        "{e}"
    );
    assert_eq!(fs::read(&keep).unwrap(), b"mine");
    let e = refused(
        &ctl(
            &c,
            &op,
            &h1,
            &["get-versions", "probe/cmdline", "1", "keep.txt"],
        ),
        "get-versions onto an existing file",
    );
    assert!(e.contains("--force"), "{e}");
    assert_eq!(fs::read(&keep).unwrap(), b"mine");
    ok(
        &ctl(
            &c,
            &op,
            &h1,
            &["get", "probe/cmdline", "keep.txt", "--force"],
        ),
        "get --force",
    );
    assert_eq!(fs::read(&keep).unwrap(), stored);
    assert!(temps(&op).is_empty(), "{:?}", temps(&op));

    // 4. Round trips through ctl, byte for byte: a multi-MiB file (several chunks, not
    // a multiple of the chunk size) and a directory of 1,000 files.
    let big = seeded_bytes(14, 9 * 1024 * 1024 + 321);
    fs::write(op.join("big.bin"), &big).unwrap();
    ok(
        &ctl(&c, &op, &h1, &["put", "big.bin", "data/big"]),
        "put big",
    );
    ok(
        &ctl(&c, &op, &h3, &["get", "data/big", "big.got"]),
        "get big",
    );
    assert!(
        fs::read(op.join("big.got")).unwrap() == big,
        "big file changed"
    );
    let tree = op.join("tree");
    let mut files = Vec::new();
    for i in 0..1000u64 {
        let sub = tree.join(format!("d{}", i % 7));
        fs::create_dir_all(&sub).unwrap();
        let bytes = seeded_bytes(1000 + i, (i as usize * 37) % 3000);
        let rel = format!("d{}/f{i:04}", i % 7);
        fs::write(tree.join(&rel), &bytes).unwrap();
        files.push((rel, bytes));
    }
    let started = Instant::now();
    let out = ctl(&c, &op, &h1, &["--timeout", "300", "put", "tree", "tree"]);
    let r = ok(&out, "put a directory");
    assert_eq!(r["files"], 1000, "{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("put 1,000 files through ctl in {:?}", started.elapsed());
    let got = op.join("tree-got");
    fs::create_dir_all(&got).unwrap();
    std::thread::scope(|s| {
        for part in 0..8 {
            let (files, got, via) = (&files, &got, &all[part % all.len()]);
            s.spawn(move || {
                for (rel, bytes) in files.iter().skip(part).step_by(8) {
                    let local = got.join(rel.replace('/', "_"));
                    let req = Request::Get {
                        name: format!("tree/{rel}"),
                        local: local.display().to_string(),
                        force: false,
                    };
                    common::ctl(via, req)
                        .unwrap()
                        .unwrap_or_else(|e| panic!("get tree/{rel}: {e}"));
                    assert!(fs::read(&local).unwrap() == *bytes, "tree/{rel} changed");
                }
            });
        }
    });

    // 5. A get whose local write fails midway (the file-size limit, as on a full disk)
    // fails with one line and leaves no temp file and no destination.
    let out = Command::new("sh")
        .current_dir(&op)
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 2048; exec \"$0\" \"$@\"")
        .arg(common::dml_bin())
        .args(["ctl", "--config"])
        .arg(&c.config)
        .args(["--node", &h1, "get", "data/big", "limited.bin"])
        .output()
        .unwrap();
    let e = refused(&out, "get past the file-size limit");
    assert!(e.contains("limited.bin"), "{e}");
    assert!(!op.join("limited.bin").exists());
    assert!(temps(&op).is_empty(), "temp files left: {:?}", temps(&op));

    // 6. A get that cannot finish (its node stopped) times out, and one interrupted
    // with Ctrl-C ends: neither leaves its temp file.
    c.signal("H3", "-STOP");
    for interrupt in [false, true] {
        let mut child = ctl_cmd(
            &c,
            &op,
            &h3,
            &["--timeout", "3", "get", "data/big", "stuck.bin"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        common::wait_for(Duration::from_secs(10), "the get's temp file", || {
            (!temps(&op).is_empty()).then_some(())
        });
        if interrupt {
            let pid = child.id().to_string();
            assert!(Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .unwrap()
                .success());
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "a get from a stopped node succeeded");
        assert!(
            temps(&op).is_empty(),
            "interrupt={interrupt}: {:?}",
            temps(&op)
        );
        assert!(!op.join("stuck.bin").exists());
    }
    c.signal("H3", "-CONT");

    // 7. Names: bidi overrides and other invisible format characters are refused with
    // a short error; a huge name is not echoed back whole.
    fs::write(op.join("small.txt"), b"x").unwrap();
    for bad in [
        "invoice\u{202E}fdp.exe",
        "a\u{200B}b",
        "\u{FEFF}bom",
        "x\u{2066}y",
    ] {
        let e = refused(&ctl(&c, &op, &h1, &["put", "small.txt", bad]), bad);
        assert!(e.contains("format character"), "{e}");
        assert!(!e.contains(bad), "the bad name was echoed raw: {e}");
    }
    let huge = format!("h/{}", "n".repeat(4 << 20));
    for req in [
        Request::Put {
            local: op.join("small.txt").display().to_string(),
            name: huge.clone(),
        },
        Request::Node(Cmd::Delete { name: huge.clone() }),
    ] {
        let e = common::ctl(&h1, req).unwrap().unwrap_err();
        assert!(e.len() < 500, "a {}-byte error for a 4 MiB name", e.len());
    }

    // 8. The jobs layer's names: an operator may not put or delete them, may read them.
    for args in [
        &["put", "small.txt", "results/1-1/x.json"][..],
        &["put", "small.txt", "jobs/18446744073709551614-1.manifest"],
        &["delete", "jobs/1-1.manifest"],
    ] {
        let e = refused(&ctl(&c, &op, &h1, args), args[1]);
        assert!(e.contains("jobs layer"), "{e}");
    }
    let o = ctl(&c, &op, &h1, &["ls-prefix", "jobs/"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = refused(
        &ctl(&c, &op, &h1, &["get", "results/1-1/x.json", "r.json"]),
        "get",
    );
    assert!(
        e.contains("no such file"),
        "reading results/ was refused: {e}"
    );
    assert!(temps(&op).is_empty());
}
