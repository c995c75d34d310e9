//! Issue 14's attacks on a real 5-node loopback cluster, through an on-path injector
//! that knows no key: a captured `delete` replayed or injected, a flipped byte, a forged
//! `Leave`, a membership `Ping` from a tool connection, a read-only operator deleting,
//! wrong or missing credentials, and a handshake flood. Each must have no effect (the
//! file stays readable, the node stays a member, no stranger joins), close the attacked
//! connection, and leave `dml ctl` working with a bounded log.

mod common;

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command as Proc, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{dml_bin, wait_for, Cluster, Timings, SECRET};
use dml_actors::control::Command;
use dml_actors::membership::Msg;
use dml_actors::net::body::Body;
use dml_actors::net::transport::{Client, TransportError};
use dml_actors::net::wire::{encode_frame, Envelope};
use dml_cluster::injector::{frames, Injector};

/// `dml ctl` with the cluster's config and extra flags.
fn ctl(config: &Path, flags: &[&str], words: &[&str]) -> Output {
    Proc::new(dml_bin())
        .arg("ctl")
        .arg("--config")
        .arg(config)
        .args(["--timeout", "20"])
        .args(flags)
        .args(words)
        .output()
        .expect("run dml ctl")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

fn admin() -> dml_actors::net::wire::Credential {
    dml_cluster::test_operator(SECRET, "admin").unwrap()
}

/// Runs `f` on a tokio runtime of its own (the transport client is async).
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Whether SDFS still lists `name` on `addr`, at `version`.
fn version_of(c: &Cluster, addr: &str, name: &str) -> Option<u64> {
    c.sdfs(addr, &format!("ls {name}")).ok()?["version"].as_u64()
}

#[test]
fn on_path_attacks_have_no_effect() {
    let t = Timings::fast();
    let c = Cluster::start("security", 5, &t, "");
    let all: Vec<String> = c.nodes.iter().map(|(_, a)| a.clone()).collect();
    c.wait_views(&all, Duration::from_secs(120), "formation", |v| {
        v.len() == 5 && v.iter().all(|(_, _, s)| s == "alive")
    });
    let h1 = c.addr("H1");
    let h2 = c.addr("H2");
    let work = c.dir.join("work");
    fs::create_dir_all(&work).unwrap();
    let src = work.join("v.txt");
    fs::write(&src, b"precious bytes").unwrap();
    for name in ["keep.txt", "victim.txt"] {
        c.sdfs(&h1, &format!("put {} {name}", src.display()))
            .unwrap();
    }

    // 1. The operator deletes victim.txt through the proxy; the attacker records it.
    let proxy = Injector::start(&h1).unwrap();
    let out = ctl(
        &c.config,
        &["--node", proxy.addr()],
        &["delete", "victim.txt"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let recorded = proxy.from_client(0);
    let fr = frames(&recorded);
    assert_eq!(
        fr.len(),
        3,
        "hello, finish, sealed delete: {} frames",
        fr.len()
    );
    let delete_frame = fr[2].clone();
    // The command travels encrypted: the name is not in the recorded bytes.
    assert!(!recorded.windows(10).any(|w| w == b"victim.txt"));
    // The file comes back (a new version) before the attacks.
    c.sdfs(&h1, &format!("put {} victim.txt", src.display()))
        .unwrap();
    let v_before = version_of(&c, &h2, "victim.txt").expect("victim.txt is back");

    // 2. Replay of the whole session on a fresh connection: the node drew a new nonce
    // and key, the replayed proof fails, the connection closes.
    assert!(proxy
        .replay(&h1, &recorded, Duration::from_secs(10))
        .unwrap());

    // 3. The captured delete injected into a live operator connection: the node closes
    // that connection, and the file is untouched.
    block_on(async {
        let mut client = Client::<Body>::connect(proxy.addr(), &admin(), Duration::from_secs(5))
            .await
            .unwrap();
        let conn = proxy.connections() - 1;
        proxy.inject(conn, &delete_frame).unwrap();
        let res = client
            .request(Body::Command(Command::ListSelf), Duration::from_secs(10))
            .await;
        assert!(res.is_err(), "the connection survived an injected frame");
        wait_for(Duration::from_secs(10), "node closes", || {
            proxy.closed_by_node(conn).then_some(())
        });
    });

    // 4. A forged Leave (plaintext, as an attacker without keys must write it) injected
    // into a list_self connection.
    block_on(async {
        let mut client = Client::<Body>::connect(proxy.addr(), &admin(), Duration::from_secs(5))
            .await
            .unwrap();
        let conn = proxy.connections() - 1;
        let leave = encode_frame(&Envelope::request(1, Body::Command(Command::Leave))).unwrap();
        proxy.inject(conn, &leave).unwrap();
        let res = client
            .request(Body::Command(Command::ListSelf), Duration::from_secs(10))
            .await;
        assert!(res.is_err(), "the connection survived a forged frame");
    });

    // 5. One flipped bit in an operator's delete of keep.txt (the last byte of its sealed
    // frame, the third of the session): refused, nothing deleted.
    proxy.flip_client_frame_end(2);
    let out = ctl(
        &c.config,
        &["--node", proxy.addr()],
        &["delete", "keep.txt"],
    );
    assert!(!out.status.success(), "a tampered delete succeeded");

    // 6. A membership Ping over a tool connection: refused, no new member.
    block_on(async {
        let mut client = Client::<Body>::connect(&h1, &admin(), Duration::from_secs(5))
            .await
            .unwrap();
        let ping = Body::Membership(Msg::Ping {
            seq: 1,
            incarnation: 1,
            joined: 1,
            updates: Vec::new(),
        });
        let res = client.request(ping, Duration::from_secs(10)).await;
        assert!(
            matches!(res, Err(TransportError::PeerClosed | TransportError::Io(_))),
            "{res:?}"
        );
    });

    // 7. A read-only operator may list but not delete.
    let viewer = c.dir.join("viewer.credential");
    let flags = [
        "--credential",
        viewer.to_str().unwrap(),
        "--node",
        h1.as_str(),
    ];
    let out = ctl(&c.config, &flags, &["ls", "keep.txt"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ctl(&c.config, &flags, &["delete", "keep.txt"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("read-only"), "{}", stderr(&out));

    // 8. Wrong, missing and absent credentials: one clear line each, exit code non-zero.
    use std::os::unix::fs::PermissionsExt;
    let private =
        |p: &Path, mode: u32| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    let bad = work.join("bad.credential");
    fs::write(&bad, "admin 00112233445566778899aabbccddeeff00112233\n").unwrap();
    private(&bad, 0o600);
    // The admin's own credential, readable by others on the host: refused before use.
    let open = work.join("open.credential");
    fs::copy(c.dir.join("admin.credential"), &open).unwrap();
    private(&open, 0o644);
    let no_ctl = c.dir.join("no-ctl.toml");
    let text = fs::read_to_string(&c.config).unwrap();
    fs::write(
        &no_ctl,
        text.replace("credential_file = \"admin.credential\"", ""),
    )
    .unwrap();
    for (config, flags, expect) in [
        (
            c.config.as_path(),
            vec!["--credential", bad.to_str().unwrap()],
            "unknown operator or wrong key",
        ),
        (
            c.config.as_path(),
            vec!["--credential", "/nonexistent/cred"],
            "cannot read",
        ),
        (no_ctl.as_path(), vec![], "operator credential"),
        (
            c.config.as_path(),
            vec!["--credential", open.to_str().unwrap()],
            "readable by group or others",
        ),
    ] {
        let mut f = flags.clone();
        f.extend(["--node", h1.as_str()]);
        let out = ctl(config, &f, &["list_mem"]);
        let err = stderr(&out);
        assert!(!out.status.success());
        assert!(err.contains(expect), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    // Nothing above had an effect: both files readable at their versions, H1 a member
    // everywhere, no stranger in any view.
    assert_eq!(version_of(&c, &h2, "victim.txt"), Some(v_before));
    assert!(version_of(&c, &h2, "keep.txt").is_some());
    let got = work.join("got.txt");
    c.sdfs(&h2, &format!("get keep.txt {}", got.display()))
        .unwrap();
    assert_eq!(fs::read(&got).unwrap(), b"precious bytes");
    std::thread::sleep(t.bound() * 2);
    c.wait_views(
        &all,
        Duration::from_secs(30),
        "no effect on membership",
        |v| v.len() == 5 && v.iter().all(|(a, _, s)| s == "alive" && all.contains(a)),
    );

    // 9. A handshake flood: thousands of connections that say nothing or leave at once.
    let log_before = fs::metadata(c.log_path("H1")).unwrap().len();
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let flooders: Vec<_> = (0..2)
        .map(|k| {
            let (stop, opened, target) = (stop.clone(), opened.clone(), h1.clone());
            std::thread::spawn(move || {
                let mut held = std::collections::VecDeque::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut s) = TcpStream::connect(&target) {
                        opened.fetch_add(1, Ordering::Relaxed);
                        if k == 0 {
                            held.push_back(s);
                            if held.len() > 300 {
                                held.pop_front();
                            }
                        } else {
                            let _ = s.write_all(&[0, 0, 0, 9, 1, 2]);
                        }
                    }
                }
            })
        })
        .collect();
    wait_for(Duration::from_secs(120), "the flood is on", || {
        (opened.load(Ordering::Relaxed) > 1000).then_some(())
    });
    for _ in 0..5 {
        let out = ctl(&c.config, &["--node", h1.as_str()], &["list_mem"]);
        assert!(out.status.success(), "ctl during a flood: {}", stderr(&out));
    }
    wait_for(Duration::from_secs(300), "5,000 flood connections", || {
        (opened.load(Ordering::Relaxed) > 5000).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    let flood = opened.load(Ordering::Relaxed) as u64;
    // Let the last interval's summary line be written, then measure.
    std::thread::sleep(Duration::from_secs(11));
    let grown = fs::metadata(c.log_path("H1")).unwrap().len() - log_before;
    eprintln!("flood: {flood} connections grew H1's log by {grown} bytes");
    assert!(
        grown < 64 * 1024,
        "{flood} flood connections grew H1's log by {grown} bytes"
    );
    let log = c.log("H1");
    assert!(log.contains("summarised"), "no summary line in H1's log");
    let out = ctl(&c.config, &["--node", h1.as_str()], &["list_mem"]);
    assert!(
        out.status.success(),
        "ctl after the flood: {}",
        stderr(&out)
    );
    c.wait_views(
        &all,
        Duration::from_secs(60),
        "formed after the flood",
        |v| v.len() == 5 && v.iter().all(|(_, _, s)| s == "alive"),
    );
}
