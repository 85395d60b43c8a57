//! Sonde's agent sends snapshots to a real server, and redacted values never leave the process:
//! a tracepoint without metrics on the shop's checkout line takes a snapshot on its first hit;
//! it reaches the server (`SnapshotService/send`) with the site's variables as a tree, its
//! watch, the stack, the resource and the tracepoint; neither the `password` field of the
//! struct nor the `token` local appears anywhere in the bytes, only their names, marked
//! redacted. A label over `order.user.password` is refused when the tracepoint is bound, with a
//! status naming the path. `sonde snapshots ID` prints the snapshot as a tree with its frames.
//! With the interop venv (`.ci/python-env.sh`), Deep's own `deep-proto` Python package decodes
//! the snapshot's bytes and finds the same variables and frames.
//!
//! The agent is global to the process (probe sites are statics), so this file holds one test.

mod common;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use common::TestServer;
use prost::Message as _;
use sonde_agent::{Agent, Capture, probe};
use sonde_proto::tracepoint::Snapshot;

const PASSWORD: &str = "hunter2-pass-9f1c";
const TOKEN: &str = "tok-3b7e-do-not-send";

#[derive(Capture)]
struct User {
    name: String,
    password: String,
}

#[derive(Capture)]
struct Item {
    sku: String,
    qty: u32,
}

#[derive(Capture)]
struct Order {
    id: u64,
    user: User,
    items: Vec<Item>,
    total: f64,
}

#[inline(never)]
fn checkout(order: &Order, token: &str) {
    probe!(order, token);
}

fn checkout_site() -> &'static sonde_agent::Site {
    sonde_agent::sites()
        .find(|s| s.names() == ["order", "token"])
        .expect("the probe in checkout() is registered")
}

fn order() -> Order {
    Order {
        id: 7,
        user: User {
            name: "ann".into(),
            password: PASSWORD.into(),
        },
        items: (1..=3)
            .map(|i| Item {
                sku: format!("sku-{i}"),
                qty: i,
            })
            .collect(),
        total: 42.5,
    }
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn snapshots_reach_the_server_without_redacted_values() {
    let server = TestServer::start();
    let agent = Agent::builder()
        .service_name("shop")
        .server(server.grpc.clone())
        .start()
        .expect("agent starts");
    let site = checkout_site();
    let (path, line) = (site.file(), site.line());

    // A label over a redacted field is refused at bind time, naming the path.
    let refused = server.create(&format!(
        r#"{{"tracepoint": {{"path": "{path}", "line_number": {line},
            "metrics": [{{"name": "logins", "labelExpressions":
                [{{"key": "pw", "expression": "order.user.password"}}]}}]}}}}"#
    ));
    wait_for("the refusal", Duration::from_secs(10), || {
        agent.statuses().iter().any(|s| {
            s.id == refused
                && s.state == sonde_agent::TracepointState::Error
                && s.message
                    .contains("reads `order.user.password`, which is redacted")
        })
    });
    assert!(!site.is_armed(), "a refused tracepoint arms nothing");
    let (status, _) = server.request("DELETE", &format!("/api/tracepoints/{refused}"), None, &[]);
    assert_eq!(status, 200);

    // A tracepoint without metrics: Deep's default is to collect a snapshot.
    let id = server.create(&format!(
        r#"{{"tracepoint": {{"path": "{path}", "line_number": {line},
            "watches": ["order.items[2].sku"]}}}}"#
    ));
    wait_for("the site to arm", Duration::from_secs(10), || {
        site.is_armed()
    });
    checkout(&order(), TOKEN);
    // fire_count 1 (Deep's default): the second hit takes none.
    checkout(&order(), TOKEN);

    let mut snapshots = Vec::new();
    wait_for(
        "the snapshot on the server",
        Duration::from_secs(10),
        || {
            let (status, json) = server.get(&format!("/api/tracepoints/{id}/snapshots"));
            assert_eq!(status, 200, "{json}");
            snapshots = serde_json::from_value::<Vec<Snapshot>>(json["snapshots"].clone())
                .expect("snapshots decode");
            !snapshots.is_empty()
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let (_, json) = server.get(&format!("/api/tracepoints/{id}/snapshots"));
    let text = json.to_string();
    let snapshots: Vec<Snapshot> = serde_json::from_value(json["snapshots"].clone()).unwrap();
    assert_eq!(snapshots.len(), 1, "fire_count 1 takes one snapshot");
    let snap = &snapshots[0];
    let bytes = snap.encode_to_vec();
    for secret in [PASSWORD, TOKEN] {
        assert!(!contains(&bytes, secret), "{secret} was sent");
        assert!(!text.contains(secret), "{secret} is served");
    }

    // The tracepoint, the resource and the top frame at the site, holding the variables.
    let tp = snap.tracepoint.as_ref().expect("tracepoint");
    assert_eq!((tp.id.as_str(), tp.line_number), (id.as_str(), line));
    assert!(snap.ts_nanos > 0);
    assert!(
        snap.resource
            .iter()
            .any(|kv| kv.key == "service.name" && format!("{:?}", kv.value).contains("shop"))
    );
    let top = &snap.frames[0];
    assert_eq!((top.file_name.as_str(), top.line_number), (path, line));
    assert!(
        top.method_name.ends_with("checkout"),
        "the top frame names the function: {}",
        top.method_name
    );
    let var = |id: &str| &snap.var_lookup[id];
    let names: Vec<&str> = top.variables.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["order", "token"]);
    assert_eq!(var(&top.variables[1].id).r#type, "redacted");
    let order_var = var(&top.variables[0].id);
    let fields: Vec<&str> = order_var.children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(fields, ["id", "user", "items", "total"]);
    let user = var(&order_var.children[1].id);
    assert_eq!(user.children[1].name, "password");
    assert_eq!(var(&user.children[1].id).r#type, "redacted");
    assert_eq!(var(&user.children[0].id).value, "ann");
    assert_eq!(var(&order_var.children[2].id).children.len(), 3);
    // The watch, and the caller's frame below the site's.
    assert_eq!(snap.watches.len(), 1);
    assert!(
        snap.frames.iter().skip(1).any(|f| f
            .method_name
            .contains("snapshots_reach_the_server_without_redacted_values")),
        "the test function is a caller frame: {:?}",
        snap.frames
            .iter()
            .map(|f| &f.method_name)
            .collect::<Vec<_>>()
    );

    // The CLI prints the tree and the frames.
    let out = Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(["snapshots", &id])
        .env("SONDE_SERVER", &server.http)
        .env_remove("SONDE_TOKEN")
        .env_remove("SONDE_TENANT")
        .output()
        .expect("run sonde");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}");
    for line in [
        "  order: struct",
        "    id: u64 = 7",
        "      name: str = ann",
        "      password: [redacted]",
        "        sku: str = sku-3",
        "  token: [redacted]",
        "  order.items[2].sku = sku-3",
        "frames:",
    ] {
        assert!(printed.contains(line), "{line:?} in:\n{printed}");
    }
    assert!(!printed.contains(PASSWORD) && !printed.contains(TOKEN));

    deep_proto_decodes(&bytes, path, line);
    agent.shutdown();
}

/// Deep's own `deep-proto` package decodes the bytes and finds the variables and frames.
fn deep_proto_decodes(bytes: &[u8], path: &str, line: u32) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    let has_deep = python.exists()
        && Command::new(&python)
            .args(["-c", "import deepproto.proto.tracepoint.v1.tracepoint_pb2"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !has_deep {
        common::skip::skip(
            "agent_snapshots_hold_no_secrets (deep-proto decode)",
            "no .venv with deep-proto: run `bash .ci/python-env.sh`",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("snapshot.bin");
    std::fs::write(&file, bytes).expect("write");
    let out = Command::new(&python)
        .arg(root.join("tests/interop/decode_snapshot.py"))
        .arg(&file)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("json from python");
    assert_eq!(summary["frames"][0]["file_name"], path);
    assert_eq!(summary["frames"][0]["line_number"], line);
    assert_eq!(summary["top"], serde_json::json!(["order", "token"]));
    assert_eq!(summary["types"]["token"], "redacted");
    assert_eq!(
        summary["children"]["order"],
        serde_json::json!(["id", "user", "items", "total"])
    );
}
