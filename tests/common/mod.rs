//! Shared by the behaviour tests: a real server on ephemeral loopback ports with its own data
//! directory, and small HTTP and gRPC helpers.
#![allow(dead_code)] // each test binary uses a different subset of these helpers

pub mod postgres;
pub mod skip;

use std::{path::Path, time::Duration};

use serde_json::Value;
use sonde::server::{RunningServer, Server, ServerConfig};
use sonde_proto::{
    common::{AnyValue, KeyValue, any_value},
    poll::{PollRequest, PollResponse, poll_config_client::PollConfigClient},
    resource::Resource,
};
use tonic::transport::Channel;

thread_local! {
    /// The PostgreSQL database the servers started on this thread use (`None`: SQLite in their
    /// data dir), set by [`on_postgres`].
    static DATABASE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// The database URL servers started on this thread get, if any.
pub fn database_url() -> Option<String> {
    DATABASE.with(|d| d.borrow().clone())
}

/// Runs `body` with every server it starts ([`TestServer`], [`ServerProcess`]) on a fresh
/// PostgreSQL database instead of SQLite; skips `test` where PostgreSQL cannot run.
pub fn on_postgres(test: &str, body: impl FnOnce()) {
    let Some(url) = postgres::database(test) else {
        return;
    };
    DATABASE.with(|d| *d.borrow_mut() = Some(url));
    body();
    DATABASE.with(|d| *d.borrow_mut() = None);
}

/// For each named test function (a plain `fn name()`, no `#[test]`), a module `name` of two
/// tests, `sqlite` and `postgres`, running it against each store: one suite, two stores.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name();
            }

            #[test]
            fn postgres() {
                super::common::on_postgres(
                    concat!(module_path!(), "::postgres"),
                    super::$name,
                );
            }
        }
    )*};
}

/// A server running in this process on its own runtime.
pub struct TestServer {
    pub http: String,
    pub grpc: String,
    pub rt: tokio::runtime::Runtime,
    running: Option<RunningServer>,
    pub dir: tempfile::TempDir,
    agent: ureq::Agent,
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    pub fn start_with(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = ServerConfig::ephemeral(dir.path());
        config.database_url = database_url();
        configure(&mut config);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let running = rt.block_on(async { Server::bind(config).await.expect("bind").spawn() });
        Self {
            http: format!("http://{}", running.http_addr()),
            grpc: format!("http://{}", running.grpc_addr()),
            rt,
            running: Some(running),
            dir,
            agent: http_agent(),
        }
    }

    /// A request with optional extra headers; returns status and JSON body (Null when not JSON).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let (status, text) =
            self.request_raw(method, path, body.map(|b| b.as_bytes().to_vec()), headers);
        (status, serde_json::from_slice(&text).unwrap_or(Value::Null))
    }

    pub fn request_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> (u16, Vec<u8>) {
        send(
            &self.agent,
            method,
            &format!("{}{path}", self.http),
            body,
            headers,
        )
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, None, &[])
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.request("POST", path, Some(body), &[])
    }

    /// POSTs a tracepoint body and returns its new ID, asserting success.
    pub fn create(&self, body: &str) -> String {
        let (status, json) = self.post("/api/tracepoints", body);
        assert_eq!(status, 200, "create failed: {json}");
        json["tracepoint"]["ID"].as_str().expect("an ID").to_owned()
    }

    /// IDs of the tenant's tracepoints (via the HTTP poll with no resource).
    pub fn ids(&self, headers: &[(&str, &str)]) -> Vec<String> {
        let (status, json) = self.request("GET", "/api/tracepoints", None, headers);
        assert_eq!(status, 200, "{json}");
        json["response"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|tp| tp["ID"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.grpc.clone())
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = self.rt.block_on(running.shutdown());
        }
    }
}

pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

pub fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> (u16, Vec<u8>) {
    let mut builder = http::Request::builder().method(method).uri(url);
    let mut has_type = false;
    for (k, v) in headers {
        has_type |= k.eq_ignore_ascii_case("content-type");
        builder = builder.header(*k, *v);
    }
    let result = match body {
        Some(body) => {
            if !has_type {
                builder = builder.header("content-type", "application/json");
            }
            agent.run(builder.body(body).expect("request"))
        }
        None => agent.run(builder.body(()).expect("request")),
    };
    let mut resp = result.expect("the server answers");
    let status = resp.status().as_u16();
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .expect("body");
    (status, bytes)
}

pub fn string(s: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(s.into())),
    })
}

pub fn resource(pairs: &[(&str, &str)]) -> Option<Resource> {
    Some(Resource {
        attributes: pairs
            .iter()
            .map(|(k, v)| KeyValue {
                key: (*k).into(),
                value: string(v),
            })
            .collect(),
        dropped_attributes_count: 0,
    })
}

/// One gRPC poll, with optional tenant.
pub async fn poll(
    channel: &Channel,
    hash: &str,
    attrs: &[(&str, &str)],
    tenant: Option<&str>,
) -> PollResponse {
    let mut client = PollConfigClient::new(channel.clone());
    let mut req = tonic::Request::new(PollRequest {
        ts_nanos: 1,
        current_hash: hash.into(),
        resource: resource(attrs),
    });
    if let Some(t) = tenant {
        req.metadata_mut()
            .insert("x-scope-orgid", t.parse().expect("ascii"));
    }
    client.poll(req).await.expect("poll").into_inner()
}

/// The real `sonde` binary running `sonde server` as a child process.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub http: String,
    pub grpc: String,
}

impl ServerProcess {
    /// Starts `sonde server` on ephemeral loopback ports with `data_dir`, and waits for the
    /// lines that say where it listens.
    pub fn spawn(data_dir: &Path, extra: &[&str]) -> Self {
        Self::spawn_logging(data_dir, extra, None)
    }

    /// As [`ServerProcess::spawn`]; with `log`, the server's stderr (its log, at `info`) goes to
    /// that file.
    pub fn spawn_logging(data_dir: &Path, extra: &[&str], log: Option<&Path>) -> Self {
        Self::spawn_inner(data_dir, 0, extra, log)
    }

    /// As [`ServerProcess::spawn`], with the gRPC API on `grpc_port` (to restart a server where
    /// its agents know it).
    pub fn spawn_at(data_dir: &Path, grpc_port: u16, extra: &[&str]) -> Self {
        Self::spawn_inner(data_dir, grpc_port, extra, None)
    }

    fn spawn_inner(data_dir: &Path, grpc_port: u16, extra: &[&str], log: Option<&Path>) -> Self {
        use std::io::BufRead as _;
        let stderr = match log {
            Some(path) => std::process::Stdio::from(std::fs::File::create(path).expect("log file")),
            None => std::process::Stdio::inherit(),
        };
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sonde"))
            .args([
                "server",
                "--listen",
                "127.0.0.1",
                "--grpc-port",
                &grpc_port.to_string(),
                "--http-port",
                "0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(database_url().map(|url| format!("--database-url={url}")))
            .args(extra)
            .env("SONDE_LOG", if log.is_some() { "info" } else { "warn" })
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn sonde server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut addr = |prefix: &str| -> String {
            let line = lines.next().expect("a line").expect("readable");
            let rest = line
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"));
            format!("http://{rest}")
        };
        let grpc = addr("grpc listening on ");
        let http = addr("http listening on ");
        Self { child, http, grpc }
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.request_with(method, path, body, &[])
    }

    /// A request with extra headers.
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let (status, bytes) = send(
            &http_agent(),
            method,
            &format!("{}{path}", self.http),
            body.map(|b| b.as_bytes().to_vec()),
            headers,
        );
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Sends a signal (`HUP`, `TERM`, ...) with `kill`.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name}");
    }

    /// SIGKILL, as `kill -9`: no chance to flush anything.
    pub fn kill_9(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then waits up to `limit` for the exit status.
    pub fn terminate(mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the Python interop tests must run rather than skip: `SONDE_REQUIRE_INTEROP=1` (which
/// `.ci/run` always sets), or any run where skips are refused (under CI).
pub fn interop_required() -> bool {
    std::env::var("SONDE_REQUIRE_INTEROP").is_ok_and(|v| v == "1") || skip::skips_refused()
}

/// The interop venv's interpreter (made by `.ci/python-env.sh`), if it can `import` the given
/// modules; otherwise why not.
pub fn venv_python(imports: &str) -> Result<std::path::PathBuf, String> {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if !python.exists() {
        return Err(format!("{} does not exist", python.display()));
    }
    let out = std::process::Command::new(&python)
        .args(["-c", &format!("import {imports}")])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`import {imports}` fails in {}: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(python)
}
