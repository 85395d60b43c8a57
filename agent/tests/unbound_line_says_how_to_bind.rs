//! A tracepoint on a line without a probe site, in an agent that does not arm lines natively,
//! says in its status what would make it bind: the nearest probe sites, and how to turn native
//! breakpoints on (the environment variable, and the debug info the profile needs).

use sonde_agent::{Agent, PrometheusProvider, TracepointState, probe};
use sonde_proto::tracepoint::{Metric, MetricType, TracePointConfig};

fn probed(n: u64) -> u64 {
    probe!(n);
    n + 1
}

#[test]
fn native_off_says_how_to_turn_it_on() {
    let agent = Agent::builder()
        .offline()
        .provider(PrometheusProvider::new(prometheus::Registry::new()))
        .start()
        .expect("the agent starts");
    let probe_line = sonde_agent::sites()
        .find(|s| s.file() == file!())
        .expect("the probe in probed() is registered")
        .line();
    agent.apply(vec![TracePointConfig {
        id: "off_probe".into(),
        path: file!().into(),
        line_number: probe_line + 1,
        metrics: vec![Metric {
            name: "off_probe_total".into(),
            r#type: MetricType::Counter as i32,
            ..Default::default()
        }],
        ..Default::default()
    }]);
    std::hint::black_box(probed(1));
    let status = agent
        .statuses()
        .into_iter()
        .find(|s| s.id == "off_probe")
        .expect("a status");
    assert_eq!(status.state, TracepointState::Unbound, "{status:?}");
    for wanted in [
        format!("nearest sites: {}:{probe_line}", file!()),
        "SONDE_AGENT_NATIVE=1".to_owned(),
        "debug = 2".to_owned(),
    ] {
        assert!(
            status.message.contains(&wanted),
            "no {wanted:?} in {status:?}"
        );
    }
    agent.shutdown();
}
