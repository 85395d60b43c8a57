//! `#[instrument]`: the entry and exit sites it puts on sync and async functions, their lines,
//! what they capture, and that every way out of the function (the last expression, an early
//! `return`, an error through `?`) reaches the exit site with `ret`, `ok` and `elapsed`.
//!
//! One test starts an agent, which is global (one per process) and arms sites that the other
//! tests call or check, so every test takes [`AGENT`] first.

use std::{
    collections::HashMap,
    future::Future,
    pin::{Pin, pin},
    sync::Mutex,
    task::{Context, Poll, Waker},
    time::Duration,
};

use sonde_agent::{Agent, Capture, PrometheusProvider, Site, instrument};
use sonde_proto::tracepoint::{
    LabelExpression, Metric, TracePointConfig, label_expression::Value as LabelValue,
};

/// Held by every test: one agent at a time, and no test sees another's armed sites.
static AGENT: Mutex<()> = Mutex::new(());

#[derive(Capture)]
struct Order {
    country: String,
    total: f64,
}

/// Not `Capture`: skipped.
struct Db;

#[derive(Debug)]
struct Declined;

fn fee(attempts: u32) -> Result<f64, Declined> {
    if attempts > 10 {
        Err(Declined)
    } else {
        Ok(f64::from(attempts))
    }
}

#[instrument(skip(db))]
fn charge(db: &Db, order: &Order, attempts: u32) -> Result<f64, Declined> {
    let _ = db;
    if attempts == 0 {
        return Ok(0.0);
    }
    let fee = fee(attempts)?;
    std::thread::sleep(Duration::from_millis(1));
    Ok(order.total + fee)
}

/// The body moves its argument: the exit site still reads it.
#[instrument]
fn consume(name: String, n: u64) -> usize {
    drop(name);
    n as usize
}

#[instrument(skip_ret)]
#[rustfmt::skip] // on one line on purpose: both sites share it
fn one_line(x: u8) -> u8 { x }

struct Store(HashMap<String, u64>);

impl Store {
    /// Returns a reference reborrowed from `&mut self`.
    #[instrument]
    fn slot(&mut self, key: &str) -> &mut u64 {
        self.0.entry(key.to_owned()).or_default()
    }
}

/// Shapes that must compile: generic returns with and without `Capture`, `impl Trait`, a
/// `Result` whose `Ok` type is not `Capture`, `self` by value, destructured arguments, no return.
mod shapes {
    use super::*;

    #[instrument]
    pub fn echo<T: Capture>(value: T) -> T {
        value
    }

    #[instrument(skip(value))]
    pub fn opaque<T>(value: T) -> T {
        value
    }

    #[instrument]
    pub fn evens(limit: u32) -> impl Iterator<Item = u32> {
        (0..limit).filter(|n| n % 2 == 0)
    }

    #[instrument(skip(ok))]
    pub fn open(ok: bool) -> Result<Db, Declined> {
        if ok { Ok(Db) } else { Err(Declined) }
    }

    pub struct Counter(pub u32);

    impl Counter {
        #[instrument]
        pub fn into_inner(self) -> u32 {
            self.0
        }
    }

    #[instrument]
    pub fn sum((a, b): (u32, u32), scale: u32) -> u32 {
        (a + b) * scale
    }

    #[instrument]
    pub async fn nothing() {}
}

/// Pending once, then ready: makes the async body really suspend.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

#[instrument]
async fn fetch(id: u64, prefix: &str) -> Result<String, Declined> {
    YieldOnce(false).await;
    if id == 0 {
        return Err(Declined);
    }
    let fee = fee(id as u32)?;
    std::thread::sleep(Duration::from_millis(1));
    Ok(format!("{prefix}-{id}-{fee}"))
}

/// A minimal executor: polls with a no-op waker until ready.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// The site of this test file whose names are `names`.
fn site(names: &[&str]) -> &'static Site {
    let found: Vec<_> = sonde_agent::sites()
        .filter(|s| s.module().ends_with("instrument") && s.names() == names)
        .collect();
    assert_eq!(found.len(), 1, "one site captures {names:?}: {found:?}");
    found[0]
}

/// 1-based line of the first line of this file starting (after indentation) with `prefix`, and
/// of the first line after it that is exactly `close` (the function's closing brace).
fn lines_of(prefix: &str, close: &str) -> (u32, u32) {
    let source = include_str!("instrument.rs");
    let lines: Vec<&str> = source.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with(prefix))
        .expect("the function");
    let end = start
        + lines[start..]
            .iter()
            .position(|l| *l == close)
            .expect("its closing brace");
    (start as u32 + 1, end as u32 + 1)
}

#[test]
fn sites_sit_at_the_fn_line_and_the_closing_brace() {
    let _guard = AGENT.lock().unwrap_or_else(|e| e.into_inner());
    let (fn_line, brace_line) = lines_of("fn charge(", "}");
    let entry = site(&["order", "attempts"]);
    let exit = site(&["order", "attempts", "ret", "ok", "elapsed"]);
    assert_eq!(entry.line(), fn_line);
    assert_eq!(exit.line(), brace_line);
    assert_eq!(entry.file(), file!());
    assert_eq!(exit.file(), file!());

    let (fn_line, brace_line) = lines_of("async fn fetch(", "}");
    assert_eq!(site(&["id", "prefix"]).line(), fn_line);
    assert_eq!(
        site(&["id", "prefix", "ret", "ok", "elapsed"]).line(),
        brace_line
    );

    // Written on one line: both sites share it. `skip_ret`: no `ret`.
    let (line, _) = lines_of("fn one_line(", "");
    assert_eq!(site(&["x"]).line(), line);
    assert_eq!(site(&["x", "ok", "elapsed"]).line(), line);

    // `self` is not captured.
    let (fn_line, brace_line) = lines_of("fn slot(", "    }");
    assert_eq!(site(&["key"]).line(), fn_line);
    assert_eq!(site(&["key", "ret", "ok", "elapsed"]).line(), brace_line);

    assert!(sonde_agent::sites().all(|s| !s.is_armed()));
}

#[test]
fn disarmed_functions_behave_as_written() {
    let _guard = AGENT.lock().unwrap_or_else(|e| e.into_inner());
    let order = Order {
        country: "NZ".into(),
        total: 10.0,
    };
    assert_eq!(charge(&Db, &order, 0).ok(), Some(0.0));
    assert_eq!(charge(&Db, &order, 2).ok(), Some(12.0));
    assert!(charge(&Db, &order, 11).is_err());
    assert_eq!(consume("x".into(), 3), 3);
    assert_eq!(one_line(4), 4);
    let mut store = Store(HashMap::new());
    *store.slot("a") += 2;
    assert_eq!(*store.slot("a"), 2);
    assert_eq!(block_on(fetch(7, "p")).ok().as_deref(), Some("p-7-7"));
    assert!(block_on(fetch(0, "p")).is_err());
    assert!(block_on(fetch(99, "p")).is_err());

    fn assert_send<T: Send>(value: T) -> T {
        value
    }
    assert!(
        block_on(assert_send(fetch(7, "p"))).is_ok(),
        "an instrumented async fn stays Send"
    );
    assert_eq!(shapes::echo(3u8), 3);
    assert!(matches!(shapes::opaque(Db), Db));
    assert_eq!(shapes::evens(5).collect::<Vec<_>>(), [0, 2, 4]);
    assert!(shapes::open(true).is_ok() && shapes::open(false).is_err());
    assert_eq!(shapes::Counter(4).into_inner(), 4);
    assert_eq!(shapes::sum((1, 2), 3), 9);
    block_on(shapes::nothing());
    assert!(
        sonde_agent::sites().any(|s| s.names() == ["scale"]),
        "the pattern is not captured"
    );
    assert!(sonde_agent::sites().any(|s| s.names() == ["value", "ret", "ok", "elapsed"]));
    assert!(sonde_agent::sites().any(|s| s.names() == ["ret", "ok", "elapsed"]));
}

fn label(key: &str, expression: &str) -> LabelExpression {
    LabelExpression {
        key: key.into(),
        value: Some(LabelValue::Expression(expression.into())),
    }
}

fn metric(name: &str, value: Option<&str>, labels: Vec<LabelExpression>) -> Metric {
    Metric {
        name: name.into(),
        expression: value.map(str::to_owned),
        label_expressions: labels,
        ..Default::default()
    }
}

fn tracepoint(
    id: &str,
    site: &Site,
    condition: Option<&str>,
    metrics: Vec<Metric>,
) -> TracePointConfig {
    let mut tp = TracePointConfig {
        id: id.into(),
        path: site.file().into(),
        line_number: site.line(),
        metrics,
        ..Default::default()
    };
    if let Some(c) = condition {
        tp.args.insert("condition".into(), c.into());
    }
    tp
}

/// The value of the exposition line that starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    line[series.len()..].trim().parse().expect("a number")
}

#[test]
fn every_return_path_reaches_the_exit_site() {
    let _guard = AGENT.lock().unwrap_or_else(|e| e.into_inner());
    let registry = prometheus::Registry::new();
    let agent = Agent::builder()
        .offline()
        .provider(PrometheusProvider::new(registry.clone()))
        .start()
        .expect("agent starts");

    let charge_entry = site(&["order", "attempts"]);
    let charge_exit = site(&["order", "attempts", "ret", "ok", "elapsed"]);
    let consume_exit = site(&["name", "n", "ret", "ok", "elapsed"]);
    let fetch_exit = site(&["id", "prefix", "ret", "ok", "elapsed"]);
    let slot_exit = site(&["key", "ret", "ok", "elapsed"]);
    agent.apply(vec![
        tracepoint(
            "charge-entry",
            charge_entry,
            None,
            vec![metric(
                "charge_attempts",
                Some("attempts"),
                vec![label("country", "order.country")],
            )],
        ),
        tracepoint(
            "charge-exit",
            charge_exit,
            None,
            vec![
                metric(
                    "charge_calls",
                    None,
                    vec![label("ok", "ok"), label("country", "order.country")],
                ),
                metric("charge_seconds", Some("elapsed"), vec![]),
            ],
        ),
        tracepoint(
            "charge-ret",
            charge_exit,
            Some("ok"),
            vec![metric("charged", Some("ret"), vec![])],
        ),
        tracepoint(
            "consume-exit",
            consume_exit,
            None,
            vec![metric(
                "consumed",
                Some("ret + n"),
                vec![label("name", "name")],
            )],
        ),
        tracepoint(
            "fetch-exit",
            fetch_exit,
            None,
            vec![
                metric(
                    "fetches",
                    None,
                    vec![label("ok", "ok"), label("prefix", "prefix")],
                ),
                metric("fetch_seconds", Some("elapsed"), vec![]),
            ],
        ),
        tracepoint(
            "fetch-ret",
            fetch_exit,
            Some("ok"),
            vec![metric("fetched", None, vec![label("ret", "ret")])],
        ),
        tracepoint(
            "slot-exit",
            slot_exit,
            None,
            vec![metric("slot_value", Some("ret"), vec![label("key", "key")])],
        ),
    ]);
    for status in agent.statuses() {
        assert_eq!(
            status.state,
            sonde_agent::TracepointState::Bound,
            "{status:?}"
        );
    }

    let order = Order {
        country: "NZ".into(),
        total: 10.0,
    };
    assert_eq!(charge(&Db, &order, 0).ok(), Some(0.0), "early return");
    assert_eq!(charge(&Db, &order, 2).ok(), Some(12.0), "last expression");
    assert!(charge(&Db, &order, 11).is_err(), "`?`");
    assert_eq!(consume("bob".into(), 3), 3);
    let mut store = Store(HashMap::new());
    *store.slot("a") += 5;
    assert_eq!(*store.slot("a"), 5);
    assert_eq!(block_on(fetch(7, "p")).ok().as_deref(), Some("p-7-7"));
    assert!(block_on(fetch(0, "p")).is_err(), "early return");
    assert!(block_on(fetch(99, "p")).is_err(), "`?`");

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encodes");
    assert_eq!(
        sample(&text, r#"deep_charge_attempts_total{country="NZ"}"#),
        13.0
    );
    assert_eq!(
        sample(&text, r#"deep_charge_calls_total{country="NZ",ok="true"}"#),
        2.0
    );
    assert_eq!(
        sample(&text, r#"deep_charge_calls_total{country="NZ",ok="false"}"#),
        1.0
    );
    let seconds = sample(&text, "deep_charge_seconds_total");
    assert!(
        (0.001..60.0).contains(&seconds),
        "the 1 ms sleep is timed: {seconds}"
    );
    assert_eq!(sample(&text, "deep_charged_total"), 12.0, "0 + 12");
    assert_eq!(
        sample(&text, r#"deep_consumed_total{name="bob"}"#),
        6.0,
        "the moved argument is read at exit"
    );
    assert_eq!(
        sample(&text, r#"deep_fetches_total{ok="true",prefix="p"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"deep_fetches_total{ok="false",prefix="p"}"#),
        2.0
    );
    assert!(sample(&text, "deep_fetch_seconds_total") >= 0.001);
    assert_eq!(sample(&text, r#"deep_fetched_total{ret="p-7-7"}"#), 1.0);
    assert_eq!(
        sample(&text, r#"deep_slot_value_total{key="a"}"#),
        5.0,
        "0 at the first call, 5 at the second"
    );
    for status in agent.statuses() {
        assert!(
            status.message.is_empty(),
            "no evaluation errors: {status:?}"
        );
    }
    agent.shutdown();
    assert!(sonde_agent::sites().all(|s| !s.is_armed()));
}
