//! Local safety: past its error budget, or past its CPU budget with sampling off, a tracepoint
//! disarms itself and its status says why; label sets past the cap fold into one overflow series; a log_msg line is
//! emitted through `tracing` with the tracepoint's ID. One agent per process, so one test walks
//! through the cases in order.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use sonde_agent::{Agent, Budgets, OVERFLOW_LABEL, PrometheusProvider, TracepointState, probe};
use sonde_proto::tracepoint::{LabelExpression, Metric, TracePointConfig, label_expression};

fn hit(label: &str, n: i64) {
    probe!(label, n);
}

fn site() -> &'static sonde_agent::Site {
    sonde_agent::sites()
        .find(|s| s.names() == ["label", "n"])
        .expect("site")
}

fn tracepoint(id: &str, metric: Metric) -> TracePointConfig {
    TracePointConfig {
        id: id.into(),
        path: site().file().into(),
        line_number: site().line(),
        metrics: vec![metric],
        ..Default::default()
    }
}

fn exposition(r: &prometheus::Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&r.gather())
        .unwrap()
}

/// Captures formatted `tracing` output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn budgets_cardinality_and_log_lines() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let registry = prometheus::Registry::new();
    let agent = Agent::builder()
        .offline()
        .provider(PrometheusProvider::new(registry.clone()))
        .budgets(Budgets {
            errors: 10,
            max_series: 3,
            ..Budgets::default()
        })
        .start()
        .unwrap();

    // Cardinality: five label sets, a cap of three; the other two fold into the overflow series.
    agent.apply(vec![tracepoint(
        "card",
        Metric {
            name: "by_label".into(),
            label_expressions: vec![LabelExpression {
                key: "label".into(),
                value: Some(label_expression::Value::Expression("label".into())),
            }],
            ..Default::default()
        },
    )]);
    for l in ["a", "b", "c", "d", "e", "d"] {
        hit(l, 1);
    }
    let text = exposition(&registry);
    for line in [
        r#"deep_by_label_total{label="a"} 1"#,
        r#"deep_by_label_total{label="c"} 1"#,
        &format!(r#"deep_by_label_total{{label="{OVERFLOW_LABEL}"}} 3"#),
    ] {
        assert!(text.contains(line), "missing {line} in {text}");
    }
    assert!(!text.contains(r#"label="d""#), "{text}");

    // Error budget: a value expression that fails on every hit disarms after 10 errors.
    agent.apply(vec![tracepoint(
        "errors",
        Metric {
            name: "bad".into(),
            expression: Some("label * 2".into()),
            ..Default::default()
        },
    )]);
    for _ in 0..11 {
        hit("x", 1);
    }
    let status = agent
        .statuses()
        .into_iter()
        .find(|s| s.id == "errors")
        .unwrap();
    assert_eq!(status.state, TracepointState::Disarmed, "{status:?}");
    assert!(
        status.message.contains("errors") && status.message.contains("value"),
        "{status:?}"
    );
    assert!(
        !exposition(&registry).contains("deep_bad_total{"),
        "no made-up values"
    );

    // CPU budget with sampling off (an operator's hard cap): with no CPU allowed it disarms at
    // the first window with eight timed evaluations (one in 64 is timed): a single slow first
    // hit never disarms a rarely hit line. (Sampling instead of disarming is
    // cpu_budget_samples_instead_of_disarming.rs.)
    drop(agent);
    let agent = Agent::builder()
        .offline()
        .provider(PrometheusProvider::new(prometheus::Registry::new()))
        .budgets(Budgets {
            cpu_share: 1e-9,
            agent_cpu_share: 1e-9,
            cpu_floor: Duration::ZERO,
            cpu_window: Duration::from_millis(10),
            ..Budgets::default()
        })
        .start()
        .unwrap();
    agent.apply(vec![TracePointConfig {
        args: [("sampling".to_owned(), "off".to_owned())].into(),
        ..tracepoint(
            "cpu",
            Metric {
                name: "cpu".into(),
                ..Default::default()
            },
        )
    }]);
    let cpu_status = || {
        agent
            .statuses()
            .into_iter()
            .find(|s| s.id == "cpu")
            .unwrap()
    };
    for _ in 0..100 {
        hit("x", 1);
    }
    let status = cpu_status();
    assert_eq!(
        status.state,
        TracepointState::Bound,
        "fewer than 8 timed hits: {status:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cpu_status().state != TracepointState::Disarmed && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(15));
        for _ in 0..1000 {
            hit("x", 1);
        }
    }
    let status = cpu_status();
    assert_eq!(status.state, TracepointState::Disarmed, "{status:?}");
    assert!(
        status.message.contains("CPU") && status.message.contains("sampling is off"),
        "{status:?}"
    );
    let fires = agent.fires("cpu").unwrap();
    hit("x", 1);
    assert_eq!(
        agent.fires("cpu"),
        Some(fires),
        "a disarmed tracepoint does nothing"
    );

    // A log line: rendered, emitted through tracing with the tracepoint's ID, once (Deep's
    // default fire_count of 1 for log actions).
    agent.apply(vec![TracePointConfig {
        id: "log".into(),
        path: site().file().into(),
        line_number: site().line(),
        args: [(
            "log_msg".to_owned(),
            "label={label} twice={n * 2}".to_owned(),
        )]
        .into(),
        ..Default::default()
    }]);
    hit("first", 21);
    hit("second", 1);
    drop(agent);
    let out = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(out.contains("label=first twice=42"), "{out}");
    assert!(out.contains("tracepoint=log"), "{out}");
    assert!(
        !out.contains("label=second"),
        "log lines fire once by default: {out}"
    );
}
