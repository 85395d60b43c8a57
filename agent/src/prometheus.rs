//! [`PrometheusProvider`]: tracepoint metrics registered into a `prometheus::Registry`, the one
//! the application already exposes (or the crate's default registry).
//!
//! Names follow Deep's agents: `<namespace>_<name>[_<unit>]`, counters with `_total`. COUNTER adds
//! the value, GAUGE sets it, HISTOGRAM observes it into latency buckets (5 ms to 10 s, the
//! `prometheus` defaults), SUMMARY observes it into quantiles 0.5, 0.9 and 0.99 over a sliding
//! 60 s window ([`SlidingSummary`]; the `prometheus` crate has no summary of its own). Two tracepoints that define the same metric (same name, kind and label
//! keys) share it; it goes away with the last of them.
//!
//! All tracepoint metrics live in one collector registered once per registry (it also exposes
//! `sonde_agent_tracepoint_metrics`, how many there are). The registry itself never sees the
//! individual metrics: it remembers the label names of every name it ever registered, so a
//! tracepoint deleted and re-created with other labels could not register again. Clashes with the
//! application's own metrics are checked against the registry's contents instead.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use prometheus::{
    Counter, CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntGauge, Opts,
    Registry,
    core::{Collector, Desc},
    proto::{self, MetricFamily, MetricType},
};

use crate::{
    provider::{
        Instrument, MetricKind, MetricProvider, MetricSpec, ProviderError, RecordError, Series,
        SeriesSnapshot,
    },
    summary::{DEFAULT_QUANTILES, SlidingSummary, SummaryWindow},
};

/// Registers tracepoint metrics into a Prometheus registry.
#[derive(Clone)]
pub struct PrometheusProvider {
    inner: Arc<Inner>,
}

type SharedMap = Arc<Mutex<HashMap<String, Shared>>>;

struct Inner {
    registry: Registry,
    shared: SharedMap,
    registered: OnceLock<Result<(), String>>,
}

impl std::fmt::Debug for PrometheusProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusProvider").finish_non_exhaustive()
    }
}

#[derive(Clone)]
enum Vector {
    Counter(CounterVec),
    Gauge(GaugeVec),
    Histogram(HistogramVec),
    Summary(Arc<SummaryVec>),
    Callback(Arc<CallbackGauges>),
}

impl Vector {
    fn collect(&self) -> Vec<MetricFamily> {
        match self {
            Vector::Counter(v) => v.collect(),
            Vector::Gauge(v) => v.collect(),
            Vector::Histogram(v) => v.collect(),
            Vector::Summary(v) => v.collect(),
            Vector::Callback(v) => v.collect(),
        }
    }
}

type ReadFn = Arc<dyn Fn() -> f64 + Send + Sync>;

/// Gauges read from callbacks at collection: one family, one callback per label set.
struct CallbackGauges {
    name: String,
    help: String,
    label_keys: Vec<String>,
    children: Mutex<Vec<(u64, Vec<String>, ReadFn)>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl CallbackGauges {
    fn collect(&self) -> Vec<MetricFamily> {
        let children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        if children.is_empty() {
            return Vec::new();
        }
        let mut family = MetricFamily::default();
        family.set_name(self.name.clone());
        family.set_help(self.help.clone());
        family.set_field_type(MetricType::GAUGE);
        for (_, values, read) in children.iter() {
            // A panicking callback must not break the whole scrape.
            let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read()))
                .unwrap_or(f64::NAN);
            let mut gauge = proto::Gauge::default();
            gauge.set_value(value);
            let mut metric = proto::Metric::default();
            metric.set_label(label_pairs(&self.label_keys, values));
            metric.set_gauge(gauge);
            family.mut_metric().push(metric);
        }
        vec![family]
    }
}

fn label_pairs(keys: &[String], values: &[String]) -> Vec<proto::LabelPair> {
    keys.iter()
        .zip(values)
        .map(|(k, v)| {
            let mut pair = proto::LabelPair::default();
            pair.set_name(k.clone());
            pair.set_value(v.clone());
            pair
        })
        .collect()
}

/// SUMMARY metrics, which the `prometheus` crate lacks: one [`SlidingSummary`] per label set,
/// encoded as a Prometheus summary (quantiles over the window, count and sum over all time).
struct SummaryVec {
    name: String,
    help: String,
    label_keys: Vec<String>,
    children: Mutex<HashMap<Vec<String>, Arc<SlidingSummary>>>,
}

impl SummaryVec {
    fn child(&self, values: &[&str]) -> Result<Arc<SlidingSummary>, String> {
        if values.len() != self.label_keys.len() {
            return Err(format!(
                "{} label values for {} label keys",
                values.len(),
                self.label_keys.len()
            ));
        }
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        Ok(children
            .entry(key)
            .or_insert_with(|| Arc::new(SlidingSummary::new(SummaryWindow::default())))
            .clone())
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        if children.is_empty() {
            return Vec::new();
        }
        let mut family = MetricFamily::default();
        family.set_name(self.name.clone());
        family.set_help(self.help.clone());
        family.set_field_type(MetricType::SUMMARY);
        for (values, child) in children.iter() {
            let (count, sum, quantiles) = child.snapshot(DEFAULT_QUANTILES);
            let mut summary = proto::Summary::default();
            summary.set_sample_count(count);
            summary.set_sample_sum(sum);
            summary.set_quantile(
                quantiles
                    .into_iter()
                    .map(|(q, v)| {
                        let mut quantile = proto::Quantile::default();
                        quantile.set_quantile(q);
                        quantile.set_value(v);
                        quantile
                    })
                    .collect(),
            );
            let mut metric = proto::Metric::default();
            metric.set_label(
                self.label_keys
                    .iter()
                    .zip(values)
                    .map(|(k, v)| {
                        let mut pair = proto::LabelPair::default();
                        pair.set_name(k.clone());
                        pair.set_value(v.clone());
                        pair
                    })
                    .collect(),
            );
            metric.set_summary(summary);
            family.mut_metric().push(metric);
        }
        vec![family]
    }
}

struct Shared {
    /// The exposed name; the map key adds the label keys, so one name may have several label
    /// sets (the registry merges them into one family when gathering).
    name: String,
    vector: Vector,
    kind: MetricKind,
    label_keys: Vec<String>,
    users: usize,
}

/// The one collector per registry that exposes every tracepoint metric.
struct TracepointCollector {
    count: IntGauge,
    shared: SharedMap,
}

impl Collector for TracepointCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.count.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        self.count.set(shared.len() as i64);
        let mut out = self.count.collect();
        for s in shared.values() {
            out.extend(s.vector.collect());
        }
        out
    }
}

impl PrometheusProvider {
    /// Registers into `registry` (clone the application's registry: clones share their metrics).
    pub fn new(registry: Registry) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                shared: Arc::default(),
                registered: OnceLock::new(),
            }),
        }
    }

    /// Registers into the `prometheus` crate's default registry.
    pub fn default_registry() -> Self {
        Self::new(prometheus::default_registry().clone())
    }

    /// The registry metrics go to.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    fn ensure_collector(&self) -> Result<(), ProviderError> {
        self.inner
            .registered
            .get_or_init(|| {
                let count = IntGauge::new(
                    "sonde_agent_tracepoint_metrics",
                    "Metrics registered by Sonde tracepoints.",
                )
                .map_err(|e| e.to_string())?;
                let collector = TracepointCollector {
                    count,
                    shared: self.inner.shared.clone(),
                };
                self.inner.registry.register(Box::new(collector)).map_err(|e| match e {
                    prometheus::Error::AlreadyReg => {
                        "the registry already has a Sonde PrometheusProvider (use one per registry)".to_owned()
                    }
                    other => other.to_string(),
                })
            })
            .clone()
            .map_err(ProviderError::Backend)
    }
}

/// The shared map's key: the name and the label keys.
fn map_key(name: &str, keys: &[&str]) -> String {
    let mut key = name.to_owned();
    for k in keys {
        key.push('\0');
        key.push_str(k);
    }
    key
}

/// A metric of that name but another kind, if any.
fn other_kind(
    shared: &HashMap<String, Shared>,
    name: &str,
    kind: MetricKind,
) -> Option<MetricKind> {
    shared
        .values()
        .find(|s| s.name == name && s.kind != kind)
        .map(|s| s.kind)
}

/// The exposed name: counters end in `_total`.
fn exposed(spec: &MetricSpec<'_>) -> String {
    if spec.kind == MetricKind::Counter && !spec.name.ends_with("_total") {
        format!("{}_total", spec.name)
    } else {
        spec.name.to_owned()
    }
}

impl MetricProvider for PrometheusProvider {
    fn name(&self) -> &str {
        "prometheus"
    }

    fn register_callback(
        &self,
        spec: &MetricSpec<'_>,
        label_values: &[&str],
        read: ReadFn,
    ) -> Result<Box<dyn Instrument>, ProviderError> {
        self.ensure_collector()?;
        let name = spec.name.to_owned();
        if label_values.len() != spec.label_keys.len() {
            return Err(ProviderError::Backend(format!(
                "metric {name}: {} label values for {} label keys",
                label_values.len(),
                spec.label_keys.len()
            )));
        }
        let key = map_key(&name, spec.label_keys);
        let mut shared = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kind) = other_kind(&shared, &name, MetricKind::Gauge) {
            return Err(ProviderError::Conflict {
                name,
                reason: format!("already registered as a {kind:?}"),
            });
        }
        let gauges = match shared.get_mut(&key) {
            Some(existing) => match &existing.vector {
                Vector::Callback(g)
                    if existing
                        .label_keys
                        .iter()
                        .map(String::as_str)
                        .eq(spec.label_keys.iter().copied()) =>
                {
                    existing.users += 1;
                    g.clone()
                }
                _ => {
                    return Err(ProviderError::Conflict {
                        name,
                        reason: "already registered as another kind or with other labels".into(),
                    });
                }
            },
            None => {
                let g = Arc::new(CallbackGauges {
                    name: name.clone(),
                    help: spec.help.to_owned(),
                    label_keys: spec.label_keys.iter().map(|k| (*k).to_owned()).collect(),
                    children: Mutex::default(),
                    next_id: Default::default(),
                });
                shared.insert(
                    key.clone(),
                    Shared {
                        name: name.clone(),
                        vector: Vector::Callback(g.clone()),
                        kind: MetricKind::Gauge,
                        label_keys: spec.label_keys.iter().map(|k| (*k).to_owned()).collect(),
                        users: 1,
                    },
                );
                g
            }
        };
        let id = gauges
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        gauges
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((
                id,
                label_values.iter().map(|v| (*v).to_owned()).collect(),
                read,
            ));
        Ok(Box::new(CallbackInstrument {
            id,
            gauges: gauges.clone(),
            inner: PromInstrument {
                name,
                key,
                vector: Vector::Callback(gauges),
                shared: self.inner.shared.clone(),
            },
        }))
    }

    fn register(&self, spec: &MetricSpec<'_>) -> Result<Box<dyn Instrument>, ProviderError> {
        self.ensure_collector()?;
        let name = exposed(spec);
        // The application's own metrics (gathered before taking our lock: gathering calls into
        // our collector, which takes it too).
        let taken_by_app = {
            let families = self.inner.registry.gather();
            let ours = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
            !ours.values().any(|s| s.name == name)
                && families.iter().any(|f| {
                    let n = f.name();
                    n == name
                        || n.strip_suffix("_total") == Some(&name)
                        || name.strip_suffix("_total") == Some(n)
                })
        };
        if taken_by_app {
            return Err(ProviderError::Conflict {
                name,
                reason: "the registry already has a metric of that name (the application's own?)"
                    .into(),
            });
        }
        let key = map_key(&name, spec.label_keys);
        let mut shared = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kind) = other_kind(&shared, &name, spec.kind) {
            return Err(ProviderError::Conflict {
                name,
                reason: format!("already defined as a {kind:?}"),
            });
        }
        if let Some(existing) = shared.get_mut(&key) {
            existing.users += 1;
            return Ok(Box::new(PromInstrument {
                name,
                key,
                vector: existing.vector.clone(),
                shared: self.inner.shared.clone(),
            }));
        }
        let to_err = |e: prometheus::Error| ProviderError::Backend(format!("metric {name}: {e}"));
        let vector = match spec.kind {
            MetricKind::Counter => Vector::Counter(
                CounterVec::new(Opts::new(name.clone(), spec.help), spec.label_keys)
                    .map_err(to_err)?,
            ),
            MetricKind::Gauge => Vector::Gauge(
                GaugeVec::new(Opts::new(name.clone(), spec.help), spec.label_keys)
                    .map_err(to_err)?,
            ),
            MetricKind::Histogram => Vector::Histogram(
                HistogramVec::new(
                    match spec.buckets {
                        Some(b) => HistogramOpts::new(name.clone(), spec.help).buckets(b.to_vec()),
                        None => HistogramOpts::new(name.clone(), spec.help),
                    },
                    spec.label_keys,
                )
                .map_err(to_err)?,
            ),
            MetricKind::Summary => {
                if spec.label_keys.contains(&"quantile") {
                    return Err(ProviderError::Conflict {
                        name,
                        reason: "a summary cannot have a label named quantile".into(),
                    });
                }
                Vector::Summary(Arc::new(SummaryVec {
                    name: name.clone(),
                    help: spec.help.to_owned(),
                    label_keys: spec.label_keys.iter().map(|k| (*k).to_owned()).collect(),
                    children: Mutex::default(),
                }))
            }
        };
        shared.insert(
            key.clone(),
            Shared {
                name: name.clone(),
                vector: vector.clone(),
                kind: spec.kind,
                label_keys: spec.label_keys.iter().map(|k| (*k).to_owned()).collect(),
                users: 1,
            },
        );
        Ok(Box::new(PromInstrument {
            name,
            key,
            vector,
            shared: self.inner.shared.clone(),
        }))
    }
}

struct PromInstrument {
    name: String,
    key: String,
    vector: Vector,
    shared: SharedMap,
}

impl Instrument for PromInstrument {
    fn series(&self, label_values: &[&str]) -> Result<Arc<dyn Series>, ProviderError> {
        let err =
            |e: prometheus::Error| ProviderError::Backend(format!("metric {}: {e}", self.name));
        Ok(match &self.vector {
            Vector::Counter(v) => Arc::new(PromCounter(
                v.get_metric_with_label_values(label_values).map_err(err)?,
            )),
            Vector::Gauge(v) => Arc::new(PromGauge(
                v.get_metric_with_label_values(label_values).map_err(err)?,
            )),
            Vector::Histogram(v) => Arc::new(PromHistogram(
                v.get_metric_with_label_values(label_values).map_err(err)?,
            )),
            Vector::Summary(v) => v
                .child(label_values)
                .map_err(|e| ProviderError::Backend(format!("metric {}: {e}", self.name)))?,
            Vector::Callback(_) => {
                return Err(ProviderError::Unsupported(format!(
                    "metric {}: a callback gauge is read, not recorded",
                    self.name
                )));
            }
        })
    }
}

impl Drop for PromInstrument {
    fn drop(&mut self) {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = shared.get_mut(&self.key) {
            s.users -= 1;
            if s.users == 0 {
                shared.remove(&self.key);
            }
        }
    }
}

/// One callback of a [`CallbackGauges`]; dropping it removes the callback (and, through
/// `inner`, the family with its last user).
struct CallbackInstrument {
    id: u64,
    gauges: Arc<CallbackGauges>,
    inner: PromInstrument,
}

impl Instrument for CallbackInstrument {
    fn series(&self, label_values: &[&str]) -> Result<Arc<dyn Series>, ProviderError> {
        self.inner.series(label_values)
    }
}

impl Drop for CallbackInstrument {
    fn drop(&mut self) {
        self.gauges
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _, _)| *id != self.id);
    }
}

struct PromCounter(Counter);
struct PromGauge(Gauge);
struct PromHistogram(Histogram);
impl Series for PromCounter {
    fn record(&self, value: f64) -> Result<(), RecordError> {
        self.0.inc_by(RecordError::counter(value)?);
        Ok(())
    }

    fn snapshot(&self) -> Option<SeriesSnapshot> {
        Some(SeriesSnapshot::Counter(self.0.get()))
    }
}

impl Series for PromGauge {
    fn record(&self, value: f64) -> Result<(), RecordError> {
        self.0.set(RecordError::gauge(value)?);
        Ok(())
    }

    fn add(&self, delta: f64) -> Result<(), RecordError> {
        self.0.add(RecordError::finite(delta)?);
        Ok(())
    }

    fn snapshot(&self) -> Option<SeriesSnapshot> {
        Some(SeriesSnapshot::Gauge(self.0.get()))
    }
}

impl Series for PromHistogram {
    fn record(&self, value: f64) -> Result<(), RecordError> {
        self.0.observe(RecordError::finite(value)?);
        Ok(())
    }

    fn snapshot(&self) -> Option<SeriesSnapshot> {
        let families = self.0.collect();
        let h = families.first()?.get_metric().first()?.get_histogram();
        let mut buckets: Vec<(f64, u64)> = h
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect();
        buckets.push((f64::INFINITY, h.get_sample_count()));
        Some(SeriesSnapshot::Histogram {
            count: h.get_sample_count(),
            sum: h.get_sample_sum(),
            buckets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(name: &'a str, kind: MetricKind, keys: &'a [&'a str]) -> MetricSpec<'a> {
        MetricSpec {
            name,
            help: "help",
            kind,
            label_keys: keys,
            tracepoint_id: "tp",
            buckets: None,
        }
    }

    fn exposition(r: &Registry) -> String {
        let mut out = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn counters_get_total_and_shared_metrics_unregister_with_the_last_user() {
        let registry = Registry::new();
        let p = PrometheusProvider::new(registry.clone());
        let a = p
            .register(&spec("deep_orders", MetricKind::Counter, &["country"]))
            .unwrap();
        let b = p
            .register(&spec("deep_orders", MetricKind::Counter, &["country"]))
            .unwrap();
        a.series(&["NZ"]).unwrap().record(2.0).unwrap();
        b.series(&["NZ"]).unwrap().record(1.0).unwrap();
        assert!(exposition(&registry).contains("deep_orders_total{country=\"NZ\"} 3"));
        assert!(
            matches!(
                p.register(&spec("deep_orders_total", MetricKind::Gauge, &["country"])),
                Err(ProviderError::Conflict { .. })
            ),
            "one exposed name cannot be two kinds"
        );
        drop(a);
        assert!(
            exposition(&registry).contains("deep_orders_total"),
            "b still uses it"
        );
        drop(b);
        assert!(
            !exposition(&registry).contains("deep_orders_total"),
            "gone with the last user"
        );
    }

    #[test]
    fn one_name_may_carry_several_label_sets_in_one_family() {
        let registry = Registry::new();
        let p = PrometheusProvider::new(registry.clone());
        let plain = p
            .register(&spec("deep_hits", MetricKind::Counter, &[]))
            .unwrap();
        let routed = p
            .register(&spec("deep_hits", MetricKind::Counter, &["route"]))
            .unwrap();
        plain.series(&[]).unwrap().record(1.0).unwrap();
        routed.series(&["/a"]).unwrap().record(2.0).unwrap();
        let text = exposition(&registry);
        assert_eq!(
            text.matches("# TYPE deep_hits_total counter").count(),
            1,
            "{text}"
        );
        assert!(text.contains("deep_hits_total 1"), "{text}");
        assert!(text.contains("deep_hits_total{route=\"/a\"} 2"), "{text}");
        drop(routed);
        let text = exposition(&registry);
        assert!(!text.contains("route="), "{text}");
        assert!(text.contains("deep_hits_total 1"), "{text}");
    }

    #[test]
    fn counters_refuse_negative_values() {
        let p = PrometheusProvider::new(Registry::new());
        let c = p
            .register(&spec("deep_c", MetricKind::Counter, &[]))
            .unwrap();
        assert_eq!(
            c.series(&[]).unwrap().record(-1.0),
            Err(RecordError::NegativeCounter)
        );
    }

    #[test]
    fn summaries_expose_quantiles_count_and_sum() {
        let registry = Registry::new();
        let p = PrometheusProvider::new(registry.clone());
        let s = p
            .register(&spec(
                "deep_latency_seconds",
                MetricKind::Summary,
                &["route"],
            ))
            .unwrap();
        let series = s.series(&["/checkout"]).unwrap();
        for v in [0.1, 0.2, 0.3, 0.4, 0.5] {
            series.record(v).unwrap();
        }
        let text = exposition(&registry);
        assert!(
            text.contains("# TYPE deep_latency_seconds summary"),
            "{text}"
        );
        assert!(
            text.contains(r#"deep_latency_seconds{route="/checkout",quantile="0.5"} 0.3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"deep_latency_seconds_count{route="/checkout"} 5"#),
            "{text}"
        );
        assert!(
            text.contains(r#"deep_latency_seconds_sum{route="/checkout"} 1.5"#),
            "{text}"
        );
        assert!(matches!(
            p.register(&spec("deep_q", MetricKind::Summary, &["quantile"])),
            Err(ProviderError::Conflict { .. })
        ));
    }

    #[test]
    fn an_application_metric_of_the_same_name_is_a_conflict() {
        let registry = Registry::new();
        let app = prometheus::IntCounter::new("deep_mine_total", "the app's").unwrap();
        registry.register(Box::new(app)).unwrap();
        let p = PrometheusProvider::new(registry);
        assert!(matches!(
            p.register(&spec("deep_mine", MetricKind::Counter, &[])),
            Err(ProviderError::Conflict { .. })
        ));
    }
}
