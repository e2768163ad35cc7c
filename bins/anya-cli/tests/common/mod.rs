//! What the CLI test binaries share.

use std::process::Output;

/// The standard output of a run that must have succeeded; on failure, the run's stderr and
/// stdout are the panic message.
#[track_caller]
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "anya failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}
