//! Metrics API: a histogram observe through `PrometheusProvider` (target ≤ 15 ns).
//!
//! A cached handle with `Buckets::LATENCY_SECONDS` (11 bounds); the observed values cycle over
//! the range so the bucket search is not always the first comparison. A `Timer::record` (the same
//! histogram, fed a `Duration`) is measured beside it.

mod common;

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use sonde_agent::{
    PrometheusProvider,
    metrics::{Buckets, Metrics},
};

fn metrics_histogram(c: &mut Criterion) {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder()
        .provider(PrometheusProvider::new(registry.clone()))
        .namespace("bench")
        .global_tag("env", "prod")
        .build();
    let latency = metrics.histogram(
        "request_duration_seconds",
        "Latency.",
        Buckets::LATENCY_SECONDS,
    );
    let timer = metrics.timer("work_duration_seconds", "Work.");
    let values: Vec<f64> = (0..64).map(|i| 0.002 * f64::from(i * i)).collect();
    let durations: Vec<Duration> = values.iter().map(|v| Duration::from_secs_f64(*v)).collect();

    let mut g = c.benchmark_group("metrics_histogram");
    let mut i = 0usize;
    g.bench_function("observe", |b| {
        b.iter(|| {
            i = (i + 1) & 63;
            latency.observe(black_box(values[i]));
        })
    });
    let mut i = 0usize;
    g.bench_function("timer_record", |b| {
        b.iter(|| {
            i = (i + 1) & 63;
            timer.record(black_box(durations[i]));
        })
    });
    g.finish();

    let text = common::exposition(&registry);
    assert!(
        text.contains(r#"bench_request_duration_seconds_bucket{env="prod",le="0.005"}"#),
        "{text}"
    );
}

criterion_group! { name = benches; config = common::config(); targets = metrics_histogram }
criterion_main!(benches);
