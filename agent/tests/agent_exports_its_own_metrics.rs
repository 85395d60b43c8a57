//! With `self_metrics`, the agent exports `sonde_agent_*`: tracepoints installed and active,
//! fires, false conditions, errors by stage and kind, sampled evaluation time and the cache refill
//! estimated for it, and control-plane failures while the server cannot be reached. One agent per
//! process: one test.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::{Duration, Instant};

use sonde_agent::{Agent, PrometheusProvider, probe};
use sonde_proto::tracepoint::{Metric, TracePointConfig};

fn step(n: i64) {
    probe!(n);
}

fn exposition(r: &prometheus::Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&r.gather())
        .unwrap()
}

fn has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[test]
fn the_agent_counts_what_it_does() {
    // A port nothing listens on, so the client fails and counts it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let registry = prometheus::Registry::new();
    let prom = PrometheusProvider::new(registry.clone());
    let agent = Agent::builder()
        .server(format!("http://{closed}"))
        .provider(prom.clone())
        .self_metrics(prom)
        .start()
        .unwrap();
    let site = sonde_agent::sites().find(|s| s.names() == ["n"]).unwrap();
    let tp = |id: &str, condition: &str, value: &str| TracePointConfig {
        id: id.into(),
        path: site.file().into(),
        line_number: site.line(),
        args: [("condition".to_owned(), condition.to_owned())].into(),
        metrics: vec![Metric {
            name: format!("m_{id}"),
            expression: Some(value.into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    // A tracepoint with a log line is timed too, but not repeated to estimate a refill: the
    // repeat would not log, and the log's cost would be taken for a refill.
    let mut logged = tp("logged", "true", "n");
    logged.args.insert("log_msg".into(), "n={n}".into());
    agent.apply(vec![
        tp("good", "n > 0", "n"),
        tp("bad", "true", "n / 0"),
        logged.clone(),
    ]);
    for n in [1, 2, -1] {
        step(n);
    }
    let text = exposition(&registry);
    for line in [
        "sonde_agent_tracepoints_installed_total 3",
        "sonde_agent_tracepoints_active 3",
        r#"sonde_agent_tracepoint_fires_total{tracepoint="good"} 2"#,
        r#"sonde_agent_tracepoint_condition_false_total{tracepoint="good"} 1"#,
        r#"sonde_agent_tracepoint_errors_total{kind="arithmetic",stage="value",tracepoint="bad"} 3"#,
        // The first hit of each tracepoint is one of the sampled ones.
        r#"sonde_agent_tracepoint_evaluation_seconds_count{tracepoint="good"} 1"#,
        r#"sonde_agent_tracepoint_cache_refill_seconds_count{tracepoint="good"} 1"#,
        r#"sonde_agent_tracepoint_evaluation_seconds_count{tracepoint="logged"} 1"#,
        r#"sonde_agent_tracepoint_cache_refill_seconds_count{tracepoint="logged"} 0"#,
        // The repeat records nothing: the metric counts each hit once.
        r#"deep_m_good_total 3"#,
    ] {
        assert!(has(&text, line), "missing {line:?} in\n{text}");
    }

    agent.apply(vec![tp("good", "n > 0", "n"), logged]);
    let text = exposition(&registry);
    assert!(
        has(&text, "sonde_agent_tracepoints_removed_total 1"),
        "{text}"
    );
    assert!(has(&text, "sonde_agent_tracepoints_active 2"), "{text}");

    // A tracepoint whose window ended long ago: reached once, it counts as expired and does
    // nothing more.
    let mut old = tp("old", "true", "n");
    old.args.insert("window_end".into(), "1000000000".into());
    agent.apply(vec![tp("good", "n > 0", "n"), old]);
    step(5);
    step(6);
    let text = exposition(&registry);
    assert!(
        has(&text, "sonde_agent_tracepoints_expired_total 1"),
        "{text}"
    );
    assert!(!text.contains("deep_m_old_total"), "{text}");
    let status = agent
        .statuses()
        .into_iter()
        .find(|s| s.id == "old")
        .unwrap();
    assert_eq!(status.state, sonde_agent::TracepointState::Disarmed);
    assert!(status.message.starts_with("expired"), "{status:?}");

    let start = Instant::now();
    loop {
        let text = exposition(&registry);
        let failures = text
            .lines()
            .find_map(|l| l.strip_prefix("sonde_agent_control_plane_failures_total "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if failures >= 1.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no failure counted:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.shutdown();
}
