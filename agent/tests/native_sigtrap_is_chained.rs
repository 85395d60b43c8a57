//! A SIGTRAP that is not Sonde's reaches the handler that was installed before Sonde's: a
//! `raise(SIGTRAP)` and an `int3` of the application's own, while a native breakpoint is armed
//! and keeps working. (Its own binary: the handler installed first must be the application's.)
#![cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
#![allow(clippy::unwrap_used)]

mod markers;

use std::{
    hint::black_box,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use sonde_agent::{Agent, PrometheusProvider, TracepointState, native::NativeBudget};
use sonde_proto::tracepoint::{Metric, MetricType, TracePointConfig};

static APP_TRAPS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn app_handler(_sig: libc::c_int) {
    APP_TRAPS.fetch_add(1, Ordering::SeqCst);
}

#[inline(never)]
fn armed(i: u64) -> u64 {
    black_box(i + 1) // @armed
}

fn line_of(marker: &str) -> u32 {
    markers::line(include_str!("native_sigtrap_is_chained.rs"), marker)
}

#[test]
fn foreign_traps_reach_the_previous_handler() {
    // The application's own SIGTRAP handler, installed before the agent arms anything.
    // SAFETY: installing a handler that only bumps an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = app_handler as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut()), 0);
    }
    let registry = prometheus::Registry::new();
    let agent = Agent::builder()
        .offline()
        .provider(PrometheusProvider::new(registry))
        .native_breakpoints(NativeBudget::default())
        .start()
        .unwrap();
    agent.apply(vec![TracePointConfig {
        id: "armed".into(),
        path: "tests/native_sigtrap_is_chained.rs".into(),
        line_number: line_of("// @armed"),
        metrics: vec![Metric {
            name: "chained_hits".into(),
            r#type: MetricType::Counter as i32,
            ..Default::default()
        }],
        ..Default::default()
    }]);
    let st = agent.statuses();
    assert_eq!(st[0].state, TracepointState::Bound, "{st:?}");

    // SAFETY: raising a signal this process handles.
    unsafe { libc::raise(libc::SIGTRAP) };
    assert_eq!(
        APP_TRAPS.load(Ordering::SeqCst),
        1,
        "raise(SIGTRAP) was passed on"
    );
    // SAFETY: a breakpoint instruction of the application's own; its handler returns and
    // execution continues after it.
    unsafe { std::arch::asm!("int3") };
    assert_eq!(
        APP_TRAPS.load(Ordering::SeqCst),
        2,
        "a foreign int3 was passed on"
    );

    for i in 0..10 {
        assert_eq!(armed(i), i + 1);
    }
    let started = Instant::now();
    while agent.fires("armed") != Some(10) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            agent.fires("armed")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        APP_TRAPS.load(Ordering::SeqCst),
        2,
        "Sonde's own traps stay Sonde's"
    );
    agent.apply(Vec::new());
    agent.shutdown();
}
