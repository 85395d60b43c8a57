//! Agents tell the server where a tracepoint can bind: two shops (the example, real child
//! processes with real agents) report their three probe sites; `GET /api/sites` merges them per
//! service counting the agents that have each, `GET /api/agents/{id}/sites` shows one agent's, and
//! the real `sonde sites` CLI lists the checkout line with what it captures. Once the line has run
//! in one shop, its captured `order`'s field names are listed too (the agent reports its catalog
//! again), and a tracepoint reading a field `order` does not have is created with a warning
//! naming the fields. The catalog is read with a `read` token like the rest of the API (none:
//! 401), and stays in its tenant.

mod common;
#[path = "common/shop.rs"]
mod shop;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::Value;

const READ: &str = "read-secret-0123456789";
const WRITE: &str = "write-secret-0123456789";

/// `GET /api/sites?service.name=...` with the read token, once `agents` agents have reported.
fn wait_for_sites(server: &TestServer, service: &str, agents: u64) -> Value {
    let auth = format!("Bearer {READ}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, json) = server.request(
            "GET",
            &format!("/api/sites?service.name={service}"),
            None,
            &[("authorization", &auth)],
        );
        assert_eq!(status, 200, "{json}");
        if json["reporting"] == agents {
            return json;
        }
        assert!(
            Instant::now() < deadline,
            "{agents} agents never reported their sites: {json}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn shops_report_their_probe_sites_and_the_cli_lists_them() {
    let server = TestServer::start_with(|c| {
        c.tokens = vec![
            format!("reader:read:{READ}"),
            format!("writer:write:{WRITE}"),
        ];
    });
    let service = format!("shop-sites-{}", std::process::id());
    let a = shop::start(&server.grpc, &service);
    let _b = shop::start(&server.grpc, &service);
    let line = shop::checkout_line();

    // Merged: three sites, each in both agents.
    let merged = wait_for_sites(&server, &service, 2);
    assert_eq!(merged["agents"], 2, "{merged}");
    let sites = merged["sites"].as_array().expect("sites");
    assert_eq!(sites.len(), 3, "the shop has three probe sites: {merged}");
    for site in sites {
        assert_eq!(site["agents"], 2, "both agents have {site}");
        assert_eq!(site["kind"], "probe");
        assert_eq!(site["file"], "examples/shop.rs");
    }
    let checkout = sites
        .iter()
        .find(|s| s["line"] == line)
        .unwrap_or_else(|| panic!("no site at line {line}: {merged}"));
    assert_eq!(
        checkout["names"],
        serde_json::json!(["order", "discount", "charged", "took"])
    );

    // Without a token: 401; another tenant sees none of it.
    let (status, _) = server.get(&format!("/api/sites?service.name={service}"));
    assert_eq!(status, 401, "the catalog needs a token");
    let auth = format!("Bearer {READ}");
    let (status, other) = server.request(
        "GET",
        &format!("/api/sites?service.name={service}"),
        None,
        &[("authorization", &auth), ("x-scope-orgid", "other")],
    );
    assert_eq!(status, 200, "{other}");
    assert_eq!(other["agents"], 0, "tenants are separate: {other}");
    assert_eq!(other["sites"], serde_json::json!([]));
    let (_, agents) = server.request("GET", "/api/agents", None, &[("authorization", &auth)]);
    let id = agents["agents"][0]["id"]
        .as_str()
        .expect("an agent")
        .to_owned();
    let (status, one) = server.request(
        "GET",
        &format!("/api/agents/{id}/sites"),
        None,
        &[("authorization", &auth)],
    );
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["reported"], true);
    assert_eq!(one["sites"].as_array().map(Vec::len), Some(3), "{one}");
    let (status, _) = server.request(
        "GET",
        "/api/agents/no-such-agent/sites",
        None,
        &[("authorization", &auth)],
    );
    assert_eq!(status, 404);

    // The CLI, JSON and table.
    let (code, out, err) = shop::sonde(
        &server.http,
        Some(READ),
        &["sites", "--service", &service, "-o", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&out).expect("JSON");
    let listed = json["sites"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["line"] == line)
        .unwrap_or_else(|| panic!("sonde sites lists no line {line}: {out}"));
    assert_eq!(listed["file"], "examples/shop.rs");
    assert_eq!(
        listed["names"],
        serde_json::json!(["order", "discount", "charged", "took"])
    );
    let (code, out, err) = shop::sonde(
        &server.http,
        Some(READ),
        &["sites", "--service", &service, "discount"],
    );
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "the filter keeps the checkout line: {out}");
    assert!(
        rows[0].starts_with(&format!("examples/shop.rs:{line}"))
            && rows[0].contains("probe")
            && rows[0].contains("2/2")
            && rows[0].ends_with("order, discount, charged, took"),
        "{out}"
    );
    let (code, _, err) = shop::sonde(&server.http, None, &["sites"]);
    assert_eq!(code, 1, "refused without a token: {err}");

    // The checkout line runs once in shop A: its `order`'s fields are reported and merged.
    let resp = common::http_agent()
        .post(format!("http://{}/checkout", a.addr))
        .header("content-type", "application/json")
        .send(r#"{"country":"NZ","items":[{"sku":"tea","qty":2}],"total":100,"user":{"id":"u1","tier":"gold"}}"#)
        .expect("checkout");
    assert_eq!(resp.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let checkout = loop {
        let merged = wait_for_sites(&server, &service, 2);
        let site = merged["sites"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["line"] == line)
            .cloned()
            .unwrap_or_default();
        if site["fields"].is_object() {
            break site;
        }
        assert!(
            Instant::now() < deadline,
            "the checkout site's fields never arrived: {merged}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        checkout["fields"],
        serde_json::json!({"order": ["country", "items", "total", "user"]}),
        "only `order` has fields (the others are plain values): {checkout}"
    );
    assert_eq!(
        checkout["agents"], 2,
        "still one site of both agents: {checkout}"
    );
    let (code, out, err) = shop::sonde(
        &server.http,
        Some(READ),
        &["sites", "--service", &service, "discount"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().nth(1).is_some_and(
            |row| row.ends_with("order {country, items, total, user}, discount, charged, took")
        ),
        "{out}"
    );
    let body = serde_json::json!({"tracepoint": {
        "path": "examples/shop.rs",
        "line_number": line,
        "targeting": [{"key": "service.name", "value": {"stringValue": service}}],
        "metrics": [{"name": "totals", "type": "HISTOGRAM", "expression": "order.totl"}],
    }})
    .to_string();
    let (status, created) = server.request(
        "POST",
        "/api/tracepoints",
        Some(&body),
        &[("authorization", &format!("Bearer {WRITE}"))],
    );
    assert_eq!(status, 200, "created all the same: {created}");
    let warned = created["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w.as_str())
        .any(|w| {
            w.starts_with("`order.totl`: the value `order` captured at examples/shop.rs:")
                && w.ends_with(r#"has no field "totl"; its fields: country, items, total, user"#)
        });
    assert!(warned, "{created}");
}
