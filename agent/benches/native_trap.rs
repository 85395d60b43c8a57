//! Native breakpoints, per hit: a small function called in a loop, unpatched, then with an
//! `int3` on one of its lines (the trap, the table lookup, a token-bucket check and the resume
//! through an out-of-line slot or an emulated call), without and with captures of two locals,
//! and finally unpatched again while another function is patched (code that is not patched
//! pays nothing). Targets: at most 5 µs per hit; no measurable cost on unpatched code.
//!
//! Needs this bench binary's line tables and variables: `[profile.bench.package.sonde-agent]
//! debug = 2` in the root Cargo.toml. Run: `cargo bench -p sonde-agent --features native
//! --bench native_trap`.

mod common;

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use sonde_agent::{Agent, Budgets, PrometheusProvider, TracepointState, native::NativeBudget};
use sonde_proto::tracepoint::{Metric, MetricType, TracePointConfig};

const FILE: &str = "benches/native_trap.rs";

#[inline(never)]
fn target(i: u64, scale: u64) -> u64 {
    let mixed = black_box(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let scaled = black_box(mixed / scale.max(1)); // @line
    scaled ^ i
}

#[inline(never)]
fn elsewhere(i: u64) -> u64 {
    black_box(i + 1) // @elsewhere
}

fn line_of(marker: &str) -> u32 {
    common::marker_line(include_str!("native_trap.rs"), marker)
}

fn tracepoint(id: &str, line: u32, value: Option<&str>) -> TracePointConfig {
    TracePointConfig {
        id: id.into(),
        path: FILE.into(),
        line_number: line,
        metrics: vec![Metric {
            name: format!("bench_{id}_total"),
            r#type: MetricType::Counter as i32,
            expression: value.map(str::to_owned),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let registry = prometheus::Registry::new();
    let agent = Agent::builder()
        .offline()
        .provider(PrometheusProvider::new(registry))
        // Millions of hits: the evaluation CPU budget would disarm the line mid-bench.
        .budgets(Budgets::unlimited_cpu())
        .native_breakpoints(NativeBudget {
            captures_per_sec: 100_000_000,
            burst: 100_000_000,
            max_traps_per_sec: u64::MAX,
            jump_above: u64::MAX,
        })
        .start()
        .expect("agent");
    let mut g = c.benchmark_group("native_trap");
    g.bench_function("unpatched", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            target(black_box(i), 3)
        })
    });
    let cases = [
        ("int3, no capture", None),
        ("int3, value = mixed (one local)", Some("mixed")),
        ("int3, value = mixed + i (two locals)", Some("mixed + i")),
    ];
    for (name, value) in cases {
        agent.apply(vec![tracepoint("hit", line_of("// @line"), value)]);
        let st = agent.statuses();
        assert_eq!(st[0].state, TracepointState::Bound, "{st:?}");
        g.bench_function(name, |b| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                target(black_box(i), 3)
            })
        });
        // The hits were captured and evaluated without errors (not just trapped).
        std::thread::sleep(Duration::from_millis(100));
        let st = agent.statuses();
        let fires = agent.fires("hit").unwrap_or(0);
        assert!(
            fires > 0 && st[0].message.is_empty(),
            "{name}: {fires} fires, {st:?}"
        );
        eprintln!("{name}: {fires} hits fired");
        agent.apply(Vec::new());
    }
    agent.apply(vec![tracepoint("other", line_of("// @elsewhere"), None)]);
    g.bench_function("unpatched, another function patched", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            target(black_box(i), 3)
        })
    });
    black_box(elsewhere(1));
    agent.apply(Vec::new());
    g.finish();
    agent.shutdown();
}

criterion_group! {
    name = benches;
    config = common::config().measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
