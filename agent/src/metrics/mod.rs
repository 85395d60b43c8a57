//! [`Metrics`]: the metrics API for the metrics an application writes by hand, on the same
//! providers as tracepoint metrics (Prometheus, OpenTelemetry, in-memory, null, log, multi).
//!
//! ```
//! use sonde_agent::metrics::{Buckets, Metrics};
//! use sonde_agent::{InMemoryProvider, SeriesSnapshot};
//!
//! let metrics = Metrics::builder()
//!     .provider(InMemoryProvider::new())
//!     .namespace("shop")
//!     .global_tag("env", "test")
//!     .build();
//!
//! let orders = metrics.counter_vec("orders_total", "Orders placed.", &["country"]);
//! orders.with(&["NZ"]).inc();
//! orders.with(&["NZ"]).add(2.0);
//!
//! let latency = metrics.timer("checkout_duration_seconds", "Checkout latency.");
//! latency.time(|| { /* the work */ });
//!
//! let in_flight = metrics.gauge("checkouts_in_flight", "Checkouts running now.");
//! {
//!     let _guard = in_flight.track_in_flight(); // +1 now, -1 at the end of the scope
//! }
//!
//! let snap = metrics.snapshot();
//! let nz = snap.iter().find(|m| m.name == "shop_orders_total").unwrap();
//! assert_eq!(nz.tags, vec![("country".to_owned(), "NZ".to_owned()), ("env".to_owned(), "test".to_owned())]);
//! assert_eq!(nz.value, SeriesSnapshot::Counter(3.0));
//! ```
//!
//! # Names and tags
//! A metric's exposed name is `<namespace>_<subsystem>_<name>` (each part only when set). Tags
//! are labels: the provider's global tags apply to everything, an instrument's own keys are
//! fixed when it is created (`counter_vec(.., &["route"])`), and [`Counter::with_tags`] derives
//! an instrument with more. Keep tag values low-cardinality: past `max_series` label sets per
//! metric (1,000 by default) the excess folds into one `sonde_overflow` series.
//!
//! # Hot paths
//! An instrument handle holds its series: `counter.inc()` is one virtual call into the provider
//! (an atomic add for Prometheus). `vec.add(&values, v)` hashes the values that vary (global tags
//! are the same for every series, so they are left out of the key) and finds the cached series
//! without a lock, allocating nothing once the label set exists (see `series_cache.rs`);
//! `vec.with(&values)` does the same and builds a handle. Nothing here panics
//! into the application: a misuse (one name registered as two kinds) is logged once and gives a
//! handle that records nothing.
//!
//! # The folder
//! Everything that writes metrics lives here, below the tracepoint path: the instruments of this
//! API ([`registry`](self) and its handles), the provider trait tracepoints and instruments record
//! through (`provider.rs`) and its implementations (`prometheus.rs`, `prom_client.rs` for
//! `prometheus-client`, `facade.rs` for the `metrics` facade, `otel.rs`, `statsd.rs`, and
//! the small ones in `backends.rs`), the per-metric series cache with its cardinality cap
//! (`series_cache.rs`), summaries (`summary.rs`), the exposition text (`encoder.rs` writes it,
//! `exposition.rs` negotiates and gathers), exporters (`endpoint.rs` serves `/metrics`, `push.rs`,
//! `otlp.rs`), process metrics (`process.rs`) and the agent's own `sonde_agent_*` metrics
//! (`self_metrics.rs`). May use: nothing else in the crate.

pub(crate) mod backends;
pub(crate) mod buckets;
pub(crate) mod encoder;
pub(crate) mod endpoint;
pub mod exposition;
#[cfg(feature = "metrics-facade")]
pub(crate) mod facade;
#[cfg(feature = "opentelemetry")]
pub(crate) mod otel;
#[cfg(feature = "otlp")]
pub(crate) mod otlp;
pub(crate) mod process;
#[cfg(feature = "prometheus-client")]
pub(crate) mod prom_client;
pub(crate) mod prometheus;
pub(crate) mod provider;
#[cfg(feature = "push")]
pub(crate) mod push;
mod registry;
pub(crate) mod self_metrics;
pub(crate) mod series_cache;
#[cfg(feature = "statsd")]
pub(crate) mod statsd;
pub(crate) mod summary;

pub use buckets::Buckets;
pub use registry::{
    Counter, CounterVec, Gauge, GaugeVec, Histogram, HistogramVec, InFlight, MetricInfo,
    MetricSnapshot, Metrics, MetricsBuilder, Stopwatch, Timer, TimerVec, global, set_global,
};
