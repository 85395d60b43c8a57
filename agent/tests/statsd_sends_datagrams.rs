//! `StatsdProvider` sends each kind as its StatsD line with DogStatsD tags, in datagrams no
//! larger than the packet size, on its flush period as well as on `flush()`, and samples counts
//! at the configured rate. The server is a UDP socket on an ephemeral port.
#![cfg(feature = "statsd")]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::{net::UdpSocket, time::Duration};

use sonde_agent::{StatsdProvider, metrics::Metrics};

fn server() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket
}

/// Datagrams until `n` lines arrived (or the read times out); returns the lines and the
/// largest datagram's size.
fn receive(server: &UdpSocket, n: usize) -> (Vec<String>, usize) {
    let (mut lines, mut largest) = (Vec::new(), 0);
    let mut buf = [0u8; 65536];
    while lines.len() < n {
        let Ok(len) = server.recv(&mut buf) else {
            break;
        };
        largest = largest.max(len);
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        lines.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
    }
    (lines, largest)
}

#[test]
fn every_kind_becomes_its_statsd_line() {
    let server = server();
    let statsd = StatsdProvider::builder(server.local_addr().unwrap().to_string())
        .prefix("shop")
        .tag("region", "nz")
        .flush_period(Duration::from_secs(3600))
        .build()
        .unwrap();
    let metrics = Metrics::builder()
        .provider(statsd.clone())
        .global_tag("env", "test")
        .build();

    let orders = metrics.counter_vec("orders_total", "Orders.", &["country"]);
    orders.with(&["NZ"]).inc();
    orders.with(&["NZ"]).add(2.5);
    orders.with(&["NZ"]).add(0.5);
    let depth = metrics.gauge("queue_depth", "Queue depth.");
    depth.set(5.0);
    depth.sub(2.0);
    {
        let _in_flight = depth.track_in_flight();
    }
    metrics
        .histogram("size_bytes", "Sizes.", &[1.0])
        .observe(512.0);
    metrics.summary("latency_seconds", "Latency.").observe(0.25);
    metrics.gauge_fn("pool_size", "Pool size.", || 7.0);
    statsd.flush();

    let expected = [
        "shop.orders_total:1|c|#region:nz,country:NZ,env:test",
        "shop.orders_total:2|c|#region:nz,country:NZ,env:test",
        "shop.orders_total:1|c|#region:nz,country:NZ,env:test",
        "shop.queue_depth:5|g|#region:nz,env:test",
        "shop.queue_depth:3|g|#region:nz,env:test",
        "shop.queue_depth:4|g|#region:nz,env:test",
        "shop.queue_depth:3|g|#region:nz,env:test",
        "shop.size_bytes:512|h|#region:nz,env:test",
        "shop.latency_seconds:0.25|d|#region:nz,env:test",
        "shop.pool_size:7|g|#region:nz,env:test",
    ];
    let (lines, _) = receive(&server, expected.len());
    assert_eq!(lines, expected);
    assert_eq!(statsd.errors(), 0);
}

#[test]
fn the_flush_thread_sends_without_being_asked() {
    let server = server();
    let statsd = StatsdProvider::builder(server.local_addr().unwrap().to_string())
        .flush_period(Duration::from_millis(20))
        .build()
        .unwrap();
    let metrics = Metrics::builder().provider(statsd).build();
    metrics.counter("ticks_total", "Ticks.").inc();
    let (lines, _) = receive(&server, 1);
    assert_eq!(lines, ["ticks_total:1|c"]);
}

#[test]
fn datagrams_fit_the_packet_size_and_counts_are_sampled() {
    let server = server();
    let statsd = StatsdProvider::builder(server.local_addr().unwrap().to_string())
        .max_packet_size(256)
        .sample_rate(0.5)
        .flush_period(Duration::from_secs(3600))
        .build()
        .unwrap();
    let metrics = Metrics::builder().provider(statsd.clone()).build();
    let hits = metrics.counter("hits_total", "Hits.");
    for _ in 0..1000 {
        hits.inc();
    }
    statsd.flush();
    // About 500 lines, all sent by now: read until the socket stays quiet.
    server
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let (lines, largest) = receive(&server, 1000);
    assert!(largest <= 256, "a datagram of {largest} bytes");
    assert!((350..650).contains(&lines.len()), "{} sent", lines.len());
    assert!(
        lines.iter().all(|l| l == "hits_total:1|c|@0.5"),
        "{lines:?}"
    );
}
