//! A binary without debug info: a tracepoint on a line with no probe site says so in its status
//! (and what to build with), while probe sites in the same binary keep working.
//!
//! The test copies its own executable, strips the copy's debug sections with `objcopy
//! --strip-debug` (binutils, beside the gcc that links Rust here), and runs the one test again in
//! the stripped copy, which does the checks.
#![cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod markers;

use std::{
    hint::black_box,
    process::Command,
    time::{Duration, Instant},
};

use sonde_agent::{
    Agent, PrometheusProvider, TracepointState,
    native::{DebugIndex, LoadError, NativeBudget},
    probe,
};
use sonde_proto::tracepoint::{Metric, MetricType, TracePointConfig};

const FILE: &str = "tests/native_without_debug_info.rs";
/// Set in the stripped copy's environment: run the checks instead of making the copy.
const CHILD: &str = "SONDE_TEST_STRIPPED_CHILD";
const TEST: &str = "a_stripped_binary_says_so_and_probe_sites_keep_working";

#[inline(never)]
fn plain(n: u64) -> u64 {
    let doubled = black_box(n * 2); // @plain
    doubled + 1
}

#[inline(never)]
fn probed(n: u64) -> u64 {
    probe!(n); // @probed
    n + 1
}

fn line_of(marker: &str) -> u32 {
    markers::line(include_str!("native_without_debug_info.rs"), marker)
}

fn counter(id: &str, line: u32) -> TracePointConfig {
    TracePointConfig {
        id: id.into(),
        path: FILE.into(),
        line_number: line,
        metrics: vec![Metric {
            name: format!("{id}_total"),
            r#type: MetricType::Counter as i32,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn a_stripped_binary_says_so_and_probe_sites_keep_working() {
    if std::env::var_os(CHILD).is_some() {
        checks_in_the_stripped_copy();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let copy = std::env::temp_dir().join(format!("sonde-stripped-{}", std::process::id()));
    let strip = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&exe)
        .arg(&copy)
        .output()
        .expect("objcopy (binutils) runs");
    assert!(
        strip.status.success(),
        "objcopy failed: {}",
        String::from_utf8_lossy(&strip.stderr)
    );
    // The copy really has no debug info of its own.
    match DebugIndex::build(&copy, 0) {
        Err(LoadError::NoDebugInfo { .. }) => {}
        other => panic!("the stripped copy still indexes: {:?}", other.err()),
    }
    let run = Command::new(&copy)
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("the stripped copy runs");
    let _ = std::fs::remove_file(&copy);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "stripped copy failed:\n{stdout}\n{stderr}"
    );
    // The child ran the checks (not zero tests through a filter that matched nothing).
    assert!(
        stdout.contains("stripped-copy checks passed"),
        "{stdout}\n{stderr}"
    );
}

fn checks_in_the_stripped_copy() {
    let registry = prometheus::Registry::new();
    let agent = Agent::builder()
        .offline()
        .provider(PrometheusProvider::new(registry.clone()))
        .native_breakpoints(NativeBudget::default())
        .start()
        .unwrap();
    agent.apply(vec![
        counter("stripped_plain", line_of("// @plain")),
        counter("stripped_probed", line_of("// @probed")),
    ]);
    let statuses = agent.statuses();
    let status = |id: &str| statuses.iter().find(|s| s.id == id).unwrap().clone();

    let plain_status = status("stripped_plain");
    println!("status of a line without a probe: {}", plain_status.message);
    assert_eq!(
        plain_status.state,
        TracepointState::Unbound,
        "{plain_status:?}"
    );
    assert!(
        plain_status.message.contains("no debug info in")
            && plain_status.message.contains("debug = 1"),
        "{plain_status:?}"
    );

    let probed_status = status("stripped_probed");
    assert_eq!(
        probed_status.state,
        TracepointState::Bound,
        "{probed_status:?}"
    );
    for n in 0..10 {
        black_box(probed(n));
        black_box(plain(n));
    }
    let started = Instant::now();
    while agent.fires("stripped_probed") != Some(10) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "probe site fired {:?} times, not 10",
            agent.fires("stripped_probed")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("deep_stripped_probed_total") && l.ends_with(" 10")),
        "{text}"
    );
    agent.apply(Vec::new());
    agent.shutdown();
    println!("stripped-copy checks passed");
}
