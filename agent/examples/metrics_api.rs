//! The metrics API by example: counters, gauges (in-flight guards, callback gauges), histograms
//! with the bucket presets, summaries, timers, tags, and the providers behind them.
//!
//! Every Rust snippet of `docs/metrics.md` is here, section by section, so that the guide's code
//! builds in CI. Run it to see the Prometheus exposition the snippets produce:
//!
//! ```text
//! cargo run -p sonde-agent --example metrics_api
//! ```

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sonde_agent::{
    InMemoryProvider, LogProvider, MultiProvider, NullProvider, PrometheusProvider, SeriesSnapshot,
    metrics::{self, Buckets, Metrics},
};

fn main() {
    // --- Setting up -----------------------------------------------------------------------
    // The registry the application already serves on /metrics.
    let registry = prometheus::Registry::new();
    let provider = PrometheusProvider::new(registry.clone());
    let metrics = Metrics::builder()
        .provider(provider.clone()) // clones share the registry and its one collector
        .namespace("shop") // every name becomes shop_<name>
        .global_tag("env", "prod") // a label on every series
        .global_tag("region", "eu")
        .build();

    // --- Counters --------------------------------------------------------------------------
    let requests = metrics.counter("requests_total", "HTTP requests handled.");
    requests.inc();
    requests.add(2.0);

    // A child bound to more tags: resolve it once, keep it, record through it.
    let checkout_requests = requests.with_tags(&[("route", "/checkout")]);
    checkout_requests.inc();

    // Label keys fixed up front; values picked per call, in the order of the keys.
    let orders = metrics.counter_vec("orders_total", "Orders placed.", &["country", "tier"]);
    orders.add(&["NZ", "gold"], 1.0); // hot-path form: no handle built
    let fr_basic = orders.with(&["FR", "basic"]); // a handle for repeated use
    fr_basic.inc();

    // --- Gauges ----------------------------------------------------------------------------
    let queue = metrics.gauge("queue_depth", "Jobs waiting.");
    queue.set(10.0);
    queue.inc();
    queue.dec();
    queue.add(5.0);
    queue.sub(3.0); // 12

    // In flight: +1 now, -1 when the guard drops (early return and unwinding included).
    let in_flight = metrics.gauge("checkouts_in_flight", "Checkouts running now.");
    fn checkout(in_flight: &sonde_agent::metrics::Gauge) -> Result<(), String> {
        let _guard = in_flight.track_in_flight();
        Err("card declined".into()) // the gauge goes back down here too
    }
    let _ = checkout(&in_flight);

    // A callback gauge: read at collection time, for values the application already holds.
    let pool = Arc::new(AtomicUsize::new(8));
    let pool_reader = pool.clone();
    metrics.gauge_fn(
        "db_pool_connections",
        "Open database connections.",
        move || pool_reader.load(Ordering::Relaxed) as f64,
    );

    let workers = metrics.gauge_vec("workers", "Workers by state.", &["state"]);
    workers.with(&["busy"]).set(3.0);
    workers.with(&["idle"]).set(5.0);

    // --- Histograms ------------------------------------------------------------------------
    // Bucket presets: LATENCY_SECONDS (5 ms .. 10 s), SIZES_BYTES (64 B .. 16 MiB),
    // TOKENS (16 .. 32k); or any sorted slice of upper bounds.
    let body = metrics.histogram(
        "request_body_bytes",
        "Request body sizes.",
        Buckets::SIZES_BYTES,
    );
    body.observe(1_500.0);

    let tokens = metrics.histogram_vec(
        "completion_tokens",
        "Tokens per completion.",
        Buckets::TOKENS,
        &["model"],
    );
    tokens.observe(&["small"], 180.0);
    tokens.with(&["large"]).observe(2_900.0);

    let basket = metrics.histogram(
        "basket_items",
        "Items per order.",
        &[1.0, 2.0, 5.0, 10.0, 20.0],
    );
    basket.observe(3.0);

    // --- Summaries -------------------------------------------------------------------------
    // Quantiles 0.5, 0.9 and 0.99 over a sliding window, plus count and sum.
    let render = metrics.summary("render_seconds", "Page render time.");
    for ms in [12.0, 15.0, 40.0] {
        render.observe(ms / 1000.0);
    }

    // --- Timers ----------------------------------------------------------------------------
    // A histogram of seconds with Buckets::LATENCY_SECONDS: name it *_seconds.
    let latency = metrics.timer("checkout_duration_seconds", "Checkout latency.");
    latency.record(Duration::from_millis(42)); // a duration measured elsewhere
    let total = latency.time(|| 2 + 2); // times a closure, returns its value
    assert_eq!(total, 4);
    {
        let _watch = latency.start(); // records when dropped
        // ... the work ...
    }
    let watch = latency.start();
    let took: Duration = watch.stop(); // records now, returns the duration
    assert!(took < Duration::from_secs(1));
    latency.start().discard(); // a stopwatch that records nothing

    let db = metrics.timer_vec("db_query_duration_seconds", "Queries.", &["query"]);
    db.with(&["load_cart"]).record(Duration::from_micros(800));

    // --- Subsystems and several handles on one provider -----------------------------------
    // shop_payments_<name>, on the same registry: share the provider (one per registry).
    let payments = Metrics::builder()
        .provider(provider.clone())
        .namespace("shop")
        .subsystem("payments")
        .global_tag("env", "prod")
        .build();
    payments
        .counter("charges_total", "Card charges.")
        .with_tags(&[("result", "ok")])
        .inc();

    // --- Other providers -------------------------------------------------------------------
    // In memory, for tests: snapshots read values back.
    let mem = Metrics::builder().provider(InMemoryProvider::new()).build();
    mem.counter("jobs_total", "Jobs.").add(3.0);
    let snap = mem.snapshot();
    assert_eq!(snap[0].name, "jobs_total");
    assert_eq!(snap[0].value, SeriesSnapshot::Counter(3.0));

    // Fan out to several providers; LogProvider writes each measurement through `tracing`.
    let both = Metrics::builder()
        .provider(
            MultiProvider::new()
                .with(InMemoryProvider::new())
                .with(LogProvider),
        )
        .build();
    both.gauge("temperature_celsius", "Room temperature.")
        .set(21.5);

    // Null (the default of Metrics::builder() and Metrics::default()): records nothing, costs
    // nothing; libraries can instrument unconditionally.
    let off = Metrics::builder().provider(NullProvider).build();
    off.counter("ignored_total", "Discarded.").inc();

    // One process-wide instance, for code that has no handle passed to it.
    metrics::set_global(metrics.clone());
    metrics::global()
        .counter("started_total", "Process starts.")
        .inc();

    // --- The exposition --------------------------------------------------------------------
    pool.store(9, Ordering::Relaxed); // the callback gauge reads this at collection
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("the registry encodes");
    print!("{text}");

    for line in [
        r#"shop_requests_total{env="prod",region="eu"} 3"#,
        r#"shop_orders_total{country="NZ",env="prod",region="eu",tier="gold"} 1"#,
        r#"shop_queue_depth{env="prod",region="eu"} 12"#,
        r#"shop_checkouts_in_flight{env="prod",region="eu"} 0"#,
        r#"shop_db_pool_connections{env="prod",region="eu"} 9"#,
        r#"shop_checkout_duration_seconds_count{env="prod",region="eu"} 4"#,
        r#"shop_requests_total{env="prod",region="eu",route="/checkout"} 1"#,
        r#"shop_payments_charges_total{env="prod",result="ok"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line}");
    }
}
