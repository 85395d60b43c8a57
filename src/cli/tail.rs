//! `sonde tail ID`: follows one tracepoint live, asking `GET /api/tracepoints/{id}/status` once a
//! second until Ctrl-C (or `--for`), or until the tracepoint is deleted.
//!
//! Table mode prints one line per second (time, the binding summary, hits and their rate, fires
//! and errors summed over the agents that report counters; `-` where no agent does) and, when an
//! agent's state or message changes, a line for that agent. `-o json` prints each answer as one
//! line of JSON (newline-delimited), in the API's shape.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use clap::Args;
use serde_json::Value;

use super::{CliError, Client, ClientOpts, Output, client::path_segment, output::status_cell};

/// How often the status is asked for.
const EVERY: Duration = Duration::from_secs(1);

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
        if limit.is_some_and(|l| started.elapsed() + EVERY > l) {
            return Ok(());
        }
        std::thread::sleep(EVERY);
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
}
