//! A tracepoint's metrics reach an OpenTelemetry SDK through `OtelProvider`: names, descriptions,
//! attributes and values of a counter, a gauge, a histogram and a summary (as a histogram), read
//! back through the SDK's in-memory exporter.
//!
//! One test function: probe sites are global and only one agent may run in a process at a time.
//! Run with `cargo test -p sonde-agent --features opentelemetry --test otel_provider`.

#![cfg(feature = "opentelemetry")]

use opentelemetry::{KeyValue, metrics::MeterProvider};
use opentelemetry_sdk::metrics::{
    InMemoryMetricExporter, PeriodicReader, SdkMeterProvider,
    data::{AggregatedMetrics, Metric as OtelMetric, MetricData, ResourceMetrics},
};
use sonde_agent::{Agent, OtelProvider, TracepointState, probe};
use sonde_proto::tracepoint::{
    LabelExpression, Metric, MetricType, TracePointConfig, label_expression,
};

fn checkout(country: &str, total: f64) {
    probe!(country, total);
}

fn tracepoint(path: &str, line: u32) -> TracePointConfig {
    let metric = |name: &str, kind: MetricType, help: &str| Metric {
        name: name.into(),
        r#type: kind as i32,
        expression: Some("total".into()),
        help: Some(help.into()),
        label_expressions: vec![LabelExpression {
            key: "country".into(),
            value: Some(label_expression::Value::Expression("country".into())),
        }],
        ..Default::default()
    };
    TracePointConfig {
        id: "tp-otel".into(),
        path: path.into(),
        line_number: line,
        metrics: vec![
            metric("orders", MetricType::Counter, "Order value by country."),
            metric("last_order", MetricType::Gauge, "The last order's value."),
            metric("order_value", MetricType::Histogram, "Order values."),
            metric(
                "order_value_summary",
                MetricType::Summary,
                "Order values (a summary).",
            ),
        ],
        ..Default::default()
    }
}

/// The newest export (cumulative temporality: it holds everything so far).
fn collect(provider: &SdkMeterProvider, exporter: &InMemoryMetricExporter) -> ResourceMetrics {
    provider.force_flush().expect("flush");
    let mut all = exporter.get_finished_metrics().expect("finished metrics");
    exporter.reset();
    all.pop().expect("one export")
}

fn metric<'a>(rm: &'a ResourceMetrics, name: &str) -> &'a OtelMetric {
    rm.scope_metrics()
        .flat_map(|s| s.metrics())
        .find(|m| m.name() == name)
        .unwrap_or_else(|| {
            let names: Vec<&str> = rm
                .scope_metrics()
                .flat_map(|s| s.metrics())
                .map(|m| m.name())
                .collect();
            panic!("no metric {name:?}; exported: {names:?}")
        })
}

fn attrs<'a>(it: impl Iterator<Item = &'a KeyValue>) -> Vec<(String, String)> {
    it.map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect()
}

fn country(c: &str) -> Vec<(String, String)> {
    vec![("country".to_owned(), c.to_owned())]
}

/// Counter sums by label set, sorted by attributes.
fn sums(m: &OtelMetric) -> Vec<(Vec<(String, String)>, f64)> {
    let AggregatedMetrics::F64(MetricData::Sum(sum)) = m.data() else {
        panic!("{} is not an f64 sum: {:?}", m.name(), m.data());
    };
    assert!(sum.is_monotonic(), "a counter is monotonic");
    let mut out: Vec<_> = sum
        .data_points()
        .map(|p| (attrs(p.attributes()), p.value()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn gauges(m: &OtelMetric) -> Vec<(Vec<(String, String)>, f64)> {
    let AggregatedMetrics::F64(MetricData::Gauge(g)) = m.data() else {
        panic!("{} is not an f64 gauge: {:?}", m.name(), m.data());
    };
    let mut out: Vec<_> = g
        .data_points()
        .map(|p| (attrs(p.attributes()), p.value()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Histogram (attributes, count, sum, bounds) by label set.
#[allow(clippy::type_complexity)] // a test's table of expectations
fn histograms(m: &OtelMetric) -> Vec<(Vec<(String, String)>, u64, f64, Vec<f64>)> {
    let AggregatedMetrics::F64(MetricData::Histogram(h)) = m.data() else {
        panic!("{} is not an f64 histogram: {:?}", m.name(), m.data());
    };
    let mut out: Vec<_> = h
        .data_points()
        .map(|p| {
            (
                attrs(p.attributes()),
                p.count(),
                p.sum(),
                p.bounds().collect(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn tracepoint_metrics_reach_the_opentelemetry_sdk_with_names_attributes_and_values() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let agent = Agent::builder()
        .service_name("otel-test")
        .provider(OtelProvider::new(provider.meter("sonde")))
        .offline()
        .start()
        .expect("agent starts");

    let site = sonde_agent::sites()
        .find(|s| s.file().ends_with("otel_provider.rs") && s.names() == ["country", "total"])
        .expect("the probe site in this file");
    agent.apply(vec![tracepoint(site.file(), site.line())]);
    let status = &agent.statuses()[0];
    assert_eq!(status.state, TracepointState::Bound, "{status:?}");
    assert!(site.is_armed());

    checkout("NZ", 12.5);
    checkout("NZ", 7.5);
    checkout("DE", 3.0);

    let rm = collect(&provider, &exporter);
    let orders = metric(&rm, "deep_orders");
    assert_eq!(orders.description(), "Order value by country.");
    assert_eq!(
        sums(orders),
        vec![(country("DE"), 3.0), (country("NZ"), 20.0)]
    );
    let last = metric(&rm, "deep_last_order");
    assert_eq!(last.description(), "The last order's value.");
    assert_eq!(
        gauges(last),
        vec![(country("DE"), 3.0), (country("NZ"), 7.5)]
    );
    // A histogram with no unit gets the wide default; a summary (a histogram in OpenTelemetry)
    // keeps the latency buckets as advice.
    for (name, buckets) in [
        (
            "deep_order_value",
            sonde_agent::metrics::Buckets::WIDE.to_vec(),
        ),
        (
            "deep_order_value_summary",
            prometheus::DEFAULT_BUCKETS.to_vec(),
        ),
    ] {
        assert_eq!(
            histograms(metric(&rm, name)),
            vec![
                (country("DE"), 1, 3.0, buckets.clone()),
                (country("NZ"), 2, 20.0, buckets.clone())
            ],
            "{name}"
        );
    }

    // A negative value is refused by the counter (and only the counter); a NaN by every kind.
    checkout("NZ", -1.0);
    checkout("NZ", f64::NAN);
    let rm = collect(&provider, &exporter);
    assert_eq!(
        sums(metric(&rm, "deep_orders")),
        vec![(country("DE"), 3.0), (country("NZ"), 20.0)]
    );
    assert_eq!(
        gauges(metric(&rm, "deep_last_order")),
        vec![(country("DE"), 3.0), (country("NZ"), -1.0)]
    );
    assert_eq!(
        histograms(metric(&rm, "deep_order_value"))[1].1,
        3,
        "-1 observed, NaN not"
    );

    // Deleted: the site disarms and the instrument stops receiving data (it cannot be removed).
    agent.apply(vec![]);
    assert!(!site.is_armed());
    checkout("NZ", 100.0);
    let rm = collect(&provider, &exporter);
    assert_eq!(
        sums(metric(&rm, "deep_orders")),
        vec![(country("DE"), 3.0), (country("NZ"), 20.0)]
    );

    // Re-created: the same instruments, so the series continue.
    agent.apply(vec![tracepoint(site.file(), site.line())]);
    assert!(site.is_armed());
    checkout("NZ", 1.0);
    let rm = collect(&provider, &exporter);
    assert_eq!(
        sums(metric(&rm, "deep_orders")),
        vec![(country("DE"), 3.0), (country("NZ"), 21.0)]
    );
    let names: Vec<&str> = rm
        .scope_metrics()
        .flat_map(|s| s.metrics())
        .map(|m| m.name())
        .collect();
    assert_eq!(
        names.iter().filter(|n| **n == "deep_orders").count(),
        1,
        "{names:?}"
    );

    agent.shutdown();
    assert!(!site.is_armed());
    provider.shutdown().expect("meter provider shuts down");
}
