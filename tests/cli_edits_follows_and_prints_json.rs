//! The CLI against a real server and the shop example: `edit --value` and `--label` change the
//! tracepoint's one metric without restating `--metric` (and refuse when it has several);
//! `rm -o json` prints one JSON document (an array for several IDs); `sonde tail ID` follows the
//! tracepoint once a second while the shop takes checkouts, prints when the agent bound it,
//! stops on Ctrl-C (SIGINT) and by itself with `--for`, prints a log tracepoint's log lines as
//! the agent sends them, says so when the tracepoint is deleted, and refuses an unknown ID.

mod common;
#[path = "common/shop.rs"]
mod shop;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::TestServer;
use serde_json::Value;

fn sonde(server: &TestServer, args: &[&str]) -> (i32, String, String) {
    shop::sonde(&server.http, None, args)
}

fn ok(server: &TestServer, args: &[&str]) -> String {
    let (code, out, err) = sonde(server, args);
    assert_eq!(code, 0, "sonde {args:?}: {out}{err}");
    out
}

fn get(server: &TestServer, id: &str) -> Value {
    let out = ok(server, &["tracepoint", "get", id, "-o", "json"]);
    serde_json::from_str(&out).expect("JSON")
}

fn checkout(addr: std::net::SocketAddr) {
    let agent = common::http_agent();
    let body = r#"{"country":"NZ","items":[{"sku":"tea","qty":2}],"total":100,"user":{"id":"u1","tier":"gold"}}"#;
    let resp = agent
        .post(format!("http://{addr}/checkout"))
        .header("content-type", "application/json")
        .send(body)
        .expect("checkout");
    assert_eq!(resp.status().as_u16(), 200);
}

#[test]
fn edits_without_metric_json_documents_and_tail() {
    let server = TestServer::start();
    let service = format!("shop-tail-{}", std::process::id());
    let shop = shop::start(&server.grpc, &service);
    let line = shop::checkout_line();
    let location = format!("examples/shop.rs:{line}");
    let target = format!("service.name={service}");

    // --value and --label on edit, without --metric.
    let id = ok(
        &server,
        &[
            "tracepoint",
            "add",
            &location,
            "--metric",
            "counter:charged",
            "--label",
            "country=order.country",
            "--target",
            &target,
            "--wait",
        ],
    )
    .trim()
    .to_owned();
    ok(&server, &["tracepoint", "edit", &id, "--value", "charged"]);
    let metric = get(&server, &id)["tracepoint"]["metrics"][0].clone();
    assert_eq!(metric["name"], "charged", "{metric}");
    assert_eq!(metric["expression"], "charged", "{metric}");
    assert_eq!(
        metric["labelExpressions"][0]["key"], "country",
        "labels kept: {metric}"
    );
    ok(
        &server,
        &["tracepoint", "edit", &id, "--label", "tier=order.user.tier"],
    );
    let metric = get(&server, &id)["tracepoint"]["metrics"][0].clone();
    let keys: Vec<&str> = metric["labelExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["key"].as_str())
        .collect();
    assert_eq!(keys, ["tier"], "labels replaced: {metric}");
    assert_eq!(metric["expression"], "charged", "value kept: {metric}");
    ok(&server, &["tracepoint", "edit", &id, "--value", ""]);
    assert!(get(&server, &id)["tracepoint"]["metrics"][0]["expression"].is_null());

    let two = ok(
        &server,
        &[
            "tracepoint",
            "add",
            &location,
            "--metric",
            "counter:a",
            "--metric",
            "counter:b",
            "--target",
            &target,
        ],
    )
    .trim()
    .to_owned();
    let (code, _, err) = sonde(&server, &["tracepoint", "edit", &two, "--value", "charged"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("this tracepoint has 2") && err.contains("--metric"),
        "{err}"
    );

    // tail: one line a second while the shop takes checkouts, until SIGINT.
    let mut tail = Command::new(env!("CARGO_BIN_EXE_sonde"));
    tail.args(["tail", &id])
        .env("SONDE_SERVER", &server.http)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // As from a terminal: SIGINT at its default. A test run started in the background of a
    // non-interactive shell (`cargo test &`) has SIGINT ignored, and a child inherits that.
    // SAFETY: between fork and exec the closure only calls signal(2), which is
    // async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut tail, || {
            if libc::signal(libc::SIGINT, libc::SIG_DFL) == libc::SIG_ERR {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut tail = tail.spawn().expect("sonde tail");
    let (tx, rx) = mpsc::channel();
    let stdout = tail.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        checkout(shop.addr);
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = Command::new("kill")
        .args(["-INT", &tail.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exited = loop {
        if let Some(exit) = tail.try_wait().expect("wait") {
            break Some(exit);
        }
        if Instant::now() > deadline {
            let _ = tail.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exited.is_some(), "sonde tail did not stop on SIGINT");
    let lines: Vec<String> = rx.try_iter().collect();
    let ticks: Vec<&String> = lines.iter().filter(|l| l.contains("1/1 bound")).collect();
    assert!(ticks.len() >= 3, "a line a second for 4 s: {lines:#?}");
    assert!(
        lines.iter().any(
            |l| l.contains("agent ") && l.contains(&format!("bound at {location}"))
                || l.contains("bound at") && l.contains(&format!("shop.rs:{line}"))
        ),
        "{lines:#?}"
    );
    // Hits, where the server reports the agents' counters; `-` where it does not.
    let status = server.get(&format!("/api/tracepoints/{id}/status")).1;
    let counted = status["agents"][0]["counters"].is_object();
    let last = ticks.last().expect("a tick");
    if counted {
        let hits: u64 = last
            .split("hits ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(hits > 0, "{last}");
    } else {
        assert!(last.contains("hits -"), "{last}");
    }

    // A log tracepoint: tail prints each log line the agent sent (inside its snapshot).
    let logged = ok(
        &server,
        &[
            "tracepoint",
            "add",
            &location,
            "--log",
            "order from {order.country}",
            "--fire-count",
            "-1",
            "--target",
            &target,
            "--wait",
        ],
    )
    .trim()
    .to_owned();
    let addr = shop.addr;
    let shopper = std::thread::spawn(move || {
        for _ in 0..3 {
            checkout(addr);
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let (code, out, err) = sonde(&server, &["tail", &logged, "--for", "4s"]);
    shopper.join().expect("checkouts");
    assert_eq!(code, 0, "{err}");
    let logs: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("  log  ") && l.ends_with(": order from NZ"))
        .collect();
    assert!(
        !logs.is_empty() && logs.iter().all(|l| l.contains(&service)),
        "log lines with the service that sent them: {out}"
    );
    ok(&server, &["tracepoint", "rm", &logged]);

    // --for stops by itself; deleting the tracepoint while followed ends the tail.
    let (code, out, err) = sonde(&server, &["tail", &id, "--for", "2s"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().filter(|l| l.contains("1/1 bound")).count() >= 1,
        "{out}"
    );
    let follower = Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(["tail", &two, "--for", "60s"])
        .env("SONDE_SERVER", &server.http)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sonde tail");
    std::thread::sleep(Duration::from_millis(1500));

    // rm -o json: one document; an array for several IDs.
    let out = ok(&server, &["tracepoint", "rm", &two, "-o", "json"]);
    let one: Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(one["tracepoint"]["ID"], two.as_str(), "{one}");
    let followed = follower.wait_with_output().expect("tail output");
    assert!(followed.status.success());
    let text = String::from_utf8_lossy(&followed.stdout);
    assert!(
        text.trim_end().ends_with(&format!("{two} removed")),
        "{text}"
    );

    let third = ok(
        &server,
        &["tracepoint", "add", &location, "--metric", "counter:c"],
    )
    .trim()
    .to_owned();
    let out = ok(&server, &["tracepoint", "rm", &id, &third, "-o", "json"]);
    let many: Value = serde_json::from_str(&out).expect("one JSON document");
    let ids: Vec<&str> = many
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|d| d["tracepoint"]["ID"].as_str())
        .collect();
    assert_eq!(ids, [id.as_str(), third.as_str()], "{many}");

    let (code, _, err) = sonde(&server, &["tail", "no-such-tracepoint", "--for", "2s"]);
    assert_eq!(code, 1, "{err}");
}
