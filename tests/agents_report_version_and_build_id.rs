//! The agent reports the application's version (`service.version`, from the shop's own
//! `CARGO_PKG_VERSION` through `sonde_agent::service_version!()`) and its executable's GNU
//! build-id (`process.executable.build_id.gnu`, the same hex `readelf -n` prints) as resource
//! attributes; `sonde agents` shows both; a tracepoint targeting the shop's version or build-id
//! reaches it and binds, one targeting another version does not reach it.

mod common;
#[path = "common/shop.rs"]
mod shop;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(60);

/// The build-id of the shop binary as binutils' `readelf -n` prints it.
fn readelf_build_id(binary: &std::path::Path) -> String {
    let out = std::process::Command::new("readelf")
        .arg("-n")
        .arg(binary)
        .output()
        .expect("readelf (binutils, which .ci/run installs) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("the shop binary has a GNU build-id")
        .to_owned()
}

fn status(server: &TestServer, id: &str) -> Value {
    server.get(&format!("/api/tracepoints/{id}/status")).1
}

fn wait_for(what: &str, mut done: impl FnMut() -> Option<Value>) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = done() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn version_and_build_id_are_reported_listed_and_targetable() {
    let server = TestServer::start();
    let service = format!("shop-version-{}", std::process::id());
    let shop = shop::start(&server.grpc, &service);
    let exe = std::fs::read_link(format!("/proc/{}/exe", shop.child.id())).expect("shop exe");
    let build_id = readelf_build_id(&exe);
    let version = env!("CARGO_PKG_VERSION"); // the shop is an example of this package

    let agent = wait_for("the shop's agent", || {
        let (_, agents) = server.get("/api/agents");
        agents["agents"]
            .as_array()?
            .iter()
            .find(|a| a["resource"]["service.name"] == service.as_str())
            .cloned()
    });
    assert_eq!(agent["resource"]["service.version"], version, "{agent}");
    assert_eq!(
        agent["resource"][sonde_agent::BUILD_ID_ATTRIBUTE],
        build_id.as_str(),
        "{agent}"
    );

    let (code, out, err) = shop::sonde(&server.http, None, &["agents"]);
    assert_eq!(code, 0, "{err}");
    let header = out.lines().next().unwrap_or_default();
    assert!(
        header.contains("VERSION") && header.contains("BUILD ID"),
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.contains(&service))
        .unwrap_or_else(|| panic!("no row for {service}: {out}"));
    assert!(row.contains(version) && row.contains(&build_id), "{row}");

    let line = shop::checkout_line();
    let create = |key: &str, value: &str| {
        let body = json!({"tracepoint": {
            "path": "examples/shop.rs", "line_number": line,
            "targeting": [{"key": "service.name", "value": {"stringValue": service}},
                          {"key": key, "value": {"stringValue": value}}],
            "metrics": [{"name": "by_build", "type": "COUNTER"}]}});
        let (code, answer) = server.post("/api/tracepoints", &body.to_string());
        assert_eq!(code, 200, "{answer}");
        answer["tracepoint"]["ID"]
            .as_str()
            .expect("an ID")
            .to_owned()
    };
    for (key, value) in [
        ("service.version", version),
        (sonde_agent::BUILD_ID_ATTRIBUTE, build_id.as_str()),
    ] {
        let id = create(key, value);
        wait_for(&format!("{key}={value} to bind"), || {
            let s = status(&server, &id);
            (s["summary"]["bound"] == 1).then_some(s)
        });
    }
    // Another version: the shop's agent is not among those it targets, and never gets it.
    let other = create("service.version", "0.0.0-other");
    std::thread::sleep(Duration::from_secs(2));
    let s = status(&server, &other);
    assert_eq!(s["summary"]["agents"], 0, "{s}");
    let (_, agents) = server.get("/api/agents");
    let held: Vec<&Value> = agents["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["resource"]["service.name"] == service.as_str())
        .flat_map(|a| a["tracepoints"].as_array().into_iter().flatten())
        .filter(|t| t["id"] == other.as_str())
        .collect();
    assert!(
        held.is_empty(),
        "the other version's tracepoint reached the shop: {held:?}"
    );
}
