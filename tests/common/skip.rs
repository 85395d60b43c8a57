//! Skipping a test so that the skip shows: a `SKIPPED <test>: <reason>` line written straight to
//! the process's stdout (the test harness captures `println!`/`eprintln!` of passing tests, not
//! direct writes to the handle, so the line appears in `cargo test` output), and under CI a
//! failure instead, since a skip there hides lost coverage. `.ci/run` counts the lines at the end.
//!
//! Shared by the root package's tests (`common::skip`) and the agent's (`#[path]` include).

// Each including binary uses one or both of the functions.
#![allow(dead_code)]

use std::io::Write as _;

/// Whether a skip is a failure here: under CI (`CI` set to anything but empty, `0` or `false`,
/// as CI services and `.ci/run` set it).
pub fn skips_refused() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Skips the calling test: panics when [`skips_refused`], otherwise prints the `SKIPPED` line.
/// The caller returns right after.
#[track_caller]
pub fn skip(test: &str, reason: &str) {
    assert!(
        !skips_refused(),
        "{test}: would be skipped, which CI does not allow: {reason}"
    );
    let line = format!("SKIPPED {test}: {reason}\n");
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}
