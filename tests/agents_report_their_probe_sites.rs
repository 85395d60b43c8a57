//! Agents tell the server where a tracepoint can bind: two shops (the example, real child
//! processes with real agents) report their three probe sites; `GET /api/sites` merges them per
//! service counting the agents that have each, `GET /api/agents/{id}/sites` shows one agent's, and
//! the real `sonde sites` CLI lists the checkout line with what it captures. The catalog is read
//! with a `read` token like the rest of the API (none: 401), and stays in its tenant.

mod common;
#[path = "common/shop.rs"]
mod shop;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::Value;

const READ: &str = "read-secret-0123456789";

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
        c.tokens = vec![format!("reader:read:{READ}")];
    });
    let service = format!("shop-sites-{}", std::process::id());
    let _a = shop::start(&server.grpc, &service);
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
}
