//! `console_load`: what the web console costs a server holding 1,000 tracepoints and 500 agents.
//!
//! It starts the release server as a child process (`--server-bin`, default
//! `target/release/sonde`) with a temporary data directory, creates `--tracepoints` tracepoints
//! over the HTTP API (half targeted at one of ten services, half untargeted, each with a metric),
//! and simulates `--agents` Sonde agents over real gRPC: each polls once (`PollConfig/poll`, which
//! makes it known with its resource and gives it its list's hash), sends a probe-site catalog, and
//! then sends a status report (`StatusService/Report`) every `--report-every` seconds on every
//! tracepoint it holds (about 550 each), bound, with rising counters. Then:
//!
//! 1. **Page and data latency**: the console's assets (`/`, `app.js`, `style.css`) and the data
//!    requests of each view (the tracepoint list: `/api/tracepoints`, `/api/status`,
//!    `/api/agents?view=summary`; the agents view; one tracepoint's detail: the tracepoint and
//!    `/status`; the editor: agents and `/api/sites`), each requested `--samples` times one at a
//!    time: p50, p99 and max in milliseconds (the target is under 50 ms).
//! 2. **CPU per open page**: the server's CPU over `--duration` seconds with the agents reporting
//!    and no page open (the baseline), then with `--pages` simulated pages polling as the console
//!    does: the detail view (its `/status` every 2 s), then the list view (its three requests every
//!    5 s). The difference divided by the pages is one open page's share of one core (the target
//!    is under 1%).
//!
//! ```text
//! cargo build --release --bin sonde --example console_load
//! target/release/examples/console_load
//! target/release/examples/console_load --agents 100 --tracepoints 200 --duration 10
//! ```
//!
//! Everything stays on 127.0.0.1; the run takes about a minute with the defaults.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc as std_mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use clap::Parser;
use serde_json::{Value, json};
use sonde_proto::{
    common::{AnyValue, KeyValue, any_value},
    poll::{PollRequest, poll_config_client::PollConfigClient},
    resource::Resource,
    sonde::{
        ProbeSite, SiteCatalog, SiteKind, StatusReport, TracepointState, TracepointStatus,
        TracepointSummary, status_service_client::StatusServiceClient,
    },
};
use tonic::transport::Channel;

/// Services the simulated agents are spread over.
const SERVICES: usize = 10;

/// Load generator for the console's requests (see the module doc).
#[derive(Debug, Parser)]
struct Args {
    /// Tracepoints to create.
    #[arg(long, default_value_t = 1000)]
    tracepoints: usize,
    /// Simulated agents.
    #[arg(long, default_value_t = 500)]
    agents: usize,
    /// Seconds between one agent's status reports.
    #[arg(long, default_value_t = 2.0)]
    report_every: f64,
    /// Requests per measured route.
    #[arg(long, default_value_t = 50)]
    samples: usize,
    /// Simulated open pages in the CPU phases.
    #[arg(long, default_value_t = 10)]
    pages: usize,
    /// Seconds each CPU phase is measured for.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// The server binary.
    #[arg(long, default_value = "target/release/sonde")]
    server_bin: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.agents > 0 && args.tracepoints > 0 && args.samples > 0 && args.pages > 0);
    ensure!(args.report_every >= 0.1, "--report-every: at least 0.1 s");
    let server = ServerProcess::start(&args.server_bin)?;
    println!("server: grpc {}, http {}", server.grpc, server.http);
    let api = Api::new(server.http);

    let started = Instant::now();
    let mut ids = Vec::with_capacity(args.tracepoints);
    for i in 0..args.tracepoints {
        ids.push(api.create(&tracepoint(i))?);
    }
    println!(
        "created {} tracepoints in {:.1} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let grpc = format!("http://{}", server.grpc);
    runtime.block_on(start_agents(&args, &grpc, stop.clone()))?;
    // Let every agent's first report in.
    std::thread::sleep(Duration::from_secs_f64(args.report_every + 1.0));
    let (_, agents) = api.get("/api/agents?view=summary")?;
    let live = agents["agents"].as_array().map_or(0, Vec::len);
    let (_, status) = api.get(&format!("/api/tracepoints/{}/status", ids[0]))?;
    println!(
        "{live} agents live; tracepoint 0: {} of {} bound, {} hits",
        status["summary"]["bound"], status["summary"]["agents"], status["live"]["hits"]
    );

    println!(
        "\npage and data requests, one at a time ({} each):",
        args.samples
    );
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>9}",
        "request", "p50 ms", "p99 ms", "max ms", "bytes"
    );
    let detail = format!("/api/tracepoints/{}", ids[ids.len() / 2]);
    let routes: Vec<(&str, String)> = vec![
        ("page /", "/".into()),
        ("page /console/app.js", "/console/app.js".into()),
        ("page /console/style.css", "/console/style.css".into()),
        ("list: /api/tracepoints", "/api/tracepoints".into()),
        ("list: /api/status", "/api/status".into()),
        (
            "list, agents: /api/agents?view=summary",
            "/api/agents?view=summary".into(),
        ),
        ("detail: /api/tracepoints/{id}", detail.clone()),
        (
            "detail (live): /api/tracepoints/{id}/status",
            format!("{detail}/status"),
        ),
        (
            "editor: /api/sites?service.name=svc-0",
            "/api/sites?service.name=svc-0".into(),
        ),
    ];
    for (name, path) in &routes {
        let mut ms = Vec::with_capacity(args.samples);
        let mut bytes = 0;
        for _ in 0..args.samples {
            let t = Instant::now();
            let (status, body) = api.get_raw(path)?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            ensure!(status == 200, "{path}: {status}");
            bytes = body.len();
        }
        ms.sort_by(f64::total_cmp);
        let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
        println!(
            "{name:<44} {:>8.2} {:>8.2} {:>8.2} {:>9}",
            q(0.5),
            q(0.99),
            ms[ms.len() - 1],
            bytes
        );
    }

    let window = Duration::from_secs_f64(args.duration);
    println!(
        "\nserver CPU over {:.0} s with {} agents reporting every {} s:",
        args.duration, args.agents, args.report_every
    );
    let base = cpu_over(server.pid, window);
    println!("  no page open:            {:.2}% of a core", base * 100.0);
    let pages_stop = Arc::new(AtomicBool::new(false));
    let detail_pages = poll_pages(
        &api,
        args.pages,
        Duration::from_secs(2),
        pages_stop.clone(),
        {
            let path = format!("{detail}/status");
            move |api: &Api| api.get_raw(&path).map(drop)
        },
    );
    let with = cpu_over(server.pid, window);
    pages_stop.store(true, Ordering::Relaxed);
    for t in detail_pages {
        let _ = t.join();
    }
    println!(
        "  {} detail pages (live):  {:.2}% -> {:.3}% of a core per open page",
        args.pages,
        with * 100.0,
        (with - base) * 100.0 / args.pages as f64
    );
    let pages_stop = Arc::new(AtomicBool::new(false));
    let list_pages = poll_pages(
        &api,
        args.pages,
        Duration::from_secs(5),
        pages_stop.clone(),
        |api: &Api| {
            api.get_raw("/api/tracepoints")?;
            api.get_raw("/api/status")?;
            api.get_raw("/api/agents?view=summary").map(drop)
        },
    );
    let with = cpu_over(server.pid, window);
    pages_stop.store(true, Ordering::Relaxed);
    for t in list_pages {
        let _ = t.join();
    }
    println!(
        "  {} list pages:           {:.2}% -> {:.3}% of a core per open page",
        args.pages,
        with * 100.0,
        (with - base) * 100.0 / args.pages as f64
    );
    stop.store(true, Ordering::Relaxed);
    drop(runtime);
    drop(server);
    Ok(())
}

/// Starts `pages` threads, each running `poll` every `every` (the first at a random-ish offset)
/// until `stop`.
fn poll_pages(
    api: &Api,
    pages: usize,
    every: Duration,
    stop: Arc<AtomicBool>,
    poll: impl Fn(&Api) -> anyhow::Result<()> + Send + Clone + 'static,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..pages)
        .map(|i| {
            let api = api.clone();
            let stop = stop.clone();
            let poll = poll.clone();
            std::thread::spawn(move || {
                std::thread::sleep(every.mul_f64(i as f64 / pages as f64));
                while !stop.load(Ordering::Relaxed) {
                    let next = Instant::now() + every;
                    if let Err(err) = poll(&api) {
                        eprintln!("page poll failed: {err:#}");
                    }
                    while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
        })
        .collect()
}

/// The server's CPU over `window`, in cores.
fn cpu_over(pid: u32, window: Duration) -> f64 {
    let start = cpu_seconds(pid).unwrap_or_default();
    let t = Instant::now();
    std::thread::sleep(window);
    (cpu_seconds(pid).unwrap_or_default() - start) / t.elapsed().as_secs_f64()
}

fn string(s: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(s.to_owned())),
    })
}

fn resource(service: &str, instance: &str) -> Resource {
    Resource {
        attributes: [
            ("service.name", service),
            ("service.instance.id", instance),
            ("telemetry.sdk.language", "rust"),
        ]
        .iter()
        .map(|(k, v)| KeyValue {
            key: (*k).to_owned(),
            value: string(v),
        })
        .collect(),
        dropped_attributes_count: 0,
    }
}

/// The `i`th tracepoint: even ones target `svc-(i/2 % 10)`, odd ones every agent.
fn tracepoint(i: usize) -> Value {
    let mut tp = json!({
        "path": format!("src/module_{}.rs", i % 50),
        "lineNumber": 10 + i,
        "metrics": [{"name": format!("console_load_{i}"), "type": "COUNTER",
                     "labelExpressions": [{"key": "kind", "expression": "order.kind"}]}],
    });
    if i.is_multiple_of(2) {
        tp["targeting"] = json!([{"key": "service.name", "value": {"stringValue": format!("svc-{}", (i / 2) % SERVICES)}}]);
    }
    tp
}

/// Connects the simulated agents: a poll each (which registers them and gives their hash), a
/// catalog, then reports every `report_every` until `stop`.
async fn start_agents(args: &Args, grpc: &str, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let channel = Channel::from_shared(grpc.to_owned())?.connect().await?;
    let catalog_sites: Vec<ProbeSite> = (0..50)
        .map(|i| ProbeSite {
            file: format!("src/module_{i}.rs"),
            line: 10 + i,
            kind: SiteKind::Probe as i32,
            names: vec!["order".into(), "user".into()],
            module: format!("shop::module_{i}"),
            fields: Vec::new(),
        })
        .collect();
    let every = Duration::from_secs_f64(args.report_every);
    for a in 0..args.agents {
        let service = format!("svc-{}", a % SERVICES);
        let id = format!("agent-{a:04}");
        let res = resource(&service, &id);
        let polled = PollConfigClient::new(channel.clone())
            .poll(PollRequest {
                ts_nanos: 1,
                current_hash: String::new(),
                resource: Some(res.clone()),
            })
            .await?
            .into_inner();
        let hash = polled.current_hash.clone();
        let ids: Vec<String> = polled.response.iter().map(|t| t.id.clone()).collect();
        StatusServiceClient::new(channel.clone())
            .report_catalog(SiteCatalog {
                agent_id: id.clone(),
                resource: Some(res.clone()),
                sites: catalog_sites.clone(),
                native: false,
            })
            .await?;
        let channel = channel.clone();
        let stop = stop.clone();
        let offset = every.mul_f64(a as f64 / args.agents as f64);
        tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            let mut tick = tokio::time::interval(every);
            let mut round: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                round += 1;
                let report = StatusReport {
                    agent_id: id.clone(),
                    resource: Some(res.clone()),
                    ts_nanos: round,
                    config_hash: hash.clone(),
                    tracepoints: ids
                        .iter()
                        .map(|t| TracepointStatus {
                            tracepoint_id: t.clone(),
                            state: TracepointState::Bound as i32,
                            message: String::new(),
                            sites: vec!["src/module_0.rs:10".into()],
                            summary: Some(TracepointSummary {
                                hits: round * 10,
                                fires: round * 10,
                                series: 2,
                                sample_every: 1,
                                ..TracepointSummary::default()
                            }),
                        })
                        .collect(),
                };
                if let Err(err) = StatusServiceClient::new(channel.clone())
                    .report(report)
                    .await
                {
                    eprintln!("report failed: {err}");
                }
            }
        });
    }
    Ok(())
}

/// The server as a child process with a temporary data directory, killed when dropped.
struct ServerProcess {
    child: Child,
    pid: u32,
    grpc: SocketAddr,
    http: SocketAddr,
    _data: tempfile::TempDir,
}

impl ServerProcess {
    fn start(bin: &PathBuf) -> anyhow::Result<Self> {
        ensure!(
            bin.is_file(),
            "{} not found: build it with `cargo build --release --bin sonde` or pass --server-bin",
            bin.display()
        );
        let data = tempfile::tempdir()?;
        let mut child = Command::new(bin)
            .args([
                "server",
                "--listen",
                "127.0.0.1",
                "--grpc-port",
                "0",
                "--http-port",
                "0",
            ])
            .arg("--data-dir")
            .arg(data.path())
            .env("SONDE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut grpc, mut http) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while grpc.is_none() || http.is_none() {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .context("the server did not print its addresses")?;
            if let Some(addr) = line.strip_prefix("grpc listening on ") {
                grpc = Some(addr.trim().parse()?);
            } else if let Some(addr) = line.strip_prefix("http listening on ") {
                http = Some(addr.trim().parse()?);
            }
        }
        Ok(Self {
            pid: child.id(),
            child,
            grpc: grpc.context("grpc")?,
            http: http.context("http")?,
            _data: data,
        })
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The HTTP API, blocking.
#[derive(Debug, Clone)]
struct Api {
    agent: ureq::Agent,
    base: String,
}

impl Api {
    fn new(http: SocketAddr) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Self {
            agent,
            base: format!("http://{http}"),
        }
    }

    fn create(&self, tracepoint: &Value) -> anyhow::Result<String> {
        let mut response = self
            .agent
            .post(format!("{}/api/tracepoints", self.base))
            .header("content-type", "application/json")
            .send(json!({ "tracepoint": tracepoint }).to_string())?;
        let status = response.status();
        let body = response.body_mut().read_to_string()?;
        ensure!(status.is_success(), "create -> {status}: {body}");
        let body: Value = serde_json::from_str(&body)?;
        body.pointer("/tracepoint/ID")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("no tracepoint.ID in {body}"))
    }

    fn get_raw(&self, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut response = self.agent.get(format!("{}{path}", self.base)).call()?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(512 * 1024 * 1024)
            .read_to_vec()?;
        Ok((status, body))
    }

    fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let (status, body) = self.get_raw(path)?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }
}

/// User + system CPU seconds of a process, from `/proc/PID/stat` (clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
