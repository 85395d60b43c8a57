//! Interop: Deep's own Python agent (`deep-agent` from PyPI) against a real `sonde server`.
//!
//! The agent is a test tool only: `.ci/python-env.sh` installs it into the git-ignored `.venv`
//! from `tests/interop/requirements.txt`, and `tests/interop/deep_agent_probe.py` runs it. This
//! test starts the server binary on ephemeral ports, creates a tracepoint on the probe's marker
//! line through the HTTP API (Deep's JSON shape), lets the agent poll `PollConfig/poll` and send
//! its snapshot through `SnapshotService/send`, and then reads the agent and the snapshot back
//! through the HTTP API. A second test does the same with `--agent-basic`, where the agent sends
//! Deep's `authorization: Basic%20<base64>` metadata.
//!
//! Without `.venv` (or without the `deep` package in it) the test prints `SKIPPED ...` on stdout
//! and passes, unless `SONDE_REQUIRE_INTEROP=1` is set or it runs under CI, where it fails.
//!
//! Run: `bash .ci/python-env.sh && cargo test --test deep_python_agent_interop -- --nocapture`

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The probe script, relative to the root package.
const PROBE: &str = "tests/interop/deep_agent_probe.py";
/// Trailing comment on the probe line that the tracepoint targets.
const MARKER: &str = "# SONDE-INTEROP-TRACEPOINT-TARGET";
/// Deep's Python agent matches a tracepoint's `path` against the bare file name only.
const PROBE_FILE_NAME: &str = "deep_agent_probe.py";
/// Time the probe itself gives the agent to poll and send (seconds).
const PROBE_TIMEOUT_SECS: u64 = 60;
/// Environment variables that would route the agent's gRPC or our HTTP calls through a proxy.
const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "grpc_proxy",
    "GRPC_PROXY",
];

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// 1-based number of the probe line that ends with the marker comment.
fn probe_target_line(probe: &Path) -> TestResult<u32> {
    let text = std::fs::read_to_string(probe)?;
    let mut hits = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_end().ends_with(MARKER))
        .map(|(i, _)| i + 1);
    let line = hits.next().ok_or("no marker line in the probe")?;
    if hits.next().is_some() {
        return Err("more than one marker line in the probe".into());
    }
    Ok(u32::try_from(line)?)
}

/// Copies a child's output, line by line, to stderr with a prefix, and forwards it to a channel.
fn pump(name: String, reader: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            eprintln!("[{name}] {line}");
            if tx.send(line).is_err() {
                // Nobody listens any more; keep draining so the child never blocks on a full pipe.
                continue;
            }
        }
    });
}

/// Kills and reaps the child when dropped, whatever way the test ends.
struct ChildGuard {
    name: String,
    child: Child,
}

impl ChildGuard {
    fn wait_timeout(&mut self, limit: Duration) -> TestResult<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait()
            && let Err(e) = self.child.kill()
        {
            eprintln!("could not kill {}: {e}", self.name);
        }
        let _ = self.child.wait();
    }
}

struct Server {
    _guard: ChildGuard,
    grpc: String,
    http: String,
    _data_dir: tempfile::TempDir,
}

/// The address after `<what> listening on ` in a line of the server's output.
fn listen_addr(line: &str, what: &str) -> Option<String> {
    let pattern = format!("{what} listening on ");
    let at = line.find(&pattern)?;
    let rest = &line[at + pattern.len()..];
    let addr = rest.split_whitespace().next()?;
    Some(addr.trim_end_matches([',', '.', ';']).to_string())
}

/// Starts `sonde server` on ephemeral loopback ports, with `extra` arguments appended.
fn start_server(label: &str, extra: &[&str]) -> TestResult<Server> {
    let data_dir = tempfile::tempdir()?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sonde"));
    cmd.args([
        "server",
        "--listen",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--http-port",
        "0",
    ])
    .arg("--data-dir")
    .arg(data_dir.path())
    .args(extra)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .env("NO_COLOR", "1");
    // Tokens or ports from a developer's environment would change what the test exercises.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SONDE_") {
            cmd.env_remove(&key);
        }
    }
    let mut child = cmd.spawn()?;
    let (tx, rx) = mpsc::channel();
    pump(
        format!("sonde {label}"),
        child.stdout.take().ok_or("no server stdout")?,
        tx.clone(),
    );
    pump(
        format!("sonde {label}"),
        child.stderr.take().ok_or("no server stderr")?,
        tx,
    );
    let mut guard = ChildGuard {
        name: format!("sonde server {label}"),
        child,
    };

    let (mut grpc, mut http) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while grpc.is_none() || http.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                grpc = grpc.or_else(|| listen_addr(&line, "grpc"));
                http = http.or_else(|| listen_addr(&line, "http"));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = guard.child.wait()?;
                return Err(format!(
                    "the server closed its output before printing both listen addresses ({status})"
                )
                .into());
            }
        }
        if let Some(status) = guard.child.try_wait()? {
            return Err(format!("the server exited during start-up: {status}").into());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the server printed no `grpc listening on` / `http listening on` line within 30 s \
                 (grpc: {grpc:?}, http: {http:?})"
            )
            .into());
        }
    }
    let (Some(grpc), Some(http)) = (grpc, http) else {
        unreachable!("loop exits only with both addresses")
    };
    eprintln!("server up: grpc {grpc}, http {http}");
    Ok(Server {
        _guard: guard,
        grpc,
        http,
        _data_dir: data_dir,
    })
}

fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// Sends a request and returns the status and the body parsed as JSON (`Null` for an empty body).
fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> TestResult<(u16, Value)> {
    let response = match (method, body) {
        ("GET", None) => agent.get(url).call(),
        ("POST", Some(body)) => agent
            .post(url)
            .header("content-type", "application/json")
            .send(body.to_string()),
        _ => return Err(format!("unsupported request {method} {url}").into()),
    };
    let mut response = response.map_err(|e| format!("{method} {url}: {e}"))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string()?;
    let value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .map_err(|e| format!("{method} {url} -> {status}: body is not JSON ({e}): {text}"))?
    };
    Ok((status, value))
}

fn create_tracepoint(
    agent: &ureq::Agent,
    http: &str,
    line: u32,
    service: &str,
) -> TestResult<String> {
    // Shaped as Deep's Grafana data source sends it: original field names, targeting by service.
    let body = json!({"tracepoint": {
        "path": PROBE_FILE_NAME,
        "line_number": line,
        "args": {"fire_count": "1"},
        "targeting": [{"key": "service.name", "value": {"stringValue": service}}],
    }});
    let url = format!("http://{http}/api/tracepoints");
    let (status, resp) = call(agent, "POST", &url, Some(&body))?;
    if status != 200 {
        return Err(format!("POST {url} {body} -> {status}: {resp}").into());
    }
    let id = resp
        .pointer("/tracepoint/ID")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("POST {url} -> {status}: no tracepoint.ID in {resp}"))?;
    Ok(id.to_string())
}

/// The string value of a resource attribute, whether the resource is a JSON object of plain
/// values or a list of proto3-JSON `KeyValue`s.
fn attribute<'a>(resource: &'a Value, key: &str) -> Option<&'a str> {
    match resource {
        Value::Object(map) => match map.get(key)? {
            Value::String(s) => Some(s),
            other => other.get("stringValue").and_then(Value::as_str),
        },
        Value::Array(items) => items
            .iter()
            .find(|kv| kv.get("key").and_then(Value::as_str) == Some(key))?
            .pointer("/value/stringValue")
            .and_then(Value::as_str),
        _ => None,
    }
}

fn number(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

/// A snapshot for `id` whose frames include the probe file at `line`.
fn matching_snapshot<'a>(snapshots: &'a [Value], id: &str, line: u32) -> Option<&'a Value> {
    snapshots.iter().find(|s| {
        let for_tracepoint = s.pointer("/tracepoint/ID").and_then(Value::as_str) == Some(id);
        let frames = s.get("frames").and_then(Value::as_array);
        let at_line = frames.is_some_and(|frames| {
            frames.iter().any(|f| {
                let file = field(f, "fileName", "file_name").and_then(Value::as_str);
                let file_ok = file.is_some_and(|f| f.ends_with(PROBE_FILE_NAME));
                let line_ok =
                    number(field(f, "lineNumber", "line_number")) == Some(u64::from(line));
                file_ok && line_ok
            })
        });
        for_tracepoint && at_line
    })
}

fn get_snapshots(agent: &ureq::Agent, http: &str, id: &str) -> TestResult<(u16, Vec<Value>)> {
    let url = format!("http://{http}/api/tracepoints/{id}/snapshots");
    let (status, body) = call(agent, "GET", &url, None)?;
    let list = body
        .get("snapshots")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if status == 200 && body.get("snapshots").is_none() {
        return Err(format!("GET {url} -> 200 without a `snapshots` list: {body}").into());
    }
    Ok((status, list))
}

/// How the probe runs: which agent identity and credentials, and for how long.
struct ProbeRun<'a> {
    /// Prefix of the probe's output lines.
    label: &'a str,
    grpc: &'a str,
    service: &'a str,
    tracepoint_id: &'a str,
    timeout_secs: u64,
    basic_auth: Option<(&'a str, &'a str)>,
    /// Seconds the agent keeps polling after its snapshot.
    linger_secs: f64,
    /// Stop once this many polls were refused (exit 5), or at a successful poll (exit 6).
    expect_refused: u32,
}

/// Runs the probe to its end; returns its exit status and its output lines.
fn run_probe(python: &Path, run: &ProbeRun<'_>) -> TestResult<(ExitStatus, Vec<String>)> {
    let mut cmd = Command::new(python);
    cmd.arg(manifest_dir().join(PROBE))
        .args(["--server", run.grpc, "--service-name", run.service])
        .args(["--tracepoint-id", run.tracepoint_id])
        .args(["--timeout", &run.timeout_secs.to_string()])
        .args(["--poll-interval", "1"])
        .args(["--linger", &run.linger_secs.to_string()])
        .args(["--expect-refused", &run.expect_refused.to_string()])
        .current_dir(manifest_dir())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((user, password)) = run.basic_auth {
        cmd.args(["--username", user, "--password", password]);
    }
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    // Configuration must come from the probe's arguments, not from a developer's environment.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DEEP_") {
            cmd.env_remove(&key);
        }
    }
    let mut child = cmd.spawn()?;
    let (tx, rx) = mpsc::channel();
    pump(
        format!("probe {}", run.label),
        child.stdout.take().ok_or("no probe stdout")?,
        tx.clone(),
    );
    pump(
        format!("probe {}", run.label),
        child.stderr.take().ok_or("no probe stderr")?,
        tx,
    );
    let mut guard = ChildGuard {
        name: format!("probe {}", run.label),
        child,
    };
    let status = guard
        .wait_timeout(Duration::from_secs(run.timeout_secs + 30))?
        .ok_or("the probe did not exit in time")?;
    // The pump threads end when the pipes close (the channel then disconnects); collect all they
    // forwarded, however slowly a loaded machine runs them.
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        lines.push(line);
    }
    Ok((status, lines))
}

/// The venv interpreter, or `None` when the test is to be skipped (see the module docs).
fn python_or_skip(test: &str) -> TestResult<Option<PathBuf>> {
    match common::venv_python("deep, grpc, deepproto") {
        Ok(python) => Ok(Some(python)),
        Err(reason) if common::interop_required() => Err(format!(
            "SONDE_REQUIRE_INTEROP=1 (or CI) but {reason}; run `bash .ci/python-env.sh`"
        )
        .into()),
        Err(reason) => {
            common::skip::skip(
                test,
                &format!(
                    "{reason}; run `bash .ci/python-env.sh` to install Deep's Python agent \
                     (SONDE_REQUIRE_INTEROP=1 makes this a failure)"
                ),
            );
            Ok(None)
        }
    }
}

/// Checks what the server recorded after the probe succeeded: the agent, under its service name,
/// and the snapshot, under the tracepoint, with a frame at the probe's marker line.
fn check_agent_and_snapshot(
    agent: &ureq::Agent,
    http: &str,
    service: &str,
    id: &str,
    line: u32,
) -> TestResult<usize> {
    // The agent registered itself through its polls.
    let url = format!("http://{http}/api/agents");
    let (code, agents) = call(agent, "GET", &url, None)?;
    assert_eq!(code, 200, "GET {url}: {agents}");
    let list = agents
        .get("agents")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("GET {url}: no `agents` list in {agents}"))?;
    let ours = list
        .iter()
        .find(|a| a.get("resource").and_then(|r| attribute(r, "service.name")) == Some(service))
        .ok_or_else(|| format!("GET {url}: no agent with service.name {service}: {agents}"))?;
    let resource = ours.get("resource").cloned().unwrap_or(Value::Null);
    assert_eq!(
        attribute(&resource, "telemetry.sdk.language"),
        Some("python"),
        "agent resource as Deep's Python agent reports it: {ours}"
    );

    // The snapshot the agent sent is stored under the tracepoint; storing may trail the RPC.
    let deadline = Instant::now() + Duration::from_secs(10);
    let snapshots = loop {
        let (code, snapshots) = get_snapshots(agent, http, id)?;
        assert_eq!(code, 200, "GET /api/tracepoints/{id}/snapshots -> {code}");
        if matching_snapshot(&snapshots, id, line).is_some() || Instant::now() >= deadline {
            break snapshots;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let snapshot = matching_snapshot(&snapshots, id, line).ok_or_else(|| {
        format!(
            "no snapshot for tracepoint {id} with a frame at {PROBE_FILE_NAME}:{line}; got {}",
            Value::Array(snapshots.clone())
        )
    })?;
    let snap_service = snapshot
        .get("resource")
        .and_then(|r| attribute(r, "service.name"));
    assert_eq!(snap_service, Some(service), "snapshot resource: {snapshot}");
    Ok(snapshots.len())
}

#[test]
fn deep_python_agent_polls_sonde_and_sends_a_snapshot() -> TestResult {
    let Some(python) = python_or_skip("deep_python_agent_polls_sonde_and_sends_a_snapshot")? else {
        return Ok(());
    };
    let started = Instant::now();
    let line = probe_target_line(&manifest_dir().join(PROBE))?;
    let service = format!("sonde-interop-{}", std::process::id());

    let server = start_server("open", &[])?;
    let agent = http_agent();

    let id = create_tracepoint(&agent, &server.http, line, &service)?;
    // A tracepoint on the same line targeted at another service: Sonde must not hand it to the
    // probe (Deep's Python agent does no targeting of its own and would fire it too).
    let decoy = create_tracepoint(&agent, &server.http, line, "some-other-service")?;
    eprintln!("created tracepoint {id} at {PROBE_FILE_NAME}:{line} for {service} (decoy {decoy})");

    let run = ProbeRun {
        grpc: &server.grpc,
        service: &service,
        tracepoint_id: &id,
        timeout_secs: PROBE_TIMEOUT_SECS,
        basic_auth: None,
        linger_secs: 2.5,
        label: "open",
        expect_refused: 0,
    };
    let (status, probe_output) = run_probe(&python, &run)?;
    assert!(
        status.success(),
        "the probe failed ({status}); its output is above, prefixed [probe]"
    );
    assert!(
        !probe_output.iter().any(|l| l.contains(&decoy)),
        "the server sent the probe tracepoint {decoy}, which targets another service"
    );
    // Polls after the first carry the hash the agent got; with nothing changed the answer is
    // NO_CHANGE (the probe logs every distinct answer).
    assert!(
        probe_output.iter().any(|l| l.contains("type=NO_CHANGE")),
        "no NO_CHANGE answer to the agent's later polls; probe output is above"
    );

    let count = check_agent_and_snapshot(&agent, &server.http, &service, &id, line)?;

    let (code, decoy_snapshots) = get_snapshots(&agent, &server.http, &decoy)?;
    assert!(
        code == 200 && decoy_snapshots.is_empty(),
        "decoy tracepoint {decoy} has snapshots ({code}): {decoy_snapshots:?}"
    );

    eprintln!(
        "deep_python_agent_interop: passed in {:.1} s (tracepoint {id}, {count} snapshot(s))",
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// With `--agent-basic`, the agent's `authorization: Basic%20<base64>` metadata (Deep's own
/// spelling) is accepted, and a wrong password is refused.
#[test]
fn deep_python_agent_authenticates_with_basic_auth() -> TestResult {
    let Some(python) = python_or_skip("deep_python_agent_authenticates_with_basic_auth")? else {
        return Ok(());
    };
    let started = Instant::now();
    let line = probe_target_line(&manifest_dir().join(PROBE))?;
    let service = format!("sonde-interop-auth-{}", std::process::id());
    let (user, password) = ("deep-probe", "s3cret-pw");

    let server = start_server("basic", &["--agent-basic", &format!("{user}:{password}")])?;
    let agent = http_agent();
    let id = create_tracepoint(&agent, &server.http, line, &service)?;

    // A wrong password: every poll is refused, so the probe never gets the tracepoint. The probe
    // stops on the condition itself (three refused polls, or any poll that succeeds), with the
    // same generous limit as the other runs rather than a short window a loaded machine can miss.
    let refused = ProbeRun {
        grpc: &server.grpc,
        service: &service,
        tracepoint_id: &id,
        timeout_secs: PROBE_TIMEOUT_SECS,
        basic_auth: Some((user, "wrong-password")),
        linger_secs: 0.0,
        label: "basic",
        expect_refused: 3,
    };
    let (status, output) = run_probe(&python, &refused)?;
    assert_eq!(
        status.code(),
        Some(5),
        "with a wrong password the probe should see its polls refused and none succeed (exit 5)"
    );
    assert!(
        output.iter().any(|l| l.contains("UNAUTHENTICATED")),
        "polls with a wrong password should fail with UNAUTHENTICATED; probe output is above"
    );
    let (code, snapshots) = get_snapshots(&agent, &server.http, &id)?;
    assert!(
        code == 200 && snapshots.is_empty(),
        "no snapshot arrives with a wrong password ({code}): {snapshots:?}"
    );

    let accepted = ProbeRun {
        basic_auth: Some((user, password)),
        expect_refused: 0,
        ..refused
    };
    let (status, _) = run_probe(&python, &accepted)?;
    assert!(
        status.success(),
        "the probe failed with the right password ({status}); its output is above"
    );
    let count = check_agent_and_snapshot(&agent, &server.http, &service, &id, line)?;
    eprintln!(
        "deep_python_agent_interop (basic auth): passed in {:.1} s ({count} snapshot(s))",
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}
