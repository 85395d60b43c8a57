//! Recording through instruments backed by `NullProvider` (the default backend) allocates
//! nothing: counter inc/add, gauge set/inc/dec, an in-flight guard, histogram observe, timer
//! record and stopwatch, and `CounterVec::add` / `HistogramVec::observe` for a label set that
//! already exists, 100,000 times each.
//!
//! Its own test binary because it installs a counting `#[global_allocator]`. The allocator counts
//! only allocations made by the thread that asked for counting, so the test harness's other
//! threads (and the other tests of this binary, which run in parallel) do not disturb a count.

mod common;

use common::{Counting, count_allocations};

use std::{hint::black_box, time::Duration};

use sonde_agent::{
    NullProvider,
    metrics::{Buckets, Metrics},
};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const N: u32 = 100_000;

/// A `NullProvider` handle shaped like a real one: namespace, subsystem and global tags.
fn null_metrics() -> Metrics {
    Metrics::builder()
        .provider(NullProvider)
        .namespace("app")
        .subsystem("api")
        .global_tag("env", "prod")
        .build()
}

#[test]
fn recording_through_null_instruments_allocates_nothing() {
    let m = null_metrics();
    // Creating instruments and the label sets may allocate; recording must not.
    let counter = m.counter("requests_total", "Requests.");
    let child = counter.with_tags(&[("route", "/checkout")]);
    let gauge = m.gauge("queue_depth", "Queue depth.");
    let histogram = m.histogram("size_bytes", "Sizes.", Buckets::SIZES_BYTES);
    let summary = m.summary("render_seconds", "Render time.");
    let timer = m.timer("work_duration_seconds", "Work.");
    let orders = m.counter_vec("orders_total", "Orders.", &["country", "tier"]);
    let latency = m.histogram_vec(
        "latency_seconds",
        "Latency.",
        Buckets::LATENCY_SECONDS,
        &["route"],
    );
    orders.add(&["NZ", "gold"], 1.0);
    latency.observe(&["/checkout"], 0.1);

    let allocations = count_allocations(|| {
        for i in 0..N {
            let v = black_box(f64::from(i));
            counter.inc();
            counter.add(v);
            child.inc();
            gauge.set(v);
            gauge.inc();
            gauge.dec();
            gauge.add(v);
            gauge.sub(v);
            histogram.observe(v);
            summary.observe(v);
            timer.record(black_box(Duration::from_micros(u64::from(i))));
            orders.add(black_box(&["NZ", "gold"]), 1.0);
            latency.observe(black_box(&["/checkout"]), v);
        }
    });
    assert_eq!(allocations, 0, "allocations over {N} rounds of recording");
    assert_eq!(m.errors(), 0);
}

#[test]
fn guards_over_null_instruments_allocate_nothing() {
    let m = null_metrics();
    let gauge = m.gauge("in_flight", "In flight.");
    let timer = m.timer("guarded_duration_seconds", "Guarded work.");
    let allocations = count_allocations(|| {
        for i in 0..N {
            let _in_flight = gauge.track_in_flight();
            let _watch = timer.start();
            black_box(timer.time(|| black_box(i) + 1));
        }
    });
    assert_eq!(allocations, 0, "allocations over {N} guarded scopes");
}

#[test]
fn the_counter_sees_a_deliberate_allocation() {
    let allocations = count_allocations(|| {
        for i in 0..100u64 {
            black_box(Box::new(black_box(i)));
        }
    });
    assert_eq!(allocations, 100);
}
