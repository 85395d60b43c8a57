//! The agent's own thread (status reports, polls, the metrics endpoint) runs behind the
//! application's threads: the batch policy and 10 nice steps below by default, as `thread_nice`
//! or `SONDE_AGENT_THREAD_NICE` says, and the application's threads keep theirs.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::{Duration, Instant};

use sonde_agent::{Agent, AgentBuilder};

/// Field `n` (1-based, as `proc(5)` numbers them) of a `/proc/.../stat` line; the command name
/// (field 2) may hold spaces, so fields are counted from its closing parenthesis.
fn stat_field(stat: &str, n: usize) -> i32 {
    let after = stat.rsplit_once(") ").expect("a stat line").1;
    after
        .split_whitespace()
        .nth(n - 3)
        .unwrap()
        .parse()
        .unwrap()
}

/// The nice value in a stat line (field 19).
fn nice_in(stat: &str) -> i32 {
    stat_field(stat, 19)
}

/// The scheduling policy in a stat line (field 41: 0 normal, 3 batch).
fn policy_in(stat: &str) -> i32 {
    stat_field(stat, 41)
}

const SCHED_OTHER: i32 = 0;
const SCHED_BATCH: i32 = 3;

/// The `(nice, policy)` of this process's thread named `sonde-agent`, once its nice value is
/// `expected` (it sets it as it starts), or as it is after 10 s.
fn agent_thread(expected: i32) -> (i32, i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim_end() == "sonde-agent")
            })
            .find_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
            .map(|stat| (nice_in(&stat), policy_in(&stat)));
        match found {
            Some((n, policy)) if n == expected || Instant::now() > deadline => return (n, policy),
            None if Instant::now() > deadline => panic!("no thread named sonde-agent"),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn own_nice() -> i32 {
    nice_in(&std::fs::read_to_string("/proc/thread-self/stat").unwrap())
}

/// The nice values of this process's other threads (the test harness's main thread among them).
fn others_nice() -> Vec<(String, i32)> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            (comm.trim_end() != "sonde-agent").then(|| (comm.trim_end().to_owned(), nice_in(&stat)))
        })
        .collect()
}

/// An agent whose thread exists: offline, serving its metrics endpoint.
fn builder() -> AgentBuilder {
    let registry = prometheus::Registry::new();
    Agent::builder()
        .offline()
        .serve_metrics("127.0.0.1:0".parse().unwrap(), registry)
}

#[test]
fn the_agent_thread_runs_below_the_application_and_leaves_it_as_it_was() {
    let mine = own_nice();

    let agent = builder().start().unwrap();
    let ten = (mine + 10).min(19);
    assert_eq!(agent_thread(ten), (ten, SCHED_BATCH));
    let others = others_nice();
    assert!(
        others.len() >= 2,
        "the test's thread and the main one: {others:?}"
    );
    assert!(
        others.iter().all(|(_, n)| *n == mine),
        "the application's threads kept their nice value {mine}: {others:?}"
    );
    agent.shutdown();

    let agent = builder().thread_nice(3).start().unwrap();
    let three = (mine + 3).min(19);
    assert_eq!(agent_thread(three), (three, SCHED_BATCH));
    agent.shutdown();

    let agent = builder().thread_nice(0).start().unwrap();
    assert_eq!(
        agent_thread(mine),
        (mine, SCHED_OTHER),
        "0 leaves it as the application's threads"
    );
    agent.shutdown();

    let err = builder().thread_nice(20).start().unwrap_err().to_string();
    assert!(err.contains("from 0 to 19, not 20"), "{err}");
    let err = builder().thread_nice(-1).start().unwrap_err().to_string();
    assert!(err.contains("from 0 to 19, not -1"), "{err}");

    // SAFETY: no other thread of this test binary reads the environment meanwhile (one test).
    unsafe { std::env::set_var("SONDE_AGENT_THREAD_NICE", "high") };
    let err = builder().from_env().start().unwrap_err().to_string();
    assert!(err.contains("SONDE_AGENT_THREAD_NICE"), "{err}");
    assert!(err.contains("\"high\""), "{err}");
    unsafe { std::env::set_var("SONDE_AGENT_THREAD_NICE", "5") };
    let agent = builder().from_env().start().unwrap();
    let five = (mine + 5).min(19);
    assert_eq!(agent_thread(five), (five, SCHED_BATCH));
    agent.shutdown();
    unsafe { std::env::remove_var("SONDE_AGENT_THREAD_NICE") };
}
