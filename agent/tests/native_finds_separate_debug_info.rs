//! Stripped binaries with their debug info kept aside still arm native lines: a copy of this test
//! binary (whose fixture functions are optimized, as in a release build) stripped with `objcopy
//! --strip-debug`, its DWARF kept with `objcopy --only-keep-debug` in each place the agent looks:
//! `.debug/` beside the binary (by `.gnu_debuglink`), the build-id path under
//! `SONDE_AGENT_DEBUG_DIR`, and the debuglink name in `SONDE_AGENT_DEBUG_DIR`. Each copy runs the
//! one child test, which arms the fixture's lines and counts their hits. A copy with no debug
//! file anywhere says in its status what to add. A program built with split DWARF packed into a
//! `.dwp` answers `lines` with its variables from the package, beside the binary or in its
//! `.debug/`, and without the package is refused with an error saying what to keep where; one
//! built with unpacked split DWARF reads them from the `.dwo` files its skeletons name.
//!
//! objcopy and readelf are binutils', which `.ci/run` installs.
#![cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod markers;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use sonde_agent::{
    Agent, PrometheusProvider, TracepointState,
    native::{DebugIndex, LoadError, NativeBudget, catalog_lines},
};
use sonde_native_fixture::{Item, order_total};
use sonde_proto::tracepoint::{Metric, MetricType, TracePointConfig};

const FIXTURE: &str = "fixture/src/lib.rs";
/// Set in a stripped copy's environment: run the checks; its value says what to expect.
const CHILD: &str = "SONDE_TEST_DEBUG_ASIDE_CHILD";
const TEST: &str = "stripped_copies_find_their_debug_info_aside";
const CALLS: u64 = 25;

fn fixture_line(marker: &str) -> u32 {
    markers::line(include_str!("../fixture/src/lib.rs"), marker)
}

fn counter(id: &str, line: u32) -> TracePointConfig {
    TracePointConfig {
        id: id.into(),
        path: FIXTURE.into(),
        line_number: line,
        metrics: vec![Metric {
            name: format!("{id}_total"),
            r#type: MetricType::Counter as i32,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn objcopy(args: &[&std::ffi::OsStr]) {
    run(Command::new("objcopy").args(args));
}

/// Runs the stripped copy's child test with `env`; `expect` is `armed` or `unbound`.
fn run_copy(copy: &Path, expect: &str, env: &[(&str, &Path)]) {
    let out = Command::new(copy)
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, expect)
        .env_remove("SONDE_AGENT_DEBUG_DIR")
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .output()
        .expect("the stripped copy runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} ({expect}) failed:\n{stdout}\n{stderr}",
        copy.display()
    );
    assert!(
        stdout.contains(&format!("child checks passed: {expect}")),
        "{}: {stdout}\n{stderr}",
        copy.display()
    );
}

fn build_id(binary: &Path) -> String {
    let text = run(Command::new("readelf").arg("-n").arg(binary));
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("the test binary has a GNU build-id")
        .to_owned()
}

#[test]
fn stripped_copies_find_their_debug_info_aside() {
    if let Ok(expect) = std::env::var(CHILD) {
        child_checks(&expect);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let root = std::env::temp_dir().join(format!("sonde-debug-aside-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = |name: &str| {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let os = |p: &Path| p.as_os_str().to_owned();
    // The debug file, and a stripped copy that links to it by name (`app.debug`).
    let kept = dir("kept").join("app.debug");
    objcopy(&[
        "--only-keep-debug".as_ref(),
        exe.as_os_str(),
        kept.as_os_str(),
    ]);
    let linked = |name: &str| -> PathBuf {
        let copy = dir(name).join("app");
        let link = format!("--add-gnu-debuglink={}", kept.display());
        objcopy(&[
            "--strip-debug".as_ref(),
            link.as_ref(),
            exe.as_os_str(),
            &os(&copy),
        ]);
        copy
    };
    let unlinked = |name: &str| -> PathBuf {
        let copy = dir(name).join("app");
        objcopy(&["--strip-debug".as_ref(), exe.as_os_str(), &os(&copy)]);
        copy
    };

    // 1. `.debug/` beside the binary, found through `.gnu_debuglink`.
    let copy = linked("beside");
    let aside = copy.parent().unwrap().join(".debug");
    std::fs::create_dir_all(&aside).unwrap();
    std::fs::copy(&kept, aside.join("app.debug")).unwrap();
    run_copy(&copy, "armed", &[]);

    // 2. The build-id path under SONDE_AGENT_DEBUG_DIR, with no link at all.
    let copy = unlinked("by-build-id");
    let id = build_id(&copy);
    let debug_dir = dir("debug-dir");
    let by_id = debug_dir.join(".build-id").join(&id[..2]);
    std::fs::create_dir_all(&by_id).unwrap();
    std::fs::copy(&kept, by_id.join(format!("{}.debug", &id[2..]))).unwrap();
    run_copy(&copy, "armed", &[("SONDE_AGENT_DEBUG_DIR", &debug_dir)]);

    // 3. The debuglink name directly in SONDE_AGENT_DEBUG_DIR.
    let copy = linked("by-link");
    let link_dir = dir("link-dir");
    std::fs::copy(&kept, link_dir.join("app.debug")).unwrap();
    run_copy(&copy, "armed", &[("SONDE_AGENT_DEBUG_DIR", &link_dir)]);

    // 4. Nowhere: the status says what to add.
    let copy = unlinked("nowhere");
    run_copy(&copy, "unbound", &[]);

    let _ = std::fs::remove_dir_all(&root);
}

fn child_checks(expect: &str) {
    let registry = prometheus::Registry::new();
    let agent = Agent::builder()
        .offline()
        .provider(PrometheusProvider::new(registry.clone()))
        .native_breakpoints(NativeBudget::default())
        .start()
        .unwrap();
    let ids = ["kept", "net", "total"];
    agent.apply(
        ids.iter()
            .map(|id| counter(id, fixture_line(&format!("// @{id}"))))
            .collect(),
    );
    let statuses = agent.statuses();
    for s in &statuses {
        println!("{}: {:?} {}", s.id, s.state, s.message);
    }
    if expect == "unbound" {
        for s in &statuses {
            assert_eq!(s.state, TracepointState::Unbound, "{s:?}");
            for wanted in ["no debug info in", "debug = 2", "SONDE_AGENT_DEBUG_DIR"] {
                assert!(s.message.contains(wanted), "no {wanted:?} in {s:?}");
            }
        }
    } else {
        let bound: Vec<&str> = statuses
            .iter()
            .filter(|s| s.state == TracepointState::Bound)
            .map(|s| s.id.as_str())
            .collect();
        assert!(!bound.is_empty(), "no fixture line armed: {statuses:?}");
        let order = vec![Item {
            quantity: 2,
            cents: 150,
            sku: "tea".into(),
        }];
        for fee in 0..CALLS {
            assert_eq!(order_total(&order, 10, fee), 270 + fee);
        }
        for id in bound {
            let started = Instant::now();
            while agent.fires(id) != Some(CALLS) {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "{id} fired {:?} times, not {CALLS}",
                    agent.fires(id)
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    agent.apply(Vec::new());
    agent.shutdown();
    println!("child checks passed: {expect}");
}

/// A program built with split DWARF packed into a `.dwp` (`-C split-debuginfo=packed`, as
/// cargo's `split-debuginfo = "packed"` builds it): its skeleton units point into the package.
const SPLIT_SOURCE: &str = r#"
#[inline(never)]
fn total(prices: &[u64], fee: u64) -> u64 {
    let sum: u64 = prices.iter().sum();
    let with_fee = sum + fee; // @with_fee
    with_fee
}

fn main() {
    let prices = vec![150, 275, 30];
    let fee = std::hint::black_box(4);
    println!("{}", total(std::hint::black_box(&prices), fee));
}
"#;

/// Builds [`SPLIT_SOURCE`] in a fresh directory with `-C split-debuginfo=<kind>`; the binary
/// (`split`) and, packed, its package (`split.dwp`, written beside it by rustc).
fn build_split(kind: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("sonde-split-{kind}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("split.rs");
    std::fs::write(&src, SPLIT_SOURCE).unwrap();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    run(Command::new(rustc)
        .args(["--edition", "2021", "-g", "-C"])
        .arg(format!("split-debuginfo={kind}"))
        .arg("-o")
        .arg(dir.join("split"))
        .arg(&src)
        .current_dir(&dir));
    let package = dir.join("split.dwp");
    assert_eq!(package.exists(), kind == "packed", "{}", package.display());
    (dir.join("split"), package)
}

/// The `lines` answer for the split program's `// @with_fee` line, from an index of `binary`.
fn with_fee_line(binary: &Path) -> sonde_agent::native::CodeLine {
    let line = markers::line(SPLIT_SOURCE, "// @with_fee");
    let index = DebugIndex::build(binary, 0).unwrap_or_else(|e| panic!("indexing: {e}"));
    assert!(index.has_variables(), "the package's variables are seen");
    let lines = catalog_lines(&index, "split.rs", None).expect("the lines of split.rs");
    assert!(lines.len() >= 5, "lines with code: {lines:?}");
    let alone = catalog_lines(&index, "split.rs", Some(line)).expect("the line alone");
    let found = lines.iter().find(|l| l.line == line).cloned();
    assert_eq!(
        found.as_slice(),
        alone.as_slice(),
        "whole file and one line agree"
    );
    alone.into_iter().next().unwrap()
}

#[test]
fn split_dwarf_is_read_from_its_package() {
    let (binary, package) = build_split("packed");
    // The binary itself holds only skeleton units: without the package, nothing to read.
    let readelf = run(Command::new("readelf").arg("-S").arg(&binary));
    assert!(!readelf.contains(".debug_info.dwo"), "{readelf}");

    // 1. The package beside the binary, where rustc (and cargo) write it.
    let line = with_fee_line(&binary);
    let var = |name: &str| {
        line.variables
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("`{name}` at the line: {line:?}"))
            .clone()
    };
    let (sum, fee) = (var("sum"), var("fee"));
    assert!(sum.readable && !sum.parameter, "{sum:?}");
    assert_eq!(sum.type_name.as_deref(), Some("u64"), "{sum:?}");
    assert!(fee.readable && fee.parameter, "{fee:?}");
    let prices = var("prices");
    assert_eq!(prices.type_name.as_deref(), Some("&[u64]"), "{prices:?}");

    // 2. In `.debug/` beside the binary.
    let aside = binary.parent().unwrap().join(".debug");
    std::fs::create_dir_all(&aside).unwrap();
    std::fs::rename(&package, aside.join("split.dwp")).unwrap();
    assert_eq!(with_fee_line(&binary), line);

    // 3. Nowhere: refused, saying what is missing and where it was looked for.
    std::fs::remove_file(aside.join("split.dwp")).unwrap();
    match DebugIndex::build(&binary, 0) {
        Err(err @ LoadError::SplitDwarf { .. }) => {
            let text = err.to_string();
            for wanted in [
                "no DWARF package (.dwp)",
                "split.dwp",
                "SONDE_AGENT_DEBUG_DIR",
            ] {
                assert!(text.contains(wanted), "no {wanted:?} in {text}");
            }
        }
        Ok(_) => panic!("split DWARF indexed without its package"),
        Err(other) => panic!("unexpected error: {other}"),
    }
    let _ = std::fs::remove_dir_all(binary.parent().unwrap());
}

#[test]
fn unpacked_split_dwarf_is_read_from_its_dwo_files() {
    let (binary, _) = build_split("unpacked");
    let dir = binary.parent().unwrap().to_owned();
    let dwos: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dwo"))
        .collect();
    assert!(
        !dwos.is_empty(),
        "rustc left no .dwo files in {}",
        dir.display()
    );

    let line = with_fee_line(&binary);
    for name in ["sum", "fee", "prices"] {
        let v = line.variables.iter().find(|v| v.name == name);
        assert!(
            v.is_some_and(|v| v.readable),
            "`{name}` at the line: {line:?}"
        );
    }

    // Without them: refused, naming the missing file.
    for dwo in &dwos {
        std::fs::remove_file(dwo).unwrap();
    }
    match DebugIndex::build(&binary, 0) {
        Err(err @ LoadError::SplitDwarf { .. }) => {
            let text = err.to_string();
            for wanted in ["no DWARF package (.dwp)", ".dwo file", "split.dwp"] {
                assert!(text.contains(wanted), "no {wanted:?} in {text}");
            }
        }
        Ok(_) => panic!("split DWARF indexed without its .dwo files"),
        Err(other) => panic!("unexpected error: {other}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
