//! Past its CPU budget a metric tracepoint samples one hit in N, recording each evaluated hit with
//! weight N, instead of going dark: its counter total and its histogram's count and sum stay
//! right, and its status and `sonde_agent_tracepoint_sample_every` say it samples. One still over
//! budget at the largest N disarms, saying why, and so does a log-only one (it may not sample).
//! One agent per process, so one test walks through the cases in order.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::{Duration, Instant};

use sonde_agent::{Agent, AgentHandle, Budgets, PrometheusProvider, TracepointState, probe};
use sonde_proto::tracepoint::{
    LabelExpression, Metric, MetricType, TracePointConfig, label_expression,
};

/// What the application does per request besides reaching the probe: 20 µs of CPU. Against it
/// the allowance below (1% of wall time) is overrun by any evaluation dearer than about 0.25 µs
/// and met at N = 4096 by any cheaper than about 800 µs, so the case holds on any machine.
const WORK: Duration = Duration::from_micros(20);

fn request(label: &str, n: i64) {
    let started = Instant::now();
    while started.elapsed() < WORK {
        std::hint::spin_loop();
    }
    probe!(label, n);
}

fn site() -> &'static sonde_agent::Site {
    sonde_agent::sites()
        .find(|s| s.names() == ["label", "n"])
        .expect("site")
}

fn tracepoint(id: &str, metrics: Vec<Metric>) -> TracePointConfig {
    TracePointConfig {
        id: id.into(),
        path: site().file().into(),
        line_number: site().line(),
        metrics,
        ..Default::default()
    }
}

fn exposition(r: &prometheus::Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&r.gather())
        .unwrap()
}

/// The value of the one sample of `name` with these labels.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name_and_labels} in\n{text}"))
        .parse()
        .unwrap()
}

fn agent(registry: &prometheus::Registry, budgets: Budgets) -> AgentHandle {
    let provider = PrometheusProvider::new(registry.clone());
    Agent::builder()
        .offline()
        .provider(provider.clone())
        .self_metrics(provider)
        .budgets(budgets)
        .start()
        .unwrap()
}

/// The allowance is the floor alone (the shares are negligible): 1% of a core, whatever the
/// process does, so the case does not depend on what else this machine runs.
fn floor_only(floor: Duration, max_sample_every: u64) -> Budgets {
    Budgets {
        cpu_share: 1e-9,
        agent_cpu_share: 1e-9,
        cpu_floor: floor,
        cpu_window: Duration::from_millis(50),
        max_sample_every,
        ..Budgets::default()
    }
}

fn status(agent: &AgentHandle, id: &str) -> sonde_agent::TracepointStatus {
    agent.statuses().into_iter().find(|s| s.id == id).unwrap()
}

#[test]
fn over_budget_a_tracepoint_samples_and_its_metrics_stay_right() {
    // Sampling: a counter with a general label expression, and a histogram of `n`; beside it at
    // the same site, a plain counter (the site passes by only the hits both sample out).
    let registry = prometheus::Registry::new();
    let handle = agent(
        &registry,
        floor_only(
            Duration::from_millis(10),
            Budgets::default().max_sample_every,
        ),
    );
    handle.apply(vec![
        tracepoint(
            "sampled",
            vec![
                Metric {
                    name: "requests".into(),
                    label_expressions: vec![LabelExpression {
                        key: "kind".into(),
                        value: Some(label_expression::Value::Expression(
                            "label + \"-\" + label".into(),
                        )),
                    }],
                    ..Default::default()
                },
                Metric {
                    name: "n".into(),
                    r#type: MetricType::Histogram as i32,
                    expression: Some("n".into()),
                    ..Default::default()
                },
            ],
        ),
        tracepoint(
            "beside",
            vec![Metric {
                name: "plain".into(),
                ..Default::default()
            }],
        ),
    ]);
    assert!(site().is_armed());
    let (mut requests, mut sum) = (0u64, 0i64);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        // n in 90..=110 from a xorshift: a small spread keeps the sum's sampling error small.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = 90 + (seed % 21) as i64;
        request("a", n);
        requests += 1;
        sum += n;
    }
    let st = status(&handle, "sampled");
    let text = exposition(&registry);
    let every = sample(
        &text,
        r#"sonde_agent_tracepoint_sample_every{tracepoint="sampled"}"#,
    );
    assert_eq!(st.state, TracepointState::Bound, "{st:?}");
    assert!(
        every > 1.0 && st.message.contains("sampling 1 in "),
        "it samples: every {every}, {st:?}"
    );
    let counted = sample(&text, r#"deep_requests_total{kind="a-a"}"#);
    let count = sample(&text, "deep_n_count");
    let observed = sample(&text, "deep_n_sum");
    println!(
        "sampled 1 in {every}: counter {counted}, histogram count {count} and sum {observed} \
         for {requests} requests summing {sum}"
    );
    let near = |got: f64, want: f64| (got - want).abs() <= 0.05 * want;
    assert!(
        near(counted, requests as f64),
        "counter {counted} for {requests} requests (1 in {every})"
    );
    assert!(
        near(count, requests as f64),
        "histogram count {count} for {requests} requests (1 in {every})"
    );
    assert!(
        near(observed, sum as f64),
        "histogram sum {observed} for a true sum of {sum} (1 in {every})"
    );
    let beside = status(&handle, "beside");
    let plain = sample(&text, "deep_plain_total");
    assert!(
        near(plain, requests as f64),
        "plain counter {plain} for {requests} requests ({beside:?})"
    );
    // Hits are counted exactly, but for those passed by since the last one the tracepoints saw
    // (fewer than the largest factor, on this one thread).
    for st in [&st, &beside] {
        let summary = st.summary.as_ref().unwrap();
        assert!(
            summary.hits <= requests
                && requests - summary.hits < summary.sample_every.max(every as u64) * 2,
            "{} hits for {requests} requests: {st:?}",
            summary.hits
        );
    }
    drop(handle);

    // The last resort: nothing allowed, and at most 1 in 4: over budget at the largest factor
    // for three windows, it disarms and says why.
    let registry = prometheus::Registry::new();
    let handle = agent(&registry, floor_only(Duration::ZERO, 4));
    handle.apply(vec![tracepoint(
        "hopeless",
        vec![Metric {
            name: "hopeless".into(),
            ..Default::default()
        }],
    )]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&handle, "hopeless").state != TracepointState::Disarmed
        && Instant::now() < deadline
    {
        request("b", 1);
    }
    let st = status(&handle, "hopeless");
    assert_eq!(st.state, TracepointState::Disarmed, "{st:?}");
    assert!(
        st.message.contains("CPU") && st.message.contains("even sampling 1 in 4"),
        "{st:?}"
    );
    let before = sample(&exposition(&registry), "deep_hopeless_total");
    request("b", 1);
    assert_eq!(
        sample(&exposition(&registry), "deep_hopeless_total"),
        before,
        "a disarmed tracepoint records nothing more"
    );

    // A log-only tracepoint may not sample (its lines would be lost): over budget it disarms.
    handle.apply(vec![TracePointConfig {
        args: [("log_msg".to_owned(), "n={n}".to_owned())].into(),
        ..tracepoint("log", Vec::new())
    }]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&handle, "log").state != TracepointState::Disarmed && Instant::now() < deadline {
        request("c", 1);
    }
    let st = status(&handle, "log");
    assert_eq!(st.state, TracepointState::Disarmed, "{st:?}");
    assert!(
        st.message.contains("does not sample"),
        "the status says why: {st:?}"
    );
}
