//! A tracepoint acknowledged with 2xx survives `kill -9` of the server and a restart, edits and
//! deletes included; and SIGTERM stops the server gracefully with exit code 0.

mod common;

use std::time::Duration;

use common::ServerProcess;

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn acknowledged_writes_survive_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(dir.path(), &[]);
    let (status, json) = server.request(
        "POST",
        "/api/tracepoints",
        Some(r#"{"tracepoint": {"path": "src/checkout.rs", "line_number": 42, "args": {"condition": "a > 1"}}}"#),
    );
    assert_eq!(status, 200, "{json}");
    let kept = json["tracepoint"]["ID"].as_str().unwrap().to_owned();
    let (_, json) = server.request(
        "POST",
        "/api/tracepoints",
        Some(r#"{"tracepoint": {"path": "b.rs", "line_number": 1}}"#),
    );
    let deleted = json["tracepoint"]["ID"].as_str().unwrap().to_owned();
    let (status, _) = server.request(
        "PUT",
        &format!("/api/tracepoints/{kept}"),
        Some(r#"{"tracepoint": {"path": "src/checkout.rs", "line_number": 43}}"#),
    );
    assert_eq!(status, 200);
    let (status, _) = server.request("DELETE", &format!("/api/tracepoints/{deleted}"), None);
    assert_eq!(status, 200);
    let (_, before) = server.request("GET", "/api/tracepoints", None);
    server.kill_9();

    let restarted = ServerProcess::spawn(dir.path(), &[]);
    let (status, after) = restarted.request("GET", "/api/tracepoints", None);
    assert_eq!(status, 200);
    let list = after["response"].as_array().expect("a list");
    assert_eq!(list.len(), 1, "{after}");
    assert_eq!(list[0]["ID"], kept.as_str());
    assert_eq!(list[0]["lineNumber"], 43, "the edit survived");
    assert_eq!(
        list[0]["args"],
        serde_json::Value::Null,
        "the edit replaced the args"
    );
    assert_eq!(
        after["currentHash"], before["currentHash"],
        "the hash is stable across restarts"
    );
}

#[test]
fn sigterm_shuts_down_gracefully_and_ends_watch_streams() {
    use sonde_proto::sonde::{WatchRequest, watch_service_client::WatchServiceClient};

    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(dir.path(), &[]);
    let (status, _) = server.request("GET", "/healthz", None);
    assert_eq!(status, 200);

    // An agent holds a watch stream open while the server is told to stop.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let grpc = server.grpc.clone();
    let mut stream = rt.block_on(async move {
        let mut client = WatchServiceClient::connect(grpc).await.expect("connect");
        let mut stream = client
            .watch(WatchRequest {
                agent_id: "a".into(),
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner();
        stream
            .message()
            .await
            .expect("first message")
            .expect("open");
        stream
    });

    let exit = server
        .terminate(Duration::from_secs(8))
        .expect("the server exits promptly after SIGTERM, open watch or not");
    assert!(exit.success(), "exit status {exit:?}");
    let after =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), stream.message()).await });
    assert!(
        matches!(after, Ok(Ok(None)) | Ok(Err(_))),
        "the watch stream ended with the server: {after:?}"
    );
}

on_both_stores!(acknowledged_writes_survive_sigkill_and_restart);
