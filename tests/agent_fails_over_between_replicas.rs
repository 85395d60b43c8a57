//! Sonde's agent, given two replicas of `sonde server` on one PostgreSQL database, keeps its
//! tracepoints through `kill -9` of the replica it watches: its watch stream breaks, it moves to
//! the other replica, which answers NO_CHANGE (the hash is computed from stored content only, so
//! it is the same on both): no UPDATE storm, no reinstall, the metric goes on counting. A comes
//! back (on its port), B is killed in turn, and the agent comes back to A, again without an
//! UPDATE.
//!
//! One agent per process: this binary holds this one test.

mod common;

use std::time::{Duration, Instant};

use common::ServerProcess;
use sonde_agent::{Agent, PrometheusProvider, probe};

/// How long anything that must happen may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

fn hit(n: u64) {
    probe!(n);
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ok() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The value of one series of the server's `/metrics` (0 when absent).
fn server_metric(server: &ServerProcess, series: &str) -> f64 {
    let (status, bytes) = common::send(
        &common::http_agent(),
        "GET",
        &format!("{}/metrics", server.http),
        None,
        &[],
    );
    assert_eq!(status, 200);
    String::from_utf8_lossy(&bytes)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The sum of the agent registry's samples of `name`.
fn agent_metric(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        // A sample is a counter or a gauge; the other reads 0.
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

const WATCH_UPDATES: &str = r#"sonde_server_polls_total{result="update",transport="watch"}"#;
const WATCH_NO_CHANGE: &str = r#"sonde_server_polls_total{result="no_change",transport="watch"}"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn fails_over() {
    let data = tempfile::tempdir().expect("a temp dir");
    let a_port = free_port();
    let a = ServerProcess::spawn_at(&data.path().join("a"), a_port, &[]);
    let b = ServerProcess::spawn(&data.path().join("b"), &[]);

    let registry = prometheus::Registry::new();
    let provider = PrometheusProvider::new(registry.clone());
    let agent = Agent::builder()
        .service_name("failover")
        .provider(provider.clone())
        .self_metrics(provider)
        .server(&a.grpc)
        .server(&b.grpc)
        .start()
        .expect("the agent starts");
    let site = sonde_agent::sites()
        .find(|s| s.names() == ["n"] && s.file().ends_with(file!()))
        .expect("the probe in hit() is registered");
    let (status, json) = a.request(
        "POST",
        "/api/tracepoints",
        Some(
            &serde_json::json!({"tracepoint": {
                "path": site.file(), "line_number": site.line(),
                "targeting": [{"key": "service.name", "value": {"stringValue": "failover"}}],
                "metrics": [{"name": "failover_hits"}],
            }})
            .to_string(),
        ),
    );
    assert_eq!(status, 200, "{json}");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hitter = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                hit(n);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    wait_for("the agent to count hits", || {
        agent_metric(&registry, "deep_failover_hits_total") > 0.0
    });
    let installed = agent_metric(&registry, "sonde_agent_tracepoints_installed_total");
    assert_eq!(installed, 1.0);
    assert_eq!(
        server_metric(&b, WATCH_UPDATES),
        0.0,
        "nobody watches B yet"
    );

    let killed = Instant::now();
    a.kill_9();
    wait_for("the agent to watch B", || {
        server_metric(&b, WATCH_NO_CHANGE) >= 1.0
    });
    let took = killed.elapsed();
    println!("failover: the agent watched B {took:?} after kill -9 of A");
    assert_eq!(
        server_metric(&b, WATCH_UPDATES),
        0.0,
        "B answered the agent's hash with NO_CHANGE, never an UPDATE"
    );
    let counted = agent_metric(&registry, "deep_failover_hits_total");
    wait_for("the hits to go on being counted", || {
        agent_metric(&registry, "deep_failover_hits_total") > counted
    });
    assert_eq!(
        agent_metric(&registry, "sonde_agent_tracepoints_installed_total"),
        installed,
        "nothing was reinstalled"
    );
    assert_eq!(
        agent_metric(&registry, "sonde_agent_tracepoints_active"),
        1.0
    );
    // B lists the agent as watching it.
    wait_for("B to list the agent watching it", || {
        let (_, json) = b.request("GET", "/api/agents", None);
        json["agents"].as_array().is_some_and(|agents| {
            agents
                .iter()
                .any(|x| x["id"] == agent.agent_id() && x["watching"] == true)
        })
    });

    // A comes back where the agent knows it; B goes away: the agent returns to A.
    let a = ServerProcess::spawn_at(&data.path().join("a2"), a_port, &[]);
    let killed = Instant::now();
    b.kill_9();
    wait_for("the agent to watch A again", || {
        server_metric(&a, WATCH_NO_CHANGE) >= 1.0
    });
    println!(
        "failover back: the agent watched A {:?} after kill -9 of B",
        killed.elapsed()
    );
    assert_eq!(server_metric(&a, WATCH_UPDATES), 0.0, "NO_CHANGE again");
    let counted = agent_metric(&registry, "deep_failover_hits_total");
    wait_for("the hits to go on being counted", || {
        agent_metric(&registry, "deep_failover_hits_total") > counted
    });
    assert_eq!(
        agent_metric(&registry, "sonde_agent_tracepoints_installed_total"),
        installed
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hitter.join().expect("the hitting thread");
}

#[test]
fn the_agent_fails_over_to_the_other_replica_without_an_update_storm() {
    common::on_postgres(
        "the_agent_fails_over_to_the_other_replica_without_an_update_storm",
        fails_over,
    );
}
