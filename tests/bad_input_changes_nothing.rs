//! Every class of bad input gets its error, naming the field (and for an expression, the
//! position), and changes nothing: the tracepoint list is the same afterwards.

mod common;

use common::TestServer;
use serde_json::Value;

fn tp(fields: &str) -> String {
    format!(r#"{{"tracepoint": {{"path": "src/checkout.rs", "line_number": 42{fields}}}}}"#)
}

/// POSTs `body`, expects a 400 naming `field`, and checks nothing changed.
fn refused(server: &TestServer, body: &str, field: &str) -> Value {
    let before = server.ids(&[]);
    let (status, json) = server.post("/api/tracepoints", body);
    assert_eq!(status, 400, "body {body} gave {json}");
    assert_eq!(json["error"]["code"], "invalid_argument", "{json}");
    assert_eq!(json["error"]["field"], field, "{json}");
    assert!(
        !json["error"]["message"].as_str().unwrap_or("").is_empty(),
        "{json}"
    );
    assert_eq!(
        server.ids(&[]),
        before,
        "a refused request must change nothing"
    );
    json
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn missing_or_malformed_basics() {
    let server = TestServer::start();
    server.create(&tp(""));
    refused(&server, r#"{"tracepoint": {"line_number": 3}}"#, "path");
    refused(&server, r#"{"tracepoint": {"path": "a.rs"}}"#, "lineNumber");
    refused(
        &server,
        r#"{"tracepoint": {"path": "a.rs", "line_number": 3, "ID": "mine"}}"#,
        "ID",
    );
    refused(
        &server,
        r#"{"tracepoint": {"path": "a.rs", "lineNumbr": 3}}"#,
        "body",
    );
    refused(&server, r#"{"tracepoint": "#, "body");
    refused(&server, "", "body");
    refused(&server, r#"{"path": "a.rs", "line_number": 3}"#, "body");
    refused(&server, r#"{}"#, "tracepoint");
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn args_must_be_known_and_well_formed() {
    let server = TestServer::start();
    refused(
        &server,
        &tp(r#", "args": {"fire_cnt": "1"}"#),
        "args.fire_cnt",
    );
    refused(
        &server,
        &tp(r#", "args": {"fire_count": "0"}"#),
        "args.fire_count",
    );
    refused(
        &server,
        &tp(r#", "args": {"fire_period": "soon"}"#),
        "args.fire_period",
    );
    refused(
        &server,
        &tp(r#", "args": {"snapshot": "maybe"}"#),
        "args.snapshot",
    );
    refused(
        &server,
        &tp(r#", "args": {"window_start": "1700000100", "window_end": "1700000000"}"#),
        "args.window_end",
    );
    server.create(&tp(
        r#", "args": {"fire_count": "-1", "fire_period": "0", "snapshot": "no_collect",
             "window_start": "1700000000", "window_end": "1700000100000"}"#,
    ));
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn expressions_must_compile_and_errors_carry_the_position() {
    let server = TestServer::start();
    let json = refused(
        &server,
        &tp(r#", "args": {"condition": "order.total > "}"#),
        "args.condition",
    );
    assert!(
        json["error"]["position"]["column"].as_u64().is_some(),
        "{json}"
    );
    refused(
        &server,
        &tp(r#", "metrics": [{"name": "m", "expression": "order.total *"}]"#),
        "metrics[0].expression",
    );
    refused(
        &server,
        &tp(
            r#", "metrics": [{"name": "m", "labelExpressions": [{"key": "c", "expression": "(("}]}]"#,
        ),
        "metrics[0].labelExpressions[0].expression",
    );
    refused(
        &server,
        &tp(r#", "watches": ["a.b", "while true {}"]"#),
        "watches[1]",
    );
    let long = "x".repeat(1025);
    refused(
        &server,
        &tp(&format!(r#", "args": {{"condition": "{long}"}}"#)),
        "args.condition",
    );
    server.create(&tp(
        r#", "args": {"condition": "len(basket.items) > 3 && user.name == \"x\""},
             "metrics": [{"name": "m", "expression": "order.total * 2",
                          "labelExpressions": [{"key": "c", "expression": "order.country"}]}]"#,
    ));
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn metric_and_label_names_must_be_legal_and_bounded() {
    let server = TestServer::start();
    refused(
        &server,
        &tp(r#", "metrics": [{"name": "orders-total"}]"#),
        "metrics[0].name",
    );
    refused(
        &server,
        &tp(r#", "metrics": [{"name": "m", "unit": "per cent"}]"#),
        "metrics[0].unit",
    );
    refused(
        &server,
        &tp(r#", "metrics": [{"name": "m", "namespace": "9x"}]"#),
        "metrics[0].namespace",
    );
    refused(
        &server,
        &tp(
            r#", "metrics": [{"name": "m", "labelExpressions": [{"key": "a b", "expression": "x"}]}]"#,
        ),
        "metrics[0].labelExpressions[0].key",
    );
    refused(
        &server,
        &tp(
            r#", "metrics": [{"name": "m", "labelExpressions": [{"key": "a", "expression": "x"}, {"key": "a", "expression": "y"}]}]"#,
        ),
        "metrics[0].labelExpressions[1].key",
    );
    let labels: Vec<String> = (0..17)
        .map(|i| format!(r#"{{"key": "l{i}", "expression": "x"}}"#))
        .collect();
    refused(
        &server,
        &tp(&format!(
            r#", "metrics": [{{"name": "m", "labelExpressions": [{}]}}]"#,
            labels.join(",")
        )),
        "metrics[0].labelExpressions",
    );
    let metrics: Vec<String> = (0..17).map(|i| format!(r#"{{"name": "m{i}"}}"#)).collect();
    refused(
        &server,
        &tp(&format!(r#", "metrics": [{}]"#, metrics.join(","))),
        "metrics",
    );
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn python_expressions_pass_only_when_aimed_at_python_agents() {
    let server = TestServer::start();
    // Valid Python, not valid rhai (a conditional expression and a list comprehension).
    let python = r#""args": {"condition": "x if y else z"},
                    "metrics": [{"name": "m", "expression": "sum([i.price for i in basket.items])"}]"#;
    refused(&server, &tp(&format!(", {python}")), "args.condition");
    refused(
        &server,
        &tp(&format!(
            r#", {python}, "targeting": [{{"key": "telemetry.sdk.language", "value": {{"stringValue": "rust"}}}}]"#
        )),
        "args.condition",
    );
    server.create(&tp(&format!(
        r#", {python}, "targeting": [{{"key": "telemetry.sdk.language", "value": {{"stringValue": "python"}}}}]"#
    )));
    // Aimed at Python, sizes and names are still checked.
    refused(
        &server,
        &tp(
            r#", "metrics": [{"name": "bad name"}], "targeting": [{"key": "telemetry.sdk.language", "value": {"stringValue": "python"}}]"#,
        ),
        "metrics[0].name",
    );
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn routes_methods_and_sizes() {
    let server = TestServer::start_with(|c| c.max_body_bytes = 2048);
    let (status, json) = server.get("/api/nothing");
    assert_eq!(status, 404);
    assert_eq!(json["error"]["code"], "not_found");
    let (status, json) = server.request("PATCH", "/api/tracepoints", Some("{}"), &[]);
    assert_eq!(status, 405);
    assert_eq!(json["error"]["code"], "method_not_allowed");
    let big = tp(&format!(
        r#", "args": {{"log_msg": "{}"}}"#,
        "y".repeat(4096)
    ));
    let (status, json) = server.post("/api/tracepoints", &big);
    assert_eq!(status, 413, "{json}");
    assert_eq!(json["error"]["code"], "payload_too_large");
    let (status, _) = server.request("GET", "/api/tracepoints/no-such-id", None, &[]);
    assert_eq!(status, 404);
    let (status, json) =
        server.request("GET", "/api/tracepoints", None, &[("X-Scope-OrgID", "a/b")]);
    assert_eq!(status, 400);
    assert_eq!(json["error"]["field"], "X-Scope-OrgID");
    assert!(server.ids(&[]).is_empty());
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn the_tenant_limit_is_a_conflict_that_changes_nothing() {
    let server = TestServer::start_with(|c| c.max_tracepoints_per_tenant = 2);
    server.create(&tp(""));
    server.create(&tp(""));
    let (status, json) = server.post("/api/tracepoints", &tp(""));
    assert_eq!(status, 409, "{json}");
    assert_eq!(json["error"]["code"], "resource_exhausted");
    assert_eq!(server.ids(&[]).len(), 2);
    let (status, _) = server.request(
        "POST",
        "/api/tracepoints",
        Some(&tp("")),
        &[("X-Scope-OrgID", "other")],
    );
    assert_eq!(status, 200, "the limit is per tenant");
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn a_bad_edit_leaves_the_tracepoint_as_it_was() {
    let server = TestServer::start();
    let id = server.create(&tp(r#", "args": {"condition": "a > 1"}"#));
    let (status, json) = server.request(
        "PUT",
        &format!("/api/tracepoints/{id}"),
        Some(&tp(r#", "args": {"condition": "a >"}"#)),
        &[],
    );
    assert_eq!(status, 400, "{json}");
    let (_, json) = server.get(&format!("/api/tracepoints/{id}"));
    assert_eq!(json["tracepoint"]["args"]["condition"], "a > 1");
    let (status, _) = server.request("PUT", "/api/tracepoints/missing", Some(&tp("")), &[]);
    assert_eq!(status, 404);
}

on_both_stores!(
    missing_or_malformed_basics,
    args_must_be_known_and_well_formed,
    expressions_must_compile_and_errors_carry_the_position,
    metric_and_label_names_must_be_legal_and_bounded,
    python_expressions_pass_only_when_aimed_at_python_agents,
    routes_methods_and_sizes,
    the_tenant_limit_is_a_conflict_that_changes_nothing,
    a_bad_edit_leaves_the_tracepoint_as_it_was
);
