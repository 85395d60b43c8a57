//! `cold_hits`: what one hit of an armed probe site costs when the caches and the TLB are cold,
//! as in a busy service where each request walks through far more memory than the agent's own.
//!
//! Between two timed hits it writes one byte in every cache line of a buffer (16 MiB by default,
//! `--junk-kib`), which evicts the agent's data and code from the caches and its pages from the
//! TLB. It times three kinds of hit, each over `--hits` hits:
//! - `disarmed`: no tracepoint on the site (one load of the site's state);
//! - `sampled out`: the tracepoints sample (a CPU budget of 0.001% makes them settle on
//!   1 in 1024), and the hit is one of those passed by;
//! - `evaluated`: every hit evaluated (no CPU budget).
//!
//! With `--tracepoints 3` three counters sit on the site, as in the shop example.
//!
//! ```text
//! cargo run --release -p sonde-agent --example cold_hits -- --tracepoints 3
//! ```

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use sonde_agent::{Agent, AgentHandle, Budgets, Capture, PrometheusProvider, probe};
use sonde_proto::tracepoint::{
    LabelExpression, Metric, MetricType, TracePointConfig, label_expression,
};

#[derive(Capture)]
struct Order {
    total: f64,
    country: String,
}

#[derive(Capture)]
struct User {
    tier: String,
}

#[inline(never)]
fn checkout(order: &Order, user: &User) {
    probe!(order, user);
}

struct Args {
    tracepoints: usize,
    junk_kib: usize,
    hits: usize,
    /// Only this row (`disarmed`, `sampled`, `evaluated`): for counting one kind of hit under
    /// callgrind, whose `--toggle-collect` then sees nothing else.
    only: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        tracepoints: 1,
        junk_kib: 16 << 10,
        hits: 2000,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |what: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag} takes {what}"))
        };
        match flag.as_str() {
            "--tracepoints" => {
                a.tracepoints = value("a number of tracepoints (1 to 10)").clamp(1, 10)
            }
            "--junk-kib" => a.junk_kib = value("a size in KiB").max(1),
            "--hits" => a.hits = value("a number of hits").max(10),
            "--only" => match it.next().as_deref() {
                Some(row @ ("disarmed" | "sampled" | "evaluated")) => a.only = Some(row.into()),
                other => panic!("--only takes disarmed, sampled or evaluated, not {other:?}"),
            },
            "--help" | "-h" => {
                println!(
                    "cold_hits [--tracepoints N] [--junk-kib KIB] [--hits N] [--only ROW]\n\
                     Times one hit of an armed probe site with cold caches: disarmed, sampled \
                     out, evaluated (--only disarmed|sampled|evaluated: that row alone, for \
                     callgrind --toggle-collect='*checkout*' to count what one kind of hit \
                     touches)."
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other:?} (see --help)"),
        }
    }
    a
}

fn tracepoints(n: usize) -> Vec<TracePointConfig> {
    let site = sonde_agent::sites()
        .find(|s| s.names() == ["order", "user"])
        .expect("the checkout site");
    let label = |key: &str, expression: &str| LabelExpression {
        key: key.into(),
        value: Some(label_expression::Value::Expression(expression.into())),
    };
    (0..n)
        .map(|i| TracePointConfig {
            id: format!("tp{i}"),
            path: site.file().into(),
            line_number: site.line(),
            metrics: vec![Metric {
                name: format!("cold_{i}"),
                r#type: MetricType::Counter as i32,
                expression: Some("order.total".into()),
                label_expressions: vec![
                    label("country", "order.country"),
                    label("tier", "user.tier"),
                ],
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect()
}

fn agent(budgets: Budgets) -> AgentHandle {
    Agent::builder()
        .service_name("cold_hits")
        .provider(PrometheusProvider::new(prometheus::Registry::new()))
        .budgets(budgets)
        .offline()
        .start()
        .expect("the agent starts")
}

/// The smallest sample factor among the agent's tracepoints.
fn every(h: &AgentHandle) -> Option<u64> {
    h.statuses()
        .iter()
        .filter_map(|s| s.summary.as_ref().map(|s| s.sample_every))
        .min()
}

/// Median and 95th percentile of `f`'s time, each call after the buffer was walked.
fn cold(junk: &mut [u8], hits: usize, f: &dyn Fn()) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(hits);
    for k in 0..hits {
        for j in (0..junk.len()).step_by(64) {
            junk[j] = junk[j].wrapping_add(k as u8);
        }
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    black_box(&junk);
    times.sort();
    (times[hits / 2], times[hits * 95 / 100])
}

fn main() {
    let a = args();
    let mut junk = vec![0u8; a.junk_kib << 10];
    let order = Order {
        total: 12.5,
        country: "NZ".into(),
    };
    let user = User {
        tier: "gold".into(),
    };
    let hit = || checkout(black_box(&order), black_box(&user));
    let wanted = |row: &str| a.only.as_deref().is_none_or(|only| only == row);
    let mut rows = Vec::new();
    if a.only.is_none() {
        rows.push((
            "nothing (the timer alone)",
            cold(&mut junk, a.hits, &|| {}),
            None,
        ));
    }
    if wanted("disarmed") {
        rows.push(("disarmed", cold(&mut junk, a.hits, &hit), None));
    }

    if wanted("sampled") {
        let sampled = agent(Budgets {
            cpu_share: 1e-5,
            cpu_floor: Duration::ZERO,
            cpu_window: Duration::from_millis(10),
            max_sample_every: 1024,
            ..Budgets::default()
        });
        sampled.apply(tracepoints(a.tracepoints));
        // Settle: the factor rises window by window, each window needing a few timed
        // evaluations.
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(300) {
            hit();
        }
        let _ = cold(&mut junk, a.hits / 4, &hit);
        let settled = every(&sampled);
        if settled.is_none_or(|n| n < 64) {
            eprintln!(
                "cold_hits: the tracepoints settled on sampling {settled:?}, not far enough for \
                 the 'sampled out' row to be made of sampled-out hits"
            );
        }
        rows.push(("sampled out", cold(&mut junk, a.hits, &hit), settled));
        sampled.shutdown();
    }

    if wanted("evaluated") {
        let evaluated = agent(Budgets::unlimited_cpu());
        evaluated.apply(tracepoints(a.tracepoints));
        hit();
        rows.push((
            "evaluated",
            cold(&mut junk, a.hits, &hit),
            every(&evaluated),
        ));
        evaluated.shutdown();
    }

    println!(
        "{} tracepoint(s) on the site, {} KiB walked between hits, {} hits each",
        a.tracepoints, a.junk_kib, a.hits
    );
    println!("{:<28} {:>10} {:>10}  sampling", "hit", "p50", "p95");
    for (name, (p50, p95), every) in rows {
        let every = every.map(|n| format!("1 in {n}")).unwrap_or_default();
        println!("{name:<28} {p50:>10.2?} {p95:>10.2?}  {every}");
    }
}
