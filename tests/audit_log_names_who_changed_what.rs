//! The audit log: a create, an edit and a delete by two differently named tokens read back in
//! order, with the names and the tracepoint before and after; changes through gRPC and the CLI
//! say so; pages follow one another; `sonde audit` prints it; with no tokens the author is
//! `anonymous`.

mod common;

use common::TestServer;
use serde_json::Value;
use sonde_proto::{
    sonde::{CreateTracepointRequest, tracepoint_service_client::TracepointServiceClient},
    tracepoint::TracePointConfig,
};

const ALICE: (&str, &str) = ("authorization", "Bearer alice-secret");
const BOB: (&str, &str) = ("authorization", "Bearer bob-secret");
const READER: (&str, &str) = ("authorization", "Bearer reader-secret");

fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.tokens = vec![
            "alice:write:alice-secret".into(),
            "bob:write:bob-secret".into(),
            "reader:read:reader-secret".into(),
        ];
    })
}

fn audit(server: &TestServer, query: &str, auth: (&str, &str)) -> Value {
    let (status, json) = server.request("GET", &format!("/api/audit{query}"), None, &[auth]);
    assert_eq!(status, 200, "{json}");
    json
}

fn entries(page: &Value) -> Vec<Value> {
    page["entries"].as_array().expect("entries").clone()
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn create_edit_delete_by_two_tokens_read_back_in_order() {
    let server = server();
    let (status, created) = server.request(
        "POST",
        "/api/tracepoints",
        Some(r#"{"tracepoint": {"path": "src/pay.rs", "line_number": 10, "args": {"condition": "a > 1"}}}"#),
        &[ALICE],
    );
    assert_eq!(status, 200, "{created}");
    let id = created["tracepoint"]["ID"].as_str().unwrap().to_owned();
    let (status, _) = server.request(
        "PUT",
        &format!("/api/tracepoints/{id}"),
        Some(r#"{"tracepoint": {"path": "src/pay.rs", "line_number": 11}}"#),
        &[BOB],
    );
    assert_eq!(status, 200);
    let (status, _) = server.request("DELETE", &format!("/api/tracepoints/{id}"), None, &[ALICE]);
    assert_eq!(status, 200);

    let log = entries(&audit(&server, &format!("?tracepoint={id}"), READER));
    let summary: Vec<(&str, &str)> = log
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["who"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [("create", "alice"), ("edit", "bob"), ("delete", "alice")]
    );
    let (create, edit, delete) = (&log[0], &log[1], &log[2]);
    assert!(create["seq"].as_i64() < edit["seq"].as_i64());
    assert!(edit["seq"].as_i64() < delete["seq"].as_i64());
    for e in &log {
        assert_eq!(e["tenant"], "single-tenant");
        assert_eq!(e["via"], "http");
        assert_eq!(e["address"], "127.0.0.1");
        assert_eq!(e["tracepoint"], id.as_str());
        assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
    }
    assert_eq!(create["before"], Value::Null);
    assert_eq!(create["after"]["lineNumber"], 10);
    assert_eq!(create["after"]["args"]["condition"], "a > 1");
    assert_eq!(create["after"]["ID"], id.as_str());
    assert_eq!(edit["before"]["lineNumber"], 10);
    assert_eq!(edit["before"]["args"]["condition"], "a > 1");
    assert_eq!(edit["after"]["lineNumber"], 11);
    assert_eq!(
        edit["after"]["args"],
        Value::Null,
        "the edit replaced the args"
    );
    assert_eq!(delete["before"]["lineNumber"], 11);
    assert_eq!(delete["after"], Value::Null);

    let by_bob = entries(&audit(&server, "?who=bob", READER));
    assert_eq!(by_bob.len(), 1);
    assert_eq!(by_bob[0]["action"], "edit");
    let future = entries(&audit(&server, "?since=4102444800", READER));
    assert!(future.is_empty(), "nothing since 2100: {future:?}");
    let recent = entries(&audit(&server, "?since=1h", READER));
    assert_eq!(recent.len(), 3);
    let (status, json) = server.request("GET", "/api/audit?since=soon", None, &[READER]);
    assert_eq!(status, 400);
    assert_eq!(json["error"]["field"], "since");
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn pages_follow_one_another() {
    let server = server();
    for line in 1..=5 {
        let (status, _) = server.request(
            "POST",
            "/api/tracepoints",
            Some(&format!(
                r#"{{"tracepoint": {{"path": "a.rs", "line_number": {line}}}}}"#
            )),
            &[ALICE],
        );
        assert_eq!(status, 200);
    }
    let mut lines = Vec::new();
    let mut query = "?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = audit(&server, &query, READER);
        pages += 1;
        for e in entries(&page) {
            lines.push(e["after"]["lineNumber"].as_i64().unwrap());
        }
        match page["next"].as_i64() {
            Some(next) => query = format!("?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(lines, [1, 2, 3, 4, 5]);
    assert_eq!(pages, 3);
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn grpc_and_cli_changes_are_audited_with_their_channel() {
    let server = server();
    let id = server.rt.block_on(async {
        let mut client = TracepointServiceClient::new(server.channel().await);
        let mut req = tonic::Request::new(CreateTracepointRequest {
            tracepoint: Some(TracePointConfig {
                path: "grpc.rs".into(),
                line_number: 3,
                ..Default::default()
            }),
        });
        req.metadata_mut()
            .insert("authorization", "Bearer bob-secret".parse().unwrap());
        client
            .create(req)
            .await
            .expect("create over gRPC")
            .into_inner()
            .tracepoint
            .unwrap()
            .id
    });

    let sonde = env!("CARGO_BIN_EXE_sonde");
    let out = std::process::Command::new(sonde)
        .args(["tracepoint", "rm", &id, "--server", &server.http])
        .env("SONDE_TOKEN", "alice-secret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let log = entries(&audit(&server, &format!("?tracepoint={id}"), READER));
    let summary: Vec<(&str, &str, &str)> = log
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["who"].as_str().unwrap(),
                e["via"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("create", "bob", "grpc"), ("delete", "alice", "cli")]
    );

    // `sonde audit`: JSON is the API's page; the table has a row per entry.
    let out = std::process::Command::new(sonde)
        .args([
            "audit",
            "--tracepoint",
            &id,
            "-o",
            "json",
            "--server",
            &server.http,
        ])
        .env("SONDE_TOKEN", "reader-secret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entries(&page).len(), 2);
    assert_eq!(page["entries"][1]["before"]["path"], "grpc.rs");
    let out = std::process::Command::new(sonde)
        .args(["audit", "--who", "alice", "--server", &server.http])
        .env("SONDE_TOKEN", "reader-secret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("SEQ"), "{table}");
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows[1].contains("alice") && rows[1].contains("delete") && rows[1].contains("grpc.rs:3")
    );
    let out = std::process::Command::new(sonde)
        .args(["audit", "--server", &server.http])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "no token: refused");
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn without_tokens_the_author_is_anonymous() {
    let server = TestServer::start();
    let id = server.create(r#"{"tracepoint": {"path": "a.rs", "line_number": 1}}"#);
    let (status, page) = server.get("/api/audit");
    assert_eq!(status, 200);
    let log = entries(&page);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["who"], "anonymous");
    assert_eq!(log[0]["tracepoint"], id.as_str());
}

on_both_stores!(
    create_edit_delete_by_two_tokens_read_back_in_order,
    pages_follow_one_another,
    grpc_and_cli_changes_are_audited_with_their_channel,
    without_tokens_the_author_is_anonymous
);
