//! Agents send each tracepoint's counters with their status reports, and the server sums them:
//! against the shop example (a real child process with a real agent), checkouts raise the hits
//! and fires of a tracepoint on the checkout probe in `GET /api/tracepoints/{id}/status` (`live`,
//! per agent `counters`, and `rates` over the last minutes), and in `GET /api/status`; a condition
//! that fails to evaluate counts errors and names the last one.

mod common;
#[path = "common/shop.rs"]
mod shop;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::Value;

fn checkout(shop: &shop::Shop, agent: &ureq::Agent) {
    let body = br#"{"country":"NZ","items":[{"sku":"tea","qty":2}],"total":100,"user":{"id":"u1","tier":"gold"}}"#;
    let (status, _) = common::send(
        agent,
        "POST",
        &format!("http://{}/checkout", shop.addr),
        Some(body.to_vec()),
        &[],
    );
    assert_eq!(status, 200);
}

fn wait_status(server: &TestServer, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, json) = server.get(&format!("/api/tracepoints/{id}/status"));
        assert_eq!(status, 200, "{json}");
        if ok(&json) {
            return json;
        }
        assert!(Instant::now() < deadline, "{what} never seen: {json}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn hits_fires_and_errors_reach_the_server() {
    let server = TestServer::start();
    let service = format!("shop-counts-{}", std::process::id());
    let shop = shop::start(&server.grpc, &service);
    let http = common::http_agent();
    let line = shop::checkout_line();
    let body = |condition: &str| {
        format!(
            r#"{{"tracepoint": {{"path": "examples/shop.rs", "lineNumber": {line},
            "args": {{"condition": "{condition}"}},
            "targeting": [{{"key": "service.name", "value": {{"stringValue": "{service}"}}}}],
            "metrics": [{{"name": "counted_checkouts", "type": "COUNTER"}}]}}}}"#
        )
    };
    let id = server.create(&body("order.total > 50"));
    let json = wait_status(&server, &id, "bound", |j| j["summary"]["bound"] == 1);
    assert_eq!(json["live"]["hits"], 0, "{json}");

    for _ in 0..7 {
        checkout(&shop, &http);
    }
    let json = wait_status(&server, &id, "7 hits", |j| j["live"]["hits"] == 7);
    assert_eq!(json["live"]["fires"], 7);
    assert_eq!(json["live"]["errors"], 0);
    assert_eq!(json["agents"][0]["counters"]["hits"], 7);
    let rates = json["rates"].as_array().expect("rates");
    assert_eq!(rates.len(), 60, "five minutes of 5 s buckets");
    let total: f64 = rates
        .iter()
        .map(|r| r["hits"].as_f64().unwrap() * 5.0)
        .sum();
    assert!(
        (total - 7.0).abs() < 1e-9,
        "the rates add up to the hits: {total}"
    );
    let (_, all) = server.get("/api/status");
    assert_eq!(all["tracepoints"][&id]["hits"], 7, "{all}");

    // An edit reinstalls it: its counters start again; a failing condition counts errors.
    let (status, json) = server.request(
        "PUT",
        &format!("/api/tracepoints/{id}"),
        Some(&body("order.nothing > 1")),
        &[],
    );
    assert_eq!(status, 200, "{json}");
    wait_status(&server, &id, "the new version bound", |j| {
        j["summary"]["bound"] == 1 && j["live"]["hits"] == 0
    });
    for _ in 0..3 {
        checkout(&shop, &http);
    }
    let json = wait_status(&server, &id, "3 errors", |j| j["live"]["errors"] == 3);
    assert_eq!(json["live"]["fires"], 0);
    let last = json["live"]["last_error"].as_str().unwrap_or_default();
    assert!(last.starts_with("condition:"), "{json}");
    drop(shop);
}
