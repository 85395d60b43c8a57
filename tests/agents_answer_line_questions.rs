//! Finding the line before arming it, natively: the shop example (a real child process whose agent
//! arms lines natively, `SONDE_AGENT_NATIVE=1`) answers the server's questions about its lines
//! down its `CatalogService/Serve` stream. `sonde files` lists `examples/shop.rs` and none of the
//! standard library or the dependencies; `sonde lines examples/shop.rs` lists the line computing
//! the charge with its locals (`order`, `discount`) and not a blank or a comment line; `--line`
//! gives each variable's type. Creating a tracepoint on a blank line warns with the nearest lines
//! with code; one reading a misspelt name warns naming the variables in scope; one on the probe
//! line reading a name the probe does not capture warns naming what it captures. The create
//! answer says how many agents it reaches.

mod common;
#[path = "common/shop.rs"]
mod shop;

use std::time::{Duration, Instant};

use common::{TestServer, skip::skip};
use serde_json::Value;

const SHOP: &str = "examples/shop.rs";

fn sonde(server: &TestServer, args: &[&str]) -> (i32, String, String) {
    shop::sonde(&server.http, None, args)
}

fn json(server: &TestServer, args: &[&str]) -> Value {
    let (code, out, err) = sonde(server, args);
    assert_eq!(code, 0, "sonde {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("sonde {args:?} printed JSON: {e}: {out}"))
}

/// The 1-based line of `examples/shop.rs` whose text contains `needle`.
fn line_of(needle: &str) -> u32 {
    shop::probe_line(needle)
}

fn create(server: &TestServer, tracepoint: Value) -> Value {
    let body = serde_json::json!({ "tracepoint": tracepoint });
    let (status, answer) = server.post("/api/tracepoints", &body.to_string());
    assert_eq!(status, 200, "{answer}");
    answer
}

fn warnings(answer: &Value) -> Vec<String> {
    answer["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_shop_answers_which_lines_and_variables_it_has() {
    let server = TestServer::start();
    let service = format!("shop-lines-{}", std::process::id());
    let _shop = shop::start_with(&server.grpc, &service, &[("SONDE_AGENT_NATIVE", "1")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let sites = loop {
        let (_, sites) = server.get(&format!("/api/sites?service.name={service}"));
        if sites["reporting"] == 1 {
            break sites;
        }
        assert!(
            Instant::now() < deadline,
            "the shop's agent never reported its catalog"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (_, agents) = server.get("/api/agents");
    let agent = agents["agents"][0]["id"].as_str().unwrap().to_owned();
    let (_, catalog) = server.get(&format!("/api/agents/{agent}/sites"));
    if catalog["native"] != true {
        skip(
            "the_shop_answers_which_lines_and_variables_it_has",
            "the shop's agent arms no lines natively: it was built without sonde-agent's \
             `native` feature (run the tests with --all-features)",
        );
        return;
    }
    assert!(
        sites["sites"].as_array().is_some_and(|s| s.len() == 3),
        "{sites}"
    );

    // Files: the shop's own, nothing of std or the registry.
    let files = json(&server, &["files", "--service", &service, "-o", "json"]);
    let names: Vec<&str> = files["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["file"].as_str())
        .collect();
    assert!(names.contains(&SHOP), "{files}");
    assert!(
        names.iter().all(|f| !f.starts_with("/rustc/")
            && !f.contains("/.cargo/")
            && !f.starts_with("/rust/")),
        "only the application's own files: {names:?}"
    );
    assert_eq!(files["asked"], 1, "{files}");

    // Lines: the charge line with its locals; no blank or comment line.
    let charge = line_of("let charged = ");
    let lines = json(
        &server,
        &["lines", SHOP, "--service", &service, "-o", "json"],
    );
    assert_eq!(lines["errors"], serde_json::json!([]), "{lines}");
    let listed: Vec<&Value> = lines["lines"].as_array().unwrap().iter().collect();
    let at = |n: u32| listed.iter().find(|l| l["line"] == n).copied();
    let line = at(charge).unwrap_or_else(|| panic!("line {charge} listed: {lines}"));
    let vars: Vec<&str> = line["variables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for local in ["order", "discount", "started", "shop"] {
        assert!(
            vars.contains(&local),
            "`{local}` at line {charge}: {vars:?}"
        );
    }
    assert_eq!(line["native"], true, "{line}");
    assert_eq!(line["agents"], 1, "{line}");
    let source = include_str!("../examples/shop.rs");
    let (mut blank, mut comment) = (0, 0);
    for (i, text) in source.lines().enumerate() {
        let n = i as u32 + 1;
        let t = text.trim();
        if t.is_empty() || t.starts_with("//") {
            assert!(at(n).is_none(), "line {n} ({t:?}) is listed: {:?}", at(n));
            if t.is_empty() {
                blank += 1
            } else {
                comment += 1
            }
        }
    }
    assert!(
        blank > 10 && comment > 10,
        "the check saw blank and comment lines"
    );
    // The probe lines are marked as such, with their captures.
    let probe = at(shop::checkout_line()).expect("the checkout probe line");
    assert_eq!(
        probe["probe"]["names"],
        serde_json::json!(["order", "discount", "charged", "took"])
    );

    // One line: the types.
    let one = json(
        &server,
        &[
            "lines",
            SHOP,
            "--service",
            &service,
            "--line",
            &charge.to_string(),
            "-o",
            "json",
        ],
    );
    let discount = one["lines"][0]["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "discount")
        .cloned()
        .unwrap_or_else(|| panic!("discount at line {charge}: {one}"));
    assert_eq!(discount["type"], "f64", "{discount}");
    assert_eq!(discount["readable"], true, "{discount}");
    // The table names the columns and the variable.
    let (code, table, _) = sonde(
        &server,
        &[
            "lines",
            SHOP,
            "--service",
            &service,
            "--line",
            &charge.to_string(),
        ],
    );
    assert_eq!(code, 0);
    assert!(
        table.contains("VARIABLE") && table.contains("discount") && table.contains("f64"),
        "{table}"
    );

    // Creates: a blank line, a misspelt name, a name the probe does not capture.
    let target = serde_json::json!([{"key": "service.name", "value": {"stringValue": service}}]);
    let blank_line = (charge..)
        .find(|&n| {
            source
                .lines()
                .nth(n as usize - 1)
                .is_some_and(|t| t.trim().is_empty())
        })
        .unwrap();
    let answer = create(
        &server,
        serde_json::json!({"path": SHOP, "line_number": blank_line, "targeting": target,
            "metrics": [{"name": "blank_total", "type": "COUNTER"}]}),
    );
    let w = warnings(&answer);
    assert!(
        w.iter().any(
            |w| w.contains(&format!("line {blank_line} of {SHOP} has no code"))
                && w.contains("nearest lines with code")
        ),
        "{answer}"
    );
    assert_eq!(answer["agents"], 1, "{answer}");

    let answer = create(
        &server,
        serde_json::json!({"path": SHOP, "line_number": charge, "targeting": target,
            "metrics": [{"name": "charge_total", "type": "COUNTER", "expression": "totl * 2.0"}]}),
    );
    let w = warnings(&answer);
    assert!(
        w.iter().any(|w| w.contains("`totl`")
            && w.contains("not a variable in scope")
            && w.contains("discount")
            && w.contains("order")),
        "{answer}"
    );

    let answer = create(
        &server,
        serde_json::json!({"path": SHOP, "line_number": shop::checkout_line(), "targeting": target,
            "args": {"condition": "started > 0"},
            "metrics": [{"name": "probe_total", "type": "COUNTER"}]}),
    );
    let w = warnings(&answer);
    assert!(
        w.iter().any(|w| w.contains("`started`")
            && w.contains("does not capture")
            && w.contains("order, discount, charged, took")),
        "{answer}"
    );
    // A clean create has no warnings.
    let answer = create(
        &server,
        serde_json::json!({"path": SHOP, "line_number": charge, "targeting": target,
            "metrics": [{"name": "clean_total", "type": "COUNTER", "expression": "discount"}]}),
    );
    assert_eq!(warnings(&answer), Vec::<String>::new(), "{answer}");
}
