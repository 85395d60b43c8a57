//! `register_process_metrics` exposes the process's CPU time, memory, open fds, threads and
//! start time as callback gauges, read from `/proc` at each collection, with plausible values.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sonde_agent::{PrometheusProvider, metrics::Metrics, register_process_metrics};

fn values(registry: &prometheus::Registry) -> std::collections::HashMap<String, f64> {
    registry
        .gather()
        .iter()
        .filter(|f| f.name().starts_with("process_"))
        .map(|f| {
            (
                f.name().to_owned(),
                f.get_metric()[0].get_gauge().get_value(),
            )
        })
        .collect()
}

#[test]
fn process_metrics_are_plausible_and_read_at_collection() {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::builder()
        .provider(PrometheusProvider::new(registry.clone()))
        .build();
    assert_eq!(register_process_metrics(&metrics), 7);
    let v = values(&registry);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();

    assert!(v["process_resident_memory_bytes"] > 1e6, "{v:?}");
    assert!(
        v["process_virtual_memory_bytes"] >= v["process_resident_memory_bytes"],
        "{v:?}"
    );
    assert!(v["process_threads"] >= 1.0, "{v:?}");
    assert!(v["process_open_fds"] >= 3.0, "{v:?}");
    assert!(v["process_max_fds"] >= v["process_open_fds"], "{v:?}");
    assert!(v["process_cpu_seconds_total"] >= 0.0, "{v:?}");
    let start = v["process_start_time_seconds"];
    assert!(
        start <= now + 1.0 && start > now - 3600.0,
        "started {start}, now {now}"
    );

    // Read at collection: a new thread and some CPU work show up in the next scrape.
    let threads = v["process_threads"];
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let helper = std::thread::spawn(move || stop_rx.recv().ok());
    let spin = std::time::Instant::now();
    let mut x = 0u64;
    while spin.elapsed() < Duration::from_millis(50) {
        x = x.wrapping_mul(31).wrapping_add(1);
    }
    std::hint::black_box(x);
    let later = values(&registry);
    assert!(later["process_threads"] >= threads + 1.0, "{later:?}");
    assert!(later["process_cpu_seconds_total"] > 0.0, "{later:?}");
    stop_tx.send(()).unwrap();
    helper.join().unwrap();
}
