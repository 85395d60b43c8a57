//! Sonde's in-process agent: probe sites at lines of code, tracepoints from the control plane,
//! and metrics into the application's Prometheus registry.
//!
//! ```
//! use sonde_agent::{Agent, PrometheusProvider, probe};
//! use sonde_proto::tracepoint::{Metric, TracePointConfig};
//!
//! fn checkout(total: f64) {
//!     probe!(total); // disarmed: one relaxed atomic load
//! }
//!
//! let registry = prometheus::Registry::new();
//! let agent = Agent::builder()
//!     .service_name("shop")
//!     .provider(PrometheusProvider::new(registry.clone()))
//!     .offline() // no control plane: tracepoints come from `apply`
//!     .start()?;
//!
//! // Every site of the binary is known at start-up.
//! let site = sonde_agent::sites().find(|s| s.names() == ["total"]).unwrap();
//!
//! // What the control plane would send: count hits of that line, valued by `total`.
//! agent.apply(vec![TracePointConfig {
//!     id: "tp-1".into(),
//!     path: site.file().into(),
//!     line_number: site.line(),
//!     metrics: vec![Metric { name: "checkout_value".into(), expression: Some("total".into()), ..Default::default() }],
//!     ..Default::default()
//! }]);
//! assert!(site.is_armed());
//! checkout(12.5);
//! checkout(7.5);
//!
//! let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather())?;
//! assert!(text.contains("deep_checkout_value_total 20"), "{text}");
//! agent.shutdown();
//! assert!(!site.is_armed());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! See [`probe!`] for what a site captures, [`Agent::builder`] for the configuration, and
//! [`MetricProvider`] to add a metrics backend.

// The rooms, in the order of the data flow (each folder's `mod.rs` says what it may use; imports
// point down this list, never up):
// - `agent`: the composition root (`Agent`, `AgentBuilder`, the agent thread);
// - `client`: the control-plane client (watch, poll, status reports);
// - `install`: binds a tracepoint list to probe sites and native lines, and reports each status;
// - `native`: breakpoints on lines without a probe site, from DWARF (feature `native`);
// - `tracepoint`: one compiled tracepoint and what a hit runs (spec, budgets, pipeline);
// - `site`: probe sites and what they capture (`probe!`, `Capture`);
// - `metrics`: instruments, providers and exporters (also the public `metrics` API).
#[doc(hidden)]
#[path = "macro_support.rs"]
pub mod __macro_support;
mod agent;
mod client;
mod install;
pub mod metrics;
#[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
pub mod native;
mod site;
mod tracepoint;

pub use agent::{Agent, AgentBuilder, AgentHandle, BUILD_ID_ATTRIBUTE, StartError};
pub use client::ClientMode;
pub use install::{TracepointState, TracepointStatus, TracepointSummary};
pub use metrics::backends::{InMemoryProvider, LogProvider, MultiProvider, NullProvider};
pub use metrics::exposition;
#[cfg(feature = "metrics-facade")]
pub use metrics::facade::MetricsFacadeProvider;
#[cfg(feature = "opentelemetry")]
pub use metrics::otel::OtelProvider;
#[cfg(feature = "otlp")]
pub use metrics::otlp::{OtlpError, OtlpExporter, OtlpExporterBuilder};
pub use metrics::process::register_process_metrics;
#[cfg(feature = "prometheus-client")]
pub use metrics::prom_client::PrometheusClientProvider;
pub use metrics::prometheus::PrometheusProvider;
pub use metrics::provider::{
    Instrument, MetricKind, MetricProvider, MetricSpec, ProviderError, RecordError, Series,
    SeriesSnapshot,
};
#[cfg(feature = "push")]
pub use metrics::push::{PushError, PushGateway, PushGatewayBuilder, PushHandle};
pub use metrics::series_cache::OVERFLOW_LABEL;
#[cfg(feature = "statsd")]
pub use metrics::statsd::{StatsdError, StatsdProvider, StatsdProviderBuilder};
pub use metrics::summary::{DEFAULT_QUANTILES, SlidingSummary, SummaryWindow};
pub use site::capture::Redacted;
pub use site::capture::{Capture, DebugCapture, DisplayCapture};
pub use site::redact::{DEFAULT_REDACT, REDACTED};
#[cfg(feature = "serde")]
pub use site::serde_capture::SerdeCapture;
pub use site::{Site, path_matches, sites};
pub use sonde_agent_macros::{Capture, instrument, timed, track_errors};
pub use sonde_expr::Value;
pub use tracepoint::budget::Budgets;
pub use tracepoint::snapshot::{PendingSnapshot, SnapshotLimits};

/// The calling crate's package version (`CARGO_PKG_VERSION`), for
/// [`AgentBuilder::service_version`]: `Agent::builder().service_version(service_version!())`.
#[macro_export]
macro_rules! service_version {
    () => {
        env!("CARGO_PKG_VERSION")
    };
}

/// Marks a probe site at this line and names what it captures.
///
/// ```
/// # use sonde_agent::probe;
/// # struct Cart { items: Vec<u32> }
/// # impl Cart { fn total(&self) -> f64 { 1.0 } }
/// # let (order_id, cart, request) = (7u64, Cart { items: vec![] }, "GET /");
/// probe!(order_id, total = cart.total(), ?request, %order_id);
/// ```
///
/// - `x` captures the variable `x` by reference (its type implements [`Capture`]);
/// - `name = expr` captures the value of `expr` under `name`, evaluated only when armed;
/// - `?x` captures `x`'s `Debug` rendering, `%x` its `Display` rendering.
///
/// Disarmed (no tracepoint bound), the site costs one relaxed atomic load and a branch and
/// allocates nothing; nothing is captured or evaluated. (Its first run, once, asks the plain
/// variables' types for their field names, which the catalog lists: no value is read.)
#[macro_export]
macro_rules! probe {
    ($($args:tt)*) => {
        $crate::__probe_munch!(@site [] [] [] $($args)*)
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __probe_munch {
    // Done: emit the site. `$cheap` is what the site's first run reads for field names when no
    // tracepoint is bound: the plain variables, and `()` in place of anything that would be
    // computed or wrapped (`name = expr`, `?x`, `%x`), so a disarmed site never evaluates them.
    (@site [$($name:expr),*] [$($value:expr),*] [$($cheap:expr),*] $(,)?) => {{
        static __SONDE_FIELDS: [$crate::__macro_support::FieldSlot; <[&str]>::len(&[$($name),*])] =
            [const { $crate::__macro_support::FieldSlot::new() }; <[&str]>::len(&[$($name),*])];
        static __SONDE_SITE: $crate::__macro_support::Site = $crate::__macro_support::Site::new(
            file!(), line!(), module_path!(), &[$($name),*], &__SONDE_FIELDS,
        );
        #[$crate::__macro_support::linkme::distributed_slice($crate::__macro_support::SITES)]
        #[linkme(crate = $crate::__macro_support::linkme)]
        static __SONDE_SITE_REF: &'static $crate::__macro_support::Site = &__SONDE_SITE;
        if __SONDE_SITE.wants_hit() {
            if __SONDE_SITE.is_armed() {
                __SONDE_SITE.hit(&[$($value),*]);
            } else {
                __SONDE_SITE.first_run(&[$($cheap),*]);
            }
        }
    }};
    (@site [$($n:expr),*] [$($v:expr),*] [$($c:expr),*] ? $x:ident $(, $($rest:tt)*)?) => {
        $crate::__probe_munch!(@site [$($n,)* stringify!($x)]
            [$($v,)* &$crate::__macro_support::DebugCapture(&$x) as &dyn $crate::__macro_support::Capture]
            [$($c,)* &() as &dyn $crate::__macro_support::Capture]
            $($($rest)*)?)
    };
    (@site [$($n:expr),*] [$($v:expr),*] [$($c:expr),*] % $x:ident $(, $($rest:tt)*)?) => {
        $crate::__probe_munch!(@site [$($n,)* stringify!($x)]
            [$($v,)* &$crate::__macro_support::DisplayCapture(&$x) as &dyn $crate::__macro_support::Capture]
            [$($c,)* &() as &dyn $crate::__macro_support::Capture]
            $($($rest)*)?)
    };
    (@site [$($n:expr),*] [$($v:expr),*] [$($c:expr),*] $x:ident = $e:expr $(, $($rest:tt)*)?) => {
        $crate::__probe_munch!(@site [$($n,)* stringify!($x)]
            [$($v,)* &($e) as &dyn $crate::__macro_support::Capture]
            [$($c,)* &() as &dyn $crate::__macro_support::Capture]
            $($($rest)*)?)
    };
    (@site [$($n:expr),*] [$($v:expr),*] [$($c:expr),*] $x:ident $(, $($rest:tt)*)?) => {
        $crate::__probe_munch!(@site [$($n,)* stringify!($x)]
            [$($v,)* &$x as &dyn $crate::__macro_support::Capture]
            [$($c,)* &$x as &dyn $crate::__macro_support::Capture]
            $($($rest)*)?)
    };
}
