//! A disarmed `probe!` allocates nothing: plain variables, a `name = expr` capture (whose
//! expression would allocate if it ran) and `?debug` / `%display` renderings, over 100,000 hits.
//!
//! Its own test binary because it installs a counting `#[global_allocator]`, and because the
//! contrast test starts an agent (one per process; probe sites are global). The allocator counts
//! only allocations made by the thread that asked for counting, so the test harness's other
//! threads (and the other tests of this binary, which run in parallel) do not disturb a count.

mod common;

use common::{Counting, count_allocations};

use std::hint::black_box;

use sonde_agent::{Agent, PrometheusProvider, probe};
use sonde_proto::tracepoint::{
    LabelExpression, Metric, TracePointConfig, label_expression::Value as LabelValue,
};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const HITS: u64 = 100_000;

#[derive(Debug)]
#[expect(dead_code, reason = "read only through its `Debug` rendering")]
struct Request {
    path: String,
    headers: Vec<(String, String)>,
}

/// Disarmed in every test of this binary: no tracepoint ever targets it.
#[inline(never)]
fn handle(order_id: u64, user: &str, items: &[u32], request: &Request) {
    probe!(
        order_id,
        user,
        items,
        total = items.iter().map(|i| f64::from(*i)).collect::<Vec<_>>(),
        label = format!("{user}-{order_id}"),
        ?request,
        %order_id,
    );
}

/// Armed by `an_armed_probe_allocates_and_the_counter_sees_it`.
#[inline(never)]
fn armed_handle(order_id: u64, request: &Request) {
    probe!(order_id, ?request);
}

fn request() -> Request {
    Request {
        path: "/checkout".into(),
        headers: vec![("x-id".into(), "42".into())],
    }
}

#[test]
fn a_disarmed_probe_allocates_nothing() {
    let site = sonde_agent::sites()
        .find(|s| s.names().contains(&"label"))
        .expect("the site of `handle`");
    assert!(!site.is_armed());
    let items = vec![1u32, 2, 3];
    let request = request();
    let allocations = count_allocations(|| {
        for i in 0..HITS {
            handle(
                black_box(i),
                black_box("ada"),
                black_box(&items),
                black_box(&request),
            );
        }
    });
    assert_eq!(allocations, 0, "allocations over {HITS} disarmed hits");
}

#[test]
fn the_counter_sees_a_deliberate_allocation() {
    let allocations = count_allocations(|| {
        for i in 0..100u64 {
            black_box(Box::new(black_box(i)));
        }
    });
    assert_eq!(allocations, 100);
}

#[test]
fn an_armed_probe_allocates_and_the_counter_sees_it() {
    let registry = prometheus::Registry::new();
    let agent = Agent::builder()
        .service_name("alloc-test")
        .provider(PrometheusProvider::new(registry.clone()))
        .offline()
        .start()
        .expect("the agent starts");
    let site = sonde_agent::sites()
        .find(|s| s.names() == ["order_id", "request"])
        .expect("the site of `armed_handle`");
    // Labelled by the request's `Debug` rendering: each hit formats it into a `String`.
    agent.apply(vec![TracePointConfig {
        id: "tp-armed".into(),
        path: site.file().into(),
        line_number: site.line(),
        metrics: vec![Metric {
            name: "armed_hits".into(),
            label_expressions: vec![LabelExpression {
                key: "request".into(),
                value: Some(LabelValue::Expression("request".into())),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }]);
    assert!(site.is_armed());
    let request = request();
    armed_handle(0, &request); // creates the series
    let allocations = count_allocations(|| {
        for i in 0..1000 {
            armed_handle(black_box(i), black_box(&request));
        }
    });
    assert_eq!(agent.fires("tp-armed"), Some(1001));
    assert!(
        allocations >= 1000,
        "an armed hit renders `?request` into a String, yet only {allocations} allocations were seen"
    );
    agent.shutdown();
    assert!(!site.is_armed());
}
