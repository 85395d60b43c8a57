//! `serve_metrics` exposes the registry at `/metrics` from the agent's own thread: tracepoint
//! metrics appear there, other paths are 404, and shutdown closes the port.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use sonde_agent::{Agent, PrometheusProvider, probe};
use sonde_proto::tracepoint::{Metric, TracePointConfig};

fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    stream.read_to_string(&mut out)?;
    Ok(out)
}

fn served(n: u32) {
    probe!(n);
}

#[test]
fn the_endpoint_serves_tracepoint_metrics() {
    let registry = prometheus::Registry::new();
    let agent = Agent::builder()
        .offline()
        .provider(PrometheusProvider::new(registry.clone()))
        .serve_metrics("127.0.0.1:0".parse().unwrap(), registry)
        .start()
        .unwrap();
    let addr = agent.metrics_addr().expect("an endpoint");
    let site = sonde_agent::sites().find(|s| s.names() == ["n"]).unwrap();
    agent.apply(vec![TracePointConfig {
        id: "t".into(),
        path: site.file().into(),
        line_number: site.line(),
        metrics: vec![Metric {
            name: "served".into(),
            expression: Some("n".into()),
            ..Default::default()
        }],
        ..Default::default()
    }]);
    served(4);
    served(5);

    let page = get(addr, "/metrics").unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("deep_served_total 9"), "{page}");
    assert!(get(addr, "/other").unwrap().starts_with("HTTP/1.1 404"));

    agent.shutdown();
    // Closed once shutdown has returned, or very soon after: waited for, not slept on.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get(addr, "/metrics").is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the port is still open 10 s after shutdown"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
