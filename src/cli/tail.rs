//! `sonde tail ID`: follows one tracepoint live, asking `GET /api/tracepoints/{id}/status` and
//! `GET /api/tracepoints/{id}/snapshots` once a second until Ctrl-C (or `--for`), or until the
//! tracepoint is deleted.
//!
//! Table mode prints one line per second (time, the binding summary, hits and their rate, fires
//! and errors summed over the agents that report counters; `-` where no agent does), when an
//! agent's state or message changes a line for that agent, and a line per snapshot the agents
//! sent: its log line (the tracepoint's `log_msg` as rendered at the hit) or, without one, a
//! pointer to `sonde snapshots`. At start the last few snapshots already held are printed first,
//! as `tail -f` does. `-o json` prints each status answer as one line of JSON
//! (newline-delimited), in the API's shape, and each new snapshot as `{"snapshot": {...}}`.
//!
//! Log lines reach the server inside snapshots, so a log tracepoint whose `snapshot` arg is
//! `no_collect` logs only in the application; and the server keeps the latest few snapshots per
//! tracepoint, so at more than that many per second some lines are not shown (a line says how
//! many). Snapshots need a token with the `capture` role: with a lesser one, tail says so once
//! and follows the status alone.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use clap::Args;
use serde_json::Value;
use sonde_proto::tracepoint::Snapshot;

use super::{CliError, Client, ClientOpts, Output, client::path_segment, output::status_cell};

/// How often the status is asked for.
const EVERY: Duration = Duration::from_secs(1);
/// How many of the snapshots already held at start are printed first.
const BACKLOG: usize = 10;

/// `sonde tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The tracepoint's ID.
    id: String,
    /// Stop after this long (`30s`, `5m`); without it, follow until Ctrl-C.
    #[arg(long = "for", value_name = "DURATION")]
    duration: Option<String>,
    #[command(flatten)]
    client: ClientOpts,
}

/// Hits, fires and errors summed over the agents that report counters; `None` when none does.
fn counters(status: &Value) -> Option<(u64, u64, u64)> {
    let mut sum: Option<(u64, u64, u64)> = None;
    for agent in status["agents"].as_array().into_iter().flatten() {
        let c = &agent["counters"];
        if c.is_object() {
            let n = |k: &str| c[k].as_u64().unwrap_or(0);
            let s = sum.get_or_insert((0, 0, 0));
            s.0 += n("hits");
            s.1 += n("fires");
            s.2 += n("errors");
        }
    }
    sum
}

/// Follows the tracepoint; see the module doc.
pub fn run(args: TailArgs) -> Result<(), CliError> {
    let limit = match args.duration.as_deref() {
        Some(d) => Some(Duration::from_secs(super::parse_ttl(d).map_err(|_| {
            CliError::usage(format!(
                "--for {d:?}: expected a number and a unit s, m, h or d (e.g. 30s, 5m)"
            ))
        })?)),
        None => None,
    };
    let c = Client::new(&args.client)?;
    let path = format!("/api/tracepoints/{}/status", path_segment(&args.id));
    let mut snapshots = Snapshots::new(format!(
        "/api/tracepoints/{}/snapshots",
        path_segment(&args.id)
    ));
    let started = Instant::now();
    let mut last: Option<(Instant, u64)> = None;
    let mut agents: HashMap<String, (String, String)> = HashMap::new();
    let mut first = true;
    loop {
        let status = match c.get_json(&path) {
            Ok(status) => status,
            // Deleted while followed: say so and stop.
            Err(err) if !first && err.code == 1 && err.message.contains("(404)") => {
                println!("{} removed", args.id);
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        first = false;
        if args.client.output == Output::Json {
            println!("{}", serde_json::to_string(&status).unwrap_or_default());
        } else {
            let now = Instant::now();
            let clock = clock();
            let counted = counters(&status);
            let hits = match counted {
                Some((hits, fires, errors)) => {
                    let rate = last
                        .filter(|(at, before)| hits >= *before && now > *at)
                        .map(|(at, before)| {
                            (hits - before) as f64 / now.duration_since(at).as_secs_f64()
                        });
                    last = Some((now, hits));
                    let rate = rate.map_or(String::new(), |r| format!(" ({r:.1}/s)"));
                    format!("hits {hits}{rate}  fires {fires}  errors {errors}")
                }
                None => "hits -  fires -  errors -".to_owned(),
            };
            println!("{clock}  {}  {hits}", status_cell(&status["summary"]));
            for agent in status["agents"].as_array().into_iter().flatten() {
                let s = |k: &str| agent[k].as_str().unwrap_or_default().to_owned();
                let id = s("agent");
                let now_state = (s("state"), s("message"));
                if agents.get(&id) != Some(&now_state) {
                    let sites: Vec<&str> = agent["sites"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    let mut line = format!("  agent {id} ({}): {}", s("service"), now_state.0);
                    if !sites.is_empty() {
                        line.push_str(&format!(" at {}", sites.join(", ")));
                    }
                    if !now_state.1.is_empty() {
                        line.push_str(&format!(": {}", now_state.1));
                    }
                    println!("{line}");
                    agents.insert(id, now_state);
                }
            }
        }
        snapshots.follow(&c, &args.id, args.client.output == Output::Json);
        if limit.is_some_and(|l| started.elapsed() + EVERY > l) {
            return Ok(());
        }
        std::thread::sleep(EVERY);
    }
}

/// The snapshots followed: which were printed already, and whether they can be read at all.
struct Snapshots {
    path: String,
    /// `(ts_nanos, id)` of every snapshot printed (or skipped as backlog).
    seen: HashSet<(u64, Vec<u8>)>,
    /// False once the server refused them (the token lacks `capture`) or they stopped parsing.
    on: bool,
    first: bool,
    /// The longest list the server answered with (its ring's size, once full).
    longest: usize,
}

impl Snapshots {
    fn new(path: String) -> Self {
        Self {
            path,
            seen: HashSet::new(),
            on: true,
            first: true,
            longest: 0,
        }
    }

    /// Asks for the tracepoint's snapshots and prints the new ones, oldest first. A refusal is
    /// said once on stderr, and the tail goes on with the status alone.
    fn follow(&mut self, c: &Client, id: &str, json: bool) {
        if !self.on {
            return;
        }
        let answer = match c.get_json(&self.path) {
            Ok(answer) => answer,
            Err(err) => {
                if err.message.contains("(403)") {
                    eprintln!(
                        "log lines and snapshots not shown: they need a token with the `capture` \
                         role ({})",
                        err.message
                    );
                    self.on = false;
                }
                // Anything else (the tracepoint just deleted, the server restarting): the
                // status request of the next round says it.
                return;
            }
        };
        let list: Vec<Snapshot> = match answer
            .get("snapshots")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
        {
            Ok(list) => list.unwrap_or_default(),
            Err(e) => {
                eprintln!("snapshots not shown: the server's answer is not a snapshot list: {e}");
                self.on = false;
                return;
            }
        };
        let (new, missed) = self.new_ones(list);
        if missed && !json {
            println!(
                "{}  (every snapshot the server holds is new since the last ask: some may have \
                 been missed)",
                clock()
            );
        }
        for snap in new {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&serde_json::json!({ "snapshot": snap }))
                        .unwrap_or_default()
                );
            } else {
                println!("{}", snapshot_line(&snap, id));
            }
        }
    }

    /// The snapshots of `list` (newest first, as the server sends them) not printed yet, oldest
    /// first; on the first call only the latest [`BACKLOG`]. Also whether some may have been
    /// missed: every one of a list as long as the longest seen so far is new (the server keeps
    /// the latest few, and more than that came since the last ask, or exactly that many).
    fn new_ones(&mut self, list: Vec<Snapshot>) -> (Vec<Snapshot>, bool) {
        let first = std::mem::replace(&mut self.first, false);
        let full = list.len();
        let mut new: Vec<Snapshot> = list
            .into_iter()
            .filter(|s| self.seen.insert((s.ts_nanos, s.id.clone())))
            .collect();
        let missed = !first && full > 1 && new.len() == full && full >= self.longest;
        self.longest = self.longest.max(full);
        if first {
            new.truncate(BACKLOG);
        }
        new.reverse();
        (new, missed)
    }
}

/// One snapshot as a line: its time, where it came from, and its log line or a pointer to
/// `sonde snapshots`.
fn snapshot_line(snap: &Snapshot, id: &str) -> String {
    let attr = |key: &str| {
        snap.resource
            .iter()
            .find(|kv| kv.key == key)
            .map(|kv| super::snapshots::any_text(kv.value.as_ref()))
            .filter(|v| !v.is_empty())
    };
    let from = match (attr("service.name"), attr("process.pid")) {
        (Some(s), Some(p)) => format!("{s}/{p}"),
        (Some(s), None) => s,
        (None, Some(p)) => format!("pid {p}"),
        (None, None) => "an agent".to_owned(),
    };
    let at = clock_at(snap.ts_nanos / 1_000_000);
    match snap.log_msg.as_deref() {
        Some(msg) => format!("{at}  log  {from}: {msg}"),
        None => format!("{at}  snapshot  {from} (sonde snapshots {id})"),
    }
}

/// The wall-clock time of day, UTC, `HH:MM:SS`.
fn clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

/// The time of day of `ms` since the epoch, UTC, `HH:MM:SS.mmm`.
fn clock_at(ms: u64) -> String {
    let secs = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_over_the_agents_that_report_them() {
        let status = serde_json::json!({"agents": [
            {"agent": "a", "counters": {"hits": 5, "fires": 4, "errors": 1}},
            {"agent": "b"},
            {"agent": "c", "counters": {"hits": 2, "fires": 2, "errors": 0}},
        ]});
        assert_eq!(counters(&status), Some((7, 6, 1)));
        assert_eq!(
            counters(&serde_json::json!({"agents": [{"agent": "b"}]})),
            None
        );
    }

    fn snap(ts: u64, log: Option<&str>) -> Snapshot {
        Snapshot {
            id: ts.to_be_bytes().to_vec(),
            ts_nanos: ts * 1_000_000,
            log_msg: log.map(str::to_owned),
            ..Snapshot::default()
        }
    }

    fn times(list: &[Snapshot]) -> Vec<u64> {
        list.iter().map(|s| s.ts_nanos / 1_000_000).collect()
    }

    #[test]
    fn new_snapshots_come_once_oldest_first_after_a_backlog_of_the_latest() {
        let mut f = Snapshots::new(String::new());
        // Newest first, as the server sends them; 12 held: only the latest 10 at start.
        let held: Vec<Snapshot> = (1..=12).rev().map(|t| snap(t, None)).collect();
        let (new, missed) = f.new_ones(held.clone());
        assert_eq!(times(&new), (3..=12).collect::<Vec<_>>());
        assert!(!missed);
        // Two more came: the ring dropped the two oldest.
        let mut next: Vec<Snapshot> = (13..=14).rev().map(|t| snap(t, None)).collect();
        next.extend(held[..10].iter().cloned());
        let (new, missed) = f.new_ones(next);
        assert_eq!(times(&new), [13, 14]);
        assert!(!missed);
        // Nothing new.
        let (new, missed) = f.new_ones(vec![snap(14, None)]);
        assert!(new.is_empty() && !missed);
        // A whole ring of new ones: some may have been missed.
        let (new, missed) = f.new_ones((100..112).rev().map(|t| snap(t, None)).collect());
        assert_eq!(new.len(), 12);
        assert!(missed);
    }

    #[test]
    fn a_snapshot_line_shows_its_time_origin_and_log_line() {
        use sonde_proto::common::{AnyValue, KeyValue, any_value::Value as V};
        let mut s = snap(3_723_004, Some("order from NZ"));
        s.resource = vec![
            KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue {
                    value: Some(V::StringValue("shop".into())),
                }),
            },
            KeyValue {
                key: "process.pid".into(),
                value: Some(AnyValue {
                    value: Some(V::IntValue(42)),
                }),
            },
        ];
        assert_eq!(
            snapshot_line(&s, "tp1"),
            "01:02:03.004  log  shop/42: order from NZ"
        );
        s.log_msg = None;
        s.resource.clear();
        assert_eq!(
            snapshot_line(&s, "tp1"),
            "01:02:03.004  snapshot  an agent (sonde snapshots tp1)"
        );
    }
}
