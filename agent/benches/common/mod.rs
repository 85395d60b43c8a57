//! Shared fixtures for the agent benches: captured types like an application's, an offline agent
//! over a Prometheus registry, and tracepoint configurations.

// Each bench binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use criterion::Criterion;
use sonde_agent::{Agent, AgentHandle, Budgets, Capture, PrometheusProvider, Site};
use sonde_expr::Value;
use sonde_proto::{
    common::{AnyValue, any_value},
    tracepoint::{LabelExpression, Metric, MetricType, TracePointConfig, label_expression},
};

/// Short runs: the machine is shared (2 cores).
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

/// An order as an application would capture it; `field` lets a path convert one field only.
pub struct Order {
    pub id: u64,
    pub total: f64,
    pub country: String,
}

impl Capture for Order {
    fn capture(&self) -> Value {
        Value::Record(vec![
            ("id".into(), self.id.capture()),
            ("total".into(), self.total.capture()),
            ("country".into(), self.country.capture()),
        ])
    }
    fn field(&self, name: &str) -> Option<&dyn Capture> {
        match name {
            "id" => Some(&self.id),
            "total" => Some(&self.total),
            "country" => Some(&self.country),
            _ => None,
        }
    }
}

/// A user as an application would capture it.
pub struct User {
    pub id: u64,
    pub tier: String,
}

impl Capture for User {
    fn capture(&self) -> Value {
        Value::Record(vec![
            ("id".into(), self.id.capture()),
            ("tier".into(), self.tier.capture()),
        ])
    }
    fn field(&self, name: &str) -> Option<&dyn Capture> {
        match name {
            "id" => Some(&self.id),
            "tier" => Some(&self.tier),
            _ => None,
        }
    }
}

/// An offline agent over a fresh registry. The CPU budget is lifted: a bench hits a site
/// millions of times a second, which the default budget (50 ms per 10 s) would rightly stop,
/// and the rest of the run would measure a disarmed tracepoint.
pub fn agent() -> (AgentHandle, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let agent = Agent::builder()
        .service_name("bench")
        .provider(PrometheusProvider::new(registry.clone()))
        .budgets(Budgets::unlimited_cpu())
        .offline()
        .start()
        .expect("the agent starts");
    (agent, registry)
}

/// The one site of this binary that captures exactly `names`.
pub fn site(names: &[&str]) -> &'static Site {
    let mut found = sonde_agent::sites().filter(|s| s.names() == names);
    let site = found.next().expect("a site with these names");
    assert!(found.next().is_none(), "one site with these names");
    site
}

/// The one site of this binary that captures exactly `names` in module `module`.
pub fn site_in(names: &[&str], module: &str) -> &'static Site {
    let mut found = sonde_agent::sites().filter(|s| s.names() == names && s.module() == module);
    let site = found
        .next()
        .expect("a site with these names in this module");
    assert!(
        found.next().is_none(),
        "one site with these names in this module"
    );
    site
}

/// A label computed by an expression.
pub fn label(key: &str, expression: &str) -> LabelExpression {
    LabelExpression {
        key: key.into(),
        value: Some(label_expression::Value::Expression(expression.into())),
    }
}

/// A label with a fixed value.
pub fn static_label(key: &str, value: &str) -> LabelExpression {
    LabelExpression {
        key: key.into(),
        value: Some(label_expression::Value::Static(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        })),
    }
}

/// A COUNTER tracepoint at `site`: metric `name`, valued by `value`, with `labels` and an
/// optional condition.
pub fn counter_tracepoint(
    id: &str,
    site: &Site,
    name: &str,
    value: &str,
    labels: Vec<LabelExpression>,
    condition: Option<&str>,
) -> TracePointConfig {
    let mut tp = TracePointConfig {
        id: id.into(),
        path: site.file().into(),
        line_number: site.line(),
        metrics: vec![Metric {
            name: name.into(),
            r#type: MetricType::Counter as i32,
            expression: Some(value.into()),
            label_expressions: labels,
            ..Default::default()
        }],
        ..Default::default()
    };
    if let Some(condition) = condition {
        tp.args.insert("condition".into(), condition.into());
    }
    tp
}

/// The registry's exposition text.
pub fn exposition(registry: &prometheus::Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encodes")
}

/// Fails the bench if the agent reports anything but bound tracepoints (a tracepoint that
/// disarmed itself mid-run would make the figures meaningless).
pub fn assert_bound(agent: &AgentHandle) {
    for status in agent.statuses() {
        assert_eq!(
            status.state,
            sonde_agent::TracepointState::Bound,
            "{status:?}"
        );
    }
}

/// The 1-based number of the first line of `text` holding `marker` (a bench finds its own lines
/// by marker comments; a line calling `line_of(…)` with it is not the marked line).
pub fn marker_line(text: &str, marker: &str) -> u32 {
    let at = text
        .lines()
        .position(|l| l.contains(marker) && !l.contains("line_of("))
        .unwrap_or_else(|| panic!("no line holds {marker:?}"));
    u32::try_from(at + 1).expect("a file of fewer than 4 billion lines")
}
