//! Sonde's agent, configured only through `AgentBuilder::from_env`, against the real `sonde
//! server` binary: `SONDE_AGENT_TOKEN` against `--agent-token` (and a wrong one refused),
//! `SONDE_AGENT_CA_CERT` against `--tls-cert`, failover past a dead first URL of a
//! comma-separated `SONDE_AGENT_SERVER`, `SONDE_AGENT_MODE=poll` against Sonde itself with
//! `SONDE_AGENT_POLL_INTERVAL_MS`, `SONDE_TENANT`, `SONDE_SERVICE_NAME` and
//! `SONDE_RESOURCE_ATTRIBUTES`, the watch stream's heartbeat on an idle stream, and each
//! malformed variable refused at `start()` naming it.
//!
//! Environment variables and the one-agent-per-process rule make every agent a child process:
//! this test binary runs itself with `--exact child_agent_from_env` and the variables set. The
//! child starts the agent (its tracepoint metrics and its own `sonde_agent_*` metrics in one
//! registry it serves on an ephemeral port), prints `STARTED <agent id> <metrics address>` (or
//! `START-ERROR <error>` and exits 3), and then calls its probe site every 20 ms until killed. The
//! parent creates a tracepoint on that site and reads the child's `/metrics` and the server's
//! `GET /api/agents`. Every wait is on the condition itself with a generous deadline.

mod common;

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::ServerProcess;
use serde_json::{Value, json};
use sonde_agent::{Agent, PrometheusProvider, probe};
use sonde_proto::{
    poll::{PollResponse, ResponseType},
    sonde::{WatchRequest, watch_service_client::WatchServiceClient},
};

const CHILD: &str = "SONDE_TRANSPORT_TEST_CHILD";
/// How long a wait for something that must happen may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);
/// The counter a tracepoint on the child's site feeds.
const HITS: &str = "deep_transport_hits_total";

fn hit(n: u64) {
    probe!(n);
}

fn site() -> &'static sonde_agent::Site {
    sonde_agent::sites()
        .find(|s| s.names() == ["n"] && s.file().ends_with(file!()))
        .expect("the probe in hit() is registered")
}

/// The child: an agent from the environment only. Does nothing in a normal test run.
#[test]
fn child_agent_from_env() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let registry = prometheus::Registry::new();
    let provider = PrometheusProvider::new(registry.clone());
    let started = Agent::builder()
        .provider(provider.clone())
        .self_metrics(provider)
        .serve_metrics(([127, 0, 0, 1], 0).into(), registry)
        .from_env()
        .start();
    let agent = match started {
        Ok(agent) => agent,
        Err(e) => {
            println!("START-ERROR {e}");
            std::process::exit(3);
        }
    };
    println!(
        "STARTED {} {}",
        agent.agent_id(),
        agent.metrics_addr().expect("a metrics address")
    );
    // Killed by the parent; the cap only guards against a parent that died.
    let born = Instant::now();
    let mut n = 0;
    while born.elapsed() < Duration::from_secs(300) {
        n += 1;
        hit(n);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child agent process, killed when dropped.
struct ChildAgent {
    child: Child,
    agent_id: String,
    metrics: String,
}

impl Drop for ChildAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the child with exactly `env` among the `SONDE_*` variables; its first line of output.
fn spawn_child(env: &[(&str, &str)]) -> (Child, String) {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.args(["--exact", "child_agent_from_env", "--nocapture", "--quiet"])
        .env(CHILD, "1")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SONDE_") && key != CHILD {
            cmd.env_remove(&key);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the child agent");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = loop {
        let line = lines
            .next()
            .expect("the child prints STARTED or START-ERROR")
            .expect("readable");
        if line.starts_with("STARTED ") || line.starts_with("START-ERROR ") {
            break line;
        }
    };
    // Keep draining the child's stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (child, first)
}

fn start_agent(env: &[(&str, &str)]) -> ChildAgent {
    let (child, first) = spawn_child(env);
    let mut words = first.split_whitespace().skip(1);
    match (first.starts_with("STARTED "), words.next(), words.next()) {
        (true, Some(id), Some(addr)) => ChildAgent {
            child,
            agent_id: id.to_owned(),
            metrics: format!("http://{addr}/metrics"),
        },
        _ => panic!("the agent did not start: {first}"),
    }
}

/// `start()` refused the environment: the error line.
fn start_error(env: &[(&str, &str)]) -> String {
    let (mut child, first) = spawn_child(env);
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(3), "{first}");
    first
        .strip_prefix("START-ERROR ")
        .unwrap_or_else(|| panic!("expected a start error, got {first}"))
        .to_owned()
}

impl ChildAgent {
    fn exposition(&self) -> String {
        let (status, body) = common::send(&common::http_agent(), "GET", &self.metrics, None, &[]);
        assert_eq!(status, 200);
        String::from_utf8(body).expect("utf-8")
    }

    /// The sum of the samples whose name and labels start with `prefix` (0 when none).
    fn metric(&self, prefix: &str) -> f64 {
        sum(&self.exposition(), prefix)
    }
}

fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < PATIENCE,
            "timed out after {PATIENCE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The body of a tracepoint on the child's site for `service`, counting hits as [`HITS`].
fn tracepoint_body(service: &str) -> String {
    json!({"tracepoint": {
        "path": site().file(), "line_number": site().line(),
        "targeting": [{"key": "service.name", "value": {"stringValue": service}}],
        "metrics": [{"name": "transport_hits"}],
    }})
    .to_string()
}

fn create_tracepoint(server: &ServerProcess, service: &str, headers: &[(&str, &str)]) -> String {
    let (status, body) = common::send(
        &common::http_agent(),
        "POST",
        &format!("{}/api/tracepoints", server.http),
        Some(tracepoint_body(service).into_bytes()),
        headers,
    );
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(status, 200, "{json}");
    json["tracepoint"]["ID"].as_str().expect("an ID").to_owned()
}

/// The server's agents for a tenant (none: the default one).
fn agents(server: &ServerProcess, tenant: Option<&str>) -> Vec<Value> {
    let headers: Vec<_> = tenant.map(|t| ("X-Scope-OrgID", t)).into_iter().collect();
    let (status, body) = common::send(
        &common::http_agent(),
        "GET",
        &format!("{}/api/agents", server.http),
        None,
        &headers,
    );
    assert_eq!(status, 200);
    let json: Value = serde_json::from_slice(&body).expect("json");
    json["agents"].as_array().cloned().unwrap_or_default()
}

fn new_server(extra: &[&str]) -> (tempfile::TempDir, ServerProcess) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::spawn(&dir.path().join("data"), extra);
    (dir, server)
}

/// A loopback URL where nothing listens.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

#[test]
fn the_agent_token_is_sent_and_a_wrong_one_is_refused() {
    let (_dir, server) = new_server(&["--agent-token", "agent-s3cret"]);
    create_tracepoint(&server, "token-ok", &[]);
    create_tracepoint(&server, "token-wrong", &[]);

    let wrong = start_agent(&[
        ("SONDE_AGENT_SERVER", &server.grpc),
        ("SONDE_SERVICE_NAME", "token-wrong"),
        ("SONDE_AGENT_TOKEN", "not-the-token"),
    ]);
    let good = start_agent(&[
        ("SONDE_AGENT_SERVER", &server.grpc),
        ("SONDE_SERVICE_NAME", "token-ok"),
        ("SONDE_AGENT_TOKEN", "agent-s3cret"),
    ]);
    wait_for("hits counted by the agent with the token", || {
        good.metric(HITS) > 0.0
    });
    assert_eq!(good.metric("sonde_agent_control_plane_failures_total"), 0.0);
    wait_for(
        "two refused attempts of the agent with a wrong token",
        || wrong.metric("sonde_agent_control_plane_failures_total") >= 2.0,
    );
    assert_eq!(
        wrong.metric(HITS),
        0.0,
        "a refused agent gets no tracepoint"
    );
    let listed: Vec<_> = agents(&server, None)
        .iter()
        .map(|a| a["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(listed.contains(&good.agent_id), "{listed:?}");
    assert!(!listed.contains(&wrong.agent_id), "{listed:?}");
}

#[test]
fn the_ca_certificate_lets_the_agent_trust_a_tls_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write");
    let server = ServerProcess::spawn(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            cert_path.to_str().expect("utf-8"),
            "--tls-key",
            key_path.to_str().expect("utf-8"),
        ],
    );
    let grpcs = server.grpc.replace("http://127.0.0.1", "https://localhost");
    let https = server.http.replace("http://127.0.0.1", "https://localhost");
    for service in ["tls-trusted", "tls-untrusted"] {
        let add = Command::new(env!("CARGO_BIN_EXE_sonde"))
            .args(["tracepoint", "add"])
            .arg(format!("{}:{}", site().file(), site().line()))
            .args(["--metric", "counter:transport_hits", "--target"])
            .arg(format!("service.name={service}"))
            .args(["--server", &https, "--ca-cert"])
            .arg(&cert_path)
            .output()
            .expect("sonde tracepoint add");
        assert!(
            add.status.success(),
            "{}",
            String::from_utf8_lossy(&add.stderr)
        );
    }

    let untrusted = start_agent(&[
        ("SONDE_AGENT_SERVER", &grpcs),
        ("SONDE_SERVICE_NAME", "tls-untrusted"),
    ]);
    let trusted = start_agent(&[
        ("SONDE_AGENT_SERVER", &grpcs),
        ("SONDE_SERVICE_NAME", "tls-trusted"),
        ("SONDE_AGENT_CA_CERT", cert_path.to_str().expect("utf-8")),
    ]);
    wait_for("hits counted by the agent that trusts the CA", || {
        trusted.metric(HITS) > 0.0
    });
    assert_eq!(
        trusted.metric("sonde_agent_control_plane_failures_total"),
        0.0
    );
    wait_for("a failed TLS attempt without the CA", || {
        untrusted.metric("sonde_agent_control_plane_failures_total") >= 1.0
    });
    assert_eq!(untrusted.metric(HITS), 0.0, "no CA, no tracepoint");
}

#[test]
fn a_dead_first_url_fails_over_to_the_next() {
    let (_dir, server) = new_server(&[]);
    create_tracepoint(&server, "failover", &[]);
    let servers = format!("{}, {}", dead_url(), server.grpc);
    let agent = start_agent(&[
        ("SONDE_AGENT_SERVER", &servers),
        ("SONDE_SERVICE_NAME", "failover"),
    ]);
    wait_for("hits after failing over", || agent.metric(HITS) > 0.0);
    assert!(
        agent.metric("sonde_agent_control_plane_failures_total") >= 1.0,
        "the first URL was tried and failed"
    );
    assert!(
        agents(&server, None)
            .iter()
            .any(|a| a["id"] == agent.agent_id.as_str()),
        "the agent is listed by the second server"
    );
}

#[test]
fn poll_mode_and_the_environment_settings_against_sonde() {
    let (_dir, server) = new_server(&[]);
    let agent = start_agent(&[
        ("SONDE_AGENT_SERVER", &server.grpc),
        ("SONDE_AGENT_MODE", "poll"),
        ("SONDE_AGENT_POLL_INTERVAL_MS", "200"),
        ("SONDE_SERVICE_NAME", "poller"),
        ("SONDE_TENANT", "acme"),
        (
            "SONDE_RESOURCE_ATTRIBUTES",
            "team=checkout, region = eu-west",
        ),
    ]);
    // Listed under its tenant only, as a poller, with the resource the environment gave it.
    // Its catalog report may list it a moment before its first poll says how it follows.
    wait_for("the agent listed under tenant acme, as a poller", || {
        agents(&server, Some("acme"))
            .first()
            .is_some_and(|a| a["kind"] == "poll")
    });
    let listed = agents(&server, Some("acme"));
    assert_eq!(listed.len(), 1, "{listed:?}");
    let me = &listed[0];
    assert_eq!(me["kind"], "poll", "{me}");
    assert_eq!(
        me["id"],
        agent.agent_id.as_str(),
        "one agent: polls and reports"
    );
    assert_eq!(me["resource"]["service.name"], "poller", "{me}");
    assert_eq!(me["resource"]["team"], "checkout", "{me}");
    assert_eq!(me["resource"]["region"], "eu-west", "{me}");
    assert!(
        agents(&server, None).is_empty(),
        "not in the default tenant"
    );

    // A tracepoint created after the first poll arrives by a later one.
    create_tracepoint(&server, "poller", &[("X-Scope-OrgID", "acme")]);
    wait_for("hits from the polled tracepoint", || {
        agent.metric(HITS) > 0.0
    });

    // 200 ms between polls: five polls within the patience, where the default 10 s would need 40.
    wait_for("five polls", || {
        agent.metric(r#"sonde_agent_control_plane_request_duration_seconds_count{kind="poll"}"#)
            >= 5.0
    });
    assert_eq!(
        agent.metric(r#"sonde_agent_control_plane_request_duration_seconds_count{kind="watch"}"#),
        0.0,
        "poll mode never asks for the watch stream"
    );
}

async fn next_message(stream: &mut tonic::Streaming<PollResponse>) -> PollResponse {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("a message on the idle stream")
        .expect("stream ok")
        .expect("stream open")
}

#[test]
fn an_idle_watch_stream_gets_heartbeats_and_the_agent_keeps_it() {
    let (_dir, server) = new_server(&["--watch-heartbeat-secs", "1"]);
    create_tracepoint(&server, "watcher", &[]);
    let agent = start_agent(&[
        ("SONDE_AGENT_SERVER", &server.grpc),
        ("SONDE_AGENT_MODE", "watch"),
        ("SONDE_SERVICE_NAME", "watcher"),
    ]);
    wait_for("hits over the watch stream", || agent.metric(HITS) > 0.0);

    // A watcher of our own on the same idle server sees the heartbeats: NO_CHANGE with the hash
    // it already has and no tracepoints, while nothing changes.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(server.grpc.clone())
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut stream = WatchServiceClient::new(channel)
            .watch(WatchRequest {
                resource: common::resource(&[("service.name", "watcher")]),
                current_hash: String::new(),
                agent_id: "heartbeat-observer".into(),
            })
            .await
            .expect("watch")
            .into_inner();
        let first = next_message(&mut stream).await;
        assert_eq!(first.response.len(), 1);
        for _ in 0..3 {
            let beat = next_message(&mut stream).await;
            assert_eq!(beat.response_type, ResponseType::NoChange as i32);
            assert_eq!(beat.current_hash, first.current_hash);
            assert!(beat.response.is_empty());
        }
    });
    // Three heartbeats later the agent is still on its first stream, with its tracepoint.
    assert_eq!(
        agent.metric(r#"sonde_agent_control_plane_request_duration_seconds_count{kind="watch"}"#),
        1.0,
        "the agent kept its one watch stream through the heartbeats"
    );
    assert_eq!(
        agent.metric("sonde_agent_control_plane_failures_total"),
        0.0
    );
    let before = agent.metric(HITS);
    wait_for("more hits", || agent.metric(HITS) > before);
}

#[test]
fn malformed_environment_values_are_refused_naming_the_variable() {
    let missing = Path::new("/nonexistent/sonde-ca.pem");
    for (env, wanted) in [
        (
            ("SONDE_AGENT_MODE", "sometimes"),
            r#"SONDE_AGENT_MODE: "sometimes" is not auto, watch or poll"#,
        ),
        (
            ("SONDE_AGENT_POLL_INTERVAL_MS", "soon"),
            r#"SONDE_AGENT_POLL_INTERVAL_MS: not a number: "soon""#,
        ),
        (
            ("SONDE_AGENT_POLL_INTERVAL_MS", "-5"),
            "SONDE_AGENT_POLL_INTERVAL_MS: not a number",
        ),
        (
            ("SONDE_AGENT_POLL_INTERVAL_MS", "0"),
            "the poll interval must not be zero",
        ),
        (
            ("SONDE_RESOURCE_ATTRIBUTES", "team=checkout,region"),
            r#"SONDE_RESOURCE_ATTRIBUTES: "region" is not key=value"#,
        ),
        (
            ("SONDE_RESOURCE_ATTRIBUTES", "=eu"),
            r#"SONDE_RESOURCE_ATTRIBUTES: "=eu" is not key=value"#,
        ),
        (
            ("SONDE_AGENT_CA_CERT", missing.to_str().expect("utf-8")),
            "SONDE_AGENT_CA_CERT: reading /nonexistent/sonde-ca.pem",
        ),
        (
            ("SONDE_AGENT_SERVER", "grpc://127.0.0.1:43315"),
            "expected an http:// or https:// URL",
        ),
    ] {
        let error = start_error(&[env]);
        assert!(
            error.starts_with("invalid agent configuration: ") && error.contains(wanted),
            "{env:?}: {error}"
        );
    }
    // The valid spellings start (against a dead server: starting never waits for one).
    let dead = dead_url();
    for mode in ["auto", "watch", "poll"] {
        start_agent(&[
            ("SONDE_AGENT_SERVER", &dead),
            ("SONDE_AGENT_MODE", mode),
            ("SONDE_AGENT_POLL_INTERVAL_MS", "1500"),
            ("SONDE_RESOURCE_ATTRIBUTES", "a=1,b=2,"),
        ]);
    }
}
