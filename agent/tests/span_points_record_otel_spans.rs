//! Span points (`args.span`) record OpenTelemetry spans through the global tracer provider,
//! read back through the SDK's in-memory exporter: `Line` (as Grafana sends it) records a span
//! of the hit named after the tracepoint, with its metric labels as attributes; `method` on an
//! `#[instrument]`ed function's `fn` line binds to its exit site and spans the whole call; on a
//! bare probe site `method` has no return to wait for and records the line's span, saying so.
//!
//! One test function: probe sites and the global tracer provider belong to the process.
//! Run with `cargo test -p sonde-agent --features opentelemetry --test span_points_record_otel_spans`.

#![cfg(feature = "opentelemetry")]

use std::time::Duration;

use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use sonde_agent::{Agent, TracepointState, instrument, probe};
use sonde_proto::tracepoint::{LabelExpression, Metric, TracePointConfig, label_expression};

fn checkout(country: &str, total: f64) {
    probe!(country, total);
}

#[instrument]
fn pay(amount: f64) -> f64 {
    std::thread::sleep(Duration::from_millis(30));
    amount * 2.0
}

fn site(names: &[&str]) -> &'static sonde_agent::Site {
    sonde_agent::sites()
        .find(|s| s.names() == names && s.module().ends_with("span_points_record_otel_spans"))
        .expect("site")
}

fn tracepoint(
    id: &str,
    site: &sonde_agent::Site,
    span: &str,
    label: Option<&str>,
) -> TracePointConfig {
    let mut tp = TracePointConfig {
        id: id.into(),
        path: site.file().into(),
        line_number: site.line(),
        metrics: label
            .map(|l| Metric {
                name: format!("{id}_hits"),
                label_expressions: vec![LabelExpression {
                    key: "country".into(),
                    value: Some(label_expression::Value::Expression(l.into())),
                }],
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    };
    tp.args.insert("span".into(), span.into());
    tp
}

fn attr<'a>(span: &'a opentelemetry_sdk::trace::SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

#[test]
fn span_points_record_spans() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());

    let agent = Agent::builder().offline().start().expect("agent");
    let line_site = site(&["country", "total"]);
    let entry = site(&["amount"]);
    agent.apply(vec![
        tracepoint("tp-line", line_site, "Line", Some("country")),
        tracepoint("tp-method", entry, "method", None),
    ]);
    for s in agent.statuses() {
        assert_eq!(s.state, TracepointState::Bound, "{s:?}");
    }
    let method_status = agent
        .statuses()
        .into_iter()
        .find(|s| s.id == "tp-method")
        .expect("status");
    assert_ne!(
        method_status.sites,
        [entry.location()],
        "a method span binds to the function's exit site"
    );

    checkout("NZ", 12.5);
    checkout("FR", 3.0);
    assert_eq!(pay(2.0), 4.0);
    let _ = provider.force_flush();

    let spans = exporter.get_finished_spans().expect("spans");
    let line: Vec<_> = spans.iter().filter(|s| s.name == "tp-line").collect();
    assert_eq!(line.len(), 2, "every hit records a span: {spans:?}");
    let countries: Vec<_> = line.iter().map(|s| attr(s, "country").cloned()).collect();
    assert_eq!(
        countries,
        [Some(Value::from("NZ")), Some(Value::from("FR"))]
    );
    assert_eq!(
        attr(line[0], "sonde.tracepoint.id"),
        Some(&Value::from("tp-line"))
    );
    assert_eq!(
        attr(line[0], "code.lineno"),
        Some(&Value::I64(i64::from(line_site.line())))
    );

    let method: Vec<_> = spans.iter().filter(|s| s.name == "tp-method").collect();
    assert_eq!(method.len(), 1, "{spans:?}");
    let took = method[0]
        .end_time
        .duration_since(method[0].start_time)
        .expect("ends after it starts");
    assert!(
        took >= Duration::from_millis(30),
        "the span covers the call: {took:?}"
    );
    assert_eq!(
        attr(method[0], "sonde.span.method_exit"),
        Some(&Value::Bool(true))
    );

    // `method` at a bare probe site: the line's span, saying there was no exit to wait for.
    agent.apply(vec![tracepoint("tp-bare", line_site, "method", None)]);
    checkout("NZ", 1.0);
    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().expect("spans");
    let bare: Vec<_> = spans.iter().filter(|s| s.name == "tp-bare").collect();
    assert_eq!(bare.len(), 1);
    assert_eq!(
        attr(bare[0], "sonde.span.method_exit"),
        Some(&Value::Bool(false))
    );
    agent.shutdown();
    let _ = provider.shutdown();
}
