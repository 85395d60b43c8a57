//! A tracepoint histogram's buckets fit what it measures: a value with no unit (an order total)
//! gets a wide exponential range that spreads the observations over the buckets instead of
//! piling them into `+Inf` above the 10 s latency buckets, and `args.buckets` (what
//! `sonde tracepoint add --buckets` sets) is used as given. Real server, real agent.
//!
//! The agent is global to the process (probe sites are statics), so this file holds one test.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use sonde_agent::{Agent, PrometheusProvider, probe};

fn order(total: f64) {
    probe!(total);
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `le` → cumulative count pairs of `deep_order_total`, as exposed.
fn buckets(registry: &prometheus::Registry) -> Vec<(String, u64)> {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode");
    text.lines()
        .filter_map(|l| l.strip_prefix("deep_order_total_bucket{le=\""))
        .map(|l| {
            let (le, rest) = l.split_once("\"}").expect("le label");
            (le.to_owned(), rest.trim().parse().expect("a count"))
        })
        .collect()
}

const TOTALS: [f64; 7] = [3.0, 12.0, 50.0, 200.0, 900.0, 3000.0, 15000.0];

#[test]
fn histogram_buckets_follow_the_unit_or_the_args() {
    let server = TestServer::start();
    let registry = prometheus::Registry::new();
    let _agent = Agent::builder()
        .service_name("histograms")
        .server(server.grpc.clone())
        .provider(PrometheusProvider::new(registry.clone()))
        .start()
        .expect("agent starts");
    let site = sonde_agent::sites()
        .find(|s| {
            s.names() == ["total"] && s.file().ends_with("histogram_buckets_fit_the_values.rs")
        })
        .expect("the probe in order() is registered");
    let (path, line) = (site.file(), site.line());
    let body = |args: &str| {
        format!(
            r#"{{"tracepoint": {{"path": "{path}", "line_number": {line}, "args": {{{args}}},
                "metrics": [{{"name": "order_total", "type": "HISTOGRAM", "expression": "total"}}]}}}}"#
        )
    };

    // No unit: 1 to ~10^6 by powers of four, one order total per bucket.
    let id = server.create(&body(""));
    wait_for("the site to arm", || site.is_armed());
    for t in TOTALS {
        order(t);
    }
    let wide: Vec<(String, u64)> = [
        ("1", 0),
        ("4", 1),
        ("16", 2),
        ("64", 3),
        ("256", 4),
        ("1024", 5),
        ("4096", 6),
        ("16384", 7),
        ("65536", 7),
        ("262144", 7),
        ("1048576", 7),
        ("+Inf", 7),
    ]
    .map(|(le, n)| (le.to_owned(), n))
    .into();
    assert_eq!(buckets(&registry), wide);

    // Explicit buckets, through an edit: used as given (the old series goes with the old spec).
    let (status, json) = server.request(
        "PUT",
        &format!("/api/tracepoints/{id}"),
        Some(&body(r#""buckets": "10,100,1000""#)),
        &[],
    );
    assert_eq!(status, 200, "{json}");
    // Changed tracepoints are unbound (their series go) before the new form arms the site.
    wait_for("the edited tracepoint to be armed", || {
        buckets(&registry).is_empty() && site.is_armed()
    });
    for t in TOTALS {
        order(t);
    }
    let explicit: Vec<(String, u64)> = [("10", 1), ("100", 3), ("1000", 5), ("+Inf", 7)]
        .map(|(le, n)| (le.to_owned(), n))
        .into();
    assert_eq!(buckets(&registry), explicit);
}
