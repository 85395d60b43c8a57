//! Under closed-loop load a metric tracepoint stays bound and its metrics stay true: the shop
//! example (a real axum service with a real agent following a real `sonde server` over gRPC) takes
//! `POST /checkout` from 16 keep-alive connections for 15 s, with two tracepoints on its checkout
//! line: a counter labelled by a general expression (`order.country + "-" + order.user.tier`) and
//! a histogram of `order.total`. Whatever the CPU budget made them do (sample one hit in N, or
//! not), the counter's total and the histogram's count are within 5% of the orders the generator
//! completed, the histogram's sum within 5% of their totals, and neither tracepoint is disarmed.
//!
//! The shop binary is the one `cargo test` builds beside this test (`target/<profile>/examples/shop`).

mod common;
#[path = "common/load.rs"]
mod load;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::TestServer;

/// The shop, killed when dropped.
struct Shop {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shop_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    // target/<profile>/deps/<test> -> target/<profile>/examples/shop
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let shop = profile_dir.join("examples").join("shop");
    assert!(
        shop.exists(),
        "{} is missing: `cargo test` builds the examples (or run `cargo build --example shop`)",
        shop.display()
    );
    shop
}

fn start_shop(grpc: &str, service: &str) -> Shop {
    let mut child = Command::new(shop_binary())
        .args(["--listen", "127.0.0.1:0"])
        .env("SONDE_AGENT_SERVER", grpc)
        .env("SONDE_SERVICE_NAME", service)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the shop");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the shop printed its address before exiting")
            .expect("read the shop's stdout");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            break addr.parse().expect("a socket address");
        }
    };
    // Keep draining its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Shop { child, addr }
}

/// The line of `examples/shop.rs` holding the checkout probe.
fn checkout_line() -> u32 {
    let source = include_str!("../examples/shop.rs");
    let index = source
        .lines()
        .position(|l| l.contains("probe!(order, discount, charged, took)"))
        .expect("the checkout probe in examples/shop.rs");
    index as u32 + 1
}

fn scrape(addr: SocketAddr) -> String {
    let agent = common::http_agent();
    let (status, body) = common::send(&agent, "GET", &format!("http://{addr}/metrics"), None, &[]);
    assert_eq!(status, 200);
    String::from_utf8(body).expect("utf-8 exposition")
}

/// The sum of every sample of `name` (all label sets), 0 when there is none.
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The agent's statuses of the tracepoints on the server, once both are reported bound.
fn wait_until_bound(server: &TestServer, service: &str, ids: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, json) = server.get("/api/agents");
        let bound = json["agents"].as_array().into_iter().flatten().any(|a| {
            a["resource"]["service.name"] == service
                && ids.iter().all(|id| {
                    a["tracepoints"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|t| t["id"] == *id && t["state"] == "bound")
                })
        });
        if bound {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the shop's agent never reported both tracepoints bound: {json}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(state, message)` of tracepoint `id` as the shop's agent last reported it.
fn reported(server: &TestServer, service: &str, id: &str) -> (String, String) {
    let (_, json) = server.get("/api/agents");
    json["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["resource"]["service.name"] == service)
        .flat_map(|a| a["tracepoints"].as_array().into_iter().flatten())
        .find(|t| t["id"] == id)
        .map(|t| {
            (
                t["state"].as_str().unwrap_or_default().to_owned(),
                t["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .unwrap_or_else(|| panic!("no status for {id}: {json}"))
}

#[test]
fn a_counter_and_a_histogram_stay_within_5_percent_under_load() {
    let server = TestServer::start();
    let service = format!("shop-under-load-{}", std::process::id());
    let shop = start_shop(&server.grpc, &service);
    let line = checkout_line();
    let target = format!(r#"[{{"key": "service.name", "value": {{"stringValue": "{service}"}}}}]"#);
    let counter = server.create(&format!(
        r#"{{"tracepoint": {{"path": "examples/shop.rs", "line_number": {line},
            "targeting": {target},
            "metrics": [{{"name": "checkouts", "type": "COUNTER",
                "labelExpressions": [{{"key": "segment",
                    "expression": "order.country + \"-\" + order.user.tier"}}]}}]}}}}"#
    ));
    let histogram = server.create(&format!(
        r#"{{"tracepoint": {{"path": "examples/shop.rs", "line_number": {line},
            "targeting": {target},
            "metrics": [{{"name": "order_total", "type": "HISTOGRAM",
                "expression": "order.total"}}]}}}}"#
    ));
    wait_until_bound(&server, &service, &[&counter, &histogram]);

    let report = load::run(shop.addr, 16, Duration::from_secs(15));
    let text = scrape(shop.addr);
    let counted = total(&text, "deep_checkouts_total");
    let count = total(&text, "deep_order_total_count");
    let sum = total(&text, "deep_order_total_sum");
    let every = |id: &str| {
        total(
            &text,
            &format!(r#"sonde_agent_tracepoint_sample_every{{tracepoint="{id}"}}"#),
        )
    };
    println!(
        "{} orders ({:.0}/s, {} failed), p99 {} µs; counter {counted} (1 in {}), histogram \
         count {count} sum {sum:.2} for a true sum of {:.2} (1 in {})",
        report.ok,
        report.throughput(),
        report.failed,
        report.latency_us(0.99),
        every(&counter),
        report.total_sum,
        every(&histogram),
    );
    assert!(report.ok > 1000, "the load ran: {report:?}");
    assert_eq!(report.failed, 0, "every order was answered 200");
    let near = |got: f64, want: f64| (got - want).abs() <= 0.05 * want;
    assert!(
        near(counted, report.ok as f64),
        "counter {counted} for {} orders",
        report.ok
    );
    assert!(
        near(count, report.ok as f64),
        "histogram count {count} for {} orders",
        report.ok
    );
    assert!(
        near(sum, report.total_sum),
        "histogram sum {sum} for a true sum of {}",
        report.total_sum
    );
    // The agent reports a status change within a second; give it two.
    std::thread::sleep(Duration::from_secs(2));
    for id in [&counter, &histogram] {
        let (state, message) = reported(&server, &service, id);
        assert_eq!(state, "bound", "{id}: {message}");
    }
}
