//! [`PrometheusClientProvider`]: tracepoint metrics in a `prometheus-client` registry (the
//! Prometheus project's Rust client), the one the application already encodes at `/metrics`.
//!
//! The semantics are the `prometheus` provider's: names `<namespace>_<name>[_<unit>]` as Deep's
//! agents make them (the encoder adds `_total` to counters), COUNTER adds, GAUGE sets, HISTOGRAM
//! observes into the spec's buckets; the pipeline's cardinality cap folds excess label sets into
//! `sonde_overflow`. `prometheus-client` has no summary type: a SUMMARY metric is refused with an
//! error naming the histogram instead.
//!
//! A `prometheus_client::registry::Registry` cannot unregister, so the provider registers one
//! collector of its own at construction and keeps the tracepoint metrics in it: a metric leaves
//! the exposition as soon as its last tracepoint is deleted, as with the `prometheus` provider.
//! Two tracepoints that define the same metric (name, kind, label keys) share it. The registry's
//! own metrics are not visible to the provider, so a tracepoint metric named like one of the
//! application's appears twice in the exposition; pick another name or namespace.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use ::prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::Histogram,
    },
    registry::Registry,
};

use crate::metrics::{
    buckets,
    provider::{
        Instrument, MetricKind, MetricProvider, MetricSpec, ProviderError, RecordError, Series,
    },
};

/// A series' labels, in the spec's key order.
type Labels = Vec<(String, String)>;

/// Makes a histogram with the metric's buckets for each new label set.
#[derive(Clone)]
struct Bounds(Arc<[f64]>);

impl MetricConstructor<Histogram> for Bounds {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// One metric's family of series.
#[derive(Clone)]
enum Vector {
    Counter(Family<Labels, Counter<f64, AtomicU64>>),
    Gauge(Family<Labels, Gauge<f64, AtomicU64>>),
    Histogram(Family<Labels, Histogram, Bounds>),
}

impl Vector {
    fn metric(&self) -> &dyn EncodeMetric {
        match self {
            Self::Counter(f) => f,
            Self::Gauge(f) => f,
            Self::Histogram(f) => f,
        }
    }
}

/// A metric some tracepoints define.
struct Defined {
    help: String,
    kind: MetricKind,
    keys: Vec<String>,
    vector: Vector,
    users: usize,
}

type Metrics = Arc<Mutex<BTreeMap<String, Defined>>>;

/// Registers tracepoint metrics into a `prometheus_client::registry::Registry`.
///
/// ```
/// use prometheus_client::{encoding::text::encode, registry::Registry};
/// use sonde_agent::PrometheusClientProvider;
///
/// let mut registry = Registry::default();
/// let provider = PrometheusClientProvider::new(&mut registry);
/// // Agent::builder().provider(provider) ... ; the application encodes `registry` as before:
/// let mut text = String::new();
/// encode(&mut text, &registry).unwrap();
/// # let _ = provider;
/// ```
#[derive(Clone)]
pub struct PrometheusClientProvider {
    metrics: Metrics,
}

impl fmt::Debug for PrometheusClientProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.metrics.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("PrometheusClientProvider")
            .field("metrics", &n)
            .finish()
    }
}

impl PrometheusClientProvider {
    /// A provider whose metrics appear in `registry` (through one collector registered now).
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Metrics::default();
        registry.register_collector(Box::new(TracepointCollector(metrics.clone())));
        Self { metrics }
    }
}

/// The collector registered into the application's registry: encodes the live metrics.
struct TracepointCollector(Metrics);

impl fmt::Debug for TracepointCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TracepointCollector")
    }
}

impl Collector for TracepointCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let metrics = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (name, defined) in metrics.iter() {
            let metric = defined.vector.metric();
            let series =
                encoder.encode_descriptor(name, &defined.help, None, metric.metric_type())?;
            metric.encode(series)?;
        }
        Ok(())
    }
}

impl MetricProvider for PrometheusClientProvider {
    fn name(&self) -> &str {
        "prometheus-client"
    }

    fn register(&self, spec: &MetricSpec<'_>) -> Result<Box<dyn Instrument>, ProviderError> {
        let name = spec.name.to_owned();
        let keys: Vec<String> = spec.label_keys.iter().map(|k| (*k).to_owned()).collect();
        let mut metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = metrics.get_mut(&name) {
            if existing.kind != spec.kind || existing.keys != keys {
                return Err(ProviderError::Conflict {
                    name,
                    reason: format!(
                        "already defined as a {:?} with labels {:?}",
                        existing.kind, existing.keys
                    ),
                });
            }
            existing.users += 1;
            return Ok(Box::new(ClientInstrument {
                name,
                keys,
                vector: existing.vector.clone(),
                metrics: self.metrics.clone(),
            }));
        }
        let vector = match spec.kind {
            MetricKind::Counter => Vector::Counter(Family::default()),
            MetricKind::Gauge => Vector::Gauge(Family::default()),
            MetricKind::Histogram => {
                let bounds = spec
                    .buckets
                    .unwrap_or_else(|| buckets::for_unit(Some("seconds")));
                Vector::Histogram(Family::new_with_constructor(Bounds(bounds.into())))
            }
            MetricKind::Summary => {
                return Err(ProviderError::Unsupported(format!(
                    "metric {name}: prometheus-client has no summary type; use a histogram"
                )));
            }
        };
        metrics.insert(
            name.clone(),
            Defined {
                help: spec.help.to_owned(),
                kind: spec.kind,
                keys: keys.clone(),
                vector: vector.clone(),
                users: 1,
            },
        );
        Ok(Box::new(ClientInstrument {
            name,
            keys,
            vector,
            metrics: self.metrics.clone(),
        }))
    }
}

/// A registered metric; dropping its last user takes it out of the exposition.
struct ClientInstrument {
    name: String,
    keys: Vec<String>,
    vector: Vector,
    metrics: Metrics,
}

impl Instrument for ClientInstrument {
    fn series(&self, label_values: &[&str]) -> Result<Arc<dyn Series>, ProviderError> {
        let labels: Labels = self
            .keys
            .iter()
            .zip(label_values)
            .map(|(k, v)| (k.clone(), (*v).to_owned()))
            .collect();
        Ok(match &self.vector {
            Vector::Counter(f) => Arc::new(CounterSeries(f.get_or_create(&labels).clone())),
            Vector::Gauge(f) => Arc::new(GaugeSeries(f.get_or_create(&labels).clone())),
            Vector::Histogram(f) => Arc::new(HistogramSeries(f.get_or_create(&labels).clone())),
        })
    }
}

impl Drop for ClientInstrument {
    fn drop(&mut self) {
        let mut metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(defined) = metrics.get_mut(&self.name) {
            defined.users = defined.users.saturating_sub(1);
            if defined.users == 0 {
                metrics.remove(&self.name);
            }
        }
    }
}

struct CounterSeries(Counter<f64, AtomicU64>);

impl Series for CounterSeries {
    fn record(&self, value: f64) -> Result<(), RecordError> {
        self.0.inc_by(RecordError::counter(value)?);
        Ok(())
    }

    fn record_weighted(&self, value: f64, weight: u64) -> Result<(), RecordError> {
        self.0.inc_by(RecordError::counter(
            RecordError::counter(value)? * weight as f64,
        )?);
        Ok(())
    }
}

struct GaugeSeries(Gauge<f64, AtomicU64>);

impl Series for GaugeSeries {
    fn record(&self, value: f64) -> Result<(), RecordError> {
        self.0.set(RecordError::gauge(value)?);
        Ok(())
    }

    fn record_weighted(&self, value: f64, _weight: u64) -> Result<(), RecordError> {
        self.record(value)
    }

    fn add(&self, delta: f64) -> Result<(), RecordError> {
        self.0.inc_by(RecordError::finite(delta)?);
        Ok(())
    }
}

struct HistogramSeries(Histogram);

impl Series for HistogramSeries {
    fn record(&self, value: f64) -> Result<(), RecordError> {
        self.0.observe(RecordError::finite(value)?);
        Ok(())
    }
}
