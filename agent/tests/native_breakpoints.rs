//! Native breakpoints on lines of this test binary that have no probe site: counts and captured
//! values are exact with several threads, arming every line of a function changes none of its
//! results, disarming while threads run through the line is safe, a panic unwinds through a
//! patched frame, and each failure mode has a status that says what went wrong.
//!
//! This binary is built with `debug = 2` (`[profile.dev.package.sonde-agent]` in the root
//! Cargo.toml). Lines are found by marker comments in this file's own text. One agent per
//! process, so the tests take turns (`serial`).
#![cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod markers;
mod native_agent;

use std::{
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use native_agent::{serial, status, wait_for, wait_showing};
use sonde_agent::{
    Agent, AgentHandle, Budgets, PrometheusProvider, TracepointState,
    native::{CapturePlan, DebugIndex, Native, NativeBudget},
};
use sonde_native_fixture::{Item, order_total};
use sonde_proto::tracepoint::{
    LabelExpression, Metric, MetricType, TracePointConfig, label_expression,
};

const FILE: &str = "tests/native_breakpoints.rs";

#[inline(never)]
fn work(i: u64, name: &str) -> u64 {
    let doubled = black_box(i * 2);
    let who = black_box(name);
    let out = black_box(doubled + who.len() as u64); // @hit
    out
}

#[inline(never)]
fn hot(i: u64, name: &str) -> u64 {
    let base = black_box(i + 1);
    let tripled = base * 3; // @jump
    black_box(tripled) + name.len() as u64
}

#[inline(never)]
fn checksum(data: &[u64]) -> u64 {
    // @module-start
    let mut acc = 0u64;
    for (i, v) in data.iter().enumerate() {
        if v % 3 == 0 {
            acc = acc.wrapping_add(v.wrapping_mul(31));
        } else {
            acc ^= v.rotate_left((i % 17) as u32);
        }
        acc = black_box(acc);
    }
    let tail = data.len() as u64;
    acc.wrapping_add(tail)
    // @module-end
}

#[inline(never)]
fn may_panic(n: u64) -> u64 {
    let limit = black_box(n); // @panic-before
    if limit.is_multiple_of(7) {
        panic!("seven divides {limit}"); // @panic-line
    }
    limit + 1
}

/// The global allocator: a pass-through whose methods must never be patched.
struct PassThrough;

// SAFETY: forwards to the system allocator unchanged.
unsafe impl std::alloc::GlobalAlloc for PassThrough {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        unsafe { std::alloc::System.alloc(layout) } // @alloc
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: PassThrough = PassThrough;

const FIXTURE: &str = "fixture/src/lib.rs";

/// The line of the fixture crate's source holding `marker`.
fn fixture_line(marker: &str) -> u32 {
    markers::line(include_str!("../fixture/src/lib.rs"), marker)
}

/// The line of this file holding `marker`.
fn line_of(marker: &str) -> u32 {
    markers::line(include_str!("native_breakpoints.rs"), marker)
}

fn agent(registry: &prometheus::Registry, budget: NativeBudget) -> AgentHandle {
    let prometheus = PrometheusProvider::new(registry.clone());
    Agent::builder()
        .offline()
        .provider(prometheus.clone())
        // The evaluation CPU budget is not under test here; a loaded machine must not trip it.
        .budgets(Budgets::unlimited_cpu())
        .native_breakpoints(budget)
        .self_metrics(prometheus)
        .start()
        .expect("agent starts")
}

/// Calls `step(thread, call)` on 3 threads until tracepoint `id`'s site says `moved` (its line
/// moved to a jump), and 300 ms more (at least 2,000 calls each); each thread's calls and the
/// sum of what `step` returned. At most 16 calls per millisecond per thread: well above
/// `jump_above`, and below what the decoder drains even on a loaded machine (unthrottled, a
/// jump's hits outrun it and the rings drop records, counted in
/// `sonde_agent_native_dropped_records_total`). The threads stop even if the wait fails, so
/// they do not run into other tests.
fn run_until_jump(
    agent: &AgentHandle,
    id: &str,
    moved: &str,
    step: impl Fn(u64, u64) -> f64 + Send + Sync + 'static,
) -> Vec<(u64, f64)> {
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(stop.clone());
    let step = Arc::new(step);
    let workers: Vec<_> = (0..3)
        .map(|t| {
            let (stop, step) = (stop.clone(), step.clone());
            std::thread::spawn(move || {
                let (mut calls, mut sum) = (0u64, 0f64);
                while !stop.load(Ordering::Relaxed) || calls < 2_000 {
                    sum += step(t, calls);
                    calls += 1;
                    if calls % 16 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                (calls, sum)
            })
        })
        .collect();
    wait_showing(
        "the line to move to a jump",
        || status(agent, id).sites[0].contains(moved),
        || format!("{:?}", status(agent, id)),
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    workers.into_iter().map(|w| w.join().unwrap()).collect()
}

/// What a timed-out wait on tracepoint `id` reports: its fires against the `calls` made, the
/// agent's own native counts, and its status.
fn native_state(
    agent: &AgentHandle,
    registry: &prometheus::Registry,
    id: &str,
    calls: u64,
) -> String {
    let own = |name: &str| own_metric(registry, name);
    format!(
        "fires {:?} of {calls} calls; traps {:?}, throttled {:?}, dropped records {:?}; {:?}",
        agent.fires(id),
        own(&format!(
            "sonde_agent_native_traps_total{{tracepoint=\"{id}\"}}"
        )),
        own(&format!(
            "sonde_agent_native_throttled_total{{tracepoint=\"{id}\"}}"
        )),
        own("sonde_agent_native_dropped_records_total"),
        status(agent, id)
    )
}

/// The agent's own metric `name` (exported once a second), as the exposition shows it.
fn own_metric(registry: &prometheus::Registry, name: &str) -> Option<f64> {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn unlimited() -> NativeBudget {
    NativeBudget {
        captures_per_sec: 10_000_000,
        burst: 10_000_000,
        max_traps_per_sec: u64::MAX,
        jump_above: u64::MAX,
    }
}

fn counter(
    id: &str,
    line: u32,
    name: &str,
    value: Option<&str>,
    labels: &[(&str, &str)],
) -> TracePointConfig {
    TracePointConfig {
        id: id.into(),
        path: FILE.into(),
        line_number: line,
        metrics: vec![Metric {
            name: name.into(),
            r#type: MetricType::Counter as i32,
            expression: value.map(str::to_owned),
            label_expressions: labels
                .iter()
                .map(|(k, e)| LabelExpression {
                    key: (*k).into(),
                    value: Some(label_expression::Value::Expression((*e).into())),
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The value of a counter series (the provider adds Deep's `deep_` namespace), from the
/// registry.
fn counter_value(
    registry: &prometheus::Registry,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    registry
        .gather()
        .into_iter()
        .find(|f| f.name() == format!("deep_{name}"))
        .and_then(|f| {
            f.get_metric().iter().find_map(|m| {
                let pairs: Vec<(&str, &str)> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                let matches = labels.iter().all(|want| pairs.contains(want));
                matches.then(|| m.get_counter().get_value())
            })
        })
}

#[test]
fn counts_and_values_are_exact_across_threads() {
    let _serial = serial();
    let registry = prometheus::Registry::new();
    let agent = agent(&registry, unlimited());
    let line = line_of("// @hit");
    agent.apply(vec![counter(
        "n1",
        line,
        "native_doubled_total",
        Some("doubled"),
        &[("who", "who")],
    )]);
    let st = status(&agent, "n1");
    assert_eq!(st.state, TracepointState::Bound, "{st:?}");
    assert!(st.sites[0].contains("(native,"), "{st:?}");

    const THREADS: u64 = 4;
    const CALLS: u64 = 500;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let name = format!("t{t}");
                (0..CALLS).map(|i| work(i, &name)).sum::<u64>()
            })
        })
        .collect();
    let sums: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // The results of the patched function are those of the unpatched one.
    let expected_each: u64 = (0..CALLS).map(|i| i * 2 + 2).sum();
    assert!(sums.iter().all(|s| *s == expected_each), "{sums:?}");

    wait_for("every hit to be decoded", || {
        agent.fires("n1") == Some(THREADS * CALLS)
    });
    let doubled_sum = (0..CALLS).map(|i| i * 2).sum::<u64>() as f64;
    for t in 0..THREADS {
        let who = format!("t{t}");
        assert_eq!(
            counter_value(&registry, "native_doubled_total", &[("who", &who)]),
            Some(doubled_sum),
            "series for {who}"
        );
    }
    // The agent's own metrics count the traps and the armed line.
    wait_for("sonde_agent_native_traps_total to count every hit", || {
        own_metric(
            &registry,
            r#"sonde_agent_native_traps_total{tracepoint="n1"}"#,
        ) == Some((THREADS * CALLS) as f64)
    });
    assert_eq!(
        own_metric(&registry, "sonde_agent_native_lines_armed"),
        Some(1.0)
    );
    agent.apply(Vec::new());
    assert_eq!(work(3, "x"), 7, "restored code still runs");
    wait_for("sonde_agent_native_lines_armed to go to 0", || {
        own_metric(&registry, "sonde_agent_native_lines_armed") == Some(0.0)
    });
    agent.shutdown();
}

#[test]
fn arming_every_line_of_a_function_changes_no_result() {
    let _serial = serial();
    let data: Vec<u64> = (0..2000u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7)
        .collect();
    let unpatched = checksum(&data);
    let registry = prometheus::Registry::new();
    let agent = agent(&registry, unlimited());
    let (start, end) = (line_of("// @module-start"), line_of("// @module-end"));
    let tracepoints: Vec<TracePointConfig> = (start..=end)
        .map(|l| {
            counter(
                &format!("line{l}"),
                l,
                &format!("native_line_{l}_total"),
                None,
                &[],
            )
        })
        .collect();
    agent.apply(tracepoints);
    let bound: Vec<u32> = (start..=end)
        .filter(|l| status(&agent, &format!("line{l}")).state == TracepointState::Bound)
        .collect();
    assert!(
        bound.len() >= 6,
        "most lines of checksum have code: {bound:?} of {start}..={end}"
    );

    let single = checksum(&data);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let data = data.clone();
            std::thread::spawn(move || checksum(&data))
        })
        .collect();
    let multi: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(single, unpatched);
    assert_eq!(multi, vec![unpatched, unpatched]);
    // The loop body's line ran once per element per call (3 calls).
    let body = line_of("acc = black_box(acc);");
    wait_for("the loop line's hits", || {
        agent.fires(&format!("line{body}")) == Some(3 * 2000)
    });
    agent.apply(Vec::new());
    assert_eq!(checksum(&data), unpatched);
    agent.shutdown();
}

#[test]
fn a_hot_line_moves_to_a_jump_and_its_counts_stay_exact() {
    let _serial = serial();
    let registry = prometheus::Registry::new();
    let agent = agent(
        &registry,
        NativeBudget {
            jump_above: 100,
            ..unlimited()
        },
    );
    agent.apply(vec![counter(
        "jump",
        line_of("// @jump"),
        "native_jump_total",
        Some("base"),
        &[("who", "name")],
    )]);
    const NAMES: [&str; 3] = ["j0", "j1", "j2"];
    let done = run_until_jump(&agent, "jump", "1 by jump", |t, k| {
        let i = k % 1000;
        assert_eq!(hot(i, NAMES[t as usize]), (i + 1) * 3 + 2);
        (i + 1) as f64
    });
    let total: u64 = done.iter().map(|d| d.0).sum();
    wait_showing(
        "every hit to be decoded",
        || agent.fires("jump") == Some(total),
        || native_state(&agent, &registry, "jump", total),
    );
    for (name, (_, bases)) in NAMES.iter().zip(&done) {
        assert_eq!(
            counter_value(&registry, "native_jump_total", &[("who", name)]),
            Some(*bases),
            "series for {name}"
        );
    }
    let st = status(&agent, "jump");
    assert_eq!(st.state, TracepointState::Bound, "{st:?}");
    wait_for("sonde_agent_native_jump_addresses to show the jump", || {
        own_metric(&registry, "sonde_agent_native_jump_addresses") == Some(1.0)
    });
    // Every hit counts as a trap, through the int3 or through the jump.
    wait_showing(
        "sonde_agent_native_traps_total to count every hit",
        || {
            own_metric(
                &registry,
                r#"sonde_agent_native_traps_total{tracepoint="jump"}"#,
            ) == Some(total as f64)
        },
        || native_state(&agent, &registry, "jump", total),
    );
    agent.apply(Vec::new());
    for i in 0..100 {
        assert_eq!(hot(i, "after"), (i + 1) * 3 + 5, "restored code");
    }
    agent.shutdown();
}

#[test]
fn disarming_while_threads_run_through_the_line_is_safe() {
    let _serial = serial();
    let registry = prometheus::Registry::new();
    let agent = agent(&registry, unlimited());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let i = calls % 1000;
                    assert_eq!(work(i, "abc"), i * 2 + 3);
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let line = line_of("// @hit");
    for round in 0..40 {
        agent.apply(vec![counter(
            &format!("toggle{round}"),
            line,
            "native_toggle_total",
            None,
            &[],
        )]);
        std::thread::sleep(Duration::from_millis(2));
        agent.apply(Vec::new());
    }
    stop.store(true, Ordering::Relaxed);
    let calls: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(calls > 0);
    agent.shutdown();
}

#[test]
fn a_panic_unwinds_through_a_patched_frame() {
    let _serial = serial();
    let registry = prometheus::Registry::new();
    let agent = agent(&registry, unlimited());
    agent.apply(vec![
        counter(
            "before",
            line_of("// @panic-before"),
            "native_before_total",
            Some("n"),
            &[],
        ),
        counter(
            "panic",
            line_of("// @panic-line"),
            "native_panic_total",
            None,
            &[],
        ),
    ]);
    for id in ["before", "panic"] {
        assert_eq!(
            status(&agent, id).state,
            TracepointState::Bound,
            "{:?}",
            status(&agent, id)
        );
    }
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut caught = 0;
    for n in 1..=70u64 {
        match std::panic::catch_unwind(|| may_panic(n)) {
            Ok(v) => assert_eq!(v, n + 1),
            Err(_) => caught += 1,
        }
    }
    std::panic::set_hook(hook);
    assert_eq!(caught, 10, "7, 14, …, 70");
    wait_for("both lines' hits", || {
        agent.fires("before") == Some(70) && agent.fires("panic") == Some(10)
    });
    assert_eq!(
        counter_value(&registry, "native_before_total", &[]),
        Some((1..=70u64).sum::<u64>() as f64)
    );
    agent.apply(Vec::new());
    agent.shutdown();
}

#[test]
fn each_failure_mode_has_a_clear_status() {
    let _serial = serial();
    let registry = prometheus::Registry::new();
    let agent = agent(&registry, unlimited());
    let comment = line_of("// @module-start");
    agent.apply(vec![
        counter("nocode", comment, "native_nocode_total", None, &[]),
        counter(
            "novar",
            line_of("// @hit"),
            "native_novar_total",
            Some("nope"),
            &[],
        ),
        counter("nofile", 1, "native_nofile_total", None, &[]).tap_path("src/does_not_exist.rs"),
        counter(
            "alloc",
            line_of("// @alloc"),
            "native_alloc_total",
            None,
            &[],
        ),
    ]);
    let alloc = status(&agent, "alloc");
    assert_eq!(alloc.state, TracepointState::Error, "{alloc:?}");
    assert!(alloc.message.contains("global allocator"), "{alloc:?}");
    let nocode = status(&agent, "nocode");
    assert_eq!(nocode.state, TracepointState::Unbound);
    assert!(nocode.message.contains("has no code"), "{nocode:?}");
    assert!(
        nocode.message.contains("nearest lines with code"),
        "{nocode:?}"
    );
    let novar = status(&agent, "novar");
    assert_eq!(novar.state, TracepointState::Error);
    assert!(
        novar.message.contains("`nope`") && novar.message.contains("doubled"),
        "{novar:?}"
    );
    let nofile = status(&agent, "nofile");
    assert_eq!(nofile.state, TracepointState::Unbound);
    assert!(nofile.message.contains("no file matching"), "{nofile:?}");
    agent.apply(Vec::new());
    agent.shutdown();
}

#[test]
fn a_line_over_its_trap_budget_disarms_itself() {
    let _serial = serial();
    let registry = prometheus::Registry::new();
    let agent = agent(
        &registry,
        NativeBudget {
            captures_per_sec: 100,
            burst: 10,
            max_traps_per_sec: 500,
            jump_above: u64::MAX,
        },
    );
    let line = line_of("// @hit");
    agent.apply(vec![counter("hot", line, "native_hot_total", None, &[])]);
    assert_eq!(status(&agent, "hot").state, TracepointState::Bound);
    let started = Instant::now();
    let mut calls = 0u64;
    while status(&agent, "hot").state == TracepointState::Bound {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never disarmed"
        );
        for i in 0..2000 {
            black_box(work(i, "hot"));
        }
        calls += 2000;
    }
    let st = status(&agent, "hot");
    assert_eq!(st.state, TracepointState::Disarmed, "{st:?}");
    assert!(
        st.message
            .contains("hits/s over the native budget of 500/s"),
        "{st:?}"
    );
    // Fires count the hits each capture stands for (itself and the traps turned away before it).
    let fired = agent.fires("hot").unwrap();
    assert!(fired <= calls, "{fired} of {calls}");
    // The agent's own metrics say so too (the counts are flushed as the line is dropped).
    assert_eq!(
        own_metric(
            &registry,
            r#"sonde_agent_tracepoint_disarms_total{reason="native_traps",tracepoint="hot"}"#
        ),
        Some(1.0)
    );
    let traps = own_metric(
        &registry,
        r#"sonde_agent_native_traps_total{tracepoint="hot"}"#,
    );
    let throttled = own_metric(
        &registry,
        r#"sonde_agent_native_throttled_total{tracepoint="hot"}"#,
    );
    // The token bucket let through far fewer captures than there were traps...
    assert!(
        matches!((traps, throttled), (Some(t), Some(th)) if th > t / 2.0 && th < t && t >= fired as f64),
        "traps {traps:?}, throttled {throttled:?}, fired {fired}"
    );
    // ...and each capture carried the traps turned away before it, so the counter still counts
    // (nearly) every trap: all but those turned away after the last capture.
    let counted = counter_value(&registry, "native_hot_total", &[]).unwrap();
    let traps = traps.unwrap();
    assert!(
        counted <= traps && counted >= 0.8 * traps,
        "counter {counted} for {traps} traps ({throttled:?} throttled)"
    );
    agent.apply(Vec::new());
    agent.shutdown();
}

#[test]
fn a_debugger_attached_refuses_native_arming() {
    let _serial = serial();
    let registry = prometheus::Registry::new();
    let agent = agent(&registry, unlimited());
    let me = std::process::id() as libc::pid_t;
    // Let a child of ours trace us (Yama's ptrace_scope may forbid it otherwise), and have it
    // seize this process without stopping it.
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_SET_PTRACER,
            libc::PR_SET_PTRACER_ANY as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            &format!(
                "import ctypes,sys,time\nlibc=ctypes.CDLL(None,use_errno=True)\n\
                 r=libc.ptrace(0x4206,{me},0,0)\nprint('seized' if r==0 else 'failed %d' % ctypes.get_errno(),flush=True)\n\
                 time.sleep(30)"
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut out)
        .unwrap();
    if out.trim() != "seized" {
        let _ = child.kill();
        panic!("could not attach a tracer to test the refusal: {out}");
    }
    agent.apply(vec![counter(
        "traced",
        line_of("// @hit"),
        "native_traced_total",
        None,
        &[],
    )]);
    let st = status(&agent, "traced");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(st.state, TracepointState::Error, "{st:?}");
    assert!(
        st.message.contains("a debugger is attached (TracerPid"),
        "{st:?}"
    );
    agent.apply(Vec::new());
    agent.shutdown();
}

/// Items of an order with `n` lines.
fn items(n: u64) -> Vec<Item> {
    (0..n)
        .map(|i| Item {
            quantity: (i % 5 + 1) as u32,
            cents: 100 + i * 7,
            sku: format!("SKU-{i}"),
        })
        .collect()
}

#[test]
fn optimized_code_reads_registers_and_names_what_is_optimized_out() {
    let _serial = serial();
    let index = DebugIndex::for_current_exe().expect("debug info");
    let names = ["items", "discount", "fee", "gross", "kept", "net", "total"];
    let lines = [
        fixture_line("// @kept"),
        fixture_line("// @net"),
        fixture_line("// @total"),
    ];
    // What the optimizer did, per (line, variable): readable at every address of the line, or
    // at none of them but somewhere nearby.
    let mut readable = Vec::new();
    let mut elsewhere = Vec::new();
    for &line in &lines {
        let found = index.lookup(FIXTURE, line);
        if found.is_empty() {
            continue;
        }
        for name in names {
            let vars: Vec<_> = found
                .addresses
                .iter()
                .filter_map(|a| {
                    index
                        .variables_at(a.address)
                        .unwrap()
                        .into_iter()
                        .rev()
                        .find(|v| v.name == name)
                })
                .collect();
            if vars.is_empty() || vars.len() != found.addresses.len() {
                continue;
            }
            if vars
                .iter()
                .all(|v| v.plan.is_available() && v.shape.is_ok())
            {
                readable.push((line, name, vars[0].plan.clone()));
            } else if vars
                .iter()
                .all(|v| !v.plan.is_available() && !v.available_at.is_empty())
            {
                elsewhere.push((line, name, vars[0].available_at.clone()));
            }
        }
    }
    let fee_line = *readable
        .iter()
        .find(|(_, n, _)| *n == "fee")
        .map(|(l, _, _)| l)
        .unwrap_or_else(|| panic!("`fee` readable on one of {lines:?}: {readable:?}"));
    assert!(
        readable
            .iter()
            .any(|(_, _, p)| matches!(p, CapturePlan::Reg(_))),
        "optimized code keeps some of these in registers: {readable:?}"
    );

    let registry = prometheus::Registry::new();
    let agent = agent(&registry, unlimited());
    let mut tracepoints =
        vec![counter("fee", fee_line, "native_fee_total", Some("fee"), &[]).tap_path(FIXTURE)];
    if let Some((line, name, _)) = elsewhere.first() {
        tracepoints
            .push(counter("gone", *line, "native_gone_total", Some(name), &[]).tap_path(FIXTURE));
    }
    agent.apply(tracepoints);
    let fee = status(&agent, "fee");
    assert_eq!(fee.state, TracepointState::Bound, "{fee:?}");
    let order = items(12);
    let expected: u64 = order.iter().map(|i| u64::from(i.quantity) * i.cents).sum();
    for f in 1..=50u64 {
        assert_eq!(order_total(&order, 10, f), expected * 90 / 100 + f);
    }
    wait_for("50 hits of the fee line", || agent.fires("fee") == Some(50));
    assert_eq!(
        counter_value(&registry, "native_fee_total", &[]),
        Some((1..=50u64).sum::<u64>() as f64)
    );
    // opt-level 2 leaves at least one of these unreadable on one line and readable nearby.
    let (line, name, at) = elsewhere
        .first()
        .unwrap_or_else(|| panic!("nothing optimized out on {lines:?}: {readable:?}"));
    let gone = status(&agent, "gone");
    assert_eq!(gone.state, TracepointState::Bound, "{gone:?}");
    let want = format!("`{name}` cannot be read at {FIXTURE}:{line}");
    assert!(gone.message.contains(&want), "{gone:?}");
    let nearby = at.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    assert!(gone.message.contains(&nearby), "{gone:?} names {nearby}");
    agent.apply(Vec::new());
    agent.shutdown();

    // The catalog's `lines` answer judges as arming did: `fee` readable on its line, the
    // optimized-out one not, with the same nearby lines, and blank or comment lines absent.
    let native = Native::start(NativeBudget::default());
    let wait = std::time::Duration::from_secs(30);
    let all = native
        .lines(FIXTURE, None, wait)
        .expect("the fixture's lines");
    let on = |line: u32| all.iter().find(|l| l.line == line);
    let fee = on(fee_line)
        .and_then(|l| l.variables.iter().find(|v| v.name == "fee"))
        .unwrap_or_else(|| panic!("`fee` listed at line {fee_line}: {:?}", on(fee_line)));
    assert!(fee.readable && fee.why.is_none(), "{fee:?}");
    let listed = on(*line)
        .and_then(|l| l.variables.iter().find(|v| v.name == **name))
        .unwrap_or_else(|| panic!("`{name}` listed at line {line}: {:?}", on(*line)));
    assert!(!listed.readable, "{listed:?}");
    assert_eq!(listed.why, Some("optimized out"), "{listed:?}");
    assert_eq!(&listed.readable_at, at, "{listed:?}");
    let source = include_str!("../fixture/src/lib.rs");
    for (i, text) in source.lines().enumerate() {
        let t = text.trim();
        if t.is_empty() || t.starts_with("//") {
            assert!(
                on(i as u32 + 1).is_none(),
                "line {} ({t:?}) is listed",
                i + 1
            );
        }
    }
    // One line asked alone answers the same.
    let alone = native.lines(FIXTURE, Some(*line), wait).unwrap();
    assert_eq!(alone.as_slice(), std::slice::from_ref(on(*line).unwrap()));
}

trait TapPath {
    fn tap_path(self, path: &str) -> Self;
}

impl TapPath for TracePointConfig {
    fn tap_path(mut self, path: &str) -> Self {
        self.path = path.into();
        self
    }
}

#[test]
fn a_hot_line_reading_an_xmm_register_moves_to_a_jump() {
    let _serial = serial();
    let line = fixture_line("// @discounted");
    // The precondition: at every address of the line, `gross` is in an XMM register (DWARF
    // registers 17–32).
    let index = DebugIndex::for_current_exe().expect("debug info");
    let found = index.lookup(FIXTURE, line);
    assert!(!found.is_empty(), "line {line} has no code");
    for a in &found.addresses {
        let vars = index.variables_at(a.address).unwrap();
        let gross = vars.iter().rev().find(|v| v.name == "gross");
        assert!(
            matches!(gross.map(|v| &v.plan), Some(CapturePlan::Reg(17..=32))),
            "`gross` at {:#x} is not in an XMM register: {gross:?}",
            a.address
        );
    }
    let registry = prometheus::Registry::new();
    let agent = agent(
        &registry,
        NativeBudget {
            jump_above: 100,
            ..unlimited()
        },
    );
    agent.apply(vec![
        counter("xmm", line, "native_xmm_total", Some("gross"), &[]).tap_path(FIXTURE),
    ]);
    // Prices in whole units and a rate of one half: every `gross` and every sum is exact.
    let done = run_until_jump(&agent, "xmm", "by jump", |t, k| {
        let price = ((k + t) % 100) as f64;
        let net = sonde_native_fixture::discounted(price, 0.5);
        assert_eq!(net, price * 1.5 * 0.9 + 0.5);
        price * 1.5
    });
    let calls: u64 = done.iter().map(|d| d.0).sum();
    let grosses: f64 = done.iter().map(|d| d.1).sum();
    wait_showing(
        "every hit to be decoded",
        || agent.fires("xmm") == Some(calls),
        || native_state(&agent, &registry, "xmm", calls),
    );
    assert_eq!(
        counter_value(&registry, "native_xmm_total", &[]),
        Some(grosses),
        "the sum of `gross` over {calls} calls, read from XMM through the int3 and the jump"
    );
    agent.apply(Vec::new());
    assert_eq!(sonde_native_fixture::discounted(2.0, 0.5), 3.2);
    agent.shutdown();
}
