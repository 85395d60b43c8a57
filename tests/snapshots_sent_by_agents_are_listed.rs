//! Deep's `SnapshotService/send`, from a Rust client, then `GET /api/tracepoints/{id}/snapshots`:
//! the latest snapshots of a tracepoint come back newest first, at most the configured number; a
//! snapshot that names no tracepoint is refused; agents need their credential to send, and API
//! readers theirs to read; one tenant never sees another's snapshots.

mod common;

use common::TestServer;
use sonde_proto::tracepoint::{
    Snapshot, TracePointConfig, snapshot_service_client::SnapshotServiceClient,
};
use tonic::{Code, Status};

/// A snapshot of tracepoint `id` (none when `None`) whose `log_msg` tells it apart.
fn snapshot(id: Option<&str>, tag: &str) -> Snapshot {
    Snapshot {
        id: tag.as_bytes().to_vec(),
        tracepoint: id.map(|id| TracePointConfig {
            id: id.into(),
            path: "a.rs".into(),
            line_number: 1,
            ..Default::default()
        }),
        ts_nanos: 1,
        log_msg: Some(tag.into()),
        ..Default::default()
    }
}

/// Sends one snapshot with optional tenant and authorization metadata.
fn send(
    server: &TestServer,
    snap: Snapshot,
    tenant: Option<&str>,
    auth: Option<&str>,
) -> Result<(), Status> {
    server.rt.block_on(async {
        let mut req = tonic::Request::new(snap);
        if let Some(t) = tenant {
            req.metadata_mut()
                .insert("x-scope-orgid", t.parse().expect("ascii"));
        }
        if let Some(a) = auth {
            req.metadata_mut()
                .insert("authorization", a.parse().expect("ascii"));
        }
        SnapshotServiceClient::new(server.channel().await)
            .send(req)
            .await
            .map(|_| ())
    })
}

/// The `logMsg` tags of the listed snapshots, in the order the API gives them.
fn listed(server: &TestServer, id: &str, headers: &[(&str, &str)]) -> (u16, Vec<String>) {
    let (status, json) = server.request(
        "GET",
        &format!("/api/tracepoints/{id}/snapshots"),
        None,
        headers,
    );
    let tags = json["snapshots"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|s| s["logMsg"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default();
    if status == 200 {
        assert!(json["snapshots"].is_array(), "{json}");
    }
    (status, tags)
}

#[test]
fn newest_first_and_bounded_per_tracepoint() {
    let server = TestServer::start_with(|c| c.snapshots_per_tracepoint = 3);
    for i in 1..=5 {
        send(
            &server,
            snapshot(Some("tp-1"), &format!("one-{i}")),
            None,
            None,
        )
        .expect("send");
    }
    send(&server, snapshot(Some("tp-2"), "two-1"), None, None).expect("send");

    assert_eq!(
        listed(&server, "tp-1", &[]),
        (200, vec!["one-5".into(), "one-4".into(), "one-3".into()]),
        "the latest three, newest first"
    );
    assert_eq!(listed(&server, "tp-2", &[]), (200, vec!["two-1".into()]));
    assert_eq!(
        listed(&server, "tp-unknown", &[]),
        (200, vec![]),
        "no snapshots is an empty list"
    );

    // What was sent comes back as sent (proto3 JSON field names).
    let (_, json) = server.get("/api/tracepoints/tp-2/snapshots");
    let snap = &json["snapshots"][0];
    assert_eq!(snap["tracepoint"]["ID"], "tp-2", "{snap}");
    assert_eq!(snap["tracepoint"]["path"], "a.rs", "{snap}");
}

#[test]
fn a_snapshot_without_a_tracepoint_id_is_refused() {
    let server = TestServer::start();
    for snap in [
        snapshot(None, "no-tracepoint"),
        snapshot(Some(""), "empty-id"),
    ] {
        let err = send(&server, snap, None, None).expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("tracepoint.ID"), "{err:?}");
    }
    assert_eq!(listed(&server, "", &[]).1, Vec::<String>::new());
    let (_, metrics) = server.request_raw("GET", "/metrics", None, &[]);
    let metrics = String::from_utf8(metrics).expect("utf-8");
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("sonde_server_snapshots_received_total") && !l.ends_with(" 0")),
        "a refused snapshot is not counted as received:\n{metrics}"
    );
}

#[test]
fn agents_need_their_credential_and_readers_theirs() {
    let server = TestServer::start_with(|c| {
        c.agent_token = Some("agent-secret".into());
        c.agent_basic = Some("deep:pass".into());
        c.read_token = Some("read-secret".into());
        c.tokens = vec!["cora:capture:capture-secret".into()];
    });
    let read = [("authorization", "Bearer read-secret")];
    let capture = [("authorization", "Bearer capture-secret")];
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer read-secret"),
        Some("Bearer capture-secret"),
    ] {
        let err = send(&server, snapshot(Some("tp"), "refused"), None, auth).expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated, "{auth:?}: {err:?}");
    }
    send(
        &server,
        snapshot(Some("tp"), "by-token"),
        None,
        Some("Bearer agent-secret"),
    )
    .expect("the agent token sends");
    // base64("deep:pass"), as Deep's Python agent spells it.
    send(
        &server,
        snapshot(Some("tp"), "by-basic"),
        None,
        Some("Basic%20ZGVlcDpwYXNz"),
    )
    .expect("Deep's basic credential sends");

    let (status, _) = listed(&server, "tp", &[]);
    assert_eq!(
        status, 401,
        "reading needs a token once tokens are configured"
    );
    // Snapshots hold production values: the `read` role may not see them, `capture` may.
    assert_eq!(listed(&server, "tp", &read), (403, Vec::new()));
    assert_eq!(
        listed(&server, "tp", &capture),
        (200, vec!["by-basic".into(), "by-token".into()])
    );
}

#[test]
fn tenants_see_only_their_own_snapshots() {
    let server = TestServer::start();
    send(
        &server,
        snapshot(Some("tp"), "of-a"),
        Some("tenant-a"),
        None,
    )
    .expect("send");
    send(
        &server,
        snapshot(Some("tp"), "of-b"),
        Some("tenant-b"),
        None,
    )
    .expect("send");
    let a = [("X-Scope-OrgID", "tenant-a")];
    let b = [("X-Scope-OrgID", "tenant-b")];
    assert_eq!(listed(&server, "tp", &a), (200, vec!["of-a".into()]));
    assert_eq!(listed(&server, "tp", &b), (200, vec!["of-b".into()]));
    assert_eq!(
        listed(&server, "tp", &[]),
        (200, vec![]),
        "the default tenant has none"
    );
}
