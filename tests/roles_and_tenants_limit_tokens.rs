//! Roles and tenants: a `read` token cannot write (403 naming `write`, over HTTP and gRPC), a
//! `write` token cannot read snapshots (403 naming `capture`), a tenant's token cannot read
//! another tenant's tracepoints or audit entries; refusals are in the audit log; a malformed
//! `--token` stops the server before it starts, naming the field and not the secret.

mod common;

use common::TestServer;
use serde_json::Value;
use sonde_proto::{
    sonde::{CreateTracepointRequest, tracepoint_service_client::TracepointServiceClient},
    tracepoint::TracePointConfig,
};

const BODY: &str = r#"{"tracepoint": {"path": "a.rs", "line_number": 1}}"#;

fn bearer(secret: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {secret}"))
}

fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.tokens = vec![
            "rita:read:r".into(),
            "will:write:w".into(),
            "cora:capture:c".into(),
            "ada:admin:a".into(),
            "alpha:write@team-a:ta".into(),
            "beta:write@team-b:tb".into(),
        ];
    })
}

fn req(
    server: &TestServer,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, String)],
) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    server.request(method, path, body, &headers)
}

#[test]
fn a_read_token_cannot_write_and_a_write_token_cannot_read_snapshots() {
    let server = server();
    let (status, json) = req(
        &server,
        "POST",
        "/api/tracepoints",
        Some(BODY),
        &[bearer("r")],
    );
    assert_eq!(status, 403, "{json}");
    assert_eq!(json["error"]["code"], "permission_denied");
    assert_eq!(json["error"]["needs"], "write");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs role write"),
        "{json}"
    );
    assert!(
        server.ids(&[("authorization", "Bearer r")]).is_empty(),
        "nothing was created"
    );

    let (status, json) = req(
        &server,
        "POST",
        "/api/tracepoints",
        Some(BODY),
        &[bearer("w")],
    );
    assert_eq!(status, 200, "{json}");
    let id = json["tracepoint"]["ID"].as_str().unwrap().to_owned();
    let snapshots = format!("/api/tracepoints/{id}/snapshots");
    let (status, json) = req(&server, "GET", &snapshots, None, &[bearer("w")]);
    assert_eq!(status, 403, "{json}");
    assert_eq!(json["error"]["needs"], "capture");
    let (status, json) = req(&server, "GET", &snapshots, None, &[bearer("r")]);
    assert_eq!(status, 403, "{json}");
    assert_eq!(json["error"]["needs"], "capture");
    for secret in ["c", "a"] {
        let (status, json) = req(&server, "GET", &snapshots, None, &[bearer(secret)]);
        assert_eq!(status, 200, "{secret}: {json}");
    }
    let (status, _) = req(
        &server,
        "DELETE",
        &format!("/api/tracepoints/{id}"),
        None,
        &[bearer("c")],
    );
    assert_eq!(status, 403, "capture does not write");

    let (status, json) = req(&server, "GET", "/api/tracepoints", None, &[]);
    assert_eq!(status, 401, "{json}");
    let (status, _) = req(&server, "GET", "/api/tracepoints", None, &[bearer("nope")]);
    assert_eq!(status, 401);

    // Every refusal is in the audit log, with who tried and what.
    let (status, page) = req(&server, "GET", "/api/audit", None, &[bearer("a")]);
    assert_eq!(status, 200, "{page}");
    let denied: Vec<(String, String)> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "denied")
        .map(|e| {
            (
                e["who"].as_str().unwrap().to_owned(),
                e["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let has =
        |who: &str, fragment: &str| denied.iter().any(|(w, d)| w == who && d.contains(fragment));
    assert!(
        has(
            "rita",
            "POST /api/tracepoints: token \"rita\" has role read; this needs role write"
        ),
        "{denied:?}"
    );
    assert!(
        has(
            "will",
            "/snapshots: token \"will\" has role write; this needs role capture"
        ),
        "{denied:?}"
    );
    assert!(has("cora", "DELETE /api/tracepoints/"), "{denied:?}");
    assert!(has("(no token)", "GET /api/tracepoints"), "{denied:?}");
    assert!(has("(unknown token)", "GET /api/tracepoints"), "{denied:?}");
}

#[test]
fn grpc_answers_with_the_matching_status() {
    let server = server();
    server.rt.block_on(async {
        let channel = server.channel().await;
        let create = |auth: Option<&'static str>| {
            let channel = channel.clone();
            async move {
                let mut req = tonic::Request::new(CreateTracepointRequest {
                    tracepoint: Some(TracePointConfig {
                        path: "a.rs".into(),
                        line_number: 1,
                        ..Default::default()
                    }),
                });
                if let Some(a) = auth {
                    req.metadata_mut()
                        .insert("authorization", a.parse().unwrap());
                }
                TracepointServiceClient::new(channel).create(req).await
            }
        };
        let err = create(Some("Bearer r")).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("needs role write"),
            "{}",
            err.message()
        );
        assert_eq!(
            create(None).await.unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        create(Some("Bearer w"))
            .await
            .expect("a write token creates");
    });
    let (_, page) = req(&server, "GET", "/api/audit?who=rita", None, &[bearer("a")]);
    let entry = &page["entries"][0];
    assert_eq!(entry["action"], "denied");
    assert_eq!(entry["via"], "grpc");
    assert!(
        entry["detail"]
            .as_str()
            .unwrap()
            .starts_with("sonde.v1.TracepointService/Create")
    );
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn a_tenants_token_cannot_read_another_tenants_entries() {
    let server = server();
    let (status, json) = req(
        &server,
        "POST",
        "/api/tracepoints",
        Some(BODY),
        &[bearer("ta")],
    );
    assert_eq!(status, 200, "{json}");
    let a_id = json["tracepoint"]["ID"].as_str().unwrap().to_owned();
    let (status, _) = req(
        &server,
        "POST",
        "/api/tracepoints",
        Some(BODY),
        &[bearer("tb")],
    );
    assert_eq!(status, 200);

    // A bound token's tenant is its own without a header.
    let (_, a_log) = req(&server, "GET", "/api/audit", None, &[bearer("ta")]);
    let a_entries = a_log["entries"].as_array().unwrap();
    assert_eq!(a_entries.len(), 1, "{a_log}");
    assert_eq!(a_entries[0]["tenant"], "team-a");
    assert_eq!(a_entries[0]["tracepoint"], a_id.as_str());
    let (_, b_log) = req(&server, "GET", "/api/audit", None, &[bearer("tb")]);
    let b_entries = b_log["entries"].as_array().unwrap();
    assert_eq!(b_entries.len(), 1, "{b_log}");
    assert_eq!(b_entries[0]["who"], "beta");
    assert!(b_entries.iter().all(|e| e["tenant"] == "team-b"));

    // Naming the other tenant is refused, by header or by parameter.
    let (status, json) = req(
        &server,
        "GET",
        "/api/audit",
        None,
        &[bearer("tb"), ("x-scope-orgid", "team-a".into())],
    );
    assert_eq!(status, 403, "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bound to tenant \"team-b\"")
    );
    let (status, json) = req(
        &server,
        "GET",
        "/api/audit?tenant=team-a",
        None,
        &[bearer("tb")],
    );
    assert_eq!(status, 403, "{json}");
    assert_eq!(json["error"]["needs"], "admin");
    let (status, _) = req(&server, "GET", "/api/audit?tenant=*", None, &[bearer("r")]);
    assert_eq!(status, 403, "an unbound read token is not an admin either");
    let (status, _) = req(
        &server,
        "GET",
        &format!("/api/tracepoints/{a_id}"),
        None,
        &[bearer("tb"), ("x-scope-orgid", "team-a".into())],
    );
    assert_eq!(status, 403, "nor its tracepoints");

    // The admin sees every tenant, including the refusals recorded in team-a's log.
    let (status, all) = req(&server, "GET", "/api/audit?tenant=*", None, &[bearer("a")]);
    assert_eq!(status, 200, "{all}");
    let tenants: std::collections::BTreeSet<&str> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["tenant"].as_str().unwrap())
        .collect();
    assert!(
        tenants.contains("team-a") && tenants.contains("team-b"),
        "{tenants:?}"
    );
    let (_, a_log) = req(&server, "GET", "/api/audit", None, &[bearer("ta")]);
    let actions: Vec<&str> = a_log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["create", "denied", "denied", "denied"],
        "beta's three attempts on team-a are in team-a's log: {a_log}"
    );
}

#[test]
fn a_malformed_token_flag_stops_the_server_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (token, expect) in [
        (
            "bob:boss:topsecret",
            "--token #1 (\"bob\"): role: unknown role \"boss\"",
        ),
        ("bob:write@a/b:topsecret", "--token #1 (\"bob\"): tenant:"),
        ("b b:write:topsecret", "--token #1: name:"),
        ("bob:topsecret", "--token #1 (\"bob\"): format:"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sonde"))
            .args([
                "server",
                "--grpc-port",
                "0",
                "--http-port",
                "0",
                "--token",
                token,
            ])
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{token}: {out:?}");
        assert!(out.stdout.is_empty(), "it never listened: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{token}: {stderr}");
        assert!(
            !stderr.contains("topsecret"),
            "the secret is not echoed: {stderr}"
        );
        assert!(!data.exists(), "nothing was created on disk");
    }
}

on_both_stores!(a_tenants_token_cannot_read_another_tenants_entries);
