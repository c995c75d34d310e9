//! SDFS's scp transfer against a REAL OpenSSH server on a loopback port: a throwaway
//! host key, a test user with a password, `sshd -D` with its own config. Checks put/get
//! byte for byte through scp, a wrong password (clear error, nothing stored), a host key
//! that is unknown or changed (clear error naming the host, no login tried) and a
//! credentials file readable by others (refused). Needs root (useradd) and sshd; if sshd
//! is missing it is installed with apt, and the test FAILS if that is impossible.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{seeded_bytes, set_ssh_password, start_sshd, Cluster, Timings, SSH_USER as USER};

#[test]
fn scp_transfer_against_a_real_sshd() {
    let dir = std::env::temp_dir().join(format!("dml-scp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let sshd = start_sshd(&dir);
    set_ssh_password("right-horse-battery");
    let creds = dir.join("password.txt");
    fs::write(&creds, format!("{USER},right-horse-battery\n")).unwrap();
    fs::set_permissions(&creds, fs::Permissions::from_mode(0o600)).unwrap();

    let extra = format!(
        "[sdfs]\ntransfer = \"scp\"\ncredentials = \"{}\"\nssh_port = {}\nknown_hosts = \"{}\"\n",
        creds.display(),
        sshd.port,
        sshd.known_hosts.display()
    );
    let c = Cluster::start("scp", 4, &Timings::fast(), &extra);
    let all: Vec<String> = c.nodes.iter().map(|(_, a)| a.clone()).collect();
    c.wait_views(&all, Duration::from_secs(120), "formation", |v| {
        v.len() == 4
    });

    // put/get through scp, byte for byte; sshd saw the logins.
    let data = seeded_bytes(42, 5 * 1024 * 1024 + 99);
    let src = dir.join("src.bin");
    fs::write(&src, &data).unwrap();
    let r = c
        .sdfs(&all[0], &format!("put {} scp/a", src.display()))
        .unwrap();
    assert_eq!(r["version"], 1, "{r}");
    let out = dir.join("out.bin");
    let r = c
        .sdfs(&all[2], &format!("get scp/a {}", out.display()))
        .unwrap();
    assert_eq!(r["version"], 1);
    assert!(
        fs::read(&out).unwrap() == data,
        "scp path changed the bytes"
    );
    let logins = fs::read_to_string(&sshd.log)
        .unwrap()
        .matches(&format!("Accepted password for {USER}"))
        .count();
    assert!(
        logins >= 4,
        "expected one scp login per replica, sshd saw {logins}"
    );
    for (name, _) in &c.nodes {
        let staging = c.data_dir(name).join("sdfs").join("staging");
        assert_eq!(
            fs::read_dir(&staging).unwrap().count(),
            0,
            "staging left on {name}"
        );
    }

    // A wrong password: a clear error and nothing stored.
    set_ssh_password("another-password");
    let e = c
        .sdfs(&all[1], &format!("put {} scp/b", src.display()))
        .unwrap_err();
    assert!(e.contains("authentication") && !e.contains('\n'), "{e}");
    let e = c.sdfs(&all[3], "ls scp/b").unwrap_err();
    assert!(e.contains("no such file"), "{e}");
    for a in &all {
        let r = c.sdfs(a, "store").unwrap();
        assert!(!r.to_string().contains("scp/b"), "{a} stored scp/b: {r}");
    }

    // Issue 14, finding 7: a host whose key is unknown or changed gets nothing, not
    // even the login; the error names the host. The file is read for every copy.
    set_ssh_password("right-horse-battery");
    let attempts = |log: &std::path::Path| {
        let text = fs::read_to_string(log).unwrap();
        text.matches("Accepted password").count() + text.matches("Failed password").count()
    };
    let other_key = dir.join("other_key");
    Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other_key)
        .status()
        .unwrap();
    let other = fs::read_to_string(dir.join("other_key.pub")).unwrap();
    let mut f = other.split_whitespace();
    let (kind, key) = (f.next().unwrap(), f.next().unwrap());
    let wrong = format!("[127.0.0.1]:{} {kind} {key}\n", sshd.port);
    for (known, says) in [(wrong.as_str(), "does not match"), ("", "is not in")] {
        fs::write(&sshd.known_hosts, known).unwrap();
        // sshd logs a login after the fact: the lines of the earlier copies may still be
        // on their way, so the count is taken once it has stopped moving.
        let mut before = attempts(&sshd.log);
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(500));
            let now = attempts(&sshd.log);
            if now == before {
                break;
            }
            before = now;
        }
        let e = c
            .sdfs(&all[1], &format!("put {} scp/c", src.display()))
            .unwrap_err();
        assert!(
            e.contains(says) && e.contains("127.0.0.1") && !e.contains('\n'),
            "{e}"
        );
        assert_eq!(attempts(&sshd.log), before, "a login was tried: {e}");
        for a in &all {
            let r = c.sdfs(a, "store").unwrap();
            assert!(!r.to_string().contains("scp/c"), "{a} stored scp/c: {r}");
        }
    }
    // The right key again: scp works as before.
    fs::write(&sshd.known_hosts, &sshd.known_hosts_line).unwrap();
    let r = c
        .sdfs(&all[1], &format!("put {} scp/d", src.display()))
        .unwrap();
    assert_eq!(r["version"], 1, "{r}");

    // A credentials file readable by others: the node refuses to start, saying why.
    fs::set_permissions(&creds, fs::Permissions::from_mode(0o644)).unwrap();
    let port = common::free_ports(1)[0];
    let cfg2 = dir.join("config2.toml");
    fs::write(
        &cfg2,
        format!(
            "[cluster]\nsecret = \"{}\"\ndata_dir = \"data2\"\n[[nodes]]\nname = \"X\"\nhost = \"127.0.0.1\"\nport = {port}\n{extra}",
            common::SECRET
        ),
    )
    .unwrap();
    let out = Command::new(common::dml_bin())
        .args([
            "node",
            "--no-console",
            "--hostname",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--config",
        ])
        .arg(&cfg2)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "node started with a 0644 credentials file"
    );
    assert!(stderr.contains("readable by group or others"), "{stderr}");

    drop(c);
    drop(sshd);
    let _ = fs::remove_dir_all(&dir);
}
