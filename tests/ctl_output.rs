//! `dml ctl` as a shell pipeline's first stage: when the reader goes away early
//! (`dml ctl store | head -1`), ctl ends quietly instead of panicking on its output.

use std::io::Read;
use std::process::{Command, Stdio};

#[test]
fn ctl_into_a_closed_pipe_ends_without_a_panic() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dml"))
        .args(["ctl", "--config", "config.toml", "help"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dml starts");
    // Close the reading end before ctl writes anything.
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "ctl panicked: {stderr}");
    assert_ne!(
        status.code(),
        Some(101),
        "ctl exited as a panic does: {stderr}"
    );
}
