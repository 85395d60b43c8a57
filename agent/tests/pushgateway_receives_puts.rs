//! `PushGateway` PUTs the registry's text exposition to `/metrics/job/<job>{/<k>/<v>}` on its
//! interval and once more at shutdown; a gateway that fails is counted, never a panic. The
//! gateway here is a fake: a `TcpListener` on an ephemeral port that records each request.
#![cfg(feature = "push")]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    sync::mpsc,
    time::{Duration, Instant},
};

use sonde_agent::{PrometheusProvider, PushGateway, metrics::Metrics};

#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    content_type: String,
    body: String,
}

/// A fake gateway answering every request with `status`; returns its URL and the requests.
fn fake_gateway(status: &'static str) -> (String, mpsc::Receiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap().to_owned(),
                parts.next().unwrap().to_owned(),
            );
            let (mut length, mut content_type) = (0, String::new());
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                let (name, value) = header.split_once(':').unwrap();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap(),
                    "content-type" => content_type = value.trim().to_owned(),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            // Recorded before answering, so a push that has returned has been recorded.
            let request = Request {
                method,
                path,
                content_type,
                body: String::from_utf8(body).unwrap(),
            };
            if tx.send(request).is_err() {
                return;
            }
            let mut stream = reader.into_inner();
            write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
        }
    });
    (url, rx)
}

#[test]
fn pushes_on_the_interval_and_once_more_at_shutdown() {
    let (url, requests) = fake_gateway("200 OK");
    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder()
        .provider(PrometheusProvider::new(registry.clone()))
        .build();
    let rows = metrics.counter("rows_imported_total", "Rows imported.");
    rows.add(5.0);

    let pusher = PushGateway::builder(format!("{url}/"))
        .job("nightly_import")
        .grouping("instance", "worker-3")
        .grouping("path", "/var/data")
        .interval(Duration::from_millis(100))
        .timeout(Duration::from_secs(5))
        .registry(registry)
        .start()
        .unwrap();
    assert_eq!(
        pusher.url(),
        format!("{url}/metrics/job/nightly_import/instance/worker-3/path@base64/L3Zhci9kYXRh")
    );

    let first = requests.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(first.method, "PUT");
    assert_eq!(
        first.path,
        "/metrics/job/nightly_import/instance/worker-3/path@base64/L3Zhci9kYXRh"
    );
    assert_eq!(
        first.content_type,
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(
        first
            .body
            .contains("# TYPE rows_imported_total counter\nrows_imported_total 5\n"),
        "{}",
        first.body
    );
    // The next push, on the interval.
    requests.recv_timeout(Duration::from_secs(10)).unwrap();

    rows.add(2.0);
    pusher.shutdown();
    let last = requests.try_iter().last().expect("a push at shutdown");
    assert_eq!(last.method, "PUT");
    assert!(
        last.body.contains("rows_imported_total 7\n"),
        "{}",
        last.body
    );
}

#[test]
fn failures_are_counted_not_raised() {
    // A gateway that refuses every push, and one where nothing listens.
    let (url, requests) = fake_gateway("500 Internal Server Error");
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    for (url, answers) in [(url, true), (closed, false)] {
        let pusher = PushGateway::builder(&url)
            .job("j")
            .interval(Duration::from_millis(20))
            .timeout(Duration::from_secs(2))
            .registry(prometheus::Registry::new())
            .start()
            .unwrap();
        if answers {
            assert_eq!(
                requests
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap()
                    .method,
                "PUT"
            );
        }
        // The gateway records a request before it answers, so the failure is counted a moment
        // after the request arrives: wait for the count itself.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pusher.failures() == 0 {
            assert!(Instant::now() < deadline, "{url}: no failure counted");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(pusher.pushes(), 0);
        assert!(pusher.last_error().is_some());
        pusher.shutdown();
    }
}
