//! Creating a tracepoint on a line that no targeted agent can bind still succeeds, but says so:
//! with the shop example running (a real child process whose agent reported its probe sites and
//! arms no lines natively), `POST /api/tracepoints` one line below the checkout probe answers 200
//! with a `warnings` list naming the line and the nearest probe lines of that file, the real
//! `sonde tracepoint add` prints the warning on stderr (exit 0, the ID on stdout), and a
//! tracepoint on the probe line, or one targeting no agent with a catalog, has no warnings.

mod common;
#[path = "common/shop.rs"]
mod shop;

use std::time::{Duration, Instant};

use common::TestServer;

#[test]
fn a_line_off_every_probe_is_created_with_a_warning() {
    let server = TestServer::start();
    let service = format!("shop-warn-{}", std::process::id());
    let _shop = shop::start(&server.grpc, &service);
    let line = shop::checkout_line();
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.get(&format!("/api/sites?service.name={service}")).1["reporting"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the shop's agent never reported its sites"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = |line: u32, service: &str| {
        format!(
            r#"{{"tracepoint": {{"path": "examples/shop.rs", "line_number": {line},
                "targeting": [{{"key": "service.name", "value": {{"stringValue": "{service}"}}}}]}}}}"#
        )
    };

    let (status, json) = server.post("/api/tracepoints", &body(line + 1, &service));
    assert_eq!(status, 200, "still created: {json}");
    assert!(json["tracepoint"]["ID"].is_string(), "{json}");
    let warnings = json["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{json}");
    let warning = warnings[0].as_str().unwrap_or_default();
    assert!(
        warning.contains(&format!("no probe site at examples/shop.rs:{}", line + 1))
            && warning.contains(&format!(
                "nearest probe lines in that file: examples/shop.rs:{line} (order, discount, charged, took)"
            )),
        "{warning}"
    );

    let (status, json) = server.post("/api/tracepoints", &body(line, &service));
    assert_eq!(status, 200);
    assert!(json.get("warnings").is_none(), "on the probe: {json}");
    let (status, json) = server.post("/api/tracepoints", &body(line + 1, "nobody"));
    assert_eq!(status, 200);
    assert!(
        json.get("warnings").is_none(),
        "no catalog to judge by: {json}"
    );

    let (code, out, err) = shop::sonde(
        &server.http,
        None,
        &[
            "tracepoint",
            "add",
            &format!("examples/shop.rs:{}", line + 1),
            "--target",
            &format!("service.name={service}"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "the ID alone on stdout: {out}");
    assert!(
        err.starts_with(&format!(
            "warning: no probe site at examples/shop.rs:{}",
            line + 1
        )),
        "{err}"
    );
}
