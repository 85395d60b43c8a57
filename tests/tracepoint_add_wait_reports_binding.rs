//! `sonde tracepoint add|edit --wait` says what the agents made of the change, and its exit code
//! says whether it worked: against the shop example (a real child process with a real agent), a
//! tracepoint on the checkout probe prints `bound` (exit 0); one on the line after it prints the
//! agent's `unbound` message naming the nearest probe lines (exit 4); one reading a variable the
//! site does not capture prints the agent's error (exit 5); an edit moving the first one off the
//! probe waits for the agent's report on the new version, not the old `bound` (exit 4); and a
//! tracepoint no live agent is targeted by exits 4 at once. `list` and `get` show the counts.

mod common;
#[path = "common/shop.rs"]
mod shop;

use std::time::{Duration, Instant};

use common::TestServer;

fn sonde(server: &TestServer, args: &[&str]) -> (i32, String, String) {
    shop::sonde(&server.http, None, args)
}

#[test]
fn add_wait_prints_what_each_agent_made_of_it() {
    let server = TestServer::start();
    let service = format!("shop-wait-{}", std::process::id());
    let _shop = shop::start(&server.grpc, &service);
    let line = shop::checkout_line();
    let target = format!("service.name={service}");
    // The agent is connected once its catalog is in.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.get(&format!("/api/sites?service.name={service}")).1["reporting"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the shop's agent never connected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let on_probe = format!("examples/shop.rs:{line}");
    let (code, out, err) = sonde(
        &server,
        &[
            "tracepoint",
            "add",
            &on_probe,
            "--metric",
            "counter:checkouts",
            "--target",
            &target,
            "--wait",
        ],
    );
    assert_eq!(code, 0, "bound: {out} {err}");
    let id = out.trim().to_owned();
    assert_eq!(id.lines().count(), 1, "stdout holds only the ID: {out}");
    assert!(
        err.contains(&format!("({service}): bound at examples/shop.rs:{line}")),
        "{err}"
    );

    let off_probe = format!("examples/shop.rs:{}", line + 1);
    let (code, _, err) = sonde(
        &server,
        &[
            "tracepoint",
            "add",
            &off_probe,
            "--metric",
            "counter:nothing",
            "--target",
            &target,
            "--wait=10",
        ],
    );
    assert_eq!(code, 4, "unbound: {err}");
    assert!(
        err.contains(&format!(
            "unbound: no probe site at examples/shop.rs:{}; nearest sites: examples/shop.rs:{line}",
            line + 1
        )),
        "the agent's message, naming the nearest probe line: {err}"
    );
    assert!(err.contains("no agent bound it"), "{err}");

    let (code, _, err) = sonde(
        &server,
        &[
            "tracepoint",
            "add",
            &on_probe,
            "--condition",
            "coupon > 1",
            "--target",
            &target,
            "--wait",
        ],
    );
    assert_eq!(code, 5, "error: {err}");
    assert!(
        err.contains("error: the expressions read `coupon` that the site"),
        "the agent's error: {err}"
    );

    // Edit the bound one off the probe: the old `bound` report must not count.
    let (code, out, err) = sonde(
        &server,
        &[
            "tracepoint",
            "edit",
            &id,
            &off_probe,
            "--wait",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 4, "edited off the probe: {out} {err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(json["status"]["agents"][0]["state"], "unbound", "{json}");

    let (code, _, err) = sonde(
        &server,
        &[
            "tracepoint",
            "add",
            &on_probe,
            "--target",
            "service.name=nobody",
            "--wait=30",
        ],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("no live agent is targeted"), "{err}");

    // Back on the probe, then list and get show the counts.
    let (code, _, err) = sonde(&server, &["tracepoint", "edit", &id, &on_probe, "--wait"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = sonde(&server, &["tracepoint", "list"]);
    assert_eq!(code, 0, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} listed: {out}"));
    assert!(row.ends_with("1/1 bound"), "{out}");
    assert!(out.contains("0/1 bound, 1 error"), "{out}");
    assert!(out.contains("0/1 bound, 1 unbound"), "{out}");
    assert!(out.contains("no agents"), "{out}");
    let (code, out, _) = sonde(&server, &["tracepoint", "get", &id]);
    assert_eq!(code, 0);
    assert!(out.contains("status:    1/1 bound"), "{out}");
    let (code, out, _) = sonde(&server, &["agents"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("does not capture"),
        "agents shows each tracepoint's message: {out}"
    );
}
