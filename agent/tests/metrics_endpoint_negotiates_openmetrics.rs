//! The agent's `/metrics` endpoint answers in OpenMetrics 1.0 when the scraper's `Accept` header
//! asks for it (as Prometheus does by default), and in the text format 0.0.4 otherwise.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use sonde_agent::{Agent, PrometheusProvider, metrics::Metrics};

/// The response's head (lowercased) and body.
fn get(addr: SocketAddr, accept: Option<&str>) -> (String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: test\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_ascii_lowercase(), body.to_owned())
}

#[test]
fn the_endpoint_honours_accept() {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder()
        .provider(PrometheusProvider::new(registry.clone()))
        .build();
    metrics.counter("jobs_total", "Jobs done.").add(2.0);
    let agent = Agent::builder()
        .offline()
        .serve_metrics("127.0.0.1:0".parse().unwrap(), registry)
        .start()
        .unwrap();
    let addr = agent.metrics_addr().expect("an endpoint");

    let prometheus_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (head, body) = get(addr, Some(prometheus_accept));
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("vary: accept"), "{head}");
    assert!(
        body.contains("# TYPE jobs counter\n# HELP jobs Jobs done.\njobs_total 2.0\n"),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");

    for accept in [None, Some("text/plain"), Some("*/*")] {
        let (head, body) = get(addr, accept);
        assert!(
            head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{accept:?}: {head}"
        );
        assert!(
            body.contains("# TYPE jobs_total counter\njobs_total 2\n"),
            "{body}"
        );
        assert!(!body.contains("# EOF"), "{body}");
    }
    agent.shutdown();
}
