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

mod agent;
mod backends;
mod capture;
mod client;
mod endpoint;
mod install;
pub mod metrics;
#[cfg(feature = "opentelemetry")]
mod otel;
mod pipeline;
mod prometheus;
mod provider;
#[cfg(feature = "serde")]
mod serde_capture;
mod series_cache;
mod site;
mod summary;
mod tracepoint;

pub use agent::{Agent, AgentBuilder, AgentHandle, ClientMode, StartError};
pub use backends::{InMemoryProvider, LogProvider, MultiProvider, NullProvider};
pub use capture::{Capture, DebugCapture, DisplayCapture};
pub use install::{TracepointState, TracepointStatus};
#[cfg(feature = "opentelemetry")]
pub use otel::OtelProvider;
pub use pipeline::Budgets;
pub use prometheus::PrometheusProvider;
pub use provider::{
    Instrument, MetricKind, MetricProvider, MetricSpec, ProviderError, RecordError, Series,
    SeriesSnapshot,
};
#[cfg(feature = "serde")]
pub use serde_capture::SerdeCapture;
pub use series_cache::OVERFLOW_LABEL;
pub use site::{Site, path_matches, sites};
pub use sonde_agent_macros::{Capture, instrument};
pub use sonde_expr::Value;
pub use summary::{DEFAULT_QUANTILES, SlidingSummary, SummaryWindow};

/// Items the macros expand to. Not a public API.
#[doc(hidden)]
pub mod __macro_support {
    pub use crate::capture::{Capture, DebugCapture, DisplayCapture};
    pub use crate::site::{SITES, Site};
    pub use linkme;
    pub use sonde_expr::Value;
    pub use std::{borrow::Cow, time::Instant};

    /// Runs an `#[instrument]`ed body. Taking `FnOnce() -> R` fixes the closure's return type
    /// (so `?` in the body converts errors as in the function) and lets the body move out of
    /// its captures (so it may return references reborrowed from its arguments).
    #[inline(always)]
    pub fn call_once<R, F: FnOnce() -> R>(f: F) -> R {
        f()
    }

    /// Fixes an `#[instrument]`ed `async fn` body's output type (so `?` in it converts errors).
    #[inline(always)]
    pub fn typed_future<R, F: std::future::Future<Output = R>>(f: F) -> F {
        f
    }

    /// An `#[instrument]`ed function's return value, on its way to the exit site. Which of the
    /// `Ret*` traits' `__sonde_ret` a call on `&&&&Ret(&value)` picks depends on the type, the
    /// first that applies winning (autoref specialization): `RetCapture` for a type that
    /// implements [`Capture`] (the value itself, `ok` true); `RetResult` for a `Result` whose
    /// `Ok` type does (the `Ok` value or none, `ok` whether it is `Ok`); `RetResultAny` for any
    /// other `Result` (none, `ok`); `RetAny` for anything else (none, `ok` true).
    #[derive(Debug)]
    pub struct Ret<'a, T>(pub &'a T);

    /// See [`Ret`].
    pub trait RetCapture<'a> {
        /// The value to capture as `ret`, and `ok`.
        fn __sonde_ret(&self) -> (&'a dyn Capture, bool);
    }
    impl<'a, T: Capture> RetCapture<'a> for &&&Ret<'a, T> {
        fn __sonde_ret(&self) -> (&'a dyn Capture, bool) {
            (self.0, true)
        }
    }

    /// See [`Ret`].
    pub trait RetResult<'a> {
        /// The value to capture as `ret`, and `ok`.
        fn __sonde_ret(&self) -> (&'a dyn Capture, bool);
    }
    impl<'a, T: Capture, E> RetResult<'a> for &&Ret<'a, Result<T, E>> {
        fn __sonde_ret(&self) -> (&'a dyn Capture, bool) {
            match self.0 {
                Ok(v) => (v, true),
                Err(_) => (&(), false),
            }
        }
    }

    /// See [`Ret`].
    pub trait RetResultAny<'a> {
        /// The value to capture as `ret`, and `ok`.
        fn __sonde_ret(&self) -> (&'a dyn Capture, bool);
    }
    impl<'a, T, E> RetResultAny<'a> for &Ret<'a, Result<T, E>> {
        fn __sonde_ret(&self) -> (&'a dyn Capture, bool) {
            (&(), self.0.is_ok())
        }
    }

    /// See [`Ret`].
    pub trait RetAny<'a> {
        /// The value to capture as `ret`, and `ok`.
        fn __sonde_ret(&self) -> (&'a dyn Capture, bool);
    }
    impl<'a, T> RetAny<'a> for Ret<'a, T> {
        fn __sonde_ret(&self) -> (&'a dyn Capture, bool) {
            (&(), true)
        }
    }
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
/// allocates nothing; nothing is captured or evaluated.
#[macro_export]
macro_rules! probe {
    ($($args:tt)*) => {
        $crate::__probe_munch!(@site [] [] $($args)*)
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __probe_munch {
    // Done: emit the site.
    (@site [$($name:expr),*] [$($value:expr),*] $(,)?) => {{
        static __SONDE_SITE: $crate::__macro_support::Site = $crate::__macro_support::Site::new(
            file!(), line!(), module_path!(), &[$($name),*],
        );
        #[$crate::__macro_support::linkme::distributed_slice($crate::__macro_support::SITES)]
        #[linkme(crate = $crate::__macro_support::linkme)]
        static __SONDE_SITE_REF: &'static $crate::__macro_support::Site = &__SONDE_SITE;
        if __SONDE_SITE.is_armed() {
            __SONDE_SITE.hit(&[$($value),*]);
        }
    }};
    (@site [$($n:expr),*] [$($v:expr),*] ? $x:ident $(, $($rest:tt)*)?) => {
        $crate::__probe_munch!(@site [$($n,)* stringify!($x)]
            [$($v,)* &$crate::__macro_support::DebugCapture(&$x) as &dyn $crate::__macro_support::Capture]
            $($($rest)*)?)
    };
    (@site [$($n:expr),*] [$($v:expr),*] % $x:ident $(, $($rest:tt)*)?) => {
        $crate::__probe_munch!(@site [$($n,)* stringify!($x)]
            [$($v,)* &$crate::__macro_support::DisplayCapture(&$x) as &dyn $crate::__macro_support::Capture]
            $($($rest)*)?)
    };
    (@site [$($n:expr),*] [$($v:expr),*] $x:ident = $e:expr $(, $($rest:tt)*)?) => {
        $crate::__probe_munch!(@site [$($n,)* stringify!($x)]
            [$($v,)* &($e) as &dyn $crate::__macro_support::Capture]
            $($($rest)*)?)
    };
    (@site [$($n:expr),*] [$($v:expr),*] $x:ident $(, $($rest:tt)*)?) => {
        $crate::__probe_munch!(@site [$($n,)* stringify!($x)]
            [$($v,)* &$x as &dyn $crate::__macro_support::Capture]
            $($($rest)*)?)
    };
}
