//! `shop_load`: what tracepoints cost a real service, measured before turning Sonde on in
//! production. Starts a `sonde server` and the `shop` example as child processes on loopback, then
//! drives `POST /checkout` from closed-loop keep-alive connections for a fixed time in each phase:
//!
//! 1. no tracepoint;
//! 2. three tracepoints on the checkout line: the README's counter (labels `order.country` and
//!    `order.user.tier`, plain paths), a counter labelled by a general expression
//!    (`order.country + "-" + order.user.tier`), and a histogram of `order.total`;
//! 3. a native tracepoint on a line of `checkout` without a probe (`let order_id =
//!    order_number();`): a counter of `charged` labelled by `order.country` and
//!    `order.user.tier`, read from the registers and stack in the trap (the agent's `native`
//!    feature, `SONDE_AGENT_NATIVE=1`, which this sets for the shop). Skipped with `--no-native`,
//!    and with a note when the shop was built without the feature.
//!
//! With `--control`, each round also has a control phase before the armed one: the same three
//! tracepoints on the shop's rejection line, which this load never reaches. It is armed and
//! disarmed the same way, so the armed phase over the control leaves out what arming itself and
//! installed tracepoints cost (a bias of the harness shows in the control over the unarmed
//! phases), and what remains is the hits'.
//!
//! `sonde server` runs with the batch policy at nice 10: here it shares the shop's cores, which it
//! does not in production, and its work on each status report would otherwise delay the shop's
//! requests. The shop's agent thread runs behind the shop's own threads as it does by default
//! (`SONDE_AGENT_THREAD_NICE`, which the shop inherits from this process's environment).
//!
//! `--shop-nice N` starts the shop at that nice value: with the generator's threads on the same
//! cores, `-5` gives the shop's threads more weight than theirs, as a service usually has over
//! whatever else runs beside it.
//!
//! The phases alternate for `--rounds` rounds (the tracepoints are created before each armed
//! phase and deleted after it), so drift on a shared machine falls on all alike. It prints each
//! phase's throughput, p50 and p99 latency and the shop's CPU time per request (from
//! `/proc/<pid>/stat`; of it, the agent's own thread's, from its `schedstat`; and beside it the
//! CPU `sonde server` used, which shares the machine here but not in production), the armed phases'
//! means as ratios of the others', with 3 rounds or more the same paired (each armed phase over
//! the unarmed phases on either side of it: the mean of those ratios, two standard errors and the
//! median; `--seconds 6 --rounds 16` tells 1% from 3% where two long rounds cannot), with 2 rounds
//! or more the latency quantiles over every request of each kind of phase together (a phase's p99
//! is made by the stalls of the machine it happened to catch), and per round the
//! sample factor each tracepoint settled on (`sonde_agent_tracepoint_sample_every`), its CPU per timed
//! evaluation and the cache refill estimated for it, and how far its count is from the orders the
//! generator completed.
//!
//! ```text
//! cargo build --release --bin sonde --example shop_load
//! # the shop with native breakpoints and its locals in the debug info (phase 3)
//! CARGO_PROFILE_RELEASE_DEBUG=2 cargo build --release --example shop --features sonde-agent/native
//! target/release/examples/shop_load          # --seconds 15 --connections 32 --rounds 2
//! target/release/examples/shop_load --rate 5000   # a fixed rate: compare CPU per request
//! ```
//!
//! The load generator shares the machine with the shop (2 cores here): closed loop, throughput
//! is what the pair reaches; at a fixed `--rate` the throughput is the same in both phases and
//! the CPU per request and latency ratios are the cost of the tracepoints.
//!
//! CPU time per request moves by several percent between phases of the same kind on a shared
//! machine, more than the tracepoints cost. `--callgrind` runs the shop under valgrind's
//! callgrind instead and counts the instructions it executes per request in each phase (exact
//! and repeatable, whatever else the machine does; they do not show cache misses or the cost of
//! atomic instructions). The shop then runs about 50 times slower, so give it a low `--rate`;
//! its tracepoints get the whole CPU budget (`SONDE_AGENT_CPU_PERCENT=100`), so every hit is
//! evaluated: the figure is the cost with no sampling. Set `SONDE_AGENT_CPU_PERCENT=1` (the
//! default budget) to see it with sampling: valgrind slows the tracepoints and the rest of the
//! process alike, and the budget is a share of the process's CPU, so the sample factors land near
//! where they do at full speed (the settled factors are printed). The native phase is skipped
//! (valgrind does not follow patched code).
//!
//! ```text
//! target/release/examples/shop_load --callgrind --rate 100 --seconds 20 --connections 4
//! ```
//!
//! With `--cache-sim` callgrind also simulates the caches: the dumps then hold each function's
//! cache misses (`callgrind_annotate --show=Ir,D1mr,D1mw`), which is how the shop's own code was
//! seen to miss more often in its L1 when tracepoints are armed.
//!
//! `--unarmed-twice` adds a second phase with nothing armed right after the first: phases of the
//! same kind in different places of the round, to see what the place does by itself.
//!
//! `--trace DIR` writes each phase's requests (when each was sent and its latency) and the CPU
//! used by the shop's agent thread, its other threads and the server every 5 ms, as CSV files, to
//! see where the slow requests fall (`ops/shop_tails.py DIR` sums them up).
//!
//! `--pin` runs the shop on the last CPU this process may use and the server and the generator
//! on the others, so the shop's threads never wait behind the generator's (the shop's runtime
//! then starts one worker per CPU it has: one on a 2-core machine).

#[path = "../tests/common/load.rs"]
mod load;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

/// A child process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and returns it with the stdout lines it prints (drained on a thread).
fn spawn(cmd: &mut Command) -> anyhow::Result<(Proc, mpsc::Receiver<String>)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stdout = child.stdout.take().context("the child's stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Ok((Proc(child), rx))
}

/// Waits for a line starting with `prefix` and parses the address after it.
fn address_after(rx: &mpsc::Receiver<String>, prefix: &str) -> anyhow::Result<SocketAddr> {
    // Long enough for the shop to start under valgrind, which first reads its debug info.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .with_context(|| format!("no line with {prefix:?}"))?;
        if let Some(rest) = line.split(prefix).nth(1) {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            return addr.parse().with_context(|| format!("parsing {addr:?}"));
        }
    }
}

/// The CPU time a process has used in user and in system mode, from `/proc/<pid>/stat`, whose
/// times are in USER_HZ ticks (100 a second on Linux whatever the kernel's own tick).
fn cpu_time(pid: u32) -> anyhow::Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at `) `.
    let after = stat.rsplit_once(") ").context("a stat line")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<Duration> {
        Ok(Duration::from_millis(
            fields.get(i).context("a stat field")?.parse::<u64>()? * 10,
        ))
    };
    Ok((ticks(11)?, ticks(12)?))
}

/// The time a process's threads have run, from their `schedstat` (nanoseconds, where `stat`
/// counts 10 ms ticks), read in one pass over `/proc/<pid>/task`.
struct ThreadsCpu {
    /// All of its threads.
    all: Duration,
    /// Its threads named `sonde-agent` (the agent's own); `None` when it has none.
    agent: Option<Duration>,
}

/// `None` when `/proc/<pid>/task` cannot be read.
fn threads_cpu(pid: u32) -> Option<ThreadsCpu> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut out = ThreadsCpu {
        all: Duration::ZERO,
        agent: None,
    };
    for task in tasks.filter_map(Result::ok) {
        let ran = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        let Some(ran) = ran.map(Duration::from_nanos) else {
            continue;
        };
        out.all += ran;
        if std::fs::read_to_string(task.path().join("comm"))
            .is_ok_and(|c| c.trim_end() == "sonde-agent")
        {
            out.agent = Some(out.agent.unwrap_or_default() + ran);
        }
    }
    Some(out)
}

struct Phase {
    name: &'static str,
    report: load::LoadReport,
    cpu: Duration,
    /// The part of `cpu` spent in the kernel (the rest is the shop's own code).
    sys: Duration,
    /// The part of `cpu` the agent's own thread ran (its client and metrics endpoint, not the
    /// hits, which run on the shop's threads); `None` when it could not be read.
    agent: Option<Duration>,
    /// The CPU `sonde server` used meanwhile (not the shop's: in production it runs elsewhere,
    /// but here it shares the machine, and its bursts delay the shop's requests).
    server: Option<Duration>,
    /// Instructions the shop executed in the measured run (`--callgrind`).
    instructions: Option<u64>,
}

impl Phase {
    /// `time` per completed request, in microseconds; NaN when it could not be read.
    fn per_request_us(&self, time: Option<Duration>) -> f64 {
        time.map_or(f64::NAN, |t| {
            t.as_secs_f64() * 1e6 / self.report.ok.max(1) as f64
        })
    }

    fn cpu_per_request_us(&self) -> f64 {
        self.per_request_us(Some(self.cpu))
    }

    fn sys_per_request_us(&self) -> f64 {
        self.per_request_us(Some(self.sys))
    }

    fn server_per_request_us(&self) -> f64 {
        self.per_request_us(self.server)
    }

    fn agent_per_request_us(&self) -> f64 {
        self.per_request_us(self.agent)
    }

    fn instructions_per_request(&self) -> Option<f64> {
        self.instructions
            .map(|i| i as f64 / self.report.ok.max(1) as f64)
    }
}

/// Under `--callgrind`: where the shop's profile dumps go (kept, to read with
/// `callgrind_annotate`: one file per measured phase, in order).
struct Callgrind {
    dir: PathBuf,
}

impl Callgrind {
    /// Has callgrind write out the counts since its previous dump (and start from zero), and
    /// returns the instructions in them.
    fn dump(&self, pid: u32) -> anyhow::Result<u64> {
        let before: Vec<PathBuf> = self.dumps()?;
        let out = Command::new("callgrind_control")
            .args(["--dump", &pid.to_string()])
            .output()
            .context("running callgrind_control (valgrind's package)")?;
        ensure!(
            out.status.success(),
            "callgrind_control --dump {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let new = loop {
            if let Some(p) = self.dumps()?.into_iter().find(|p| !before.contains(p)) {
                break p;
            }
            ensure!(Instant::now() < deadline, "callgrind wrote no dump");
            std::thread::sleep(Duration::from_millis(50));
        };
        // The file is complete once its `totals:` line (its last) is there.
        loop {
            let text = std::fs::read_to_string(&new)?;
            if let Some(total) = text
                .lines()
                .find_map(|l| l.strip_prefix("totals:"))
                .and_then(|t| t.split_whitespace().next())
            {
                return total.parse().context("callgrind's totals");
            }
            ensure!(Instant::now() < deadline, "callgrind's dump has no totals");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn dumps(&self) -> anyhow::Result<Vec<PathBuf>> {
        Ok(std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect())
    }
}

/// `--trace DIR`: where each measured phase's requests and CPU samples go, numbered in order.
struct Trace {
    dir: PathBuf,
    phases: std::cell::Cell<usize>,
}

impl Trace {
    /// Writes `NN-<kind>.requests.csv` (each request: when it was sent, in µs from the
    /// phase's start, and its latency in µs, by send time) and `NN-<kind>.cpu.csv` (every 5 ms:
    /// µs from the start, then the CPU ns used since the start by the shop's agent thread, by
    /// its other threads, and by `sonde server`).
    fn write(
        &self,
        name: &str,
        report: &load::LoadReport,
        samples: &[Sample],
    ) -> anyhow::Result<()> {
        use std::fmt::Write as _;
        let n = self.phases.get() + 1;
        self.phases.set(n);
        let stem = self.dir.join(format!("{n:02}-{}", short(name)));
        let mut requests = String::from("sent_us,latency_us\n");
        let mut timeline = report.timeline.clone();
        timeline.sort_unstable();
        for (sent, latency) in timeline {
            writeln!(requests, "{sent},{latency}")?;
        }
        std::fs::write(stem.with_extension("requests.csv"), requests)?;
        let mut cpu = String::from("t_us,agent_ns,shop_other_ns,server_ns\n");
        let first = samples.first().copied().unwrap_or_default();
        for s in samples {
            writeln!(
                cpu,
                "{},{},{},{}",
                s.at_us,
                s.agent_ns - first.agent_ns,
                (s.shop_ns - s.agent_ns) - (first.shop_ns - first.agent_ns),
                s.server_ns - first.server_ns
            )?;
        }
        std::fs::write(stem.with_extension("cpu.csv"), cpu)?;
        Ok(())
    }
}

/// CPU time read off `/proc` at one moment (cumulative ns per thread group).
#[derive(Clone, Copy, Default)]
struct Sample {
    at_us: u64,
    agent_ns: u64,
    shop_ns: u64,
    server_ns: u64,
}

/// Reads the shop's and the server's thread times every 5 ms on a thread of its own.
struct CpuSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

impl CpuSampler {
    fn start(pid: u32, server_pid: u32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let ns = |t: Option<Duration>| t.map_or(0, |t| t.as_nanos() as u64);
            let mut samples = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let at_us = started.elapsed().as_micros() as u64;
                let shop = threads_cpu(pid);
                samples.push(Sample {
                    at_us,
                    agent_ns: ns(shop.as_ref().and_then(|t| t.agent)),
                    shop_ns: ns(shop.map(|t| t.all)),
                    server_ns: ns(threads_cpu(server_pid).map(|t| t.all)),
                });
                std::thread::sleep(Duration::from_millis(5));
            }
            samples
        });
        Self { stop, thread }
    }

    fn stop(self) -> Vec<Sample> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// A phase: 2 s of warm-up, then `on_start` (to read the counters), then the measured run.
fn measure(
    name: &'static str,
    shop: SocketAddr,
    (pid, callgrind): (u32, Option<&Callgrind>),
    server_pid: u32,
    (connections, seconds, rate): (usize, u64, Option<f64>),
    trace: Option<&Trace>,
    on_start: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Phase> {
    load::run_paced(shop, connections, Duration::from_secs(2), rate);
    on_start()?;
    if let Some(cg) = callgrind {
        cg.dump(pid)?;
    }
    let (user0, sys0) = cpu_time(pid)?;
    let agent0 = threads_cpu(pid).and_then(|t| t.agent);
    let server0 = threads_cpu(server_pid).map(|t| t.all);
    let sampler = trace.map(|_| CpuSampler::start(pid, server_pid));
    let report = load::run_paced(shop, connections, Duration::from_secs(seconds), rate);
    let samples = sampler.map(CpuSampler::stop);
    let (user1, sys1) = cpu_time(pid)?;
    let server = threads_cpu(server_pid)
        .map(|t| t.all)
        .zip(server0)
        .map(|(after, before)| after.saturating_sub(before));
    let agent = threads_cpu(pid)
        .and_then(|t| t.agent)
        .zip(agent0)
        .map(|(after, before)| after.saturating_sub(before));
    let sys = sys1.saturating_sub(sys0);
    let cpu = user1.saturating_sub(user0) + sys;
    let instructions = callgrind.map(|cg| cg.dump(pid)).transpose()?;
    if let (Some(trace), Some(samples)) = (trace, samples) {
        trace.write(name, &report, &samples)?;
    }
    ensure!(
        report.failed == 0,
        "{name}: {} requests failed",
        report.failed
    );
    Ok(Phase {
        name,
        report,
        cpu,
        sys,
        agent,
        server,
        instructions,
    })
}

fn get(agent: &ureq::Agent, url: &str) -> anyhow::Result<String> {
    Ok(agent
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?
        .body_mut()
        .read_to_string()?)
}

struct Args {
    seconds: u64,
    connections: usize,
    rounds: usize,
    /// Requests per second over all connections; `None` is closed loop.
    rate: Option<f64>,
    /// Whether to run the native-tracepoint phase.
    native: bool,
    /// Whether to run the shop under callgrind and count its instructions per request.
    callgrind: bool,
    /// Whether callgrind also simulates the caches (its dumps then hold misses per function).
    cache_sim: bool,
    /// Whether to run the shop on a CPU of its own, and the server and the generator on the
    /// others.
    pin: bool,
    /// The shop's nice value (its threads' CFS weight against the generator's), when given.
    shop_nice: Option<i32>,
    /// Whether each round also has a control phase: the three tracepoints on the shop's
    /// rejection line, which this load never reaches (what installed tracepoints and the
    /// harness's arming cost the shop without a single hit).
    control: bool,
    /// Where to write each phase's requests and CPU samples (`--trace DIR`).
    trace: Option<PathBuf>,
    /// Whether each round runs a second unarmed phase right after the first (`--unarmed-twice`).
    twice: bool,
}

fn args() -> anyhow::Result<Args> {
    let (mut seconds, mut connections, mut rounds) = (15u64, 32usize, 2usize);
    let mut rate = None;
    let mut native = true;
    let mut callgrind = false;
    let mut pin = false;
    let mut cache_sim = false;
    let mut control = false;
    let mut shop_nice = None;
    let mut trace = None;
    let mut twice = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().with_context(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--seconds" => seconds = value("--seconds")?.parse().context("--seconds")?,
            "--connections" => {
                connections = value("--connections")?.parse().context("--connections")?
            }
            "--rounds" => rounds = value("--rounds")?.parse().context("--rounds")?,
            "--rate" => rate = Some(value("--rate")?.parse::<f64>().context("--rate")?),
            "--no-native" => native = false,
            "--callgrind" => callgrind = true,
            "--pin" => pin = true,
            "--cache-sim" => cache_sim = true,
            "--control" => control = true,
            "--trace" => trace = Some(PathBuf::from(value("--trace")?)),
            "--unarmed-twice" => twice = true,
            "--shop-nice" => {
                let n: i32 = value("--shop-nice")?.parse().context("--shop-nice")?;
                ensure!(
                    (-20..=19).contains(&n),
                    "--shop-nice takes -20 to 19, not {n}"
                );
                shop_nice = Some(n);
            }
            "-h" | "--help" => {
                println!(
                    "usage: shop_load [--seconds N (15)] [--connections N (32)] [--rounds N (2)] \
                     [--rate REQUESTS_PER_SECOND (closed loop when absent)] [--no-native] \
                     [--callgrind (count the shop's instructions per request under valgrind; \
                     give a low --rate, such as 100)] [--cache-sim (with --callgrind: simulate \
                     the caches too)] [--pin (the shop on the last CPU, the server and the \
                     generator on the others)] [--control (each round also arms the three \
                     tracepoints on the shop's rejection line, which this load never reaches: \
                     what installed tracepoints and the arming cost without a hit)] [--shop-nice N (the \
                     shop's nice value, -20 to 19: below 0 its threads outweigh the generator's \
                     on shared cores)] [--trace DIR (each phase's requests, by send time with \
                     their latency, and the shop's and server's CPU every 5 ms, as CSV files in \
                     DIR)] [--unarmed-twice (a second phase with nothing armed right after \
                     the first, before the others: what a phase's place in the round does)]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    ensure!(callgrind || !cache_sim, "--cache-sim goes with --callgrind");
    ensure!(
        seconds > 0 && connections > 0 && rounds > 0 && rate.is_none_or(|r| r > 0.0),
        "--seconds, --connections, --rounds and --rate must be above 0"
    );
    Ok(Args {
        seconds,
        connections,
        rounds,
        rate,
        native: native && !callgrind,
        callgrind,
        cache_sim,
        pin,
        control,
        shop_nice,
        trace,
        twice,
    })
}

/// Keeps the calling thread, and the threads and processes it starts from now on, on `cpus`.
/// Builds the set on the stack and makes one system call, so it may run between fork and exec.
fn run_on(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET writes the bit of `cpu` in the set it is given (cpu below its size).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; the set is as large as the size given.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the calling thread's nice value to `nice` and, with `batch`, the batch policy (a thread
/// that wakes waits for its turn rather than preempting). One or two system calls, so it may run
/// between fork and exec.
fn set_priority(nice: i32, batch: bool) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: both calls change the calling thread's scheduling only; the parameter is on the
    // stack.
    let failed = unsafe {
        (batch && libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) != 0)
            || libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0
    };
    if failed {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `--pin`: keeps this process (the generator) and what it starts from now on (the server) off
/// the last CPU it may use, and returns that CPU for the shop, so the shop's threads never wait
/// for the generator's. Needs two CPUs or more.
fn pin_apart() -> anyhow::Result<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid set for sched_getaffinity to fill.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set is as large as the size given.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&allowed), &mut allowed) };
    ensure!(
        rc == 0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads the bit of a CPU below the set's size.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &allowed) })
        .collect();
    let Some((&shop, rest)) = cpus.split_last().filter(|(_, rest)| !rest.is_empty()) else {
        bail!("--pin needs two CPUs or more; this process may use {cpus:?}");
    };
    run_on(rest).context("sched_setaffinity")?;
    println!("shop_load: --pin: the shop on CPU {shop}, the server and the generator on {rest:?}");
    Ok(shop)
}

fn beside_me(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    // target/<profile>/examples/shop_load -> target/<profile>
    let profile = me
        .parent()
        .and_then(Path::parent)
        .context("target/<profile>")?;
    let path = if name == "sonde" {
        profile.join("sonde")
    } else {
        profile.join("examples").join(name)
    };
    ensure!(
        path.is_file(),
        "{} not found: cargo build --release --bin sonde --example shop --example shop_load",
        path.display()
    );
    Ok(path)
}

/// The three tracepoints of the armed phase: what each is, and its metric. `charged` is the
/// first counter's value (`order.total` on the rejection line, which has no `charged`).
fn tracepoints(charged: &str) -> [(&'static str, Value); 3] {
    let label = |key: &str, expression: &str| json!({"key": key, "expression": expression});
    [
        (
            "paths",
            json!({"name": "checkout_value", "type": "COUNTER", "expression": charged,
                   "labelExpressions": [label("country", "order.country"),
                                        label("tier", "order.user.tier")]}),
        ),
        (
            "general",
            json!({"name": "checkouts", "type": "COUNTER",
                   "labelExpressions": [label("segment", "order.country + \"-\" + order.user.tier")]}),
        ),
        (
            "histogram",
            json!({"name": "order_total", "type": "HISTOGRAM", "expression": "order.total"}),
        ),
    ]
}

/// The native phase's tracepoint: a counter on a line without a probe, reading two locals.
fn native_tracepoint() -> [(&'static str, Value); 1] {
    let label = |key: &str, expression: &str| json!({"key": key, "expression": expression});
    [(
        "native",
        json!({"name": "native_charged", "type": "COUNTER", "expression": "charged",
               "labelExpressions": [label("country", "order.country"),
                                    label("tier", "order.user.tier")]}),
    )]
}

/// How an armed phase ended up on the shop's agent.
enum Armed {
    Bound(Vec<(&'static str, String)>),
    /// A tracepoint was refused (its status says why); the ones created are in the list.
    Refused(Vec<(&'static str, String)>, String),
}

/// Creates the tracepoints on `line` and waits until the shop's agent reports them bound (or
/// one of them in error, with its status).
fn arm(
    api: &ureq::Agent,
    http: SocketAddr,
    line: usize,
    tracepoints: &[(&'static str, Value)],
) -> anyhow::Result<Armed> {
    let target = json!([{"key": "service.name", "value": {"stringValue": "shop-load"}}]);
    let mut ids = Vec::new();
    for (what, metric) in tracepoints.iter().cloned() {
        let body = json!({"tracepoint": {"path": "examples/shop.rs", "line_number": line,
                                         "targeting": target, "metrics": [metric]}});
        let text = api
            .post(format!("http://{http}/api/tracepoints"))
            .header("content-type", "application/json")
            .send(body.to_string())
            .context("creating a tracepoint")?
            .body_mut()
            .read_to_string()?;
        let created: Value = serde_json::from_str(&text)?;
        let id = created["tracepoint"]["ID"]
            .as_str()
            .with_context(|| format!("no ID in {text}"))?;
        ids.push((what, id.to_owned()));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let agents: Value = serde_json::from_str(&get(api, &format!("http://{http}/api/agents"))?)?;
        let bound = agents["agents"].as_array().into_iter().flatten().any(|a| {
            ids.iter().all(|(_, id)| {
                a["tracepoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|t| t["id"] == id.as_str() && t["state"] == "bound")
            })
        });
        if bound {
            return Ok(Armed::Bound(ids));
        }
        // The first of ours not bound, with its status: an error ends the wait at once; an
        // unbound one (a native line while the agent still indexes its debug info, or an agent
        // without native breakpoints) by the deadline.
        let waiting = agents["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["tracepoints"].as_array().into_iter().flatten())
            .find(|t| ids.iter().any(|(_, id)| t["id"] == id.as_str()) && t["state"] != "bound")
            .map(|t| {
                (
                    t["state"] == "error",
                    format!("{}: {}", t["state"], t["message"]),
                )
            });
        match waiting {
            Some((true, why)) => return Ok(Armed::Refused(ids, why)),
            Some((false, why)) if Instant::now() >= deadline => {
                return Ok(Armed::Refused(ids, why));
            }
            _ => {}
        }
        ensure!(
            Instant::now() < deadline,
            "the tracepoints were never bound: {agents}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Deletes the tracepoints and waits until `metric` left the shop's exposition.
fn disarm(
    api: &ureq::Agent,
    http: SocketAddr,
    shop: SocketAddr,
    ids: &[(&'static str, String)],
    metric: &str,
) -> anyhow::Result<()> {
    for (_, id) in ids {
        api.delete(format!("http://{http}/api/tracepoints/{id}"))
            .call()
            .with_context(|| format!("deleting {id}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(api, &format!("http://{shop}/metrics"))?.contains(metric) {
        ensure!(
            Instant::now() < deadline,
            "the tracepoints' metrics never went"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let Args {
        seconds,
        connections,
        rounds,
        rate,
        native,
        callgrind,
        cache_sim,
        pin,
        control,
        shop_nice,
        trace,
        twice,
    } = args()?;
    let trace = trace
        .map(|dir| {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("--trace: creating {}", dir.display()))?;
            anyhow::Ok(Trace {
                dir,
                phases: std::cell::Cell::new(0),
            })
        })
        .transpose()?;
    let shop_cpu = pin.then(pin_apart).transpose()?;
    let callgrind = callgrind
        .then(|| {
            tempfile::Builder::new()
                .prefix("shop-callgrind-")
                .tempdir()
                .map(|d| Callgrind { dir: d.keep() })
        })
        .transpose()?;
    let data = tempfile::tempdir()?;
    let mut server_cmd = Command::new(beside_me("sonde")?);
    {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: between fork and exec the closure only makes system calls with arguments on
        // its stack (`set_priority`): no allocation, no lock. The server's threads inherit it.
        unsafe {
            server_cmd.pre_exec(|| set_priority(SERVER_NICE, true));
        }
    }
    let (server_proc, server_out) = spawn(
        server_cmd
            .args(["server", "--listen", "127.0.0.1", "--grpc-port", "0"])
            .args(["--http-port", "0", "--data-dir"])
            .arg(data.path())
            .env("SONDE_LOG", "warn"),
    )?;
    let grpc = address_after(&server_out, "grpc listening on ")?;
    let http = address_after(&server_out, "http listening on ")?;
    let mut shop_cmd = match &callgrind {
        Some(cg) => {
            let mut c = Command::new("valgrind");
            c.arg("--tool=callgrind")
                .arg(format!(
                    "--cache-sim={}",
                    if cache_sim { "yes" } else { "no" }
                ))
                .arg(format!("--callgrind-out-file={}/shop.%p", cg.dir.display()))
                .arg(beside_me("shop")?);
            if std::env::var_os("SONDE_AGENT_CPU_PERCENT").is_none() {
                c.env("SONDE_AGENT_CPU_PERCENT", "100");
            }
            c
        }
        None => Command::new(beside_me("shop")?),
    };
    if shop_cpu.is_some() || shop_nice.is_some() {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: between fork and exec the closure only makes system calls with arguments on
        // its stack (`run_on`, `set_priority`): no allocation, no lock. Threads the shop starts
        // later inherit both.
        unsafe {
            shop_cmd.pre_exec(move || {
                if let Some(cpu) = shop_cpu {
                    run_on(&[cpu])?;
                }
                match shop_nice {
                    Some(n) => set_priority(n, false),
                    None => Ok(()),
                }
            });
        }
    }
    let (shop_proc, shop_out) = spawn(
        shop_cmd
            .args(["--listen", "127.0.0.1:0"])
            .env("SONDE_AGENT_SERVER", format!("http://{grpc}"))
            .env("SONDE_SERVICE_NAME", "shop-load")
            .env("SONDE_AGENT_NATIVE", if native { "1" } else { "0" })
            .env("RUST_LOG", "warn"),
    )?;
    let shop = address_after(&shop_out, "listening on http://")?;
    let pid = shop_proc.0.id();
    let server_pid = server_proc.0.id();
    println!("shop_load: sonde server {http} (gRPC {grpc}), shop {shop} (pid {pid})");
    if let Some(cg) = &callgrind {
        println!(
            "shop_load: under callgrind; its dumps go to {} (two per phase: the warm-up, then \
             the measured run)",
            cg.dir.display()
        );
    }
    println!(
        "shop_load: {connections} connections, {}, {rounds} rounds of {} phases of {seconds} s \
         (each after 2 s of warm-up)",
        match rate {
            Some(r) => format!("paced at {r:.0} requests/s (latency from when each was due)"),
            None => "closed loop".to_owned(),
        },
        ["two", "three", "four", "five"]
            [usize::from(native) + usize::from(control) + usize::from(twice)]
    );
    let probe_line = |probe: &str| {
        include_str!("shop.rs")
            .lines()
            .position(|l| l.contains(probe))
            .map(|at| at + 1)
            .with_context(|| format!("{probe} in shop.rs"))
    };
    let line = probe_line("probe!(order, discount, charged, took)")?;
    let rejection_line = probe_line("probe!(reason, order)")?;
    let native_line = probe_line("let order_id = order_number();")?;
    let api: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();

    let load = (connections, seconds, rate);
    let mut phases = Vec::new();
    let mut settled = Vec::new();
    let mut native = native;
    for round in 0..rounds {
        phases.push(measure(
            "no tracepoint",
            shop,
            (pid, callgrind.as_ref()),
            server_pid,
            load,
            trace.as_ref(),
            || Ok(()),
        )?);
        let mut armed_phases = Vec::new();
        if twice {
            // Nothing to arm: what its place in the round does to a phase.
            armed_phases.push(("second unarmed", line, Vec::new(), "deep_checkouts_total"));
        }
        if control {
            // The rejection line has no `charged`; the first counter counts `order.total`.
            armed_phases.push((
                "unhit tracepoints",
                rejection_line,
                tracepoints("order.total").to_vec(),
                "deep_checkouts_total",
            ));
        }
        armed_phases.push((
            "three tracepoints",
            line,
            tracepoints("charged").to_vec(),
            "deep_checkouts_total",
        ));
        if native {
            armed_phases.push((
                "native tracepoint",
                native_line,
                native_tracepoint().to_vec(),
                "deep_native_charged_total",
            ));
        }
        for (name, line, tracepoints, metric) in armed_phases {
            let ids = match arm(&api, http, line, &tracepoints)? {
                Armed::Bound(ids) => ids,
                Armed::Refused(ids, why) => {
                    println!(
                        "shop_load: the native tracepoint did not bind ({why}); no native \
                         phase (build the shop as the header says)"
                    );
                    disarm(&api, http, shop, &ids, metric)?;
                    native = false;
                    continue;
                }
            };
            let mut before = String::new();
            let armed = measure(
                name,
                shop,
                (pid, callgrind.as_ref()),
                server_pid,
                load,
                trace.as_ref(),
                || {
                    before = get(&api, &format!("http://{shop}/metrics"))?;
                    Ok(())
                },
            )?;
            let after = get(&api, &format!("http://{shop}/metrics"))?;
            settled.push((
                round,
                describe(&ids, &before, &after, armed.report.ok as f64),
            ));
            phases.push(armed);
            disarm(&api, http, shop, &ids, metric)?;
        }
    }

    println!();
    let counted = callgrind.is_some();
    println!(
        "{:<18} {:>10} {:>10} {:>10} {:>14} {:>10} {:>10} {:>10}{}",
        "phase",
        "req/s",
        "p50 µs",
        "p99 µs",
        "CPU µs/req",
        "of it sys",
        "agent thr",
        "server",
        if counted { "   instructions/req" } else { "" }
    );
    for p in &phases {
        println!(
            "{:<18} {:>10.0} {:>10} {:>10} {:>14.1} {:>10.1} {:>10.2} {:>10.2}{}",
            p.name,
            p.report.throughput(),
            p.report.latency_us(0.5),
            p.report.latency_us(0.99),
            p.cpu_per_request_us(),
            p.sys_per_request_us(),
            p.agent_per_request_us(),
            p.server_per_request_us(),
            p.instructions_per_request()
                .map_or(String::new(), |i| format!(" {i:>18.0}"))
        );
    }
    // Ratios of the means over the rounds, of each armed phase to the unarmed one.
    let mean = |name: &str, f: &dyn Fn(&Phase) -> f64| {
        let xs: Vec<f64> = phases.iter().filter(|p| p.name == name).map(f).collect();
        xs.iter().sum::<f64>() / xs.len().max(1) as f64
    };
    for armed in ARMED {
        if !phases.iter().any(|p| p.name == armed) {
            continue;
        }
        // "-" where the unarmed phases had none of it (the server's CPU rounds to 0 there).
        let ratio = |f: &dyn Fn(&Phase) -> f64| {
            let r = mean(armed, f) / mean("no tracepoint", f);
            if r.is_finite() {
                format!("{r:.3}")
            } else {
                "-".to_owned()
            }
        };
        println!(
            "{:<18} {:>10} {:>10} {:>10} {:>14} {:>10} {:>10} {:>10}{}",
            format!("ratio {}", short(armed)),
            ratio(&|p| p.report.throughput()),
            ratio(&|p| p.report.latency_us(0.5) as f64),
            ratio(&|p| p.report.latency_us(0.99) as f64),
            ratio(&|p| p.cpu_per_request_us()),
            ratio(&|p| p.sys_per_request_us()),
            ratio(&|p| p.agent_per_request_us()),
            ratio(&|p| p.server_per_request_us()),
            if counted {
                format!(
                    " {:>18}",
                    ratio(&|p| p.instructions_per_request().unwrap_or(0.0))
                )
            } else {
                String::new()
            }
        );
    }
    // What is compared with what: each kind of armed phase with the unarmed phases, and with a
    // control, the three tracepoints with the same three on a line the load never reaches (which
    // leaves out what arming itself and installed tracepoints cost).
    let mut comparisons: Vec<(&str, &str)> = ARMED.iter().map(|a| (*a, "no tracepoint")).collect();
    comparisons.push(("three tracepoints", "unhit tracepoints"));
    let present = |name: &str| phases.iter().any(|p| p.name == name);
    comparisons.retain(|(armed, base)| present(armed) && present(base));
    let label = |armed: &str, base: &str| {
        if base == "no tracepoint" {
            short(armed).to_owned()
        } else {
            format!("{} over {}", short(armed), short(base))
        }
    };
    // The same, paired: drift of a shared machine over the run moves CPU per request by more
    // than the tracepoints cost, and pairing each armed phase with its neighbours cancels most
    // of it.
    for &(armed, base) in &comparisons {
        let figure = |f: &dyn Fn(&Phase) -> f64| {
            paired_over(&phases, armed, base, f).map_or("-".to_owned(), |p| {
                format!("{:.3} ± {:.3} (median {:.3})", p.mean, p.error, p.median)
            })
        };
        if paired_over(&phases, armed, base, &|p| p.report.throughput()).is_none() {
            continue;
        }
        println!(
            "paired {}: CPU/req {}, p50 {}, p99 {} (each phase over its {base:?} neighbours; \
             mean ± 2 standard errors, and the median, which a stall of the machine in one \
             phase does not move)",
            label(armed, base),
            figure(&|p| p.cpu_per_request_us()),
            figure(&|p| p.report.latency_us(0.5) as f64),
            figure(&|p| p.report.latency_us(0.99) as f64),
        );
    }
    // Latency over every request of the phases of each kind together: a phase's p99 is made by
    // the few stalls of the machine it happened to catch; over all rounds, both kinds catch
    // about as many.
    let pooled = |name: &str| {
        let mut all: Vec<u32> = phases
            .iter()
            .filter(|p| p.name == name)
            .flat_map(|p| p.report.latencies_us.iter().copied())
            .collect();
        all.sort_unstable();
        load::LoadReport {
            latencies_us: all,
            ..Default::default()
        }
    };
    for &(armed, base) in &comparisons {
        let (armed_all, base_all) = (pooled(armed), pooled(base));
        if rounds < 2 {
            continue;
        }
        let ratio = |q: f64| armed_all.latency_us(q) as f64 / base_all.latency_us(q).max(1) as f64;
        println!(
            "pooled {}: p50 {:.3}, p90 {:.3}, p99 {:.3}, p99.9 {:.3} (every request of its phases \
             against every request of the {base:?} ones: {} and {} µs at p99)",
            label(armed, base),
            ratio(0.5),
            ratio(0.9),
            ratio(0.99),
            ratio(0.999),
            armed_all.latency_us(0.99),
            base_all.latency_us(0.99),
        );
    }
    let mut last = None;
    for (round, lines) in &settled {
        if last != Some(*round) {
            println!();
            println!("round {}:", round + 1);
            last = Some(*round);
        }
        for line in lines {
            println!("  {line}");
        }
    }
    Ok(())
}

/// The server's nice value (with the batch policy): in production it runs on other machines;
/// here it shares the shop's cores, and each status report costs it a few hundred microseconds,
/// which at the shop's priority would delay the shop's requests in a way no deployment sees.
const SERVER_NICE: i32 = 10;

/// The phases other than "no tracepoint", in the order a round runs them.
const ARMED: [&str; 4] = [
    "second unarmed",
    "unhit tracepoints",
    "three tracepoints",
    "native tracepoint",
];

/// A phase's name up to its first space ("second", "unhit", "three", "native"), for the ratio
/// lines and the trace's file names.
fn short(name: &str) -> &str {
    name.split(' ').next().unwrap_or(name)
}

/// The paired ratios of one figure: their mean, two standard errors of it, and their median.
struct Paired {
    mean: f64,
    error: f64,
    median: f64,
}

/// Each `armed` phase's figure `f` over the mean of the `base` phases on either side of it (the
/// one before it in its round, and the next round's), so slow drift of the machine cancels.
/// `None` with fewer than 3 armed phases.
fn paired_over(
    phases: &[Phase],
    armed: &str,
    base: &str,
    f: &dyn Fn(&Phase) -> f64,
) -> Option<Paired> {
    let unarmed = |p: &&Phase| p.name == base;
    let mut ratios: Vec<f64> = phases
        .iter()
        .enumerate()
        .filter(|(_, p)| p.name == armed)
        .filter_map(|(i, p)| {
            let before = phases[..i].iter().rev().find(unarmed);
            let after = phases[i + 1..].iter().find(unarmed);
            let base: Vec<f64> = before.into_iter().chain(after).map(f).collect();
            (!base.is_empty()).then(|| f(p) * base.len() as f64 / base.iter().sum::<f64>())
        })
        .collect();
    if ratios.len() < 3 {
        return None;
    }
    let n = ratios.len() as f64;
    let mean = ratios.iter().sum::<f64>() / n;
    let variance = ratios.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0);
    ratios.sort_by(f64::total_cmp);
    let mid = ratios.len() / 2;
    let median = if ratios.len() % 2 == 1 {
        ratios[mid]
    } else {
        (ratios[mid - 1] + ratios[mid]) / 2.0
    };
    Some(Paired {
        mean,
        error: 2.0 * (variance / n).sqrt(),
        median,
    })
}

/// Per tracepoint: the sample factor it settled on, its CPU per timed evaluation and the refill
/// estimated for it, and how far its count is from the orders completed in the phase.
fn describe(ids: &[(&'static str, String)], before: &str, after: &str, orders: f64) -> Vec<String> {
    let delta = |name: &str| load::total(after, name) - load::total(before, name);
    ids.iter()
        .map(|(what, id)| {
            let every = load::total(
                after,
                &format!(r#"sonde_agent_tracepoint_sample_every{{tracepoint="{id}"}}"#),
            );
            let per_timed_us = |metric: &str| {
                let own = |suffix: &str| {
                    delta(&format!(
                        r#"sonde_agent_tracepoint_{metric}_seconds_{suffix}{{tracepoint="{id}"}}"#
                    ))
                };
                own("sum") / own("count").max(1.0) * 1e6
            };
            let per_evaluation_us = per_timed_us("evaluation");
            let refill_us = per_timed_us("cache_refill");
            let counted = match *what {
                "general" => Some(("deep_checkouts_total", delta("deep_checkouts_total"))),
                "histogram" => Some(("deep_order_total_count", delta("deep_order_total_count"))),
                _ => None,
            };
            let accuracy = counted
                .map(|(name, c)| {
                    format!(
                        "; {name} {c:.0} for {orders:.0} orders ({:+.2}%)",
                        (c - orders) / orders * 100.0
                    )
                })
                .unwrap_or_default();
            format!(
                "{what:<10} sample 1 in {every:<5} {per_evaluation_us:>6.2} µs CPU per timed \
                 evaluation, {refill_us:.2} µs estimated refill{accuracy}"
            )
        })
        .collect()
}
