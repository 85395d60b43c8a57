//! A tracepoint acknowledged with 2xx survives `kill -9` of the server and a restart, edits and
//! deletes included; and SIGTERM stops the server gracefully with exit code 0.

mod common;

use std::time::Duration;

use common::ServerProcess;

#[test]
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
fn sigterm_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(dir.path(), &[]);
    let (status, _) = server.request("GET", "/healthz", None);
    assert_eq!(status, 200);
    let exit = server
        .terminate(Duration::from_secs(15))
        .expect("the server exits after SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");
}
