//! The README's walkthrough, run as written against the built `sonde` binary and the shop example,
//! so the README cannot drift: the probe sites the shop prints are the ones the README lists, the
//! README's `curl` and `sonde` commands create the tracepoints, its checkouts and product views
//! produce exactly the `deep_` lines the README prints (the figures included), and its delete
//! commands leave no `deep_` line. The commands are taken from the README's code blocks and run
//! with `sh`; only the addresses (ephemeral ports here) and `target/release/sonde` (the binary
//! this test was built with) are substituted, and the `<ID>` placeholders filled in.

mod common;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::TestServer;

/// The README section that is run.
const SECTION: &str = "### Walkthrough: a tracepoint becomes a metric";

/// The fenced code blocks of `text`: (info string, body).
fn blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => current = Some((info.trim().to_owned(), String::new())),
            (Some(_), Some(_)) => out.extend(current.take()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

fn one<'a>(blocks: &'a [(String, String)], info: &str, needle: &str) -> &'a str {
    let found: Vec<&str> = blocks
        .iter()
        .filter(|(i, b)| i == info && b.contains(needle))
        .map(|(_, b)| b.as_str())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one ```{info} block with {needle:?}: {found:?}"
    );
    found[0]
}

fn words(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The `deep_` lines of an exposition (samples, HELP and TYPE). A `# HELP` may follow the end of
/// the previous command's output on the same line (a JSON answer has no final newline).
fn deep_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.find("# HELP deep_").map_or(l, |at| &l[at..]);
            (l.starts_with("deep_")
                || l.starts_with("# HELP deep_")
                || l.starts_with("# TYPE deep_"))
            .then(|| l.to_owned())
        })
        .collect()
}

/// The shop, killed when the test ends, also by a failed assertion.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_walkthrough_prints_what_the_readme_says() {
    let readme = include_str!("../README.md");
    let start = readme.find(SECTION).expect("the walkthrough section");
    let rest = &readme[start + SECTION.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let blocks = blocks(section);

    let server = TestServer::start();
    let http = server.http.trim_start_matches("http://").to_owned();
    let exe = std::env::current_exe().expect("the test's path");
    let shop_bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>")
        .join("examples")
        .join("shop");
    let mut shop = Killed(
        Command::new(&shop_bin)
            .args(["--listen", "127.0.0.1:0"])
            .env("SONDE_AGENT_SERVER", &server.grpc)
            .env_remove("SONDE_SERVICE_NAME")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the shop"),
    );
    let mut printed = Vec::new();
    let mut lines = BufReader::new(shop.0.stdout.take().expect("stdout")).lines();
    let shop_addr = loop {
        let line = lines.next().expect("the shop's address").expect("stdout");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
        printed.push(words(&line));
    };
    std::thread::spawn(move || for _ in lines {});

    // The probe sites the README lists are the ones the shop prints.
    let sites = one(&blocks, "text", "captures");
    for line in sites.lines().filter(|l| l.contains("captures")) {
        assert!(
            printed.contains(&words(line)),
            "the shop does not print {line:?}; it printed {printed:#?}"
        );
    }

    let sonde = env!("CARGO_BIN_EXE_sonde");
    let run = |script: &str| -> String {
        let script = script
            .replace("localhost:3300", &http)
            .replace("localhost:8080", &shop_addr)
            .replace("target/release/sonde", sonde);
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("sonde={sonde}\n{script}"))
            .env("SONDE_SERVER", &server.http)
            .env_remove("SONDE_TOKEN")
            .env_remove("SONDE_TENANT")
            .output()
            .expect("sh runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("error"),
            "{script}\nprinted {stdout}\nand on stderr {stderr}"
        );
        stdout
    };

    // Create, as written; then wait until the shop's agent bound both.
    run(one(&blocks, "sh", "/api/tracepoints -d"));
    let (_, list) = server.get("/api/status");
    let ids: Vec<String> = list["tracepoints"]
        .as_object()
        .expect("the status of every tracepoint")
        .keys()
        .cloned()
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, status) = server.get("/api/status");
        if ids.iter().all(|id| status["tracepoints"][id]["bound"] == 1) {
            break;
        }
        assert!(Instant::now() < deadline, "not bound: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Use the shop, as written: exactly the README's lines.
    let out = run(one(&blocks, "sh", "/checkout"));
    let expected = deep_lines(one(&blocks, "text", "# TYPE deep_"));
    assert!(!expected.is_empty());
    assert_eq!(
        deep_lines(&out),
        expected,
        "the exposition differs from the README's"
    );

    // Delete, as written: one ID per `<ID>`; nothing of Sonde's is left.
    let mut script = one(&blocks, "sh", "XDELETE").to_owned();
    for id in &ids {
        script = script.replacen("<ID>", id, 1);
    }
    assert!(!script.contains("<ID>"), "{script}");
    let out = run(&script);
    assert_eq!(deep_lines(&out), Vec::<String>::new(), "{out}");
    let (_, status) = server.get("/api/status");
    assert_eq!(status["tracepoints"], serde_json::json!({}), "{status}");
    drop(shop);
}
