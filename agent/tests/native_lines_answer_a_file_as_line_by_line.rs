//! A whole file's `lines` answer (one request, which shares the units, scopes, `.await`s and
//! `async fn` states its addresses have in common) is exactly the answer for each of its lines
//! asked alone (a request of its own, with nothing shared): the sharing can never change a
//! result. Checked on real files of this test binary: the native fixture (optimized, with an
//! `async fn` whose locals are read from its state), this file (an unoptimized `async fn`, its
//! locals behind the state pointer) and the agent's own largest sources. Every address of a
//! listed line is in a function of the binary (none in code the linker left out).
//!
//! This binary is built with `debug = 2` for the agent and the fixture (the root Cargo.toml's
//! profiles), so the lines have variables.
#![cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]

mod markers;

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use sonde_agent::native::{CodeLine, DebugIndex, catalog_files, catalog_lines};

const FILE: &str = "tests/native_lines_answer_a_file_as_line_by_line.rs";

/// Pending once, then ready: an `.await` that suspends.
#[derive(Default)]
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

async fn tally(prices: Vec<u64>, rate: u64) -> u64 {
    let subtotal: u64 = prices.iter().sum();
    let mut points = subtotal / rate;
    YieldOnce::default().await;
    points += subtotal; // @after-await
    points + prices.len() as u64
}

fn poll_to_end<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// Compares `file`'s whole answer with each of its lines asked alone; returns the whole answer.
fn same_line_by_line(index: &DebugIndex, file: &str) -> Vec<CodeLine> {
    let whole = catalog_lines(index, file, None).unwrap_or_else(|e| panic!("{file}: {e}"));
    let code = index.code_lines(file);
    assert!(!code.is_empty(), "{file} has no lines with code");
    for line in code {
        // Every address of a line with code is in a function of the binary (not in code the
        // linker left out, whose debug info remains with addresses near 0).
        for a in &index.lookup(file, line).addresses {
            let function = index.function_at(a.address).expect("readable DWARF");
            assert!(
                function.is_some(),
                "{file}:{line} at {:#x} is in no function",
                a.address
            );
        }
        let listed = whole.iter().find(|l| l.line == line).cloned();
        match catalog_lines(index, file, Some(line)) {
            Ok(alone) => assert_eq!(
                alone.as_slice(),
                listed.as_slice(),
                "{file}:{line} asked alone differs from the whole file's answer"
            ),
            // A line arming refuses (with the reason) is left out of the whole answer.
            Err(why) => assert!(
                listed.is_none(),
                "{file}:{line} refused alone ({why}) but listed"
            ),
        }
    }
    whole
}

#[test]
fn a_whole_file_answers_as_its_lines_asked_alone() {
    // The fixture's optimized `async fn`, polled out of line through its boxed future: linked
    // into this binary so that its poll function has code.
    std::hint::black_box(sonde_native_fixture::checkout_boxed as *const ());
    let index = DebugIndex::for_current_exe().expect("this test binary has debug info");
    assert!(index.has_variables());

    let fixture = same_line_by_line(&index, "fixture/src/lib.rs");
    let state: Vec<String> = fixture
        .iter()
        .flat_map(|l| l.variables.iter().map(move |v| (l.line, v)))
        .filter(|(_, v)| v.why == Some("async state"))
        .map(|(line, v)| format!("{}@{line}", v.name))
        .collect();
    assert!(
        !state.is_empty(),
        "the fixture's `async fn` has locals marked `async state`"
    );
    println!(
        "fixture: {} lines; async state: {}",
        fixture.len(),
        state.join(", ")
    );
    assert!(
        fixture
            .iter()
            .any(|l| l.variables.iter().any(|v| !v.readable_at.is_empty())),
        "some local is unreadable on a line and readable on others"
    );

    // This file's own `async fn` (unoptimized: its locals held across the `.await` are read
    // through the state pointer), polled to the end so that it is linked.
    assert_eq!(poll_to_end(tally(vec![150, 275, 30], 5)), 549);
    let own = same_line_by_line(&index, FILE);
    let after = markers::line(
        include_str!("native_lines_answer_a_file_as_line_by_line.rs"),
        "// @after-await",
    );
    let subtotal = own
        .iter()
        .find(|l| l.line == after)
        .and_then(|l| l.variables.iter().find(|v| v.name == "subtotal"))
        .unwrap_or_else(|| panic!("`subtotal` at line {after}: {own:?}"));
    assert!(subtotal.readable, "{subtotal:?}");
    // The shapes kept for whole values (by type, and behind the state pointer by type, moved to
    // each local's offset) equal those built afresh for each variable (no path read: whole).
    let mut compared = 0;
    for line in index.code_lines(FILE) {
        for a in &index.lookup(FILE, line).addresses {
            let kept = index.variables_at(a.address).unwrap();
            let afresh = index.variables_at_reading(a.address, &[]).unwrap();
            assert_eq!(kept, afresh, "{FILE}:{line} at {:#x}", a.address);
            compared += kept.len();
        }
    }
    assert!(compared > 0, "variables compared");

    // The agent's own files with the most lines with code in this binary.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut largest: Vec<(usize, String)> = catalog_files(&index, true)
        .into_iter()
        .filter(|f| Path::new(f).starts_with(&root))
        .map(|f| (index.code_lines(&f).len(), f))
        .collect();
    largest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut variables = 0;
    for (_, file) in largest.iter().take(3) {
        let whole = same_line_by_line(&index, file);
        let here: usize = whole.iter().map(|l| l.variables.len()).sum();
        println!("{file}: {} lines, {here} variables", whole.len());
        variables += here;
    }
    assert!(variables > 0, "the agent's files listed variables");
}
