//! The whole promise, end to end over real sockets: a tracepoint posted to the server becomes a
//! labelled metric in the application's Prometheus registry within a second; an edit changes it;
//! a condition filters; an expression error comes back as status; deleting it removes the metric
//! and disarms the site; and while the server is down, metrics keep flowing.
//!
//! The agent is global to the process (probe sites are statics), so this file holds one test
//! that walks through the phases in order.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use sonde_agent::{Agent, PrometheusProvider, TracepointState, probe};

struct Order {
    total: f64,
    country: &'static str,
    items: u32,
}

fn checkout(order: &Order) {
    let total = order.total;
    let country = order.country;
    let items = order.items;
    probe!(total, country, items);
}

fn checkout_site() -> &'static sonde_agent::Site {
    sonde_agent::sites()
        .find(|s| s.names() == ["total", "country", "items"])
        .expect("the probe in checkout() is registered")
}

fn exposition(registry: &prometheus::Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode")
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

fn drive() {
    for (total, country) in [(10.0, "NZ"), (20.0, "NZ"), (5.0, "FR")] {
        checkout(&Order {
            total,
            country,
            items: 2,
        });
    }
}

#[test]
fn tracepoint_to_metric_and_back() {
    let server = TestServer::start();
    let registry = prometheus::Registry::new();
    let agent = Agent::builder()
        .service_name("shop")
        .server(server.grpc.clone())
        .provider(PrometheusProvider::new(registry.clone()))
        .start()
        .expect("agent starts");
    let site = checkout_site();
    assert!(!site.is_armed());
    let path = site.file();
    let line = site.line();

    // 1. Create: a counter valued by `total`, labelled by `country`.
    let id = server.create(&format!(
        r#"{{"tracepoint": {{"path": "{path}", "line_number": {line},
            "targeting": [{{"key": "service.name", "value": {{"stringValue": "shop"}}}}],
            "metrics": [{{"name": "order_value", "expression": "total",
                          "labelExpressions": [{{"key": "country", "expression": "country"}}]}}]}}}}"#
    ));
    let took = wait_for("the site to arm", Duration::from_secs(5), || {
        site.is_armed()
    });
    eprintln!("POST to armed: {took:?}");
    drive();
    let text = exposition(&registry);
    assert!(
        text.contains(r#"deep_order_value_total{country="NZ"} 30"#),
        "{text}"
    );
    assert!(
        text.contains(r#"deep_order_value_total{country="FR"} 5"#),
        "{text}"
    );

    // The agent reported the tracepoint as bound, to this site.
    wait_for(
        "a bound status on the server",
        Duration::from_secs(5),
        || {
            let (_, json) = server.get("/api/agents");
            json["agents"].as_array().into_iter().flatten().any(|a| {
                a["id"] == agent.agent_id()
                    && a["tracepoints"][0]["state"] == "bound"
                    && a["tracepoints"][0]["sites"][0] == format!("{path}:{line}").as_str()
            })
        },
    );

    // 2. Edit: a condition and a histogram of `items`; the counter goes away.
    let (status, json) = server.request(
        "PUT",
        &format!("/api/tracepoints/{id}"),
        Some(&format!(
            r#"{{"tracepoint": {{"path": "{path}", "line_number": {line},
                "args": {{"condition": "country == \"NZ\""}},
                "metrics": [{{"name": "order_items", "type": "HISTOGRAM", "expression": "items"}}]}}}}"#
        )),
        &[],
    );
    assert_eq!(status, 200, "{json}");
    // An edit is installed in two steps: the old version is unbound (its counter goes away and
    // the site disarms), then the new one is bound (the site arms again).
    wait_for("the edit to apply", Duration::from_secs(5), || {
        site.is_armed() && !exposition(&registry).contains("deep_order_value_total")
    });
    drive();
    let text = exposition(&registry);
    assert!(
        text.contains("deep_order_items_count 2"),
        "only NZ orders pass the condition: {text}"
    );
    assert!(text.contains("deep_order_items_sum 4"), "{text}");

    // 3. An expression error becomes status, not a made-up value.
    let bad = server.create(&format!(
        r#"{{"tracepoint": {{"path": "{path}", "line_number": {line},
            "metrics": [{{"name": "broken", "expression": "country * 2"}}]}}}}"#
    ));
    wait_for("the second tracepoint", Duration::from_secs(5), || {
        agent.statuses().iter().any(|s| s.id == bad)
    });
    drive();
    wait_for(
        "an error message in the status",
        Duration::from_secs(5),
        || {
            let (_, json) = server.get("/api/agents");
            json["agents"].as_array().into_iter().flatten().any(|a| {
                a["tracepoints"].as_array().into_iter().flatten().any(|t| {
                    t["id"] == bad.as_str() && t["message"].as_str().unwrap_or("").contains("value")
                })
            })
        },
    );
    assert!(
        !exposition(&registry).contains("deep_broken_total{"),
        "no made-up value"
    );
    let (status, _) = server.request("DELETE", &format!("/api/tracepoints/{bad}"), None, &[]);
    assert_eq!(status, 200);

    // A tracepoint on a line with no site is reported unbound, with the sites nearby.
    let unbound = server.create(&format!(
        r#"{{"tracepoint": {{"path": "{path}", "line_number": {}}}}}"#,
        line + 1
    ));
    wait_for("the unbound status", Duration::from_secs(5), || {
        agent.statuses().iter().any(|s| {
            s.id == unbound
                && s.state == TracepointState::Unbound
                && s.message.contains(&format!("{path}:{line}"))
        })
    });
    server.request("DELETE", &format!("/api/tracepoints/{unbound}"), None, &[]);

    // 4. Delete: the metric goes and the site disarms.
    let (status, _) = server.request("DELETE", &format!("/api/tracepoints/{id}"), None, &[]);
    assert_eq!(status, 200);
    // The site disarms, then its program (and with it the metric) is released.
    wait_for(
        "the site to disarm and the metric to go",
        Duration::from_secs(5),
        || !site.is_armed() && !exposition(&registry).contains("deep_order_items"),
    );

    // 5. Outage: with a tracepoint installed, stop the server; hits keep counting.
    server.create(&format!(
        r#"{{"tracepoint": {{"path": "{path}", "line_number": {line}, "metrics": [{{"name": "during_outage"}}]}}}}"#
    ));
    wait_for("the site to arm again", Duration::from_secs(5), || {
        site.is_armed()
    });
    drop(server);
    drive();
    std::thread::sleep(Duration::from_millis(300));
    drive();
    assert!(
        site.is_armed(),
        "the last configuration stays while the server is away"
    );
    assert!(
        exposition(&registry).contains("deep_during_outage_total 6"),
        "{}",
        exposition(&registry)
    );

    agent.shutdown();
    assert!(!site.is_armed(), "shutdown disarms every site");
    assert!(!exposition(&registry).contains("deep_during_outage_total"));
}
