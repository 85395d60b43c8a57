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
pub mod exposition;
mod install;
pub mod metrics;
#[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
pub mod native;
#[cfg(feature = "opentelemetry")]
mod otel;
#[cfg(feature = "otlp")]
mod otlp;
mod pipeline;
mod process;
mod prometheus;
mod provider;
#[cfg(feature = "push")]
mod push;
mod self_metrics;
#[cfg(feature = "serde")]
mod serde_capture;
mod series_cache;
mod site;
#[cfg(feature = "statsd")]
mod statsd;
mod summary;
mod tracepoint;

pub use agent::{Agent, AgentBuilder, AgentHandle, ClientMode, StartError};
pub use backends::{InMemoryProvider, LogProvider, MultiProvider, NullProvider};
pub use capture::{Capture, DebugCapture, DisplayCapture};
pub use install::{TracepointState, TracepointStatus};
#[cfg(feature = "opentelemetry")]
pub use otel::OtelProvider;
#[cfg(feature = "otlp")]
pub use otlp::{OtlpError, OtlpExporter, OtlpExporterBuilder};
pub use pipeline::Budgets;
pub use process::register_process_metrics;
pub use prometheus::PrometheusProvider;
pub use provider::{
    Instrument, MetricKind, MetricProvider, MetricSpec, ProviderError, RecordError, Series,
    SeriesSnapshot,
};
#[cfg(feature = "push")]
pub use push::{PushError, PushGateway, PushGatewayBuilder, PushHandle};
#[cfg(feature = "serde")]
pub use serde_capture::SerdeCapture;
pub use series_cache::OVERFLOW_LABEL;
pub use site::{Site, path_matches, sites};
pub use sonde_agent_macros::{Capture, instrument, timed, track_errors};
pub use sonde_expr::Value;
#[cfg(feature = "statsd")]
pub use statsd::{StatsdError, StatsdProvider, StatsdProviderBuilder};
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

    /// A `#[timed]` call site: its name, help and tags, and its timer, resolved from
    /// [`metrics::global`](crate::metrics::global) on the first call and kept for the life of
    /// the process (so a hit is a clock read and a histogram observe).
    #[derive(Debug)]
    pub struct TimedSite {
        timer: std::sync::OnceLock<crate::metrics::Timer>,
        name: &'static str,
        help: &'static str,
        keys: &'static [&'static str],
        values: &'static [&'static str],
    }

    impl TimedSite {
        /// A site; `keys` and `values` are its tags, in the same order.
        pub const fn new(
            name: &'static str,
            help: &'static str,
            keys: &'static [&'static str],
            values: &'static [&'static str],
        ) -> Self {
            Self {
                timer: std::sync::OnceLock::new(),
                name,
                help,
                keys,
                values,
            }
        }

        /// Starts timing a call: the guard records the time since now when it drops.
        #[inline]
        pub fn start(&'static self) -> TimedGuard {
            let timer = match self.timer.get() {
                Some(timer) => timer,
                None => self.resolve(),
            };
            TimedGuard {
                timer,
                started: Instant::now(),
            }
        }

        #[cold]
        #[inline(never)]
        fn resolve(&'static self) -> &'static crate::metrics::Timer {
            self.timer.get_or_init(|| {
                let metrics = crate::metrics::global();
                if self.keys.is_empty() {
                    metrics.timer(self.name, self.help)
                } else {
                    metrics
                        .timer_vec(self.name, self.help, self.keys)
                        .with(self.values)
                }
            })
        }
    }

    /// Records the time since a `#[timed]` call started when it drops: on return, on unwinding,
    /// and when an `async fn`'s future is dropped before it completes. Unlike
    /// [`Stopwatch`](crate::metrics::Stopwatch) it borrows its site's timer rather than cloning it.
    #[derive(Debug)]
    #[must_use = "the duration is recorded when this guard drops"]
    pub struct TimedGuard {
        timer: &'static crate::metrics::Timer,
        started: Instant,
    }

    impl Drop for TimedGuard {
        #[inline]
        fn drop(&mut self) {
            self.timer.record(self.started.elapsed());
        }
    }

    /// A `#[track_errors]` call site: the counter's name and help, the function's name, and the
    /// counter, resolved from [`metrics::global`](crate::metrics::global) on the first `Err`.
    #[derive(Debug)]
    pub struct ErrorSite {
        counter: std::sync::OnceLock<crate::metrics::CounterVec>,
        name: &'static str,
        help: &'static str,
        function: &'static str,
    }

    impl ErrorSite {
        /// The tag keys, in the order of the values passed to the counter.
        const KEYS: &'static [&'static str] = &["function", "error"];

        /// A site.
        pub const fn new(name: &'static str, help: &'static str, function: &'static str) -> Self {
            Self {
                counter: std::sync::OnceLock::new(),
                name,
                help,
                function,
            }
        }

        /// Counts `ret` if it is an `Err`, tagged with the error's type name.
        #[inline]
        pub fn by_type<T, E>(&'static self, ret: &Result<T, E>) {
            if ret.is_err() {
                self.count(&short_type_name(std::any::type_name::<E>()));
            }
        }

        /// Counts `ret` if it is an `Err`, tagged with the leading identifier of the error's
        /// `Debug` rendering (an enum's variant), or its type name when that does not start
        /// with one.
        #[inline]
        pub fn by_variant<T, E: std::fmt::Debug>(&'static self, ret: &Result<T, E>) {
            if let Err(e) = ret {
                self.count_variant(e);
            }
        }

        #[cold]
        #[inline(never)]
        fn count_variant<E: std::fmt::Debug>(&'static self, e: &E) {
            let mut ident = LeadingIdent::default();
            // Stops (with an error, ignored) at the first character that is not part of it.
            let _ = std::fmt::write(&mut ident, format_args!("{e:?}"));
            match ident.as_str() {
                "" => self.count(&short_type_name(std::any::type_name::<E>())),
                variant => self.count(variant),
            }
        }

        #[cold]
        #[inline(never)]
        fn count(&'static self, error: &str) {
            let counter = self.counter.get_or_init(|| {
                crate::metrics::global().counter_vec(self.name, self.help, Self::KEYS)
            });
            counter.add(&[self.function, error], 1.0);
        }
    }

    /// The leading identifier of what is written to it, up to 64 bytes, on the stack.
    #[derive(Debug)]
    struct LeadingIdent {
        buf: [u8; 64],
        len: usize,
    }

    impl Default for LeadingIdent {
        fn default() -> Self {
            Self {
                buf: [0; 64],
                len: 0,
            }
        }
    }

    impl LeadingIdent {
        fn as_str(&self) -> &str {
            // Only ASCII is written to `buf`.
            std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
        }
    }

    impl std::fmt::Write for LeadingIdent {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            for b in s.bytes() {
                let ident =
                    b == b'_' || b.is_ascii_alphabetic() || (self.len > 0 && b.is_ascii_digit());
                if !ident || self.len == self.buf.len() {
                    return Err(std::fmt::Error);
                }
                self.buf[self.len] = b;
                self.len += 1;
            }
            Ok(())
        }
    }

    /// A type name with every path shortened to its last segment:
    /// `alloc::boxed::Box<dyn core::error::Error>` becomes `Box<dyn Error>`. Borrows when the
    /// name has no generic arguments (the common case), so counting an error allocates nothing.
    pub fn short_type_name(name: &'static str) -> Cow<'static, str> {
        if !name.contains(['<', '(', '[', '&', ' ']) {
            return Cow::Borrowed(name.rsplit("::").next().unwrap_or(name));
        }
        let mut out = String::with_capacity(name.len());
        // Where the path segment being written started in `out`.
        let mut segment = 0;
        let mut rest = name;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("::") {
                out.truncate(segment);
                rest = after;
                continue;
            }
            if !(c == '_' || c.is_alphanumeric()) {
                segment = out.len() + c.len_utf8();
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        Cow::Owned(out)
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
