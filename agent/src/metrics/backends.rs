//! Providers beside Prometheus and OpenTelemetry: [`NullProvider`] (the default: discards
//! everything at no cost), [`InMemoryProvider`] (for tests: values readable as snapshots),
//! [`MultiProvider`] (fans out to several) and [`LogProvider`] (writes every measurement through
//! `tracing`).

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicU64, Ordering},
};

use crate::{
    metrics::provider::{
        Fanout, Instrument, MetricKind, MetricProvider, MetricSpec, ProviderError, RecordError,
        Series, SeriesSnapshot,
    },
    metrics::summary::{SlidingSummary, SummaryWindow},
};

/// Discards everything. Recording through it allocates nothing and touches no shared memory
/// beyond one reference count when a series is handed out.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullProvider;

struct NullSeries;

impl Series for NullSeries {
    #[inline]
    fn record(&self, _value: f64) -> Result<(), RecordError> {
        Ok(())
    }
    #[inline]
    fn record_weighted(&self, _value: f64, _weight: u64) -> Result<(), RecordError> {
        Ok(())
    }
    #[inline]
    fn add(&self, _delta: f64) -> Result<(), RecordError> {
        Ok(())
    }
}

fn null_series() -> Arc<dyn Series> {
    static NULL: OnceLock<Arc<dyn Series>> = OnceLock::new();
    NULL.get_or_init(|| Arc::new(NullSeries)).clone()
}

struct NullInstrument;

impl Instrument for NullInstrument {
    fn series(&self, _label_values: &[&str]) -> Result<Arc<dyn Series>, ProviderError> {
        Ok(null_series())
    }
}

impl MetricProvider for NullProvider {
    fn name(&self) -> &str {
        "null"
    }

    fn register(&self, _spec: &MetricSpec<'_>) -> Result<Box<dyn Instrument>, ProviderError> {
        Ok(Box::new(NullInstrument))
    }

    fn register_callback(
        &self,
        _spec: &MetricSpec<'_>,
        _label_values: &[&str],
        _read: Arc<dyn Fn() -> f64 + Send + Sync>,
    ) -> Result<Box<dyn Instrument>, ProviderError> {
        Ok(Box::new(NullInstrument))
    }
}

/// Keeps every value in memory, readable through [`Series::snapshot`] (and so through
/// `Metrics::snapshot`). Meant for tests.
#[derive(Debug, Clone)]
pub struct InMemoryProvider {
    buckets: Vec<f64>,
    window: SummaryWindow,
}

impl Default for InMemoryProvider {
    fn default() -> Self {
        Self {
            buckets: super::buckets::Buckets::LATENCY_SECONDS.to_vec(),
            window: SummaryWindow::default(),
        }
    }
}

impl InMemoryProvider {
    /// An empty in-memory backend.
    pub fn new() -> Self {
        Self::default()
    }
}

struct MemInstrument {
    kind: MetricKind,
    buckets: Arc<[f64]>,
    window: SummaryWindow,
}

impl Instrument for MemInstrument {
    fn series(&self, _label_values: &[&str]) -> Result<Arc<dyn Series>, ProviderError> {
        Ok(match self.kind {
            MetricKind::Counter => Arc::new(CounterSeries::default()),
            MetricKind::Gauge => Arc::new(GaugeSeries::default()),
            MetricKind::Histogram => Arc::new(HistogramSeries::new(self.buckets.clone())),
            MetricKind::Summary => Arc::new(SlidingSummary::new(self.window)),
        })
    }
}

impl MetricProvider for InMemoryProvider {
    fn name(&self) -> &str {
        "in-memory"
    }

    fn register(&self, spec: &MetricSpec<'_>) -> Result<Box<dyn Instrument>, ProviderError> {
        let mut buckets: Vec<f64> = spec
            .buckets
            .map_or_else(|| self.buckets.clone(), <[f64]>::to_vec);
        buckets.retain(|b| b.is_finite());
        buckets.sort_by(f64::total_cmp);
        buckets.dedup();
        Ok(Box::new(MemInstrument {
            kind: spec.kind,
            buckets: buckets.into(),
            window: self.window,
        }))
    }

    fn register_callback(
        &self,
        _spec: &MetricSpec<'_>,
        _label_values: &[&str],
        read: Arc<dyn Fn() -> f64 + Send + Sync>,
    ) -> Result<Box<dyn Instrument>, ProviderError> {
        Ok(Box::new(MemCallback(read)))
    }
}

/// A counter's or a gauge's value: an `f64` in an atomic (zero bits are `0.0`).
#[derive(Default)]
pub(crate) struct AtomicF64(AtomicU64);

impl AtomicF64 {
    #[inline]
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    #[inline]
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    #[inline]
    pub fn add(&self, delta: f64) {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            let new = (f64::from_bits(current) + delta).to_bits();
            match self
                .0
                .compare_exchange_weak(current, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }
}

/// A counter's series (the in-memory and the Prometheus providers'): its total.
#[derive(Default)]
pub(crate) struct CounterSeries(pub AtomicF64);

impl Series for CounterSeries {
    #[inline]
    fn record(&self, value: f64) -> Result<(), RecordError> {
        self.0.add(RecordError::counter(value)?);
        Ok(())
    }

    #[inline]
    fn record_weighted(&self, value: f64, weight: u64) -> Result<(), RecordError> {
        self.0.add(RecordError::counter(
            RecordError::counter(value)? * weight as f64,
        )?);
        Ok(())
    }

    fn snapshot(&self) -> Option<SeriesSnapshot> {
        Some(SeriesSnapshot::Counter(self.0.get()))
    }
}

/// A gauge's series (the in-memory and the Prometheus providers'): its value.
#[derive(Default)]
pub(crate) struct GaugeSeries(pub AtomicF64);

impl Series for GaugeSeries {
    #[inline]
    fn record(&self, value: f64) -> Result<(), RecordError> {
        self.0.set(RecordError::gauge(value)?);
        Ok(())
    }

    /// A gauge holds the last value, whatever the weight.
    #[inline]
    fn record_weighted(&self, value: f64, _weight: u64) -> Result<(), RecordError> {
        self.record(value)
    }

    #[inline]
    fn add(&self, delta: f64) -> Result<(), RecordError> {
        self.0.add(RecordError::finite(delta)?);
        Ok(())
    }

    fn snapshot(&self) -> Option<SeriesSnapshot> {
        Some(SeriesSnapshot::Gauge(self.0.get()))
    }
}

/// A histogram's series (the in-memory and the Prometheus providers'): a count per bucket and
/// the sum, each an atomic, so an observation of weight `n` (a sampled tracepoint's) costs the
/// same two adds as one of weight 1.
pub(crate) struct HistogramSeries {
    /// The finite upper bounds, ascending.
    bounds: Arc<[f64]>,
    /// Observations per bucket (not cumulative): one per bound, then one above them all.
    counts: Box<[AtomicU64]>,
    sum: AtomicF64,
}

impl HistogramSeries {
    /// An empty series with these upper bounds (ascending, finite; `+Inf` is implied).
    pub fn new(bounds: Arc<[f64]>) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            bounds,
            counts,
            sum: AtomicF64::default(),
        }
    }

    /// Counts `n` observations of `value` (finite).
    #[inline]
    fn observe(&self, value: f64, n: u64) {
        // The first bucket whose bound is at least the value (`le` is inclusive).
        let i = self.bounds.partition_point(|b| *b < value);
        self.counts[i].fetch_add(n, Ordering::Relaxed);
        self.sum.add(value * n as f64);
    }

    /// `(bound, cumulative count)` per finite bound, the count of all observations, and their
    /// sum. The count is the buckets' total, so the two always agree.
    pub fn cumulative(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            total += count.load(Ordering::Relaxed);
            buckets.push((*bound, total));
        }
        if let Some(above) = self.counts.last() {
            total += above.load(Ordering::Relaxed);
        }
        (buckets, total, self.sum.get())
    }
}

impl Series for HistogramSeries {
    #[inline]
    fn record(&self, value: f64) -> Result<(), RecordError> {
        self.observe(RecordError::finite(value)?, 1);
        Ok(())
    }

    #[inline]
    fn record_weighted(&self, value: f64, weight: u64) -> Result<(), RecordError> {
        self.observe(RecordError::finite(value)?, weight);
        Ok(())
    }

    fn snapshot(&self) -> Option<SeriesSnapshot> {
        let (mut buckets, count, sum) = self.cumulative();
        buckets.push((f64::INFINITY, count));
        Some(SeriesSnapshot::Histogram {
            count,
            sum,
            buckets,
        })
    }
}

struct MemCallback(Arc<dyn Fn() -> f64 + Send + Sync>);

struct MemCallbackSeries(Arc<dyn Fn() -> f64 + Send + Sync>);

impl Series for MemCallbackSeries {
    fn record(&self, _value: f64) -> Result<(), RecordError> {
        Err(RecordError::Unsupported)
    }
    fn snapshot(&self) -> Option<SeriesSnapshot> {
        Some(SeriesSnapshot::Gauge((self.0)()))
    }
}

impl Instrument for MemCallback {
    fn series(&self, _label_values: &[&str]) -> Result<Arc<dyn Series>, ProviderError> {
        Ok(Arc::new(MemCallbackSeries(self.0.clone())))
    }
}

/// Sends everything to several providers.
#[derive(Clone, Default)]
pub struct MultiProvider {
    providers: Vec<Arc<dyn MetricProvider>>,
}

impl std::fmt::Debug for MultiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.providers.iter().map(|p| p.name()))
            .finish()
    }
}

impl MultiProvider {
    /// No providers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a provider.
    pub fn with(mut self, provider: impl MetricProvider) -> Self {
        self.providers.push(Arc::new(provider));
        self
    }
}

struct MultiInstrument(Vec<Box<dyn Instrument>>);

impl Instrument for MultiInstrument {
    fn series(&self, label_values: &[&str]) -> Result<Arc<dyn Series>, ProviderError> {
        let mut all = Vec::with_capacity(self.0.len());
        for i in &self.0 {
            all.push(i.series(label_values)?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Arc::new(Fanout(all))
        })
    }
}

impl MetricProvider for MultiProvider {
    fn name(&self) -> &str {
        "multi"
    }

    fn register(&self, spec: &MetricSpec<'_>) -> Result<Box<dyn Instrument>, ProviderError> {
        let all = self
            .providers
            .iter()
            .map(|p| p.register(spec))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Box::new(MultiInstrument(all)))
    }

    fn register_callback(
        &self,
        spec: &MetricSpec<'_>,
        label_values: &[&str],
        read: Arc<dyn Fn() -> f64 + Send + Sync>,
    ) -> Result<Box<dyn Instrument>, ProviderError> {
        let all = self
            .providers
            .iter()
            .map(|p| p.register_callback(spec, label_values, read.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Box::new(MultiInstrument(all)))
    }
}

/// Writes every measurement through `tracing` at INFO (target `sonde::metrics`): for debugging
/// and for services whose logs are their metrics pipeline. Not for hot paths.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogProvider;

struct LogInstrument {
    name: Arc<str>,
    kind: MetricKind,
    keys: Arc<[String]>,
}

struct LogSeries {
    name: Arc<str>,
    kind: MetricKind,
    labels: String,
}

impl Series for LogSeries {
    fn record(&self, value: f64) -> Result<(), RecordError> {
        let op = match self.kind {
            MetricKind::Counter => "add",
            MetricKind::Gauge => "set",
            MetricKind::Histogram | MetricKind::Summary => "observe",
        };
        tracing::info!(target: "sonde::metrics", metric = %self.name, labels = %self.labels, op, value);
        Ok(())
    }
    fn record_weighted(&self, value: f64, weight: u64) -> Result<(), RecordError> {
        let op = match self.kind {
            MetricKind::Counter => "add",
            MetricKind::Gauge => "set",
            MetricKind::Histogram | MetricKind::Summary => "observe",
        };
        tracing::info!(target: "sonde::metrics", metric = %self.name, labels = %self.labels, op, value, weight);
        Ok(())
    }
    fn add(&self, delta: f64) -> Result<(), RecordError> {
        tracing::info!(target: "sonde::metrics", metric = %self.name, labels = %self.labels, op = "add", value = delta);
        Ok(())
    }
}

impl Instrument for LogInstrument {
    fn series(&self, label_values: &[&str]) -> Result<Arc<dyn Series>, ProviderError> {
        let labels = self
            .keys
            .iter()
            .zip(label_values)
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Arc::new(LogSeries {
            name: self.name.clone(),
            kind: self.kind,
            labels,
        }))
    }
}

impl MetricProvider for LogProvider {
    fn name(&self) -> &str {
        "log"
    }

    fn register(&self, spec: &MetricSpec<'_>) -> Result<Box<dyn Instrument>, ProviderError> {
        Ok(Box::new(LogInstrument {
            name: spec.name.into(),
            kind: spec.kind,
            keys: spec.label_keys.iter().map(|k| (*k).to_owned()).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: MetricKind) -> MetricSpec<'static> {
        MetricSpec {
            name: "m",
            help: "h",
            kind,
            label_keys: &[],
            tracepoint_id: "",
            buckets: Some(&[1.0, 5.0]),
        }
    }

    #[test]
    fn in_memory_keeps_what_each_kind_means() {
        let p = InMemoryProvider::new();
        let c = p
            .register(&spec(MetricKind::Counter))
            .unwrap()
            .series(&[])
            .unwrap();
        c.record(2.0).unwrap();
        c.record(3.0).unwrap();
        assert_eq!(c.record(-1.0), Err(RecordError::NegativeCounter));
        assert_eq!(c.snapshot(), Some(SeriesSnapshot::Counter(5.0)));

        let g = p
            .register(&spec(MetricKind::Gauge))
            .unwrap()
            .series(&[])
            .unwrap();
        g.record(10.0).unwrap();
        g.add(-3.0).unwrap();
        assert_eq!(g.snapshot(), Some(SeriesSnapshot::Gauge(7.0)));

        let h = p
            .register(&spec(MetricKind::Histogram))
            .unwrap()
            .series(&[])
            .unwrap();
        for v in [0.5, 2.0, 9.0] {
            h.record(v).unwrap();
        }
        assert_eq!(
            h.snapshot(),
            Some(SeriesSnapshot::Histogram {
                count: 3,
                sum: 11.5,
                buckets: vec![(1.0, 1), (5.0, 2), (f64::INFINITY, 3)]
            })
        );
    }

    /// A record of weight n must leave a series as n plain records would: checked for every kind
    /// on the in-memory and the Prometheus providers (their counter, gauge and histogram series
    /// are the ones in this file; the summary is `SlidingSummary`).
    #[test]
    fn a_weighted_record_equals_that_many_records() {
        let registry = prometheus::Registry::new();
        let prom = crate::PrometheusProvider::new(registry);
        let providers: [&dyn MetricProvider; 2] = [&InMemoryProvider::new(), &prom];
        for (p, provider) in providers.into_iter().enumerate() {
            for kind in [
                MetricKind::Counter,
                MetricKind::Gauge,
                MetricKind::Histogram,
                MetricKind::Summary,
            ] {
                let name_w = format!("w{p}{kind:?}").to_lowercase();
                let name_r = format!("r{p}{kind:?}").to_lowercase();
                let make = |name: &str| {
                    provider
                        .register(&MetricSpec { name, ..spec(kind) })
                        .unwrap()
                        .series(&[])
                        .unwrap()
                };
                let (weighted, repeated) = (make(&name_w), make(&name_r));
                for (v, n) in [(0.5, 3u64), (2.0, 16), (9.0, 1), (4.0, 1000)] {
                    weighted.record_weighted(v, n).unwrap();
                    for _ in 0..n {
                        repeated.record(v).unwrap();
                    }
                }
                let (w, r) = (weighted.snapshot().unwrap(), repeated.snapshot().unwrap());
                match (&w, &r) {
                    // Quantiles come from the window's samples, of which the weighted series
                    // keeps one per record: compare the count and the sum.
                    (
                        SeriesSnapshot::Summary { count, sum, .. },
                        SeriesSnapshot::Summary {
                            count: rc, sum: rs, ..
                        },
                    ) => assert_eq!((count, sum), (rc, rs), "{kind:?} on provider {p}"),
                    _ => assert_eq!(w, r, "{kind:?} on provider {p}"),
                }
            }
        }
    }

    #[test]
    fn multi_fans_out_and_null_discards() {
        let a = InMemoryProvider::new();
        let m = MultiProvider::new().with(a).with(NullProvider);
        let s = m
            .register(&spec(MetricKind::Counter))
            .unwrap()
            .series(&[])
            .unwrap();
        s.record(4.0).unwrap();
        assert_eq!(
            s.snapshot(),
            Some(SeriesSnapshot::Counter(4.0)),
            "read back from the first that can"
        );
        let n = NullProvider
            .register(&spec(MetricKind::Gauge))
            .unwrap()
            .series(&[])
            .unwrap();
        assert_eq!(n.add(1.0), Ok(()));
        assert_eq!(n.snapshot(), None);
    }
}
