//! A hot line, per hit, three ways: unpatched; with a `jmp` into a trampoline whose callback
//! counts the hit (and, in a second case, also reads a local through the saved registers as a
//! capture plan would); and with an `int3` armed by the agent (a signal round trip per hit),
//! for comparison. Target: at most 200 ns per trampoline hit.
//!
//! The trampoline is installed directly (`native::Trampoline`), not through a tracepoint (the
//! agent moves a hot line to a jump only after a budget check). Needs this bench binary's debug info
//! (`[profile.bench.package.sonde-agent] debug = 2`). Run: `cargo bench -p sonde-agent
//! --features native --bench native_trampoline`.

mod common;

use std::{
    hint::black_box,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use criterion::{Criterion, criterion_group, criterion_main};
use sonde_agent::{
    Agent, PrometheusProvider, TracepointState,
    native::{CapturePlan, DebugIndex, NativeBudget, Trampoline, TrampolineRegs, qualifies},
};
use sonde_proto::tracepoint::{Metric, MetricType, TracePointConfig};

const FILE: &str = "benches/native_trampoline.rs";

#[inline(never)]
fn hot(i: u64, scale: u64) -> u64 {
    let spread = black_box(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let folded = black_box(spread.rotate_left(17) ^ scale); // @hot
    folded.wrapping_add(i)
}

fn line_of(marker: &str) -> u32 {
    common::marker_line(include_str!("native_trampoline.rs"), marker)
}

/// What the callbacks update: hits, and the sum of a local read as its capture plan says.
struct Hits {
    count: AtomicU64,
    sum: AtomicU64,
    /// DWARF register and optional memory offset of `spread`.
    local: (u16, Option<i64>),
}

extern "C" fn count(_regs: *mut TrampolineRegs, user: *const ()) {
    // Safety: `user` is the leaked `Hits` given at installation.
    let hits = unsafe { &*user.cast::<Hits>() };
    hits.count.fetch_add(1, Ordering::Relaxed);
}

extern "C" fn count_and_read(regs: *mut TrampolineRegs, user: *const ()) {
    // Safety: as above; `regs` is the trampoline's saved state.
    let (regs, hits) = unsafe { (&*regs, &*user.cast::<Hits>()) };
    hits.count.fetch_add(1, Ordering::Relaxed);
    let (reg, offset) = hits.local;
    let base = regs.dwarf(reg).unwrap_or(0);
    let value = match offset {
        None => base,
        // Safety: the local's stack slot in the live patched frame.
        Some(off) => unsafe {
            std::ptr::read_volatile(base.wrapping_add(off as u64) as *const u64)
        },
    };
    hits.sum.fetch_add(value, Ordering::Relaxed);
}

fn run(c: &mut Criterion) {
    let index = DebugIndex::for_current_exe().expect("bench binary has DWARF");
    let line = line_of("// @hot");
    let found = index.lookup(FILE, line);
    let plan = found
        .addresses
        .iter()
        .find_map(|a| qualifies(&index, a.address).ok())
        .unwrap_or_else(|| {
            let why: Vec<String> = found
                .addresses
                .iter()
                .filter_map(|a| qualifies(&index, a.address).err())
                .map(|w| w.to_string())
                .collect();
            panic!("no address of line {line} qualifies: {why:?}")
        });
    let local = index
        .variables_at(plan.addr())
        .expect("DWARF")
        .into_iter()
        .rev()
        .find(|v| v.name == "spread" || v.name == "i")
        .and_then(|v| match v.plan {
            CapturePlan::Reg(r) => Some((r, None)),
            CapturePlan::Mem { reg, offset } => Some((reg, Some(offset))),
            _ => None,
        })
        .unwrap_or((0, None));
    let hits: &'static Hits = Box::leak(Box::new(Hits {
        count: AtomicU64::new(0),
        sum: AtomicU64::new(0),
        local,
    }));

    let mut g = c.benchmark_group("native_trampoline");
    let loop_over = |name: &str, g: &mut criterion::BenchmarkGroup<'_, _>| {
        g.bench_function(name, |b| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                hot(black_box(i), 3)
            })
        });
    };
    loop_over("unpatched", &mut g);
    for (name, callback) in [
        (
            "trampoline, count",
            count as extern "C" fn(*mut TrampolineRegs, *const ()),
        ),
        ("trampoline, count + read a local", count_and_read),
    ] {
        let before = hits.count.load(Ordering::Relaxed);
        // Safety: the callbacks touch only `hits` (leaked) and the patched frame.
        let mut tramp =
            unsafe { Trampoline::install(&plan, callback, (hits as *const Hits).cast()) }
                .expect("installs");
        loop_over(name, &mut g);
        tramp.remove().expect("removes");
        assert!(
            hits.count.load(Ordering::Relaxed) > before,
            "the trampoline ran"
        );
    }

    let agent = Agent::builder()
        .offline()
        .provider(PrometheusProvider::new(prometheus::Registry::new()))
        .native_breakpoints(NativeBudget {
            captures_per_sec: 100_000_000,
            burst: 100_000_000,
            max_traps_per_sec: u64::MAX,
            jump_above: u64::MAX,
        })
        .start()
        .expect("agent");
    agent.apply(vec![TracePointConfig {
        id: "hot".into(),
        path: FILE.into(),
        line_number: line,
        metrics: vec![Metric {
            name: "bench_hot_total".into(),
            r#type: MetricType::Counter as i32,
            ..Default::default()
        }],
        ..Default::default()
    }]);
    let st = agent.statuses();
    assert_eq!(st[0].state, TracepointState::Bound, "{st:?}");
    loop_over("int3 (agent tracepoint, no capture)", &mut g);
    agent.apply(Vec::new());
    g.finish();
    agent.shutdown();
}

criterion_group! {
    name = benches;
    config = common::config().measurement_time(Duration::from_secs(3));
    targets = run
}
criterion_main!(benches);
