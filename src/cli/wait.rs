//! `--wait` of `sonde tracepoint add|edit`: wait until every agent the tracepoint targets has
//! reported on it, say what each made of it, and turn that into the exit code.
//!
//! Exit codes: 0 at least one agent bound it and none reported an error; 4 it is stored but no
//! agent bound it (no agent connected, all unbound, or still pending at the deadline); 5 it is
//! stored but an agent reported an error or disarmed it.

use std::time::{Duration, Instant};

use super::{CliError, Client, client::path_segment};

/// How often the status is asked for while waiting.
const POLL: Duration = Duration::from_millis(100);

/// Exit code: stored, but no agent bound it.
pub const NOT_BOUND: u8 = 4;
/// Exit code: stored, but an agent failed to install it or disarmed it.
pub const FAILED: u8 = 5;

/// Asks `GET /api/tracepoints/{id}/status` until no targeted agent is `pending` or `limit` has
/// passed; returns the last answer.
pub fn wait(c: &Client, id: &str, limit: Duration) -> Result<serde_json::Value, CliError> {
    let deadline = Instant::now() + limit;
    let path = format!("/api/tracepoints/{}/status", path_segment(id));
    loop {
        let status = c.get_json(&path)?;
        let pending = status["summary"]["pending"].as_u64().unwrap_or(0);
        if pending == 0 || Instant::now() >= deadline {
            return Ok(status);
        }
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// One line per agent: `AGENT (SERVICE): bound at FILE:LINE`, `...: unbound: MESSAGE`, ...
pub fn lines(status: &serde_json::Value, limit: Duration) -> Vec<String> {
    let s = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let agents = status["agents"].as_array().cloned().unwrap_or_default();
    if agents.is_empty() {
        return vec!["no live agent is targeted by this tracepoint".into()];
    }
    agents
        .iter()
        .map(|a| {
            let who = match s(a, "service") {
                svc if svc.is_empty() => s(a, "agent"),
                svc => format!("{} ({svc})", s(a, "agent")),
            };
            let state = s(a, "state");
            let sites: Vec<String> = a["sites"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect();
            let mut line = format!("{who}: {state}");
            if !sites.is_empty() {
                line.push_str(&format!(" at {}", sites.join(", ")));
            }
            match s(a, "message") {
                m if !m.is_empty() => line.push_str(&format!(": {m}")),
                _ if state == "pending" => {
                    line.push_str(&format!(": no report within {}s", limit.as_secs_f64()))
                }
                _ => {}
            }
            line
        })
        .collect()
}

/// The exit status the answer means.
pub fn outcome(id: &str, status: &serde_json::Value) -> Result<(), CliError> {
    let n = |k: &str| status["summary"][k].as_u64().unwrap_or(0);
    if n("error") + n("disarmed") > 0 {
        return Err(CliError {
            code: FAILED,
            message: format!(
                "tracepoint {id} is stored, but {} agent(s) reported an error or disarmed it",
                n("error") + n("disarmed")
            ),
        });
    }
    if n("bound") == 0 {
        return Err(CliError {
            code: NOT_BOUND,
            message: format!(
                "tracepoint {id} is stored, but no agent bound it ({})",
                super::output::status_cell(&status["summary"])
            ),
        });
    }
    Ok(())
}
