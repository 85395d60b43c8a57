//! Metrics API: a cached counter add through `PrometheusProvider` (target ≤ 5 ns).
//!
//! The handle is resolved once (`metrics.counter(..)`, global tags included), as an application
//! keeps it; each measured iteration is one `add`: a virtual call into the provider's series,
//! the finiteness and sign checks, and the `prometheus` crate's atomic add. `inc`, and a labelled
//! counter's handle (`counter_vec(..).with(..)`, resolved once), are the same path and are
//! measured beside it.

mod common;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sonde_agent::{PrometheusProvider, metrics::Metrics};

fn metrics_counter(c: &mut Criterion) {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder()
        .provider(PrometheusProvider::new(registry.clone()))
        .namespace("bench")
        .global_tag("env", "prod")
        .build();
    let counter = metrics.counter("requests_total", "Requests.");
    let child = metrics
        .counter_vec("routed_requests_total", "Requests by route.", &["route"])
        .with(&["/checkout"]);

    let mut g = c.benchmark_group("metrics_counter");
    g.bench_function("add", |b| b.iter(|| counter.add(black_box(1.0))));
    g.bench_function("inc", |b| b.iter(|| counter.inc()));
    g.bench_function("labelled_handle_inc", |b| b.iter(|| child.inc()));
    g.finish();

    let text = common::exposition(&registry);
    assert!(
        text.contains(r#"bench_routed_requests_total{env="prod",route="/checkout"}"#),
        "{text}"
    );
}

criterion_group! { name = benches; config = common::config(); targets = metrics_counter }
criterion_main!(benches);
