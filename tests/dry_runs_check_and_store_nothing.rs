//! `?dry_run=true` on create and edit runs every check and warning of the real change and changes
//! nothing: no tracepoint stored or edited, no audit entry; bad input gets the same error (field
//! and position). `sonde tracepoint add --dry-run` uses it: exit 0 and nothing stored for a good
//! tracepoint, the server's error for a bad one.

mod common;
#[path = "common/shop.rs"]
mod shop;

use common::TestServer;

const GOOD: &str = r#"{"tracepoint": {"path": "a.rs", "lineNumber": 7, "args": {"condition": "x > 1"},
    "metrics": [{"name": "things", "type": "COUNTER"}]}}"#;
const BAD: &str =
    r#"{"tracepoint": {"path": "a.rs", "lineNumber": 7, "args": {"condition": "x >"}}}"#;

fn audit_len(server: &TestServer) -> usize {
    let (status, json) = server.get("/api/audit");
    assert_eq!(status, 200, "{json}");
    json["entries"].as_array().map_or(0, Vec::len)
}

#[test]
fn dry_runs_answer_like_the_change_and_store_nothing() {
    let server = TestServer::start();
    let (status, json) = server.post("/api/tracepoints?dry_run=true", GOOD);
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["tracepoint"]["path"], "a.rs");
    assert!(json["tracepoint"].get("ID").is_none(), "no ID: {json}");
    assert!(server.ids(&[]).is_empty(), "nothing stored");
    assert_eq!(audit_len(&server), 0, "nothing audited");

    let (status, json) = server.post("/api/tracepoints?dry_run=true", BAD);
    assert_eq!(status, 400, "{json}");
    assert_eq!(json["error"]["field"], "args.condition");
    assert_eq!(json["error"]["position"]["column"], 4);
    let (real_status, real) = server.post("/api/tracepoints", BAD);
    assert_eq!(
        (real_status, &real),
        (status, &json),
        "the same error as a create"
    );

    let (status, json) = server.post("/api/tracepoints?dry_run=maybe", GOOD);
    assert_eq!(status, 400, "{json}");
    assert_eq!(json["error"]["field"], "dry_run");

    // Edits: the stored tracepoint stays as it was.
    let id = server.create(GOOD);
    let before = audit_len(&server);
    let path = format!("/api/tracepoints/{id}?dry_run=true");
    let edit = GOOD.replace("x > 1", "x > 2");
    let (status, json) = server.request("PUT", &path, Some(&edit), &[]);
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["tracepoint"]["ID"], id.as_str());
    assert_eq!(json["tracepoint"]["args"]["condition"], "x > 2");
    let (status, json) = server.request("PUT", &path, Some(BAD), &[]);
    assert_eq!(status, 400, "{json}");
    assert_eq!(json["error"]["field"], "args.condition");
    let (_, stored) = server.get(&format!("/api/tracepoints/{id}"));
    assert_eq!(
        stored["tracepoint"]["args"]["condition"], "x > 1",
        "unchanged"
    );
    assert_eq!(audit_len(&server), before, "nothing audited");
    let (status, _) = server.request(
        "PUT",
        "/api/tracepoints/no-such-id?dry_run=true",
        Some(GOOD),
        &[],
    );
    assert_eq!(status, 404);
}

#[test]
fn the_cli_checks_without_storing() {
    let server = TestServer::start();
    let (code, out, err) = shop::sonde(
        &server.http,
        None,
        &[
            "tracepoint",
            "add",
            "src/a.rs:7",
            "--metric",
            "counter:things",
            "--condition",
            "x > 1",
            "--dry-run",
        ],
    );
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.is_empty(), "no ID on stdout: {out}");
    assert!(err.contains("would accept"), "{err}");
    assert!(server.ids(&[]).is_empty(), "nothing stored");

    let (code, _, err) = shop::sonde(
        &server.http,
        None,
        &[
            "tracepoint",
            "add",
            "src/a.rs:7",
            "--condition",
            "x >",
            "--dry-run",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("args.condition"), "{err}");
    assert!(server.ids(&[]).is_empty());
}
