//! [`MetricsFacadeProvider`]: tracepoint metrics through the `metrics` facade, into whatever
//! recorder the application installed (typically `metrics-exporter-prometheus`, whose handle it
//! already renders at `/metrics`).
//!
//! Names are Deep's, as with the `prometheus` provider: `<namespace>_<name>[_<unit>]`, counters
//! with `_total` (added here: the exporter adds no suffix unless asked to, and never twice).
//! COUNTER adds, GAUGE sets, HISTOGRAM and SUMMARY record into the recorder's histogram, which
//! `metrics-exporter-prometheus` exposes as a summary unless the application gave it buckets
//! (`PrometheusBuilder::set_buckets`, `set_buckets_for_metric`). The pipeline's cardinality cap
//! folds excess label sets into `sonde_overflow`.
//!
//! Two differences follow from the facade:
//! - `metrics` counters count whole numbers. A counter of fractional values keeps the exact
//!   total per series here and adds its whole part to the recorder's counter, so the exposed
//!   counter is the total rounded down.
//! - A recorder cannot unregister. Deleting a tracepoint stops its series from changing; they
//!   stay in the exposition with their last values until the exporter drops idle metrics
//!   (`PrometheusBuilder::idle_timeout(MetricKindMask::ALL, Some(duration))`), or the process
//!   restarts. Re-creating the tracepoint continues the same series.
//!
//! The recorder is looked up when a tracepoint is installed (`metrics::with_recorder`), so install
//! the application's recorder before tracepoints arrive; with none installed the facade's no-op
//! recorder takes the values.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use ::metrics::{Key, Label, Level, Metadata};

use crate::metrics::provider::{
    Instrument, MetricKind, MetricProvider, MetricSpec, ProviderError, RecordError, Series,
};

/// What the recorder is told registers these metrics.
static METADATA: Metadata<'static> =
    Metadata::new("sonde::tracepoint", Level::INFO, Some(module_path!()));

/// The metrics defined now: exposed name → (kind, label keys, users).
type Defined = Arc<Mutex<HashMap<String, (MetricKind, Vec<String>, usize)>>>;

/// Records tracepoint metrics through the `metrics` facade's installed recorder.
#[derive(Clone, Default)]
pub struct MetricsFacadeProvider {
    defined: Defined,
}

impl fmt::Debug for MetricsFacadeProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsFacadeProvider")
            .finish_non_exhaustive()
    }
}

impl MetricsFacadeProvider {
    /// A provider recording into the recorder installed with `metrics` (for example
    /// `metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()`).
    pub fn new() -> Self {
        Self::default()
    }
}

impl MetricProvider for MetricsFacadeProvider {
    fn name(&self) -> &str {
        "metrics"
    }

    fn register(&self, spec: &MetricSpec<'_>) -> Result<Box<dyn Instrument>, ProviderError> {
        let name = match spec.kind {
            MetricKind::Counter => format!("{}_total", spec.name),
            _ => spec.name.to_owned(),
        };
        let keys: Vec<String> = spec.label_keys.iter().map(|k| (*k).to_owned()).collect();
        {
            let mut defined = self.defined.lock().unwrap_or_else(|p| p.into_inner());
            match defined.get_mut(&name) {
                Some((kind, existing, _)) if *kind != spec.kind || *existing != keys => {
                    return Err(ProviderError::Conflict {
                        reason: format!("already defined as a {kind:?} with labels {existing:?}"),
                        name,
                    });
                }
                Some((_, _, users)) => *users += 1,
                None => {
                    defined.insert(name.clone(), (spec.kind, keys.clone(), 1));
                }
            }
        }
        let help = spec.help.to_owned();
        let described = name.clone();
        ::metrics::with_recorder(|r| match spec.kind {
            MetricKind::Counter => r.describe_counter(described.into(), None, help.into()),
            MetricKind::Gauge => r.describe_gauge(described.into(), None, help.into()),
            MetricKind::Histogram | MetricKind::Summary => {
                r.describe_histogram(described.into(), None, help.into())
            }
        });
        Ok(Box::new(FacadeInstrument {
            name,
            kind: spec.kind,
            keys,
            defined: self.defined.clone(),
        }))
    }
}

/// A metric defined by a tracepoint; dropping its last user forgets the definition (the
/// recorder keeps the series, see the module doc).
struct FacadeInstrument {
    name: String,
    kind: MetricKind,
    keys: Vec<String>,
    defined: Defined,
}

impl Instrument for FacadeInstrument {
    fn series(&self, label_values: &[&str]) -> Result<Arc<dyn Series>, ProviderError> {
        let labels: Vec<Label> = self
            .keys
            .iter()
            .zip(label_values)
            .map(|(k, v)| Label::new(k.clone(), (*v).to_owned()))
            .collect();
        let key = Key::from_parts(self.name.clone(), labels);
        Ok(::metrics::with_recorder(|r| -> Arc<dyn Series> {
            match self.kind {
                MetricKind::Counter => Arc::new(CounterSeries {
                    counter: r.register_counter(&key, &METADATA),
                    total: AtomicU64::new(0f64.to_bits()),
                }),
                MetricKind::Gauge => Arc::new(GaugeSeries(r.register_gauge(&key, &METADATA))),
                MetricKind::Histogram | MetricKind::Summary => {
                    Arc::new(HistogramSeries(r.register_histogram(&key, &METADATA)))
                }
            }
        }))
    }
}

impl Drop for FacadeInstrument {
    fn drop(&mut self) {
        let mut defined = self.defined.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, users)) = defined.get_mut(&self.name) {
            *users = users.saturating_sub(1);
            if *users == 0 {
                defined.remove(&self.name);
            }
        }
    }
}

/// A counter series: the exact total (f64 bits), whose whole part the recorder's counter holds.
struct CounterSeries {
    counter: ::metrics::Counter,
    total: AtomicU64,
}

impl CounterSeries {
    fn add(&self, value: f64) {
        let mut old = self.total.load(Ordering::Relaxed);
        loop {
            let new = f64::from_bits(old) + value;
            match self.total.compare_exchange_weak(
                old,
                new.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let whole = new.floor() - f64::from_bits(old).floor();
                    if whole >= 1.0 {
                        self.counter.increment(whole as u64);
                    }
                    return;
                }
                Err(current) => old = current,
            }
        }
    }
}

impl Series for CounterSeries {
    fn record(&self, value: f64) -> Result<(), RecordError> {
        self.add(RecordError::counter(value)?);
        Ok(())
    }

    fn record_weighted(&self, value: f64, weight: u64) -> Result<(), RecordError> {
        self.add(RecordError::counter(
            RecordError::counter(value)? * weight as f64,
        )?);
        Ok(())
    }
}

struct GaugeSeries(::metrics::Gauge);

impl Series for GaugeSeries {
    fn record(&self, value: f64) -> Result<(), RecordError> {
        self.0.set(RecordError::gauge(value)?);
        Ok(())
    }

    fn record_weighted(&self, value: f64, _weight: u64) -> Result<(), RecordError> {
        self.record(value)
    }

    fn add(&self, delta: f64) -> Result<(), RecordError> {
        self.0.increment(RecordError::finite(delta)?);
        Ok(())
    }
}

struct HistogramSeries(::metrics::Histogram);

impl Series for HistogramSeries {
    fn record(&self, value: f64) -> Result<(), RecordError> {
        self.0.record(RecordError::finite(value)?);
        Ok(())
    }

    fn record_weighted(&self, value: f64, weight: u64) -> Result<(), RecordError> {
        let value = RecordError::finite(value)?;
        self.0
            .record_many(value, usize::try_from(weight).unwrap_or(usize::MAX));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractional_counts_reach_the_counter_as_their_whole_part() {
        let series = CounterSeries {
            counter: ::metrics::Counter::noop(),
            total: AtomicU64::new(0f64.to_bits()),
        };
        for _ in 0..3 {
            series.record(0.5).unwrap();
        }
        assert_eq!(f64::from_bits(series.total.load(Ordering::Relaxed)), 1.5);
        assert_eq!(series.record(-1.0), Err(RecordError::NegativeCounter));
    }
}
