//! Sonde's watch stream pushes every change that affects the watcher (and only those) as an
//! UPDATE; agents' status reports and polls show up in `GET /api/agents`.

mod common;

use std::time::Duration;

use common::{TestServer, resource};
use sonde_proto::{
    poll::{PollResponse, ResponseType},
    sonde::{
        StatusReport, TracepointState, TracepointStatus, WatchRequest,
        status_service_client::StatusServiceClient, watch_service_client::WatchServiceClient,
    },
};

async fn next(stream: &mut tonic::Streaming<PollResponse>) -> PollResponse {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a message within 5 s")
        .expect("stream ok")
        .expect("stream open")
}

/// POSTs a tracepoint over HTTP from a blocking thread; the status and body.
async fn post(http: &str, body: &'static str) -> (u16, Vec<u8>) {
    let url = format!("{http}/api/tracepoints");
    tokio::task::spawn_blocking(move || {
        common::send(
            &common::http_agent(),
            "POST",
            &url,
            Some(body.as_bytes().to_vec()),
            &[],
        )
    })
    .await
    .expect("the POST thread")
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn a_watcher_receives_changes_that_concern_it() {
    let server = TestServer::start();
    let first_id = server.create(r#"{"tracepoint": {"path": "a.rs", "line_number": 1}}"#);
    server.rt.block_on(async {
        let mut client = WatchServiceClient::new(server.channel().await);
        let mut stream = client
            .watch(WatchRequest {
                resource: resource(&[("service.name", "shop")]),
                current_hash: String::new(),
                agent_id: "agent-1".into(),
            })
            .await
            .expect("watch")
            .into_inner();
        let initial = next(&mut stream).await;
        assert_eq!(initial.response_type, ResponseType::Update as i32);
        assert_eq!(initial.response.len(), 1);
        assert_eq!(initial.response[0].id, first_id);

        // A change for another service must not reach this watcher: after it is stored, the
        // stream stays quiet (checked before the next change, which could carry it along).
        let (status, _) = post(
            &server.http,
            r#"{"tracepoint": {"path": "b.rs", "line_number": 2, "targeting": [{"key": "service.name", "value": {"stringValue": "billing"}}]}}"#,
        )
        .await;
        assert_eq!(status, 200);
        let quiet = tokio::time::timeout(Duration::from_secs(1), stream.message()).await;
        assert!(quiet.is_err(), "billing's change reached shop: {quiet:?}");

        let (status, _) = post(
            &server.http,
            r#"{"tracepoint": {"path": "c.rs", "line_number": 3, "targeting": [{"key": "service.name", "value": {"stringValue": "shop"}}]}}"#,
        )
        .await;
        assert_eq!(status, 200);
        let update = next(&mut stream).await;
        assert_eq!(update.response_type, ResponseType::Update as i32);
        let mut paths: Vec<_> = update.response.iter().map(|t| t.path.clone()).collect();
        paths.sort();
        assert_eq!(paths, vec!["a.rs", "c.rs"], "billing's tracepoint is not in shop's list");
        assert_ne!(update.current_hash, initial.current_hash);

        // Nothing more is pending after the one change that concerns shop.
        let quiet = tokio::time::timeout(Duration::from_secs(1), stream.message()).await;
        assert!(quiet.is_err(), "unexpected message: {quiet:?}");
    });
}

#[test]
fn status_reports_and_polls_are_listed_as_agents() {
    let server = TestServer::start();
    let id = server.create(r#"{"tracepoint": {"path": "a.rs", "line_number": 1}}"#);
    server.rt.block_on(async {
        let ch = server.channel().await;
        common::poll(
            &ch,
            "",
            &[
                ("service.name", "deep-py"),
                ("telemetry.sdk.language", "python"),
            ],
            None,
        )
        .await;
        StatusServiceClient::new(ch)
            .report(StatusReport {
                agent_id: "agent-7".into(),
                resource: resource(&[("service.name", "shop"), ("telemetry.sdk.language", "rust")]),
                ts_nanos: 1,
                tracepoints: vec![TracepointStatus {
                    tracepoint_id: id.clone(),
                    state: TracepointState::Unbound as i32,
                    message: "no probe site at a.rs:1; nearest: a.rs:4".into(),
                    sites: vec![],
                }],
                config_hash: String::new(),
            })
            .await
            .expect("report");
    });
    let (status, json) = server.get("/api/agents");
    assert_eq!(status, 200);
    let agents = json["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2, "{json}");
    let rust = agents
        .iter()
        .find(|a| a["id"] == "agent-7")
        .expect("the reporting agent");
    assert_eq!(rust["resource"]["service.name"], "shop");
    assert_eq!(rust["tracepoints"][0]["id"], id.as_str());
    assert_eq!(rust["tracepoints"][0]["state"], "unbound");
    assert!(
        rust["tracepoints"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nearest")
    );
    let py = agents
        .iter()
        .find(|a| a["kind"] == "poll")
        .expect("the poller");
    assert_eq!(py["resource"]["telemetry.sdk.language"], "python");
    assert_eq!(py["address"], "127.0.0.1");

    let (_, other) = server.request("GET", "/api/agents", None, &[("X-Scope-OrgID", "other")]);
    assert_eq!(other["agents"].as_array().unwrap().len(), 0);
}

#[test]
fn server_metrics_count_polls_and_tracepoints() {
    let server = TestServer::start();
    server.create(r#"{"tracepoint": {"path": "a.rs", "line_number": 1}}"#);
    server.rt.block_on(async {
        let ch = server.channel().await;
        let first = common::poll(&ch, "", &[], None).await;
        common::poll(&ch, &first.current_hash, &[], None).await;
    });
    let (status, bytes) = server.request_raw("GET", "/metrics", None, &[]);
    assert_eq!(status, 200);
    let text = String::from_utf8(bytes).unwrap();
    for line in [
        r#"sonde_server_polls_total{result="update",transport="grpc"} 1"#,
        r#"sonde_server_polls_total{result="no_change",transport="grpc"} 1"#,
        "sonde_server_tracepoints 1",
        "sonde_server_agents 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(text.contains("sonde_server_http_request_duration_seconds_bucket{method=\"POST\",route=\"/api/tracepoints\",status=\"200\""), "{text}");
}

on_both_stores!(a_watcher_receives_changes_that_concern_it);
