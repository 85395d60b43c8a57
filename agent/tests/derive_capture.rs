//! `#[derive(Capture)]`: the shapes it captures (records, lists, enums, generics), its `skip`,
//! `rename` and `debug` attributes, and paths through nested derived types read by tracepoint
//! expressions at a real probe site, seen in the Prometheus exposition.
//!
//! The site test starts an agent, which is global (one per process), so tests that start one
//! take [`AGENT`] first.

use std::{borrow::Cow, fmt, sync::Mutex};

use sonde_agent::{Agent, Capture, PrometheusProvider, TracepointState, probe};
use sonde_expr::{ExprKind, Value};
use sonde_proto::tracepoint::{
    LabelExpression, Metric, TracePointConfig, label_expression::Value as LabelValue,
};

/// Held by every test that starts an agent.
static AGENT: Mutex<()> = Mutex::new(());

#[derive(Capture)]
struct Customer {
    country: String,
    #[capture(skip)]
    #[allow(dead_code)] // never read: the point is that it is not captured
    password: String,
    tier: Tier,
}

#[derive(Capture, Debug, Clone, Copy)]
enum Tier {
    Basic,
    #[capture(rename = "gold")]
    Premium,
}

/// Implements `Debug` but not `Capture`.
struct Channel(&'static str);

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "via-{}", self.0)
    }
}

#[derive(Capture)]
enum Status {
    Open,
    Paid {
        amount: f64,
        r#ref: u32,
    },
    Refunded(
        u64,
        #[capture(skip)]
        #[allow(dead_code)] // never read: the point is that it is not captured
        String,
        Option<u8>,
    ),
}

#[derive(Capture)]
struct Order {
    customer: Customer,
    #[capture(rename = "total")]
    total_cents: u64,
    #[capture(debug)]
    channel: Channel,
    status: Status,
    lines: Vec<Line>,
}

#[derive(Capture)]
struct Line {
    sku: &'static str,
    qty: u32,
}

#[derive(Capture)]
struct Pair(
    i32,
    #[capture(skip)]
    #[allow(dead_code)] // never read: the point is that it is not captured
    Channel,
    bool,
);

#[derive(Capture)]
struct Marker;

#[derive(Capture)]
struct Tagged<'a, T, const N: usize> {
    tag: &'a str,
    items: [T; N],
}

fn order() -> Order {
    Order {
        customer: Customer {
            country: "NZ".into(),
            password: "hunter2".into(),
            tier: Tier::Premium,
        },
        total_cents: 1250,
        channel: Channel("app"),
        status: Status::Paid {
            amount: 12.5,
            r#ref: 9,
        },
        lines: vec![Line { sku: "a-1", qty: 2 }, Line { sku: "b-2", qty: 1 }],
    }
}

fn s(v: &str) -> Value {
    Value::Str(v.to_owned())
}

fn rec(fields: Vec<(&'static str, Value)>) -> Value {
    Value::Record(
        fields
            .into_iter()
            .map(|(k, v)| (Cow::Borrowed(k), v))
            .collect(),
    )
}

#[test]
fn structs_capture_as_records_without_skipped_fields() {
    assert_eq!(
        order().capture(),
        rec(vec![
            (
                "customer",
                rec(vec![("country", s("NZ")), ("tier", s("gold"))])
            ),
            ("total", Value::UInt(1250)),
            ("channel", s("via-app")),
            (
                "status",
                rec(vec![
                    ("variant", s("Paid")),
                    ("amount", Value::Float(12.5)),
                    ("ref", Value::UInt(9)),
                ])
            ),
            (
                "lines",
                Value::List(vec![
                    rec(vec![("sku", s("a-1")), ("qty", Value::UInt(2))]),
                    rec(vec![("sku", s("b-2")), ("qty", Value::UInt(1))]),
                ])
            ),
        ])
    );
}

#[test]
fn enums_tuples_units_and_generics() {
    assert_eq!(Status::Open.capture(), s("Open"));
    assert_eq!(Tier::Basic.capture(), s("Basic"));
    assert_eq!(
        Status::Refunded(3, "why".into(), Some(1)).capture(),
        rec(vec![
            ("variant", s("Refunded")),
            ("0", Value::UInt(3)),
            ("2", Value::UInt(1)),
        ])
    );
    assert_eq!(
        Pair(-1, Channel("x"), true).capture(),
        Value::List(vec![Value::Int(-1), Value::None, Value::Bool(true)]),
        "a skipped element keeps its place as none"
    );
    assert_eq!(Marker.capture(), Value::None);
    let tagged = Tagged {
        tag: "t",
        items: [1.5f64, 2.5],
    };
    assert_eq!(
        tagged.capture(),
        rec(vec![
            ("tag", s("t")),
            (
                "items",
                Value::List(vec![Value::Float(1.5), Value::Float(2.5)])
            ),
        ])
    );
}

#[test]
fn field_hands_out_one_field_and_hides_skipped_ones() {
    let order = order();
    let customer = order.field("customer").expect("customer");
    assert_eq!(
        customer.field("country").map(|c| c.capture()),
        Some(s("NZ"))
    );
    assert!(customer.field("password").is_none(), "skipped");
    assert!(order.field("total_cents").is_none(), "renamed away");
    assert_eq!(
        order.field("total").map(|t| t.capture()),
        Some(Value::UInt(1250))
    );
    assert!(
        order.field("channel").is_none(),
        "a debug field is reached through the whole value"
    );
    let status = order.field("status").expect("status");
    assert_eq!(
        status.field("amount").map(|a| a.capture()),
        Some(Value::Float(12.5))
    );
    assert!(status.field("nope").is_none());
    assert!(Status::Open.field("amount").is_none());
}

/// The site the tracepoints bind to.
fn checkout(order: &Order) {
    probe!(order);
}

fn label(key: &str, expression: &str) -> LabelExpression {
    LabelExpression {
        key: key.into(),
        value: Some(LabelValue::Expression(expression.into())),
    }
}

#[test]
fn tracepoint_expressions_read_paths_through_derived_types() {
    // The expression compiles to the plain-path fast path.
    sonde_expr::compile("order.customer.country", ExprKind::Label).expect("compiles");

    let _guard = AGENT.lock().unwrap_or_else(|e| e.into_inner());
    let registry = prometheus::Registry::new();
    let agent = Agent::builder()
        .offline()
        .provider(PrometheusProvider::new(registry.clone()))
        .start()
        .expect("agent starts");
    let site = sonde_agent::sites()
        .find(|s| s.names() == ["order"] && s.module().ends_with("derive_capture"))
        .expect("the probe site in checkout");
    let tracepoint = |id: &str, metrics: Vec<Metric>| TracePointConfig {
        id: id.into(),
        path: site.file().into(),
        line_number: site.line(),
        metrics,
        ..Default::default()
    };
    agent.apply(vec![
        tracepoint(
            "orders",
            vec![Metric {
                name: "order_cents".into(),
                expression: Some("order.total".into()),
                label_expressions: vec![
                    label("country", "order.customer.country"),
                    label("tier", "order.customer.tier"),
                    label("channel", "order.channel"),
                    label("status", "order.status.variant"),
                    label("first_sku", "order.lines[0].sku"),
                ],
                ..Default::default()
            }],
        ),
        tracepoint(
            "secret",
            vec![Metric {
                name: "leaked".into(),
                label_expressions: vec![label("password", "order.customer.password")],
                ..Default::default()
            }],
        ),
    ]);
    assert!(site.is_armed());

    checkout(&order());
    checkout(&order());

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encodes");
    assert!(
        text.contains(
            r#"deep_order_cents_total{channel="via-app",country="NZ",first_sku="a-1",status="Paid",tier="gold"} 2500"#
        ),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        !text.contains("deep_leaked_total{"),
        "a redacted field yields no data point: {text}"
    );
    let secret = agent
        .statuses()
        .into_iter()
        .find(|s| s.id == "secret")
        .expect("status");
    // `password` is on the redaction list: the tracepoint is refused before it binds.
    assert_eq!(secret.state, TracepointState::Error);
    assert!(
        secret
            .message
            .contains("reads `order.customer.password`, which is redacted"),
        "reading a redacted name is refused at bind time: {secret:?}"
    );
    agent.shutdown();
    assert!(!site.is_armed());
}
