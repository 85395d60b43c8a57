//! [`MetricProvider`]: where tracepoint measurements go. Implement it to add a backend.
//!
//! A provider registers an [`Instrument`] per metric when a tracepoint is installed (dropping the
//! instrument unregisters it), hands out one [`Series`] per label set, and the hit records into a
//! cached series: the pipeline keeps the series per label set itself, with the cardinality cap,
//! so a provider needs no cache of its own.

use std::sync::Arc;

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Adds the value (monotonic: negative values are refused).
    Counter,
    /// Sets the value.
    Gauge,
    /// Observes the value into buckets.
    Histogram,
    /// Observes the value into quantiles.
    Summary,
}

/// What a metric is, as a provider needs it to register.
#[derive(Debug, Clone, Copy)]
pub struct MetricSpec<'a> {
    /// Base name, `<namespace>_<name>[_<unit>]`, without any `_total` (a Prometheus provider adds
    /// it to counters).
    pub name: &'a str,
    /// Help text.
    pub help: &'a str,
    /// The kind.
    pub kind: MetricKind,
    /// Label keys, in the order values are given to [`Instrument::series`].
    pub label_keys: &'a [&'a str],
    /// The tracepoint that feeds it (empty for metrics created through the metrics API).
    pub tracepoint_id: &'a str,
    /// Histogram bucket upper bounds; `None` is the provider's default (latency seconds).
    pub buckets: Option<&'a [f64]>,
}

/// Why a provider could not register or record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The name is taken by a metric of another kind or with other labels.
    #[error("metric {name}: {reason}")]
    Conflict {
        /// The name.
        name: String,
        /// Why it conflicts.
        reason: String,
    },
    /// The provider cannot do this (for example a kind it does not support).
    #[error("{0}")]
    Unsupported(String),
    /// Anything else the backend reported.
    #[error("{0}")]
    Backend(String),
}

/// Why a value was not recorded. Small and `Copy`: it is counted on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A counter was given a negative value.
    #[error("a counter cannot decrease (negative value)")]
    NegativeCounter,
    /// NaN or infinite.
    #[error("the value is not a finite number")]
    NotFinite,
    /// The series does not support this operation (for example `add` on a counter of a
    /// backend whose gauges only set).
    #[error("this backend does not support the operation for this metric kind")]
    Unsupported,
}

impl RecordError {
    /// `value` if it is finite (observations, gauge deltas), else [`RecordError::NotFinite`].
    #[inline]
    pub fn finite(value: f64) -> Result<f64, RecordError> {
        if value.is_finite() {
            Ok(value)
        } else {
            Err(RecordError::NotFinite)
        }
    }

    /// `value` if it is a valid counter increment: finite and not negative.
    #[inline]
    pub fn counter(value: f64) -> Result<f64, RecordError> {
        match Self::finite(value)? {
            v if v < 0.0 => Err(RecordError::NegativeCounter),
            v => Ok(v),
        }
    }

    /// `value` if it can be a gauge's value: anything but NaN.
    #[inline]
    pub fn gauge(value: f64) -> Result<f64, RecordError> {
        if value.is_nan() {
            Err(RecordError::NotFinite)
        } else {
            Ok(value)
        }
    }
}

/// A backend for tracepoint metrics.
pub trait MetricProvider: Send + Sync + 'static {
    /// A short name for status messages (`prometheus`, `opentelemetry`).
    fn name(&self) -> &str;
    /// Registers a metric. Dropping the returned instrument unregisters it.
    fn register(&self, spec: &MetricSpec<'_>) -> Result<Box<dyn Instrument>, ProviderError>;

    /// Registers a gauge with fixed label values whose value is read from `read` when metrics
    /// are collected. Dropping the returned handle unregisters it. The default: not supported.
    fn register_callback(
        &self,
        spec: &MetricSpec<'_>,
        label_values: &[&str],
        read: Arc<dyn Fn() -> f64 + Send + Sync>,
    ) -> Result<Box<dyn Instrument>, ProviderError> {
        let _ = (label_values, read);
        Err(ProviderError::Unsupported(format!(
            "metric {}: {} has no callback gauges",
            spec.name,
            self.name()
        )))
    }
}

/// One registered metric.
pub trait Instrument: Send + Sync {
    /// The series for one label set (values in the order of [`MetricSpec::label_keys`]).
    fn series(&self, label_values: &[&str]) -> Result<Arc<dyn Series>, ProviderError>;
}

/// One labelled series: where a hit records.
pub trait Series: Send + Sync {
    /// Adds (counter), sets (gauge) or observes (histogram, summary) `value`.
    fn record(&self, value: f64) -> Result<(), RecordError>;

    /// Records `value` as `weight` hits would: a counter adds `value × weight`, a gauge sets
    /// `value`, a histogram or summary counts `weight` observations of `value` (a sampled
    /// tracepoint evaluates one hit in `weight` and records it this way). The default records
    /// `weight` times, which is right for every kind but costs `weight` records; the built-in
    /// series do it in one.
    fn record_weighted(&self, value: f64, weight: u64) -> Result<(), RecordError> {
        for _ in 0..weight {
            self.record(value)?;
        }
        Ok(())
    }

    /// Gauges: adds `delta` (negative to subtract). Other kinds, or a provider that cannot:
    /// [`RecordError::Unsupported`].
    fn add(&self, delta: f64) -> Result<(), RecordError> {
        let _ = delta;
        Err(RecordError::Unsupported)
    }

    /// The series' current state, where the provider can read it back (the in-memory and
    /// Prometheus providers can; OpenTelemetry cannot).
    fn snapshot(&self) -> Option<SeriesSnapshot> {
        None
    }
}

/// The state of one series, as read back from a provider.
#[derive(Debug, Clone, PartialEq)]
pub enum SeriesSnapshot {
    /// A counter's total.
    Counter(f64),
    /// A gauge's value.
    Gauge(f64),
    /// A histogram: observations, their sum, and cumulative counts per bucket upper bound.
    Histogram {
        /// Observations.
        count: u64,
        /// Their sum.
        sum: f64,
        /// `(upper bound, cumulative count)`, the last bound `+Inf`.
        buckets: Vec<(f64, u64)>,
    },
    /// A summary: observations, their sum, and `(quantile, value)` over the window.
    Summary {
        /// Observations.
        count: u64,
        /// Their sum.
        sum: f64,
        /// `(quantile, value)`.
        quantiles: Vec<(f64, f64)>,
    },
}

/// Several series recorded together (one per provider).
pub(crate) struct Fanout(pub Vec<Arc<dyn Series>>);

impl Series for Fanout {
    fn record(&self, value: f64) -> Result<(), RecordError> {
        let mut result = Ok(());
        for s in &self.0 {
            if let Err(e) = s.record(value) {
                result = Err(e);
            }
        }
        result
    }

    fn record_weighted(&self, value: f64, weight: u64) -> Result<(), RecordError> {
        let mut result = Ok(());
        for s in &self.0 {
            if let Err(e) = s.record_weighted(value, weight) {
                result = Err(e);
            }
        }
        result
    }

    fn add(&self, delta: f64) -> Result<(), RecordError> {
        let mut result = Ok(());
        for s in &self.0 {
            if let Err(e) = s.add(delta) {
                result = Err(e);
            }
        }
        result
    }

    fn snapshot(&self) -> Option<SeriesSnapshot> {
        self.0.iter().find_map(|s| s.snapshot())
    }
}
