//! Metrics API: a tagged lookup-and-add, `CounterVec::add(&values, 1.0)` for a label set that
//! already exists, through `PrometheusProvider` (target ≤ 30 ns).
//!
//! Each iteration hashes the values (foldhash), finds the series under the family's read lock,
//! clones and drops its `Arc`, and adds. Two label keys of its own plus one global tag, like a
//! route-and-status counter in a tagged deployment; 100 label sets exist, so the lookup is not
//! into a map of one. `with(..).inc()` (a handle built per call) is measured beside it.

mod common;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sonde_agent::{PrometheusProvider, metrics::Metrics};

fn metrics_tagged(c: &mut Criterion) {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder()
        .provider(PrometheusProvider::new(registry.clone()))
        .namespace("bench")
        .global_tag("env", "prod")
        .build();
    let orders = metrics.counter_vec("orders_total", "Orders.", &["country", "tier"]);
    let countries: Vec<String> = (0..50).map(|i| format!("C{i:02}")).collect();
    for country in &countries {
        for tier in ["gold", "basic"] {
            orders.add(&[country, tier], 1.0);
        }
    }
    let values = ["C17", "gold"];

    let mut g = c.benchmark_group("metrics_tagged");
    g.bench_function("counter_vec_add", |b| {
        b.iter(|| orders.add(black_box(&values), black_box(1.0)))
    });
    g.bench_function("counter_vec_with_inc", |b| {
        b.iter(|| orders.with(black_box(&values)).inc())
    });
    g.finish();

    let text = common::exposition(&registry);
    assert!(
        text.contains(r#"bench_orders_total{country="C17",env="prod",tier="gold"}"#),
        "{text}"
    );
}

criterion_group! { name = benches; config = common::config(); targets = metrics_tagged }
criterion_main!(benches);
