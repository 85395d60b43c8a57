//! One registry encoded in both exposition formats matches the golden files in `tests/data`:
//! the Prometheus text format 0.0.4, and OpenMetrics 1.0 (counters' families without `_total`,
//! canonical `le` and `quantile` values, escaping, `# EOF`). Set `SONDE_BLESS=1` to rewrite the
//! files after a deliberate change, and review the diff; under CI blessing is refused.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::PathBuf;

#[path = "../../tests/common/skip.rs"]
mod skip;

use sonde_agent::{
    PrometheusProvider,
    exposition::{self, Format, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE},
    metrics::{Buckets, Metrics},
};

/// The registry, and the `Metrics` whose instruments it exposes (dropping it unregisters them).
fn registry() -> (prometheus::Registry, Metrics) {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder()
        .provider(PrometheusProvider::new(registry.clone()))
        .namespace("shop")
        .global_tag("env", "test")
        .build();
    let orders = metrics.counter_vec("orders_total", "Orders placed.", &["country"]);
    orders.with(&["NZ"]).add(3.0);
    orders.with(&["a \"quoted\" \\ new\nline"]).inc();
    metrics
        .gauge("queue_depth", "Jobs waiting, \"now\".\nSecond line.")
        .set(2.5);
    let latency = metrics.histogram(
        "latency_seconds",
        "Request latency.",
        &[0.005, 0.1, 1.0, 100000.0, 1e6],
    );
    for v in [0.003, 0.05, 0.5, 7.0, 2e6] {
        latency.observe(v);
    }
    let sizes = metrics.histogram("size_bytes", "Body sizes.", Buckets::SIZES_BYTES);
    sizes.observe(100.0);
    let summary = metrics.summary("work_seconds", "Work time.");
    for v in [1.0, 2.0, 3.0] {
        summary.observe(v);
    }
    // Registered straight into the registry: a counter whose name lacks `_total`, and an
    // application metric next to Sonde's collector.
    let legacy = prometheus::Counter::new("legacy_hits", "Hits, named the old way.").unwrap();
    legacy.inc_by(0.25);
    registry.register(Box::new(legacy)).unwrap();
    (registry, metrics)
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    if std::env::var_os("SONDE_BLESS").is_some() {
        // Under CI a stray SONDE_BLESS would rewrite the files and pass whatever the output is.
        assert!(
            !skip::skips_refused(),
            "SONDE_BLESS is set under CI: golden files are blessed by hand, never in CI"
        );
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (SONDE_BLESS=1 writes it)", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs (SONDE_BLESS=1 rewrites it)",
        path.display()
    );
}

#[test]
fn openmetrics_output_matches_the_golden_file() {
    let (registry, _metrics) = registry();
    let (content_type, body) = exposition::encode(
        &registry,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert_eq!(content_type, OPENMETRICS_CONTENT_TYPE);
    golden(
        "exposition.openmetrics.txt",
        &String::from_utf8(body).unwrap(),
    );
}

#[test]
fn text_output_matches_the_golden_file() {
    let (registry, _metrics) = registry();
    let (content_type, body) = exposition::encode(&registry, Some("text/plain"));
    assert_eq!(content_type, TEXT_CONTENT_TYPE);
    golden(
        "exposition.prometheus.txt",
        &String::from_utf8(body).unwrap(),
    );
}

/// Structural rules of OpenMetrics 1.0 checked line by line, beside the golden file: they hold
/// for any registry, so a golden file blessed by mistake cannot hide a broken rule.
#[test]
fn openmetrics_output_keeps_the_spec_rules() {
    let (registry, _metrics) = registry();
    let text = String::from_utf8(exposition::encode_families(
        &registry.gather(),
        Format::OpenMetrics,
    ))
    .unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1);
    let mut family: Option<(String, String)> = None;
    let mut seen = std::collections::HashSet::new();
    for line in text.lines() {
        assert!(!line.contains('\r'));
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(seen.insert(name.to_owned()), "family {name} twice");
            if kind == "counter" {
                assert!(!name.ends_with("_total"), "{line}");
            }
            family = Some((name.to_owned(), kind.to_owned()));
            continue;
        }
        if line.starts_with("# HELP ") || line == "# EOF" {
            continue;
        }
        assert!(!line.starts_with('#'), "{line}");
        let (name, kind) = family.as_ref().expect("a sample before any # TYPE");
        let sample = line.split(['{', ' ']).next().unwrap();
        let suffix = sample.strip_prefix(name.as_str()).unwrap_or_else(|| {
            panic!("{sample} outside its family {name}");
        });
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total"],
            "gauge" | "unknown" => &[""],
            "histogram" => &["_bucket", "_count", "_sum"],
            "summary" => &["", "_count", "_sum"],
            other => panic!("type {other}"),
        };
        assert!(allowed.contains(&suffix), "{line}");
        let value = line.rsplit(' ').next().unwrap();
        if suffix == "_count" || suffix == "_bucket" {
            assert!(value.parse::<u64>().is_ok(), "integer count: {line}");
        } else {
            assert!(
                value.contains(['.', 'e']) || ["NaN", "+Inf", "-Inf"].contains(&value),
                "float with a point or exponent: {line}"
            );
        }
    }
}
