//! The `sonde` CLI against a real server: add, get, list, edit, rm, agents and validate, with the
//! documented exit codes (0 done, 1 refused, 2 usage, 3 unreachable) and `-o json`.

mod common;

use std::process::{Command, Output};

use common::TestServer;

fn sonde(server: &TestServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(args)
        .env("SONDE_SERVER", &server.http)
        .env_remove("SONDE_TOKEN")
        .env_remove("SONDE_TENANT")
        .output()
        .expect("run sonde")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn add_list_get_edit_rm() {
    let server = TestServer::start();
    let add = sonde(
        &server,
        &[
            "tracepoint",
            "add",
            "src/checkout.rs:42",
            "--condition",
            "order.total > 100",
            "--metric",
            "histogram:order_total",
            "--value",
            "order.total",
            "--label",
            "country=order.country",
            "--target",
            "service.name=checkout",
        ],
    );
    assert!(add.status.success(), "{}", stderr(&add));
    let id = stdout(&add).trim().to_owned();
    assert_eq!(server.ids(&[]), vec![id.clone()], "add prints the new ID");

    let list = sonde(&server, &["tracepoint", "list"]);
    assert!(list.status.success());
    let text = stdout(&list);
    assert!(text.starts_with("ID"), "a header line: {text}");
    assert!(
        text.contains(&id)
            && text.contains("src/checkout.rs:42")
            && text.contains("histogram:order_total"),
        "{text}"
    );

    let json = sonde(&server, &["tracepoint", "list", "-o", "json"]);
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON output");
    assert_eq!(
        parsed["tracepoints"][0]["metrics"][0]["labelExpressions"][0]["expression"],
        "order.country"
    );

    let edit = sonde(
        &server,
        &[
            "tracepoint",
            "edit",
            &id,
            "--condition",
            "",
            "--fire-count",
            "5",
        ],
    );
    assert!(edit.status.success(), "{}", stderr(&edit));
    let get = sonde(&server, &["tracepoint", "get", &id, "-o", "json"]);
    let tp: serde_json::Value = serde_json::from_slice(&get.stdout).unwrap();
    assert_eq!(tp["tracepoint"]["args"]["fire_count"], "5");
    assert!(
        tp["tracepoint"]["args"].get("condition").is_none(),
        "--condition \"\" removed it"
    );
    assert_eq!(
        tp["tracepoint"]["lineNumber"], 42,
        "what was not given stays"
    );
    assert_eq!(tp["tracepoint"]["metrics"][0]["name"], "order_total");

    let get = sonde(&server, &["tracepoint", "get", &id]);
    assert!(
        stdout(&get).contains("location:  src/checkout.rs:42"),
        "{}",
        stdout(&get)
    );

    let rm = sonde(&server, &["tracepoint", "rm", &id]);
    assert!(rm.status.success());
    assert!(server.ids(&[]).is_empty());
    let again = sonde(&server, &["tracepoint", "rm", &id]);
    assert_eq!(
        again.status.code(),
        Some(1),
        "removing a missing tracepoint is refused"
    );
}

#[test]
fn refusals_are_one_line_with_exit_code_1() {
    let server = TestServer::start();
    let bad = sonde(
        &server,
        &["tracepoint", "add", "a.rs:3", "--condition", "x >"],
    );
    assert_eq!(bad.status.code(), Some(1));
    let err = stderr(&bad);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: args.condition:") && err.contains("column"),
        "{err}"
    );
    assert!(server.ids(&[]).is_empty());

    let usage = sonde(&server, &["tracepoint", "add", "a.rs"]);
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
    let usage = sonde(&server, &["tracepoint", "bogus"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn an_unreachable_server_is_exit_code_3() {
    let server = TestServer::start();
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args([
            "tracepoint",
            "list",
            "--server",
            &format!("http://127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
    drop(server);
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn agents_and_tenants() {
    let server = TestServer::start();
    server.rt.block_on(async {
        common::poll(
            &server.channel().await,
            "",
            &[
                ("service.name", "shop"),
                ("telemetry.sdk.language", "python"),
            ],
            None,
        )
        .await;
    });
    let agents = sonde(&server, &["agents"]);
    assert!(agents.status.success());
    let text = stdout(&agents);
    assert!(
        text.contains("shop") && text.contains("python") && text.contains("poll"),
        "{text}"
    );

    let add = sonde(
        &server,
        &["tracepoint", "add", "a.rs:1", "--tenant", "team-x"],
    );
    assert!(add.status.success());
    assert!(server.ids(&[]).is_empty());
    assert_eq!(server.ids(&[("X-Scope-OrgID", "team-x")]).len(), 1);
}

#[test]
fn validate_checks_files_offline() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        r#"{"tracepoint": {"path": "a.rs", "line_number": 3, "args": {"condition": "x > 1"}}}"#,
    )
    .unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"path": "a.rs", "line_number": 3, "metrics": [{"name": "no good"}]}"#,
    )
    .unwrap();
    let run = |f: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_sonde"))
            .arg("validate")
            .arg(f)
            .output()
            .unwrap()
    };
    let ok = run(&good);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).starts_with("ok:"));
    let refused = run(&bad);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("metrics[0].name"),
        "{}",
        stderr(&refused)
    );
    let missing = run(&dir.path().join("none.json"));
    assert_eq!(missing.status.code(), Some(1));
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn window_end(server: &TestServer, id: &str) -> u64 {
    let get = sonde(server, &["tracepoint", "get", id, "-o", "json"]);
    let tp: serde_json::Value = serde_json::from_slice(&get.stdout).expect("JSON output");
    tp["tracepoint"]["args"]["window_end"]
        .as_str()
        .expect("window_end set")
        .parse()
        .expect("a number")
}

#[test]
fn ttl_sets_the_window_end_and_list_shows_the_expiry() {
    let server = TestServer::start();
    let before = unix_secs();
    let add = sonde(
        &server,
        &[
            "tracepoint",
            "add",
            "src/checkout.rs:42",
            "--metric",
            "counter:orders",
            "--ttl",
            "1h",
        ],
    );
    assert!(add.status.success(), "{}", stderr(&add));
    let id = stdout(&add).trim().to_owned();
    let end = window_end(&server, &id);
    assert!(
        (before + 3600..=unix_secs() + 3600).contains(&end),
        "window_end {end} is an hour after {before}"
    );

    let list = stdout(&sonde(&server, &["tracepoint", "list"]));
    let header = list.lines().next().expect("a header");
    assert!(header.contains("EXPIRES"), "{list}");
    let row = list.lines().find(|l| l.contains(&id)).expect("the row");
    assert!(
        row.contains("in 59m") || row.contains("in 1h00m"),
        "expires in an hour: {row}"
    );

    let edit = sonde(&server, &["tracepoint", "edit", &id, "--ttl", "2d"]);
    assert!(edit.status.success(), "{}", stderr(&edit));
    let end = window_end(&server, &id);
    assert!(
        end >= before + 2 * 86_400 && end <= unix_secs() + 2 * 86_400,
        "window_end {end} is two days on"
    );
    for unit in ["90s", "15m"] {
        let edit = sonde(&server, &["tracepoint", "edit", &id, "--ttl", unit]);
        assert!(edit.status.success(), "{}", stderr(&edit));
    }
    assert!(window_end(&server, &id) <= unix_secs() + 15 * 60);

    for bad in ["1w", "h", "1.5h", "0m", "soon"] {
        let edit = sonde(&server, &["tracepoint", "edit", &id, "--ttl", bad]);
        assert_eq!(edit.status.code(), Some(2), "--ttl {bad} is a usage error");
        assert!(stderr(&edit).contains("--ttl"), "{}", stderr(&edit));
    }
}

#[test]
fn fire_count_with_a_metric_warns_that_it_caps_it() {
    let server = TestServer::start();
    let metric = |extra: &[&str]| {
        let mut args = vec![
            "tracepoint",
            "add",
            "src/checkout.rs:42",
            "--metric",
            "histogram:order_total",
            "--buckets",
            "1,5,10,50",
        ];
        args.extend_from_slice(extra);
        sonde(&server, &args)
    };
    let capped = metric(&["--fire-count", "5"]);
    assert!(capped.status.success(), "{}", stderr(&capped));
    assert!(
        stderr(&capped).contains("warning: --fire-count 5 caps the metric"),
        "{}",
        stderr(&capped)
    );
    let id = stdout(&capped).trim().to_owned();
    let get = sonde(&server, &["tracepoint", "get", &id, "-o", "json"]);
    let tp: serde_json::Value = serde_json::from_slice(&get.stdout).expect("JSON output");
    assert_eq!(tp["tracepoint"]["args"]["buckets"], "1,5,10,50");

    for quiet in [metric(&[]), metric(&["--fire-count", "-1"])] {
        assert!(quiet.status.success(), "{}", stderr(&quiet));
        assert!(!stderr(&quiet).contains("warning"), "{}", stderr(&quiet));
    }
    let log_only = sonde(
        &server,
        &[
            "tracepoint",
            "add",
            "src/a.rs:1",
            "--log",
            "hit",
            "--fire-count",
            "5",
        ],
    );
    assert!(log_only.status.success(), "{}", stderr(&log_only));
    assert!(
        !stderr(&log_only).contains("warning"),
        "{}",
        stderr(&log_only)
    );

    let bad = sonde(
        &server,
        &[
            "tracepoint",
            "add",
            "src/a.rs:1",
            "--metric",
            "histogram:h",
            "--buckets",
            "1,5,x",
        ],
    );
    assert_eq!(bad.status.code(), Some(1), "the server refuses bad buckets");
    assert!(
        stderr(&bad).contains("args.buckets") && stderr(&bad).contains("bound 3"),
        "{}",
        stderr(&bad)
    );
}

on_both_stores!(add_list_get_edit_rm, agents_and_tenants);
