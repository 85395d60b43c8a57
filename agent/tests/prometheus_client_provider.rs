//! Tracepoint metrics in a `prometheus-client` registry (`PrometheusClientProvider`), read by
//! scraping the application's own endpoint, which encodes its registry as it always did: Deep's
//! names (`deep_<name>`, counters `_total`), a counter adding fractional values by label, a gauge,
//! a histogram in the tracepoint's buckets, a summary refused with a reason, the cardinality cap
//! folding label sets past 1,000 into `sonde_overflow`, the application's own metric beside
//! them, and every tracepoint series gone from the scrape once the tracepoint is deleted.
//!
//! One test function: probe sites are global and only one agent may run in a process at a time.

#![cfg(feature = "prometheus-client")]

mod scrape;

use std::sync::{Arc, Mutex};

use prometheus_client::{encoding::text::encode, metrics::counter::Counter, registry::Registry};
use sonde_agent::{Agent, PrometheusClientProvider, TracepointState, probe};
use sonde_proto::tracepoint::{
    LabelExpression, Metric, MetricType, TracePointConfig, label_expression,
};

fn checkout(country: &str, total: f64) {
    probe!(country, total);
}

fn metric(name: &str, kind: MetricType, label: &str) -> Metric {
    Metric {
        name: name.into(),
        r#type: kind as i32,
        expression: Some("total".into()),
        label_expressions: vec![LabelExpression {
            key: "country".into(),
            value: Some(label_expression::Value::Expression(label.into())),
        }],
        ..Default::default()
    }
}

#[test]
fn tracepoint_metrics_are_scraped_from_the_applications_prometheus_client_registry() {
    let mut registry = Registry::default();
    let own = Counter::<u64>::default();
    registry.register(
        "shop_requests",
        "The application's own counter.",
        own.clone(),
    );
    let provider = PrometheusClientProvider::new(&mut registry);
    let registry = Arc::new(Mutex::new(registry));
    let endpoint = {
        let registry = registry.clone();
        scrape::serve(move || {
            let mut text = String::new();
            encode(&mut text, &registry.lock().unwrap()).unwrap();
            text
        })
    };
    let agent = Agent::builder()
        .provider(provider)
        .offline()
        .start()
        .expect("agent starts");
    let site = sonde_agent::sites()
        .find(|s| s.file().ends_with("prometheus_client_provider.rs"))
        .expect("the probe site in this file");
    let mut buckets = std::collections::BTreeMap::new();
    buckets.insert("buckets".to_owned(), "5,10,50".to_owned());
    agent.apply(vec![
        TracePointConfig {
            id: "tp-client".into(),
            path: site.file().into(),
            line_number: site.line(),
            metrics: vec![
                metric("order_value", MetricType::Counter, "country"),
                metric("last_order", MetricType::Gauge, "country"),
            ],
            ..Default::default()
        },
        TracePointConfig {
            id: "tp-client-hist".into(),
            path: site.file().into(),
            line_number: site.line(),
            args: buckets,
            metrics: vec![metric("order_size", MetricType::Histogram, "country")],
            ..Default::default()
        },
        TracePointConfig {
            id: "tp-client-summary".into(),
            path: site.file().into(),
            line_number: site.line(),
            metrics: vec![metric("order_quantiles", MetricType::Summary, "country")],
            ..Default::default()
        },
    ]);
    let statuses = agent.statuses();
    let status = |id: &str| statuses.iter().find(|s| s.id == id).unwrap().clone();
    assert_eq!(status("tp-client").state, TracepointState::Bound);
    assert_eq!(status("tp-client-hist").state, TracepointState::Bound);
    let summary = status("tp-client-summary");
    assert_eq!(summary.state, TracepointState::Error, "{summary:?}");
    assert!(summary.message.contains("no summary type"), "{summary:?}");

    own.inc();
    checkout("NZ", 12.5);
    checkout("NZ", 7.25);
    checkout("DE", 3.0);
    let text = scrape::scrape(endpoint);
    let at = |series: &str| scrape::sample(&text, series);
    assert_eq!(at("shop_requests_total"), Some(1.0), "{text}");
    assert_eq!(
        at("deep_order_value_total{country=\"NZ\"}"),
        Some(19.75),
        "{text}"
    );
    assert_eq!(
        at("deep_order_value_total{country=\"DE\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(at("deep_last_order{country=\"NZ\"}"), Some(7.25), "{text}");
    assert_eq!(
        at("deep_order_size_count{country=\"NZ\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        at("deep_order_size_sum{country=\"NZ\"}"),
        Some(19.75),
        "{text}"
    );
    assert_eq!(
        at("deep_order_size_bucket{le=\"5.0\",country=\"DE\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        at("deep_order_size_bucket{le=\"10.0\",country=\"NZ\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        at("deep_order_size_bucket{le=\"50.0\",country=\"NZ\"}"),
        Some(2.0),
        "{text}"
    );

    // The cap: 1,000 label sets per metric, the rest folded into one series.
    for i in 0..1_100 {
        checkout(&format!("c{i}"), 1.0);
    }
    let text = scrape::scrape(endpoint);
    let series = text
        .lines()
        .filter(|l| l.starts_with("deep_order_value_total{"))
        .count();
    assert!((1_000..=1_001).contains(&series), "{series} series");
    let overflow = scrape::sample(&text, "deep_order_value_total{country=\"sonde_overflow\"}");
    assert!(overflow.is_some_and(|v| v >= 100.0), "{overflow:?}");

    // Deleting the tracepoints takes their metrics out of the exposition; the application's stay.
    agent.apply(Vec::new());
    let text = scrape::scrape(endpoint);
    assert!(!text.contains("deep_"), "{text}");
    assert_eq!(
        scrape::sample(&text, "shop_requests_total"),
        Some(1.0),
        "{text}"
    );
    agent.shutdown();
}
