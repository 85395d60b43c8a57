//! Tracepoint metrics through the `metrics` facade (`MetricsFacadeProvider`) into the recorder
//! the application installed, `metrics-exporter-prometheus`, read by scraping the application's
//! own endpoint, which serves the exporter's rendering: Deep's names (`deep_<name>`, counters
//! `_total`), a counter (whole numbers: fractional values keep their exact total and the counter
//! shows its whole part), a gauge, a histogram (which this exporter renders as a summary without
//! configured buckets), the cardinality cap folding label sets past 1,000 into `sonde_overflow`,
//! and what deleting does with a recorder that cannot unregister: the series stop changing, and
//! the exporter's idle timeout removes them.
//!
//! One test function: the recorder is process-global, as are probe sites and the agent.

#![cfg(feature = "metrics-facade")]

mod scrape;

use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_util::MetricKindMask;
use sonde_agent::{Agent, MetricsFacadeProvider, TracepointState, probe};
use sonde_proto::tracepoint::{
    LabelExpression, Metric, MetricType, TracePointConfig, label_expression,
};

/// How long the exporter keeps a series nobody updates.
const IDLE: Duration = Duration::from_secs(2);

fn checkout(country: &str, total: f64) {
    probe!(country, total);
}

fn metric(name: &str, kind: MetricType) -> Metric {
    Metric {
        name: name.into(),
        r#type: kind as i32,
        expression: Some("total".into()),
        label_expressions: vec![LabelExpression {
            key: "country".into(),
            value: Some(label_expression::Value::Expression("country".into())),
        }],
        ..Default::default()
    }
}

#[test]
fn tracepoint_metrics_are_scraped_from_the_applications_metrics_exporter() {
    let handle = PrometheusBuilder::new()
        .idle_timeout(MetricKindMask::ALL, Some(IDLE))
        .install_recorder()
        .expect("install the recorder");
    let endpoint = {
        let handle = handle.clone();
        scrape::serve(move || {
            handle.run_upkeep();
            handle.render()
        })
    };
    let agent = Agent::builder()
        .provider(MetricsFacadeProvider::new())
        .offline()
        .start()
        .expect("agent starts");
    let site = sonde_agent::sites()
        .find(|s| s.file().ends_with("metrics_facade_provider.rs"))
        .expect("the probe site in this file");
    agent.apply(vec![TracePointConfig {
        id: "tp-facade".into(),
        path: site.file().into(),
        line_number: site.line(),
        metrics: vec![
            metric("order_value", MetricType::Counter),
            metric("last_order", MetricType::Gauge),
            metric("order_size", MetricType::Histogram),
        ],
        ..Default::default()
    }]);
    let status = &agent.statuses()[0];
    assert_eq!(status.state, TracepointState::Bound, "{status:?}");

    checkout("NZ", 12.5);
    checkout("NZ", 7.25);
    checkout("DE", 3.0);
    // The application's own metric, through the same recorder.
    metrics::counter!("shop_requests_total").increment(1);
    let text = scrape::scrape(endpoint);
    let at = |series: &str| scrape::sample(&text, series);
    assert_eq!(at("shop_requests_total"), Some(1.0), "{text}");
    // 19.75 in whole numbers.
    assert_eq!(
        at("deep_order_value_total{country=\"NZ\"}"),
        Some(19.0),
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
    checkout("NZ", 0.25);
    let text = scrape::scrape(endpoint);
    assert_eq!(
        scrape::sample(&text, "deep_order_value_total{country=\"NZ\"}"),
        Some(20.0),
        "20.0 exactly: {text}"
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

    // Deleting: the series stop changing at once (the recorder cannot unregister them) ...
    agent.apply(Vec::new());
    checkout("NZ", 100.0);
    let text = scrape::scrape(endpoint);
    assert_eq!(
        scrape::sample(&text, "deep_order_value_total{country=\"NZ\"}"),
        Some(20.0),
        "{text}"
    );
    // ... and the exporter's idle timeout removes them.
    let started = Instant::now();
    loop {
        let text = scrape::scrape(endpoint);
        if !text.contains("deep_") {
            break;
        }
        assert!(
            started.elapsed() < IDLE * 10,
            "tracepoint series still exposed {:?} after deletion:\n{text}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.shutdown();
}
