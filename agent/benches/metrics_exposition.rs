//! Metrics API: the text exposition of 10,000 series (target ≤ 10 ms).
//!
//! Ten counter families of 1,000 label sets each (the default per-metric cap), two label keys of
//! their own and one global tag, made through the metrics API into a `PrometheusProvider`. One
//! iteration is what a scrape of the metrics endpoint costs: `exposition::encode_registry`, which
//! writes the provider's series straight into the text (and gathers the rest of the registry).
//! Beside it: the same in OpenMetrics, and the `prometheus` crate's own path
//! (`registry.gather()` then `prometheus::TextEncoder`), which the direct path must match byte for
//! byte, and `registry.gather()` alone.

mod common;

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use sonde_agent::{
    PrometheusProvider,
    exposition::{self, Format},
    metrics::Metrics,
};

const FAMILIES: usize = 10;
const SERIES_PER_FAMILY: usize = 1000;

fn metrics_exposition(c: &mut Criterion) {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder()
        .provider(PrometheusProvider::new(registry.clone()))
        .namespace("bench")
        .global_tag("env", "prod")
        .build();
    for f in 0..FAMILIES {
        let vec = metrics.counter_vec(
            &format!("family_{f}_total"),
            "A family of the exposition bench.",
            &["route", "status"],
        );
        for s in 0..SERIES_PER_FAMILY {
            let route = format!("/route/{}", s / 10);
            let status = format!("{}", 200 + s % 10);
            vec.add(&[&route, &status], (s + 1) as f64);
        }
    }
    let series: usize = registry
        .gather()
        .iter()
        .filter(|f| f.name().starts_with("bench_family_"))
        .map(|f| f.get_metric().len())
        .sum();
    assert_eq!(series, FAMILIES * SERIES_PER_FAMILY);
    let text = common::exposition(&registry);
    assert!(
        !text.contains(sonde_agent::OVERFLOW_LABEL),
        "nothing folded"
    );
    assert!(
        exposition::encode_registry(&registry, Format::Text) == text.as_bytes(),
        "the direct path writes what gather() and the TextEncoder write"
    );

    let mut g = c.benchmark_group("metrics_exposition");
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(10);
    g.bench_function("encode_10k_series", |b| {
        b.iter(|| black_box(exposition::encode_registry(&registry, Format::Text).len()))
    });
    g.bench_function("encode_10k_series_openmetrics", |b| {
        b.iter(|| black_box(exposition::encode_registry(&registry, Format::OpenMetrics).len()))
    });
    g.bench_function("gather_and_text_encoder_10k_series", |b| {
        b.iter(|| {
            let text = prometheus::TextEncoder::new()
                .encode_to_string(&registry.gather())
                .expect("encodes");
            black_box(text.len())
        })
    });
    g.bench_function("gather_10k_series", |b| {
        b.iter(|| black_box(registry.gather().len()))
    });
    g.finish();
    println!("exposition of {series} series: {} bytes", text.len());
}

criterion_group! { name = benches; config = common::config(); targets = metrics_exposition }
criterion_main!(benches);
