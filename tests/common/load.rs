//! A closed-loop HTTP load generator for the shop example, on loopback only: `connections`
//! threads, each with its own keep-alive connection, post orders to `POST /checkout` back to back
//! for a bounded time and count what completed. Shared by `tests/metrics_stay_true_under_load.rs`
//! and `examples/shop_load.rs` (included with `#[path]`).
#![allow(dead_code)] // each includer uses a different subset

use std::{
    io::Read as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// Countries and tiers the orders cycle through (4 × 3 label sets).
pub const COUNTRIES: &[&str] = &["NZ", "FR", "DE", "JP"];
pub const TIERS: &[&str] = &["gold", "silver", "basic"];

/// What one run completed.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Orders answered 200.
    pub ok: u64,
    /// Requests answered otherwise, or failed.
    pub failed: u64,
    /// The sum of the `total` of the orders answered 200.
    pub total_sum: f64,
    /// Latency of each completed request, in microseconds (sorted).
    pub latencies_us: Vec<u32>,
    /// Each completed request as (when it was sent, in microseconds from the run's start; its
    /// latency in microseconds), in no particular order: where in the run the slow ones fell.
    pub timeline: Vec<(u32, u32)>,
    pub elapsed: Duration,
}

impl LoadReport {
    /// Completed requests per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at quantile `q` (0..=1), in microseconds.
    pub fn latency_us(&self, q: f64) -> u32 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.latencies_us.len() - 1) as f64).round() as usize;
        self.latencies_us[rank]
    }
}

/// An order's JSON and its total. Totals vary from 90.00 to 109.99 (a xorshift per thread): not
/// all alike, so a histogram's sum is checked against real values, but close enough that a sum
/// estimated from one order in 64 is within 0.2% (one standard deviation) of the true sum, and a
/// 5% check fails only on a biased estimate, not on bad luck.
fn order(seed: &mut u64) -> (String, f64) {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    let total = 90.0 + (*seed % 2_000) as f64 / 100.0;
    let country = COUNTRIES[(*seed >> 20) as usize % COUNTRIES.len()];
    let tier = TIERS[(*seed >> 28) as usize % TIERS.len()];
    let body = format!(
        r#"{{"country":"{country}","items":[{{"sku":"tea","qty":1}}],"total":{total},"user":{{"id":"u{}","tier":"{tier}"}}}}"#,
        *seed % 1000
    );
    (body, total)
}

/// Posts orders to `http://{addr}/checkout` from `connections` threads for `duration`, each
/// thread sending its next request as soon as the last one is answered (closed loop).
pub fn run(addr: SocketAddr, connections: usize, duration: Duration) -> LoadReport {
    run_paced(addr, connections, duration, None)
}

/// As [`run`], but with `rate` (requests per second over all threads) each thread sends on a
/// fixed schedule instead: request `k` is due at `k / (rate / connections)` seconds, and its
/// latency is measured from when it was due, so a server that falls behind shows it in the
/// latencies (no coordinated omission) rather than in a lower rate.
pub fn run_paced(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
) -> LoadReport {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r.max(1e-3)));
    let workers: Vec<_> = (0..connections)
        .map(|i| {
            let stop = stop.clone();
            // Each thread's schedule starts a fraction of an interval after the previous one's,
            // so the threads do not send in bursts.
            let pace = interval.map(|every| (every, every.mul_f64(i as f64 / connections as f64)));
            std::thread::spawn(move || worker(addr, i as u64, &stop, pace, started))
        })
        .collect();
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let mut report = LoadReport::default();
    for w in workers {
        let part = w.join().expect("a load worker panicked");
        report.ok += part.ok;
        report.failed += part.failed;
        report.total_sum += part.total_sum;
        report.latencies_us.extend(part.latencies_us);
        report.timeline.extend(part.timeline);
    }
    report.elapsed = started.elapsed();
    report.latencies_us.sort_unstable();
    report
}

fn worker(
    addr: SocketAddr,
    index: u64,
    stop: &AtomicBool,
    pace: Option<(Duration, Duration)>,
    started: Instant,
) -> LoadReport {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = format!("http://{addr}/checkout");
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (index + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut report = LoadReport::default();
    let mut sink = Vec::with_capacity(256);
    let mut due = Instant::now() + pace.map_or(Duration::ZERO, |(_, offset)| offset);
    while !stop.load(Ordering::Relaxed) {
        let (body, total) = order(&mut seed);
        let sent = match pace {
            Some((interval, _)) => {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let at = due;
                due += interval;
                at
            }
            None => Instant::now(),
        };
        let result = agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body.as_bytes());
        match result {
            Ok(mut resp) if resp.status() == 200 => {
                sink.clear();
                // Read the body so the connection is reused.
                let _ = resp.body_mut().as_reader().read_to_end(&mut sink);
                report.ok += 1;
                report.total_sum += total;
                let micros = |d: Duration| d.as_micros().min(u32::MAX as u128) as u32;
                let latency = micros(sent.elapsed());
                report.latencies_us.push(latency);
                report
                    .timeline
                    .push((micros(sent.saturating_duration_since(started)), latency));
            }
            _ => report.failed += 1,
        }
    }
    report
}

/// The sum of every sample of `name` in a Prometheus text exposition (all its label sets), 0
/// when there is none.
pub fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
