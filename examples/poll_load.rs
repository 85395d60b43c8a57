//! `poll_load`: a load generator for the control plane's agent-facing gRPC, measuring what issue 2
//! asks of it on loopback.
//!
//! It creates 100 varied tracepoints over the HTTP API (some targeted at `service.name` and
//! `deployment.environment`, some with metrics, conditions, watches or a log message), then runs
//! these phases and prints throughput, p50/p99/max latency and CPU for each:
//!
//! 1. **NO_CHANGE polls**: `--pollers` concurrent Deep-style pollers, spread over `--channels`
//!    HTTP/2 connections, call `PollConfig/poll` back to back for `--duration` seconds, each sending
//!    the hash it already has (the steady state of a fleet of agents). This is the saturation
//!    throughput; its latency is mostly queueing (`pollers / throughput` on average).
//! 2. **Paced NO_CHANGE polls**: the same pollers on a fixed schedule adding up to `--rate` polls/s
//!    (default 20,000): the latency at that load rather than at saturation.
//! 3. **UPDATE polls**: back to back with an empty hash, so every answer carries the full list of
//!    100 tracepoints (a fleet restarting at once).
//! 4. **Write → watch**: `--watchers` Sonde agents hold `WatchService/Watch` streams; the generator
//!    alternately POSTs and DELETEs a tracepoint `--changes` times and measures, for each, the time
//!    from sending the HTTP request until every watcher has received the new list.
//!
//! By default the server is the real release binary started as a child process (`--server-bin`,
//! default `target/release/sonde`) with a temporary data directory, so the server and the load
//! generator run on separate runtimes and their CPU time is reported separately; the child is
//! killed at the end. `--grpc ADDR --http ADDR` targets a server already running on loopback
//! instead (the generator works in its own tenant, `poll-load`, and deletes what it created).
//! Everything stays on 127.0.0.1 and the run is bounded: a warm-up plus `--duration` per poll
//! phase, then at most `--changes` writes of at most 5 s each (about 45 s with the defaults).
//!
//! ```text
//! cargo build --release --bin sonde --example poll_load
//! target/release/examples/poll_load                       # 64 pollers, 4 connections, 10 s phases
//! target/release/examples/poll_load --pollers 128 --channels 8 --duration 5
//! target/release/examples/poll_load --grpc 127.0.0.1:43315 --http 127.0.0.1:3300
//! ```
//!
//! With `--database-url postgres://...` the child servers keep their tracepoints in that
//! PostgreSQL database, and `--replicas N` starts N of them on it: the poll phases run against the
//! first replica (the figure is per replica), the watchers are spread evenly over all of them,
//! and every write goes to the first, so the write → watch phase times a change until every
//! watcher on every replica has it. The resident memory of each replica is printed before and
//! after its watchers connect. `--skip-polls` runs the watch phase alone (for many watchers).
//!
//! The watch streams share HTTP/2 connections, as many agents behind one proxy would: `--channels`
//! connections to each replica, or more so that none carries over 500 streams (real agents hold
//! one connection each; the server's cost per stream is the same, its cost per connection is
//! not measured here). The generator raises its soft limit on open files to the hard limit
//! first (the child servers inherit it). Every watcher has the same resource attributes, so
//! every watcher of a replica gets the same list; the watchers decode only each answer's hash
//! and type and count its tracepoints, leaving them encoded, so that the cores go to the server.
//!
//! ```text
//! target/release/examples/poll_load --database-url postgres://sonde@127.0.0.1:5432/sonde \
//!     --replicas 2 --watchers 20000 --channels 64 --changes 100 --skip-polls
//! ```
//!
//! Bear in mind that on a small machine the generator competes with the server for the same
//! cores: the CPU line of each phase shows how the time was shared.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc as std_mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use sonde_proto::{
    common::{AnyValue, KeyValue, any_value},
    poll::{PollRequest, ResponseType, poll_config_client::PollConfigClient},
    resource::Resource,
    sonde::WatchRequest,
};
use tokio::sync::mpsc;
use tonic::{
    Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

/// The tenant the generator works in (sent as `X-Scope-OrgID` on every request).
const TENANT: &str = "poll-load";
/// How many tracepoints the phases run with.
const TRACEPOINTS: usize = 100;
/// A paced poll starting later than this after its scheduled time counts as late (tokio's timer
/// has a resolution of 1 ms, so up to that is the timer, not the load).
const LATE: Duration = Duration::from_millis(2);
/// The longest one write may take to reach every watcher before the run gives up.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many watch streams share one HTTP/2 connection (the server allows 1,024
/// concurrent streams per connection); more watchers open more connections.
const STREAMS_PER_CONNECTION: usize = 500;

/// Load generator for `PollConfig/poll` and `WatchService/Watch` (see the module doc).
#[derive(Debug, Parser)]
struct Args {
    /// Seconds each poll phase is measured for.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of unmeasured polling before each poll phase.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Concurrent pollers.
    #[arg(long, default_value_t = 64)]
    pollers: usize,
    /// Polls per second, over all pollers, of the extra paced NO_CHANGE phase (latency at a
    /// given load rather than at saturation); 0 skips it.
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
    /// HTTP/2 connections the pollers and watchers are spread over.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Concurrent watch streams.
    #[arg(long, default_value_t = 16)]
    watchers: usize,
    /// Writes (alternately POST and DELETE) whose propagation to the watchers is timed.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Worker threads of the load generator's runtime (0: one per core).
    #[arg(long, default_value_t = 0)]
    client_threads: usize,
    /// PostgreSQL for the child servers (`--database-url` of `sonde server`); SQLite without.
    #[arg(long)]
    database_url: Option<String>,
    /// Child servers to start on --database-url (the watchers are spread over all of them).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Only the write → watch phase.
    #[arg(long)]
    skip_polls: bool,
    /// The `sonde` binary to start as the server.
    #[arg(long, default_value = "target/release/sonde")]
    server_bin: PathBuf,
    /// The gRPC address of a server already running on loopback (with --http; no child started).
    #[arg(long, requires = "http")]
    grpc: Option<SocketAddr>,
    /// The HTTP address of that server.
    #[arg(long, requires = "grpc")]
    http: Option<SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.pollers > 0, "--pollers must be at least 1");
    ensure!(args.channels > 0, "--channels must be at least 1");
    ensure!(args.watchers > 0, "--watchers must be at least 1");
    ensure!(
        args.replicas == 1 || (args.replicas > 1 && args.database_url.is_some()),
        "--replicas: more than one needs --database-url (and at least one)"
    );
    ensure!(
        args.duration > 0.0 && args.duration <= 600.0,
        "--duration: 0 to 600 seconds"
    );
    ensure!(
        (0.0..=60.0).contains(&args.warmup),
        "--warmup: 0 to 60 seconds"
    );

    raise_fd_limit();
    // Child servers are killed when these guards drop, whatever happens below.
    let (servers, replicas) = match (args.grpc, args.http) {
        (Some(grpc), Some(http)) => {
            ensure!(
                grpc.ip().is_loopback() && http.ip().is_loopback(),
                "--grpc and --http must be loopback addresses"
            );
            (Vec::new(), vec![(grpc, http)])
        }
        _ => {
            let servers = (0..args.replicas)
                .map(|_| ServerProcess::start(&args.server_bin, args.database_url.as_deref()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let replicas = servers.iter().map(|s| (s.grpc, s.http)).collect();
            (servers, replicas)
        }
    };
    for (i, (grpc, http)) in replicas.iter().enumerate() {
        println!("server {i}: grpc {grpc}, http {http}");
    }
    let (grpc, http) = replicas[0];
    let pids: Vec<u32> = servers.iter().map(|s| s.pid).collect();

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.client_threads > 0 {
        runtime.worker_threads(args.client_threads);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the load generator's runtime")?;
    let result = runtime.block_on(run(&args, &replicas, &pids, grpc, http));
    drop(servers);
    result
}

async fn connect(grpc: SocketAddr) -> anyhow::Result<Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {grpc}"))
}

async fn run(
    args: &Args,
    replicas: &[(SocketAddr, SocketAddr)],
    pids: &[u32],
    grpc: SocketAddr,
    http: SocketAddr,
) -> anyhow::Result<()> {
    let pid = pids.first().copied();
    let api = Api::new(http);
    let created = {
        let api = api.clone();
        tokio::task::spawn_blocking(move || {
            (0..TRACEPOINTS)
                .map(|i| api.create(&tracepoint(i)))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await??
    };
    println!("created {} tracepoints in tenant {TENANT}", created.len());

    let mut channels = Vec::with_capacity(args.channels);
    for _ in 0..args.channels {
        channels.push(connect(grpc).await?);
    }

    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    println!(
        "\n{} pollers over {} HTTP/2 connections, {:.1} s warm-up + {:.1} s per phase",
        args.pollers,
        args.channels,
        warmup.as_secs_f64(),
        duration.as_secs_f64()
    );
    let mut phases = vec![(Mode::NoChange, None)];
    if args.rate > 0.0 {
        phases.push((Mode::NoChange, Some(args.rate)));
    }
    phases.push((Mode::Update, None));
    if args.skip_polls {
        phases.clear();
    }
    for (mode, rate) in phases {
        let cpu = CpuClock::start(pid);
        let report = poll_phase(&channels, args.pollers, mode, rate, warmup, duration).await?;
        report.print(mode, rate, duration);
        cpu.print(warmup + duration);
    }

    // The watchers' connections: --channels to each replica (more when a replica would hold
    // over STREAMS_PER_CONNECTION streams on one), so the watchers spread evenly.
    let per_replica = args.watchers.div_ceil(replicas.len());
    let connections = args
        .channels
        .max(per_replica.div_ceil(STREAMS_PER_CONNECTION));
    let mut watch_channels = Vec::with_capacity(connections * replicas.len());
    for _ in 0..connections {
        for (grpc, _) in replicas {
            watch_channels.push(connect(*grpc).await?);
        }
    }
    println!(
        "\n{} watchers over {} replica(s) ({connections} HTTP/2 connections each, shared by the \
         watch streams), {} writes (alternately POST and DELETE) on the first",
        args.watchers,
        replicas.len(),
        args.changes
    );
    // Every replica has the tracepoints before the watchers start.
    let listed = |channel: Channel| async move {
        let mut client = PollConfigClient::new(channel);
        let request = PollRequest {
            ts_nanos: 1,
            current_hash: String::new(),
            resource: Some(resource("watcher-0")),
        };
        client
            .poll(tenant_request(request))
            .await
            .map(|r| r.into_inner().response.len())
    };
    let want = listed(watch_channels[0].clone()).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    for channel in &watch_channels[..replicas.len()] {
        while listed(channel.clone()).await? != want {
            ensure!(
                Instant::now() < deadline,
                "a replica did not get the tracepoints"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let rss_before: Vec<_> = pids.iter().map(|pid| rss_kib(*pid)).collect();
    let cpu = CpuClock::start(pid);
    let started = Instant::now();
    let held = |phase: &str| {
        for (i, (pid, before)) in pids.iter().zip(&rss_before).enumerate() {
            if let (Some(before), Some(now)) = (before, rss_kib(*pid)) {
                let per_1000 = (now as f64 - *before as f64)
                    / (args.watchers as f64 / pids.len() as f64)
                    * 1000.0;
                println!(
                    "{:>10}  server {i} RSS {phase}: {:.1} MiB (was {:.1} MiB without watchers; {:.2} MiB per 1,000 watchers)",
                    "",
                    now as f64 / 1024.0,
                    *before as f64 / 1024.0,
                    per_1000 / 1024.0,
                );
            }
        }
    };
    watch_phase(&api, &watch_channels, args.watchers, args.changes, &held).await?;
    cpu.print(started.elapsed());

    let api2 = api.clone();
    tokio::task::spawn_blocking(move || created.iter().try_for_each(|id| api2.delete(id)))
        .await??;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Poll phases

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Clients send the hash they have: the answer is NO_CHANGE.
    NoChange,
    /// Clients send an empty hash: the answer is UPDATE with the whole list.
    Update,
}

/// What the pollers of one phase saw in the measured window.
#[derive(Debug, Default)]
struct PhaseReport {
    /// Latency of every measured poll, nanoseconds.
    latencies: Vec<u64>,
    no_change: u64,
    update: u64,
    /// Tracepoints in the UPDATE answers (min, max).
    listed: Option<(usize, usize)>,
    /// Paced polls that started more than [`LATE`] behind their schedule.
    late: u64,
    errors: u64,
    first_error: Option<String>,
}

impl PhaseReport {
    fn merge(&mut self, other: PhaseReport) {
        self.latencies.extend(other.latencies);
        self.no_change += other.no_change;
        self.update += other.update;
        self.listed = match (self.listed, other.listed) {
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            (a, b) => a.or(b),
        };
        self.late += other.late;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn print(mut self, mode: Mode, rate: Option<f64>, window: Duration) {
        let name = match (mode, rate) {
            (Mode::NoChange, None) => "NO_CHANGE",
            (Mode::NoChange, Some(_)) => "paced",
            (Mode::Update, _) => "UPDATE",
        };
        let n = self.latencies.len();
        if let Some(rate) = rate {
            println!(
                "{:>10}  NO_CHANGE at a target of {rate:.0} polls/s; {:.2}% of polls started over {LATE:?} late",
                "",
                100.0 * self.late as f64 / n.max(1) as f64
            );
        }
        println!(
            "{name:>10}: {:>8.0} polls/s  {}  ({n} polls: {} NO_CHANGE, {} UPDATE{}; {} errors)",
            n as f64 / window.as_secs_f64(),
            Percentiles::of(&mut self.latencies),
            self.no_change,
            self.update,
            match self.listed {
                Some((lo, hi)) if lo == hi => format!(" of {lo} tracepoints"),
                Some((lo, hi)) => format!(" of {lo}..{hi} tracepoints"),
                None => String::new(),
            },
            self.errors,
        );
        if let Some(err) = self.first_error {
            println!("            first error: {err}");
        }
    }
}

async fn poll_phase(
    channels: &[Channel],
    pollers: usize,
    mode: Mode,
    rate: Option<f64>,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<PhaseReport> {
    let start = Instant::now();
    let measure_from = start + warmup;
    let until = measure_from + duration;
    // Paced: every poller polls once per `period`, the pollers' schedules evenly staggered.
    let period = rate.map(|rate| Duration::from_secs_f64(pollers as f64 / rate));
    let tasks: Vec<_> = (0..pollers)
        .map(|i| {
            let client = PollConfigClient::new(channels[i % channels.len()].clone());
            let schedule = period.map(|p| (start + p.mul_f64(i as f64 / pollers as f64), p));
            tokio::spawn(poller(
                client,
                resource(&format!("poller-{i}")),
                mode,
                schedule,
                measure_from,
                until,
            ))
        })
        .collect();
    let mut report = PhaseReport::default();
    for task in tasks {
        report.merge(task.await??);
    }
    Ok(report)
}

/// One poller: polls back to back (or on the `(first, period)` schedule) until `until`, recording
/// the polls that start after `measure_from`.
async fn poller(
    mut client: PollConfigClient<Channel>,
    resource: Resource,
    mode: Mode,
    schedule: Option<(Instant, Duration)>,
    measure_from: Instant,
    until: Instant,
) -> anyhow::Result<PhaseReport> {
    let mut request = PollRequest {
        ts_nanos: 0,
        current_hash: String::new(),
        resource: Some(resource),
    };
    if mode == Mode::NoChange {
        // First contact: learn the hash, as an agent does on start-up.
        request.current_hash = client
            .poll(tenant_request(request.clone()))
            .await
            .context("first poll")?
            .into_inner()
            .current_hash;
    }
    let mut ticks = schedule.map(|(first, period)| {
        let mut ticks = tokio::time::interval_at(first.into(), period);
        // Behind schedule, catch up (as independent agents would keep polling) rather than
        // quietly lowering the load.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        ticks
    });
    let mut report = PhaseReport::default();
    loop {
        let scheduled = match ticks.as_mut() {
            Some(ticks) => Some(ticks.tick().await.into_std()),
            None => None,
        };
        let started = Instant::now();
        if started >= until {
            break;
        }
        if scheduled.is_some_and(|s| started - s > LATE) && started >= measure_from {
            report.late += 1;
        }
        let answer = client.poll(tenant_request(request.clone())).await;
        let latency = started.elapsed();
        if started < measure_from {
            continue;
        }
        match answer {
            Ok(answer) => {
                let answer = answer.into_inner();
                report.latencies.push(latency.as_nanos() as u64);
                if answer.response_type == ResponseType::Update as i32 {
                    report.update += 1;
                    let n = answer.response.len();
                    report.listed = Some(
                        report
                            .listed
                            .map_or((n, n), |(lo, hi)| (lo.min(n), hi.max(n))),
                    );
                } else {
                    report.no_change += 1;
                }
                if mode == Mode::NoChange {
                    request.current_hash = answer.current_hash;
                }
            }
            Err(status) => {
                report.errors += 1;
                report.first_error.get_or_insert_with(|| status.to_string());
            }
        }
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Write → watch phase

/// A watcher received an UPDATE listing `listed` tracepoints at `at`.
#[derive(Debug)]
struct Received {
    watcher: usize,
    listed: usize,
    at: Instant,
}

async fn watch_phase(
    api: &Api,
    channels: &[Channel],
    watchers: usize,
    changes: usize,
    held: &dyn Fn(&str),
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Opened 256 at a time: one after the other, 10,000 streams take a while to open.
    let opened: Vec<_> = futures_util::stream::iter(0..watchers)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            async move {
                let request = WatchRequest {
                    resource: Some(resource(&format!("watcher-{i}"))),
                    current_hash: String::new(),
                    agent_id: format!("poll-load-watcher-{i}"),
                };
                open_watch(channel, request)
                    .await
                    .with_context(|| format!("opening watch {i}"))
                    .map(|stream| (i, stream))
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let mut tasks = Vec::with_capacity(watchers);
    for opened in opened {
        let (i, mut stream) = opened?;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(msg)) = stream.message().await {
                if msg.response_type == ResponseType::Update as i32 {
                    let received = Received {
                        watcher: i,
                        listed: msg.response.len(),
                        at: Instant::now(),
                    };
                    if tx.send(received).is_err() {
                        break;
                    }
                }
            }
        }));
    }
    drop(tx);

    // Every stream opens with the current list: that is the baseline count.
    let baseline = wait_for_all(&mut rx, watchers, None, Duration::from_secs(60))
        .await
        .context("waiting for the first message of every watch")?
        .1;
    held("with its watchers");

    let mut acks = Vec::with_capacity(changes);
    let mut propagation = Vec::with_capacity(changes);
    let mut added: Option<String> = None;
    for k in 0..changes {
        let started = Instant::now();
        let api = api.clone();
        let (expected, ack) = match added.take() {
            None => {
                let id = tokio::task::spawn_blocking(move || api.create(&tracepoint(1000 + k)))
                    .await??;
                added = Some(id);
                (baseline + 1, started.elapsed())
            }
            Some(id) => {
                tokio::task::spawn_blocking(move || api.delete(&id)).await??;
                (baseline, started.elapsed())
            }
        };
        let (last, _) = wait_for_all(&mut rx, watchers, Some(expected), CHANGE_TIMEOUT)
            .await
            .with_context(|| format!("write {k}: waiting for every watcher"))?;
        acks.push(ack.as_nanos() as u64);
        propagation.push(last.saturating_duration_since(started).as_nanos() as u64);
    }
    if let Some(id) = added {
        let api = api.clone();
        tokio::task::spawn_blocking(move || api.delete(&id)).await??;
    }
    for task in tasks {
        task.abort();
    }

    println!(
        "{:>10}: {}  (HTTP response to the writer)",
        "write ack",
        Percentiles::of(&mut acks)
    );
    println!(
        "{:>10}: {}  (write sent -> all {watchers} watchers have the new list)",
        "to watch",
        Percentiles::of(&mut propagation)
    );
    Ok(())
}

/// Waits until every watcher has reported an UPDATE (listing `expected` tracepoints, if given);
/// returns the latest arrival and the count listed.
async fn wait_for_all(
    rx: &mut mpsc::UnboundedReceiver<Received>,
    watchers: usize,
    expected: Option<usize>,
    timeout: Duration,
) -> anyhow::Result<(Instant, usize)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = vec![false; watchers];
    let mut remaining = watchers;
    let mut last = Instant::now();
    let mut listed = expected.unwrap_or_default();
    while remaining > 0 {
        let received = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(received)) => received,
            Ok(None) => bail!("the watch streams closed"),
            Err(_) => bail!("{remaining} of {watchers} watchers had no update after {timeout:?}"),
        };
        if expected.is_some_and(|n| n != received.listed) || seen[received.watcher] {
            continue;
        }
        seen[received.watcher] = true;
        remaining -= 1;
        last = received.at;
        listed = received.listed;
    }
    Ok((last, listed))
}

// ---------------------------------------------------------------------------------------------
// The server, its HTTP API, and what is sent

/// The `sonde server` child process, killed on drop.
#[derive(Debug)]
struct ServerProcess {
    child: Child,
    pid: u32,
    grpc: SocketAddr,
    http: SocketAddr,
    _data: tempfile::TempDir,
}

impl ServerProcess {
    fn start(bin: &PathBuf, database_url: Option<&str>) -> anyhow::Result<Self> {
        ensure!(
            bin.is_file(),
            "{} not found: build it with `cargo build --release --bin sonde`, pass --server-bin, \
             or target a running server with --grpc and --http",
            bin.display()
        );
        let data = tempfile::tempdir().context("creating a temporary data directory")?;
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
            .args(database_url.map(|url| format!("--database-url={url}")))
            .env("SONDE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        // Read the address lines, then keep draining stdout so the server never writes to a
        // closed pipe.
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut server = Self {
            pid: child.id(),
            child,
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            _data: data,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut grpc, mut http) = (None, None);
        while grpc.is_none() || http.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .context("the server did not print its addresses")?;
            if let Some(addr) = line.strip_prefix("grpc listening on ") {
                grpc = Some(addr.trim().parse()?);
            } else if let Some(addr) = line.strip_prefix("http listening on ") {
                http = Some(addr.trim().parse()?);
            }
        }
        (server.grpc, server.http) = (grpc.unwrap_or(server.grpc), http.unwrap_or(server.http));
        Ok(server)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The HTTP API, blocking (call it from `spawn_blocking`).
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
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Self {
            agent,
            base: format!("http://{http}/api/tracepoints"),
        }
    }

    /// Creates a tracepoint; returns its ID.
    fn create(&self, tracepoint: &Value) -> anyhow::Result<String> {
        let mut response = self
            .agent
            .post(&self.base)
            .header("content-type", "application/json")
            .header("x-scope-orgid", TENANT)
            .send(json!({ "tracepoint": tracepoint }).to_string())
            .with_context(|| format!("POST {}", self.base))?;
        let status = response.status();
        let body = response.body_mut().read_to_string()?;
        ensure!(
            status.is_success(),
            "POST {} -> {status}: {body}",
            self.base
        );
        let body: Value = serde_json::from_str(&body)?;
        body.pointer("/tracepoint/ID")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("no tracepoint.ID in {body}"))
    }

    fn delete(&self, id: &str) -> anyhow::Result<()> {
        let url = format!("{}/{id}", self.base);
        let mut response = self
            .agent
            .delete(&url)
            .header("x-scope-orgid", TENANT)
            .call()
            .with_context(|| format!("DELETE {url}"))?;
        let status = response.status();
        let body = response.body_mut().read_to_string()?;
        ensure!(status.is_success(), "DELETE {url} -> {status}: {body}");
        Ok(())
    }
}

/// The `i`th tracepoint, in Deep's JSON: a mix of targeting, metrics, watches and arguments.
fn tracepoint(i: usize) -> Value {
    let mut tp = json!({
        "path": format!("src/shop/module_{}.rs", i % 17),
        "line_number": 10 + i,
        "args": {"fire_count": "-1"},
    });
    if i.is_multiple_of(3) {
        tp["targeting"] = json!([{"key": "service.name", "value": {"stringValue": "checkout"}}]);
    } else if i.is_multiple_of(5) {
        tp["targeting"] = json!([
            {"key": "service.name", "value": {"stringValue": "checkout"}},
            {"key": "deployment.environment", "value": {"stringValue": "load"}},
        ]);
    }
    if i.is_multiple_of(2) {
        let kind = ["COUNTER", "HISTOGRAM", "GAUGE"][i % 3];
        tp["metrics"] = json!([{
            "name": format!("shop_order_{i}"),
            "expression": "order.total",
            "type": kind,
            "labelExpressions": [
                {"key": "country", "expression": "order.country"},
                {"key": "tier", "static": {"stringValue": "gold"}},
            ],
        }]);
    }
    if i % 4 == 1 {
        tp["watches"] = json!(["order.id", "order.total"]);
    }
    if i.is_multiple_of(7) {
        tp["args"]["condition"] = json!("order.total > 100");
    }
    if i.is_multiple_of(11) {
        tp["args"]["log_msg"] = json!("order {order.id} of {order.total}");
    }
    tp
}

/// The resource of one simulated agent: every targeted tracepoint above matches it.
fn resource(instance: &str) -> Resource {
    let attr = |key: &str, value: &str| KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
    };
    Resource {
        attributes: vec![
            attr("service.name", "checkout"),
            attr("service.instance.id", instance),
            attr("deployment.environment", "load"),
            attr("telemetry.sdk.language", "rust"),
            attr("host.name", "loadgen"),
        ],
        dropped_attributes_count: 0,
    }
}

fn tenant_request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "x-scope-orgid",
        tonic::metadata::MetadataValue::from_static(TENANT),
    );
    request
}

/// A `PollResponse` as the watchers read it: the hash, the type and each tracepoint left
/// encoded (only counted), so that decoding 10,000 copies of every list does not take the
/// load generator's share of the cores from the server it measures (each real agent decodes
/// its own answer on its own machine).
#[derive(Clone, PartialEq, prost::Message)]
struct WatchAnswer {
    #[prost(string, tag = "2")]
    current_hash: String,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    response: Vec<bytes::Bytes>,
    #[prost(int32, tag = "4")]
    response_type: i32,
}

/// Encodes the watch request and decodes [`WatchAnswer`]s.
#[derive(Debug, Clone, Copy, Default)]
struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = WatchRequest;
    type Decode = WatchAnswer;
    type Encoder = WatchCodec;
    type Decoder = WatchCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for WatchCodec {
    type Item = WatchRequest;
    type Error = Status;

    fn encode(&mut self, item: WatchRequest, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        prost::Message::encode(&item, dst).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for WatchCodec {
    type Item = WatchAnswer;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<WatchAnswer>, Status> {
        <WatchAnswer as prost::Message>::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// Opens `WatchService/Watch` on `channel` (the same call as the generated client makes).
async fn open_watch(
    channel: Channel,
    request: WatchRequest,
) -> Result<tonic::Streaming<WatchAnswer>, Status> {
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static("/sonde.v1.WatchService/Watch");
    Ok(client
        .server_streaming(tenant_request(request), path, WatchCodec)
        .await?
        .into_inner())
}

/// Raises this process's soft limit on open files to its hard limit (the child servers
/// inherit it), so that many connections do not run out of descriptors.
#[cfg(target_os = "linux")]
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: `limit` is a valid, writable `rlimit` for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // Safety: `raised` is a valid `rlimit`; raising the soft limit up to the hard one
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    println!("open files allowed: {}", limit.rlim_cur);
}

#[cfg(not(target_os = "linux"))]
fn raise_fd_limit() {}

// ---------------------------------------------------------------------------------------------
// Reporting

/// p50 / p99 / max of a set of nanosecond durations.
#[derive(Debug)]
struct Percentiles {
    p50: u64,
    p99: u64,
    max: u64,
}

impl Percentiles {
    fn of(samples: &mut [u64]) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            if samples.is_empty() {
                return 0;
            }
            let rank = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1]
        };
        Self {
            p50: at(0.50),
            p99: at(0.99),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |ns: u64| ns as f64 / 1e6;
        write!(
            f,
            "p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>8.3} ms",
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// CPU time used by the server child and by this process over a phase (Linux `/proc`; silent
/// elsewhere).
#[derive(Debug)]
struct CpuClock {
    server: Option<(u32, f64)>,
    own: Option<f64>,
}

impl CpuClock {
    fn start(server_pid: Option<u32>) -> Self {
        Self {
            server: server_pid.and_then(|pid| Some((pid, cpu_seconds(&pid.to_string())?))),
            own: cpu_seconds("self"),
        }
    }

    fn print(&self, wall: Duration) {
        let wall = wall.as_secs_f64();
        let cores = |start: f64, pid: &str| Some((cpu_seconds(pid)? - start) / wall);
        let server = self
            .server
            .and_then(|(pid, start)| cores(start, &pid.to_string()));
        let own = self.own.and_then(|start| cores(start, "self"));
        let show = |c: Option<f64>| c.map_or("-".to_owned(), |c| format!("{c:.2}"));
        println!(
            "{:>10}  cpu: server {} cores, load generator {} cores",
            "",
            show(server),
            show(own)
        );
    }
}

/// Resident memory of a process in KiB, from `/proc/PID/status`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// User + system CPU seconds of a process, from `/proc/PID/stat` (clock ticks of 1/100 s, the
/// Linux `USER_HZ`).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
