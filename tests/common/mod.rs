//! What the whole-process tests share: running a child until it is SIGKILLed.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs `cmd` with stdout and stderr piped, waits for its first line, `READY` (printed once its
/// store is open, after any crash recovery, which can take a while on a loaded machine; 60 s at
/// most), lets it run `delay` more, kills it with SIGKILL and returns the complete lines it
/// printed after `READY`. A line the kill cut short is not returned: it was not yet said.
pub fn run_and_kill(mut cmd: Command, delay: Duration) -> Vec<String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("piped stdout");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut all = Vec::new();
        stdout.read_until(b'\n', &mut all).expect("read child stdout");
        let _ = ready_tx.send(());
        stdout.read_to_end(&mut all).expect("read child stdout");
        all
    });
    // Either READY arrived or the child died first (the assertions below say which).
    let _ = ready_rx.recv_timeout(Duration::from_secs(60));
    std::thread::sleep(delay);
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("reap the child");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    let out = reader.join().expect("reader thread");
    assert!(!status.success(), "the child must have been killed, not exit: {stderr}");
    assert!(out.starts_with(b"READY\n"), "the child failed to start: {stderr}");
    let end = out.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    String::from_utf8_lossy(&out["READY\n".len()..end])
        .lines()
        .map(str::to_owned)
        .collect()
}
