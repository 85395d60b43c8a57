//! Under closed-loop load a metric tracepoint stays bound and its metrics stay true: the shop
//! example (a real axum service with a real agent following a real `sonde server` over gRPC) takes
//! `POST /checkout` from 16 keep-alive connections for 15 s, with two tracepoints on its checkout
//! line: a counter labelled by a general expression (`order.country + "-" + order.user.tier`) and
//! a histogram of `order.total`. Whatever the CPU budget made them do (sample one hit in N, or
//! not), the counter's total and the histogram's count are within 5% of the orders the generator
//! completed, the histogram's sum within 5% of their totals, and neither tracepoint is disarmed.
//!
//! The shop binary is the one `cargo test` builds beside this test (`target/<profile>/examples/shop`).

mod common;
#[path = "common/load.rs"]
mod load;
#[path = "common/shop.rs"]
mod shop;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::TestServer;

fn scrape(addr: SocketAddr) -> String {
    let agent = common::http_agent();
    let (status, body) = common::send(&agent, "GET", &format!("http://{addr}/metrics"), None, &[]);
    assert_eq!(status, 200);
    String::from_utf8(body).expect("utf-8 exposition")
}

/// The agent's statuses of the tracepoints on the server, once both are reported bound.
fn wait_until_bound(server: &TestServer, service: &str, ids: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, json) = server.get("/api/agents");
        let bound = json["agents"].as_array().into_iter().flatten().any(|a| {
            a["resource"]["service.name"] == service
                && ids.iter().all(|id| {
                    a["tracepoints"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|t| t["id"] == *id && t["state"] == "bound")
                })
        });
        if bound {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the shop's agent never reported both tracepoints bound: {json}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(state, message)` of tracepoint `id` as the shop's agent last reported it.
fn reported(server: &TestServer, service: &str, id: &str) -> (String, String) {
    let (_, json) = server.get("/api/agents");
    json["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["resource"]["service.name"] == service)
        .flat_map(|a| a["tracepoints"].as_array().into_iter().flatten())
        .find(|t| t["id"] == id)
        .map(|t| {
            (
                t["state"].as_str().unwrap_or_default().to_owned(),
                t["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .unwrap_or_else(|| panic!("no status for {id}: {json}"))
}

#[test]
fn a_counter_and_a_histogram_stay_within_5_percent_under_load() {
    let server = TestServer::start();
    let service = format!("shop-under-load-{}", std::process::id());
    let shop = shop::start(&server.grpc, &service);
    let line = shop::checkout_line();
    let target = format!(r#"[{{"key": "service.name", "value": {{"stringValue": "{service}"}}}}]"#);
    let counter = server.create(&format!(
        r#"{{"tracepoint": {{"path": "examples/shop.rs", "line_number": {line},
            "targeting": {target},
            "metrics": [{{"name": "checkouts", "type": "COUNTER",
                "labelExpressions": [{{"key": "segment",
                    "expression": "order.country + \"-\" + order.user.tier"}}]}}]}}}}"#
    ));
    let histogram = server.create(&format!(
        r#"{{"tracepoint": {{"path": "examples/shop.rs", "line_number": {line},
            "targeting": {target},
            "metrics": [{{"name": "order_total", "type": "HISTOGRAM",
                "expression": "order.total"}}]}}}}"#
    ));
    wait_until_bound(&server, &service, &[&counter, &histogram]);

    let report = load::run(shop.addr, 16, Duration::from_secs(15));
    let text = scrape(shop.addr);
    let counted = load::total(&text, "deep_checkouts_total");
    let count = load::total(&text, "deep_order_total_count");
    let sum = load::total(&text, "deep_order_total_sum");
    let every = |id: &str| {
        load::total(
            &text,
            &format!(r#"sonde_agent_tracepoint_sample_every{{tracepoint="{id}"}}"#),
        )
    };
    println!(
        "{} orders ({:.0}/s, {} failed), p99 {} µs; counter {counted} (1 in {}), histogram \
         count {count} sum {sum:.2} for a true sum of {:.2} (1 in {})",
        report.ok,
        report.throughput(),
        report.failed,
        report.latency_us(0.99),
        every(&counter),
        report.total_sum,
        every(&histogram),
    );
    assert!(report.ok > 1000, "the load ran: {report:?}");
    assert_eq!(report.failed, 0, "every order was answered 200");
    let near = |got: f64, want: f64| (got - want).abs() <= 0.05 * want;
    assert!(
        near(counted, report.ok as f64),
        "counter {counted} for {} orders",
        report.ok
    );
    assert!(
        near(count, report.ok as f64),
        "histogram count {count} for {} orders",
        report.ok
    );
    assert!(
        near(sum, report.total_sum),
        "histogram sum {sum} for a true sum of {}",
        report.total_sum
    );
    // The agent reports a status change within a second; give it two.
    std::thread::sleep(Duration::from_secs(2));
    for id in [&counter, &histogram] {
        let (state, message) = reported(&server, &service, id);
        assert_eq!(state, "bound", "{id}: {message}");
    }
}
