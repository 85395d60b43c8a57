//! Interop: Sonde's agent against a Deep-compatible poll server built from Deep's own published
//! protobuf package (`deep-proto` from PyPI, module `deepproto`).
//!
//! `tests/interop/deep_poll_server.py` serves one tracepoint over
//! `deepproto.proto.poll.v1.PollConfig/poll` with Deep's semantics and answers every other method
//! (Sonde's watch stream and status reports) UNIMPLEMENTED, as Deep's server does. The test gives
//! it the file and line of a `probe!` site in this file, starts an agent against it, waits until
//! the site is armed, drives the site and reads the metric from the Prometheus registry. It does
//! that twice, one agent after the other (one agent runs per process): with `ClientMode::Poll`,
//! and with `ClientMode::Auto`, where the agent first asks for the watch stream, gets
//! UNIMPLEMENTED and must fall back to polling.
//!
//! Without `.venv` (or without `grpc`/`deepproto` in it) the test prints `SKIPPED ...` on stdout
//! and passes, unless `SONDE_REQUIRE_INTEROP=1` is set or it runs under CI, where it fails.
//!
//! Run: `bash .ci/python-env.sh && cargo test --test sonde_agent_polls_a_deep_server -- --nocapture`

mod common;

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use sonde_agent::{Agent, ClientMode, PrometheusProvider, TracepointState, probe};

const SERVER: &str = "tests/interop/deep_poll_server.py";
/// Seconds the Python server lives at most, whatever happens to this test.
const SERVER_LIFETIME_SECS: u64 = 90;
const METRIC: &str = "deep_interop_orders";
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

/// The instrumented code: the Deep server's tracepoint targets this probe.
fn checkout(total: f64, country: &str) {
    probe!(total, country);
}

fn checkout_site() -> &'static sonde_agent::Site {
    sonde_agent::sites()
        .find(|s| s.names() == ["total", "country"] && s.file().ends_with(file!()))
        .expect("the probe in checkout() is registered")
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Kills and reaps the Python server however the test ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The running Python server: its gRPC URL and what it has logged so far.
struct DeepServer {
    url: String,
    log: Arc<Mutex<Vec<String>>>,
    _child: ChildGuard,
}

impl DeepServer {
    fn start(python: &PathBuf, label: &str, id: &str, path: &str, line: u32) -> Self {
        let mut cmd = Command::new(python);
        cmd.arg(manifest_dir().join(SERVER))
            .args(["--path", path, "--line", &line.to_string()])
            .args(["--metric", METRIC, "--expression", "total"])
            .args(["--label", "country=country", "--id", id])
            .args(["--lifetime", &SERVER_LIFETIME_SECS.to_string()])
            .current_dir(manifest_dir())
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        let mut child = cmd.spawn().expect("start the Python poll server");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let mut guard = ChildGuard(child);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        pump(format!("deep {label}"), stdout, Some(tx), log.clone());
        pump(format!("deep {label}"), stderr, None, log.clone());

        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        break addr.trim().to_owned();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = guard.0.wait();
                    panic!("the poll server ended before listening ({status:?})");
                }
            }
            if let Ok(Some(status)) = guard.0.try_wait() {
                panic!("the poll server exited during start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the poll server printed no `listening on` line within 30 s"
            );
        };
        Self {
            url: format!("http://{addr}"),
            log,
            _child: guard,
        }
    }

    fn logged(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|l| pred(l))
    }

    fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }
}

/// Echoes a child's output to stderr with a prefix, keeps it, and forwards it to `tx`.
fn pump(
    name: String,
    reader: impl Read + Send + 'static,
    tx: Option<mpsc::Sender<String>>,
    log: Arc<Mutex<Vec<String>>>,
) {
    thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            eprintln!("[{name}] {line}");
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(line.clone());
            if let Some(tx) = &tx {
                let _ = tx.send(line);
            }
        }
    });
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn exposition(registry: &prometheus::Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode")
}

/// One agent in `mode` against a fresh Deep server, from start to shutdown.
fn agent_fires_the_deep_tracepoint(python: &PathBuf, mode: ClientMode) {
    let label = format!("{mode:?}").to_lowercase();
    let id = format!("deep-interop-{label}");
    let site = checkout_site();
    assert!(!site.is_armed(), "no agent runs yet");
    let server = DeepServer::start(python, &label, &id, site.file(), site.line());
    eprintln!(
        "{label}: Deep poll server at {} serves {}:{}",
        server.url,
        site.file(),
        site.line()
    );

    let registry = prometheus::Registry::new();
    let service = format!("deep-interop-{label}");
    let agent = Agent::builder()
        .service_name(&service)
        .server(&server.url)
        .mode(mode)
        .poll_interval(Duration::from_millis(200))
        .provider(PrometheusProvider::new(registry.clone()))
        .start()
        .expect("agent starts");

    let took = wait_for(
        &format!("{label}: the site to arm"),
        Duration::from_secs(20),
        || site.is_armed(),
    );
    eprintln!("{label}: armed {took:?} after the agent started");
    let status = agent
        .statuses()
        .into_iter()
        .find(|s| s.id == id)
        .expect("the served tracepoint is held");
    assert_eq!(status.state, TracepointState::Bound, "{status:?}");

    checkout(10.0, "NZ");
    checkout(2.5, "NZ");
    checkout(4.0, "FR");
    let text = exposition(&registry);
    assert!(
        text.contains(&format!(r#"{METRIC}_total{{country="NZ"}} 12.5"#)),
        "{label}: {text}"
    );
    assert!(
        text.contains(&format!(r#"{METRIC}_total{{country="FR"}} 4"#)),
        "{label}: {text}"
    );
    assert_eq!(agent.fires(&id), Some(3));

    // What the Deep server saw: our resource on the first poll (UPDATE), then our hash back
    // (NO_CHANGE), and, in Auto mode, the watch call it does not implement.
    let resource = format!("service.name={service}");
    assert!(
        server.logged(|l| l.contains("-> UPDATE (1 tracepoints)")
            && l.contains(&resource)
            && l.contains("telemetry.sdk.name=sonde")),
        "{label}: no UPDATE poll with our resource:\n{}",
        server.log_text()
    );
    wait_for(
        &format!("{label}: a NO_CHANGE poll (the agent sends the hash back)"),
        Duration::from_secs(10),
        || server.logged(|l| l.contains("-> NO_CHANGE")),
    );
    if mode == ClientMode::Auto {
        assert!(
            server.logged(|l| l.contains("unimplemented /sonde.v1.WatchService/Watch")),
            "{label}: the agent never asked for the watch stream:\n{}",
            server.log_text()
        );
    }
    assert!(site.is_armed(), "NO_CHANGE keeps the tracepoint installed");

    agent.shutdown();
    assert!(!site.is_armed(), "{label}: shutdown disarms the site");
    assert!(
        !exposition(&registry).contains(METRIC),
        "{label}: shutdown unregisters the metric"
    );
    drop(server);
}

#[test]
fn sonde_agent_polls_a_deep_server() {
    let python = match common::venv_python("grpc, deepproto.proto.poll.v1.poll_pb2_grpc") {
        Ok(python) => python,
        Err(why) => {
            if common::interop_required() {
                panic!("SONDE_REQUIRE_INTEROP=1 (or CI) but the interop venv is unusable: {why}");
            }
            common::skip::skip(
                "sonde_agent_polls_a_deep_server",
                &format!(
                    "{why} (run `bash .ci/python-env.sh`; SONDE_REQUIRE_INTEROP=1 fails instead)"
                ),
            );
            return;
        }
    };
    // One agent per process: the two modes run one after the other.
    agent_fires_the_deep_tracepoint(&python, ClientMode::Poll);
    agent_fires_the_deep_tracepoint(&python, ClientMode::Auto);
}
