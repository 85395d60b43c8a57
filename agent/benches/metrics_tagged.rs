//! Metrics API: a tagged lookup-and-add, `CounterVec::add(&values, 1.0)` for a label set that
//! already exists, through `PrometheusProvider` (target ≤ 30 ns).
//!
//! Each iteration hashes the values that vary (the global tag is left out of the key), finds
//! the series in the family's lock-free table (see `series_cache.rs`), and adds through one
//! virtual call. Two label keys of its own plus one global tag, like a route-and-status counter in
//! a tagged deployment; 100 label sets exist, so the lookup is not into a map of one.
//! Beside it: the same add cycling through all 100 label sets, and `with(..).inc()` (a handle
//! built per call).

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
    // The same add cycling through all 100 label sets (other table slots, tiers of two lengths),
    // so the branches and cache lines of one label set do not flatter the figure. Per add.
    let all: Vec<[&str; 2]> = countries
        .iter()
        .flat_map(|c| [[c.as_str(), "gold"], [c.as_str(), "basic"]])
        .collect();
    let mut next = 0;
    g.bench_function("counter_vec_add_100_label_sets", |b| {
        b.iter(|| {
            next = (next + 1) % all.len();
            orders.add(black_box(&all[next]), black_box(1.0))
        })
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
