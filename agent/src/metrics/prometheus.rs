//! [`PrometheusProvider`]: tracepoint metrics registered into a `prometheus::Registry`, the one
//! the application already exposes (or the crate's default registry).
//!
//! Names follow Deep's agents: `<namespace>_<name>[_<unit>]`, counters with `_total`. COUNTER adds
//! the value, GAUGE sets it, HISTOGRAM observes it into the spec's buckets (for a tracepoint: its
//! `args.buckets`, else by unit: `seconds` 5 ms–10 s, `milliseconds` 5–10,000, `bytes` 64 B–16 MiB,
//! anything else 1 to ~10^6 by powers of four; the `prometheus` defaults when a spec has none), SUMMARY observes it into quantiles 0.5, 0.9 and 0.99 over a sliding
//! 60 s window ([`SlidingSummary`]; the `prometheus` crate has no summary of its own). Two
//! tracepoints that define the same metric (same name, kind and label keys) share it; it goes
//! away with the last of them.
//!
//! All tracepoint metrics live in one collector registered once per registry (it also exposes
//! `sonde_agent_tracepoint_metrics`, how many there are). The registry itself never sees the
//! individual metrics: it remembers the label names of every name it ever registered, so a
//! tracepoint deleted and re-created with other labels could not register again. Clashes with the
//! application's own metrics are checked against the registry's contents instead.
//!
//! # Series and exposition
//! The series are Sonde's own: per metric, a map from label values to a child (an atomic `f64`
//! for counters and gauges, a `prometheus::Histogram` for histograms, a [`SlidingSummary`]),
//! ordered as the exposition lists them (label keys sorted by name, label sets sorted by their
//! values). The collector turns them into `MetricFamily` values for `Registry::gather()`, as the
//! `prometheus` crate's vectors would. A scrape through
//! [`encode_registry`](crate::metrics::exposition::encode_registry) skips that step, which for many
//! series is most of its cost: it calls [`gather`] here, which gathers the registry while the
//! collector holds its metrics back (a thread-local flag set for the duration), then hands them
//! over to be written straight from the series, merged by name with the rest of the registry.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus::{
    Histogram, HistogramOpts, IntGauge, Registry,
    core::{Collector, Desc, Metric as _},
    proto::{self, MetricFamily, MetricType},
};

use crate::{
    metrics::backends::{CounterSeries, GaugeSeries, HistogramSeries},
    metrics::encoder::{Encoder, Kind},
    metrics::provider::{
        Instrument, MetricKind, MetricProvider, MetricSpec, ProviderError, Series,
    },
    metrics::summary::{DEFAULT_QUANTILES, SlidingSummary, SummaryWindow},
};

/// The collector's own gauge: how many metrics it holds.
const COUNT_NAME: &str = "sonde_agent_tracepoint_metrics";
const COUNT_HELP: &str = "Metrics registered by Sonde tracepoints.";

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

/// Label values as a child is keyed by: in the order of the sorted label keys.
type Values = Box<[Box<str>]>;

/// The children of one metric, one per label set.
struct Children<T> {
    name: String,
    help: String,
    /// The label keys, sorted by name (the order the exposition lists them in, as the
    /// `prometheus` crate's vectors do).
    keys: Vec<String>,
    /// For each of `keys`, the index of its value among the values as given.
    order: Vec<usize>,
    /// Iterated in the exposition's order.
    map: RwLock<BTreeMap<Values, Arc<T>>>,
}

/// The label keys sorted by name, and for each the index of its value among values given in
/// the keys' original order.
fn sorted_keys(keys: &[&str]) -> (Vec<String>, Vec<usize>) {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&i| keys[i]);
    (order.iter().map(|&i| keys[i].to_owned()).collect(), order)
}

impl<T> Children<T> {
    fn new(name: &str, help: &str, keys: &[&str]) -> Self {
        let (keys, order) = sorted_keys(keys);
        Self {
            name: name.to_owned(),
            help: help.to_owned(),
            keys,
            order,
            map: RwLock::default(),
        }
    }

    /// The child for label values given in the order of the metric's label keys, made with
    /// `make` the first time.
    fn child(
        &self,
        values: &[&str],
        make: impl FnOnce() -> Result<T, String>,
    ) -> Result<Arc<T>, String> {
        if values.len() != self.order.len() {
            return Err(format!(
                "{} label values for {} label keys",
                values.len(),
                self.order.len()
            ));
        }
        let key: Values = self.order.iter().map(|&i| Box::from(values[i])).collect();
        if let Some(child) = self.read().get(&key) {
            return Ok(child.clone());
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if let Some(child) = map.get(&key) {
            return Ok(child.clone());
        }
        let child = Arc::new(make()?);
        map.insert(key, child.clone());
        Ok(child)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Values, Arc<T>>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The metric as `Registry::gather()` wants it; `fill` sets a child's value.
    fn collect(
        &self,
        kind: MetricType,
        fill: impl Fn(&T, &mut proto::Metric),
    ) -> Vec<MetricFamily> {
        let map = self.read();
        if map.is_empty() {
            return Vec::new();
        }
        let mut family = MetricFamily::default();
        family.set_name(self.name.clone());
        family.set_help(self.help.clone());
        family.set_field_type(kind);
        let metrics = family.mut_metric();
        metrics.reserve(map.len());
        for (values, child) in map.iter() {
            let mut metric = proto::Metric::default();
            metric.set_label(label_pairs(&self.keys, values));
            fill(child, &mut metric);
            metrics.push(metric);
        }
        vec![family]
    }

    /// The metric written straight into an exposition, named `name` (the registry's prefix
    /// added), each series with the registry's `common` labels after its own; `write` writes a
    /// child's value.
    fn encode(
        &self,
        enc: &mut Encoder,
        name: &str,
        kind: Kind,
        common: &[(String, String)],
        write: impl Fn(&T, &mut Encoder),
    ) {
        let map = self.read();
        if map.is_empty() {
            return;
        }
        enc.family(name, &self.help, kind);
        for (values, child) in map.iter() {
            let own = self
                .keys
                .iter()
                .zip(values.iter())
                .map(|(k, v)| (k.as_str(), &**v));
            let common = common.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            let labels = own.chain(common);
            enc.series(labels, 0);
            write(child, enc);
        }
    }
}

fn label_pairs<V: AsRef<str>>(keys: &[String], values: &[V]) -> Vec<proto::LabelPair> {
    keys.iter()
        .zip(values)
        .map(|(k, v)| {
            let mut pair = proto::LabelPair::default();
            pair.set_name(k.clone());
            pair.set_value(v.as_ref().to_owned());
            pair
        })
        .collect()
}

/// Histograms: the children, and the bucket bounds each is made with (those the `prometheus`
/// crate's own histogram would use for the same options). Sonde's series, not the crate's
/// `Histogram`, so that a sampled tracepoint's observation of weight N is two atomic adds.
struct Histograms {
    children: Children<HistogramSeries>,
    bounds: Arc<[f64]>,
}

#[derive(Clone)]
enum Vector {
    Counter(Arc<Children<CounterSeries>>),
    Gauge(Arc<Children<GaugeSeries>>),
    Histogram(Arc<Histograms>),
    Summary(Arc<Children<SlidingSummary>>),
    Callback(Arc<CallbackGauges>),
}

impl Vector {
    fn collect(&self) -> Vec<MetricFamily> {
        match self {
            Vector::Counter(c) => c.collect(MetricType::COUNTER, |c, m| {
                let mut counter = proto::Counter::default();
                counter.set_value(c.0.get());
                m.set_counter(counter);
            }),
            Vector::Gauge(g) => g.collect(MetricType::GAUGE, |g, m| {
                let mut gauge = proto::Gauge::default();
                gauge.set_value(g.0.get());
                m.set_gauge(gauge);
            }),
            Vector::Histogram(h) => h.children.collect(MetricType::HISTOGRAM, |h, m| {
                let (buckets, count, sum) = h.cumulative();
                let mut histogram = proto::Histogram::default();
                histogram.set_sample_count(count);
                histogram.set_sample_sum(sum);
                histogram.set_bucket(
                    buckets
                        .into_iter()
                        .map(|(bound, cumulative)| {
                            let mut b = proto::Bucket::default();
                            b.set_upper_bound(bound);
                            b.set_cumulative_count(cumulative);
                            b
                        })
                        .collect(),
                );
                m.set_histogram(histogram);
            }),
            Vector::Summary(s) => s.collect(MetricType::SUMMARY, |s, m| {
                let (count, sum, quantiles) = s.snapshot(DEFAULT_QUANTILES);
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
                m.set_summary(summary);
            }),
            Vector::Callback(g) => g.collect(),
        }
    }

    /// Writes the metric straight into an exposition (see [`Children::encode`]).
    fn encode(&self, enc: &mut Encoder, name: &str, common: &[(String, String)]) {
        match self {
            Vector::Counter(c) => {
                c.encode(enc, name, Kind::Counter, common, |c, enc| {
                    enc.counter(c.0.get())
                });
            }
            Vector::Gauge(g) => {
                g.encode(enc, name, Kind::Gauge, common, |g, enc| {
                    enc.gauge(g.0.get())
                });
            }
            Vector::Histogram(h) => {
                h.children
                    .encode(enc, name, Kind::Histogram, common, |h, enc| {
                        let (buckets, count, sum) = h.cumulative();
                        enc.histogram(buckets, count, sum);
                    });
            }
            Vector::Summary(s) => {
                s.encode(enc, name, Kind::Summary, common, |s, enc| {
                    let (count, sum, quantiles) = s.snapshot(DEFAULT_QUANTILES);
                    enc.summary(quantiles, count, sum);
                });
            }
            Vector::Callback(g) => g.encode(enc, name, common),
        }
    }
}

type ReadFn = Arc<dyn Fn() -> f64 + Send + Sync>;

/// Gauges read from callbacks at collection: one family, one callback per label set.
struct CallbackGauges {
    name: String,
    help: String,
    /// Sorted by name, as [`Children::keys`].
    keys: Vec<String>,
    order: Vec<usize>,
    /// The values in the order of `keys`.
    children: Mutex<Vec<(u64, Values, ReadFn)>>,
    next_id: AtomicU64,
}

impl CallbackGauges {
    fn new(name: &str, help: &str, keys: &[&str]) -> Self {
        let (keys, order) = sorted_keys(keys);
        Self {
            name: name.to_owned(),
            help: help.to_owned(),
            keys,
            order,
            children: Mutex::default(),
            next_id: AtomicU64::new(0),
        }
    }

    fn add(&self, values: &[&str], read: ReadFn) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let values = self.order.iter().map(|&i| Box::from(values[i])).collect();
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, values, read));
        id
    }

    /// The callbacks' values, sorted by label values.
    fn read(&self) -> Vec<(Values, f64)> {
        let children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(Values, f64)> = children
            .iter()
            .map(|(_, values, read)| {
                // A panicking callback must not break the whole scrape.
                let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read()))
                    .unwrap_or(f64::NAN);
                (values.clone(), value)
            })
            .collect();
        drop(children);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let children = self.read();
        if children.is_empty() {
            return Vec::new();
        }
        let mut family = MetricFamily::default();
        family.set_name(self.name.clone());
        family.set_help(self.help.clone());
        family.set_field_type(MetricType::GAUGE);
        for (values, value) in children {
            let mut gauge = proto::Gauge::default();
            gauge.set_value(value);
            let mut metric = proto::Metric::default();
            metric.set_label(label_pairs(&self.keys, &values));
            metric.set_gauge(gauge);
            family.mut_metric().push(metric);
        }
        vec![family]
    }

    fn encode(&self, enc: &mut Encoder, name: &str, common: &[(String, String)]) {
        let children = self.read();
        if children.is_empty() {
            return;
        }
        enc.family(name, &self.help, Kind::Gauge);
        for (values, value) in &children {
            let own = self
                .keys
                .iter()
                .zip(values.iter())
                .map(|(k, v)| (k.as_str(), &**v));
            let common = common.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            enc.series(own.chain(common), 0);
            enc.gauge(*value);
        }
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

thread_local! {
    /// While [`gather`] runs on this thread: the maps of the collectors that its
    /// `Registry::gather()` reached, which then leave their metrics out.
    static HELD_BACK: RefCell<Option<Vec<SharedMap>>> = const { RefCell::new(None) };
}

/// Holds metrics back for the duration of one `gather()`; restores the state it found when
/// finished or dropped (a collector may panic).
struct Holding(Option<Option<Vec<SharedMap>>>);

impl Holding {
    fn start() -> Self {
        Self(Some(HELD_BACK.with(|h| h.replace(Some(Vec::new())))))
    }

    /// The maps held back.
    fn finish(mut self) -> Vec<SharedMap> {
        let previous = self.0.take().flatten();
        HELD_BACK.with(|h| h.replace(previous)).unwrap_or_default()
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        if let Some(previous) = self.0.take() {
            HELD_BACK.with(|h| h.replace(previous));
        }
    }
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
        let held_back = HELD_BACK.with(|h| match h.try_borrow_mut().as_deref_mut() {
            Ok(Some(held)) => {
                held.push(self.shared.clone());
                true
            }
            _ => false,
        });
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        self.count.set(shared.len() as i64);
        let mut out = self.count.collect();
        if !held_back {
            for s in shared.values() {
                out.extend(s.vector.collect());
            }
        }
        out
    }
}

/// A registry gathered with the provider's metrics held back: everything else as
/// `MetricFamily` values, and the provider's metrics to write directly (both sorted by name,
/// no name in both).
pub(crate) struct Gathered {
    pub families: Vec<MetricFamily>,
    pub own: Vec<OwnFamily>,
}

/// One of the provider's metrics, to write straight into an exposition.
pub(crate) struct OwnFamily {
    /// With the registry's prefix.
    name: String,
    vector: Vector,
    /// The registry's common labels.
    common: Arc<[(String, String)]>,
}

impl OwnFamily {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn encode(&self, enc: &mut Encoder) {
        self.vector.encode(enc, &self.name, &self.common);
    }
}

/// Gathers `registry`, holding back the metrics of its [`PrometheusProvider`] to be written
/// straight from their series (see the module's docs).
pub(crate) fn gather(registry: &Registry) -> Gathered {
    let holding = Holding::start();
    let mut families = registry.gather();
    let held = holding.finish();
    let whole = |registry: &Registry| Gathered {
        families: registry.gather(),
        own: Vec::new(),
    };
    let shared = match held.as_slice() {
        [] => {
            return Gathered {
                families,
                own: Vec::new(),
            };
        }
        [shared] => shared,
        // Another collector gathered a registry of its own: not ours to untangle.
        _ => return whole(registry),
    };
    // The registry's prefix and common labels, read off the collector's own gauge, which
    // `gather()` gave them to.
    let applied = families.iter().find_map(|f| {
        let prefix = f.name().strip_suffix(COUNT_NAME)?;
        let metric = f.get_metric().first()?;
        (f.help() == COUNT_HELP && (prefix.is_empty() || prefix.ends_with('_'))).then(|| {
            let common: Vec<(String, String)> = metric
                .get_label()
                .iter()
                .map(|l| (l.name().to_owned(), l.value().to_owned()))
                .collect();
            (prefix.to_owned(), common)
        })
    });
    let Some((prefix, common)) = applied else {
        return whole(registry);
    };
    let mut by_name: BTreeMap<String, Vec<Vector>> = BTreeMap::new();
    for s in shared.lock().unwrap_or_else(|p| p.into_inner()).values() {
        by_name
            .entry(format!("{prefix}{}", s.name))
            .or_default()
            .push(s.vector.clone());
    }
    let common: Arc<[(String, String)]> = common.into();
    let mut own = Vec::with_capacity(by_name.len());
    for (name, mut vectors) in by_name {
        let clash = families.binary_search_by(|f| f.name().cmp(&name));
        if vectors.len() == 1
            && clash.is_err()
            && let Some(vector) = vectors.pop()
        {
            own.push(OwnFamily {
                name,
                vector,
                common: common.clone(),
            });
            continue;
        }
        // Several label sets under one name, or a name the registry has too: merged into one
        // family as `gather()` would.
        let mut merged: Option<MetricFamily> = None;
        for mut family in vectors.iter().flat_map(Vector::collect) {
            let mut metrics = family.take_metric();
            for m in &mut metrics {
                let mut labels = m.take_label();
                labels.extend(common.iter().map(|(k, v)| {
                    let mut pair = proto::LabelPair::default();
                    pair.set_name(k.clone());
                    pair.set_value(v.clone());
                    pair
                }));
                m.set_label(labels);
            }
            merged
                .get_or_insert_with(|| {
                    family.set_name(name.clone());
                    family
                })
                .mut_metric()
                .extend(metrics);
        }
        let Some(mut merged) = merged else { continue };
        let at = match clash {
            Ok(at) => {
                families[at].mut_metric().extend(merged.take_metric());
                at
            }
            Err(at) => {
                families.insert(at, merged);
                at
            }
        };
        families[at].mut_metric().sort_by(|a, b| {
            let (a, b) = (a.get_label(), b.get_label());
            a.len()
                .cmp(&b.len())
                .then_with(|| a.iter().map(|l| l.value()).cmp(b.iter().map(|l| l.value())))
        });
    }
    Gathered { families, own }
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
                let count = IntGauge::new(COUNT_NAME, COUNT_HELP).map_err(|e| e.to_string())?;
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
                let g = Arc::new(CallbackGauges::new(&name, spec.help, spec.label_keys));
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
        let id = gauges.add(label_values, read);
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
            let families = {
                // Without our own metrics: only the application's are of interest.
                let holding = Holding::start();
                let families = self.inner.registry.gather();
                holding.finish();
                families
            };
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
        // Names, label names and help text checked as the `prometheus` crate's vectors check them.
        let check = || {
            let keys = spec.label_keys.iter().map(|k| (*k).to_owned()).collect();
            Desc::new(name.clone(), spec.help.to_owned(), keys, HashMap::new()).map_err(to_err)
        };
        let vector = match spec.kind {
            MetricKind::Counter => {
                check()?;
                Vector::Counter(Arc::new(Children::new(&name, spec.help, spec.label_keys)))
            }
            MetricKind::Gauge => {
                check()?;
                Vector::Gauge(Arc::new(Children::new(&name, spec.help, spec.label_keys)))
            }
            MetricKind::Histogram => {
                check()?;
                if spec.label_keys.contains(&"le") {
                    let msg = "`le` is not allowed as label name in histograms";
                    return Err(to_err(prometheus::Error::Msg(msg.into())));
                }
                let mut opts = HistogramOpts::new(name.clone(), spec.help);
                if let Some(b) = spec.buckets {
                    opts = opts.buckets(b.to_vec());
                }
                // Made once here to check the buckets and learn the bounds the crate would use.
                let checked = Histogram::with_opts(opts).map_err(to_err)?;
                let bounds = checked
                    .metric()
                    .get_histogram()
                    .get_bucket()
                    .iter()
                    .map(|b| b.upper_bound())
                    .filter(|b| b.is_finite())
                    .collect();
                Vector::Histogram(Arc::new(Histograms {
                    children: Children::new(&name, spec.help, spec.label_keys),
                    bounds,
                }))
            }
            MetricKind::Summary => {
                if spec.label_keys.contains(&"quantile") {
                    return Err(ProviderError::Conflict {
                        name,
                        reason: "a summary cannot have a label named quantile".into(),
                    });
                }
                Vector::Summary(Arc::new(Children::new(&name, spec.help, spec.label_keys)))
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
        let err = |e: String| ProviderError::Backend(format!("metric {}: {e}", self.name));
        Ok(match &self.vector {
            Vector::Counter(c) => c
                .child(label_values, || Ok(CounterSeries::default()))
                .map_err(err)?,
            Vector::Gauge(g) => g
                .child(label_values, || Ok(GaugeSeries::default()))
                .map_err(err)?,
            Vector::Histogram(h) => h
                .children
                .child(label_values, || Ok(HistogramSeries::new(h.bounds.clone())))
                .map_err(err)?,
            Vector::Summary(s) => s
                .child(label_values, || {
                    Ok(SlidingSummary::new(SummaryWindow::default()))
                })
                .map_err(err)?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::provider::RecordError;

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

    /// The exposition of `r` written by `exposition::encode_registry` (the provider's metrics
    /// straight from their series) is the one the gathered families give: the `prometheus`
    /// crate's own encoder for the 0.0.4 text, `encode_families` for OpenMetrics.
    fn assert_both_paths_agree(r: &Registry) -> String {
        use crate::metrics::exposition::{Format, encode_families, encode_registry};
        let gathered = r.gather();
        let text = String::from_utf8(encode_registry(r, Format::Text)).unwrap();
        let crates = prometheus::TextEncoder::new()
            .encode_to_string(&gathered)
            .unwrap();
        assert_eq!(text, crates);
        let om = String::from_utf8(encode_registry(r, Format::OpenMetrics)).unwrap();
        let om_gathered =
            String::from_utf8(encode_families(&gathered, Format::OpenMetrics)).unwrap();
        assert_eq!(om, om_gathered);
        let mut types = std::collections::HashSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert!(types.insert(line.to_owned()), "{line} twice in\n{text}");
        }
        text
    }

    #[test]
    fn every_kind_written_directly_matches_the_gathered_exposition() {
        let registry = Registry::new();
        let app = prometheus::IntCounterVec::new(
            prometheus::Opts::new("app_requests_total", "The app's \"own\"."),
            &["method"],
        )
        .unwrap();
        app.with_label_values(&["GET"]).inc_by(4);
        registry.register(Box::new(app)).unwrap();
        let app_latency = prometheus::Histogram::with_opts(
            HistogramOpts::new("zz_app_latency_seconds", "Latency.").buckets(vec![0.5, 5.0]),
        )
        .unwrap();
        app_latency.observe(1.0);
        registry.register(Box::new(app_latency)).unwrap();

        let p = PrometheusProvider::new(registry.clone());
        let orders = p
            .register(&spec(
                "deep_orders",
                MetricKind::Counter,
                &["zone", "route"],
            ))
            .unwrap();
        let gauge = p
            .register(&spec("deep_depth", MetricKind::Gauge, &["queue"]))
            .unwrap();
        let sizes = p
            .register(&MetricSpec {
                buckets: Some(&[0.1, 1.0, 1e6]),
                ..spec("deep_size", MetricKind::Histogram, &["kind"])
            })
            .unwrap();
        let work = p
            .register(&spec("deep_work_seconds", MetricKind::Summary, &["b", "a"]))
            .unwrap();
        let plain = p
            .register(&spec("deep_hits", MetricKind::Counter, &[]))
            .unwrap();
        let routed = p
            .register(&spec("deep_hits", MetricKind::Counter, &["route"]))
            .unwrap();
        let _callback = p
            .register_callback(
                &spec("deep_pool", MetricKind::Gauge, &["z", "a"]),
                &["last", "first"],
                Arc::new(|| 7.5),
            )
            .unwrap();
        let _other = p
            .register_callback(
                &spec("deep_pool", MetricKind::Gauge, &["z", "a"]),
                &["a \"quoted\" \\ value\n", "b"],
                Arc::new(|| -0.0),
            )
            .unwrap();
        let _unused = p
            .register(&spec("deep_unused", MetricKind::Counter, &["k"]))
            .unwrap();

        // Label values with every character the formats escape, sorted in no particular order.
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = ['a', 'b', 'Z', '"', '\\', '\n', '/', 'é', ' ', '0'];
        let value = |rng: &mut fastrand::Rng| -> String {
            (0..rng.usize(0..6))
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect()
        };
        for i in 0..200 {
            let (zone, route) = (value(&mut rng), value(&mut rng));
            let s = orders.series(&[&zone, &route]).unwrap();
            s.record(f64::from(i) * 0.5).unwrap();
            let q = value(&mut rng);
            gauge
                .series(&[&q])
                .unwrap()
                .record(f64::from(i) - 100.25)
                .unwrap();
        }
        for (kind, v) in [("img", 0.05), ("img", 3.0), ("doc", 2e6), ("doc", 0.1)] {
            sizes.series(&[kind]).unwrap().record(v).unwrap();
        }
        for (b, a, v) in [("x", "y", 1.0), ("x", "y", 3.0), ("", "y", 2.0)] {
            work.series(&[b, a]).unwrap().record(v).unwrap();
        }
        plain.series(&[]).unwrap().record(1.0).unwrap();
        routed.series(&["/b"]).unwrap().record(2.0).unwrap();
        routed.series(&["/a"]).unwrap().record(3.0).unwrap();

        let text = assert_both_paths_agree(&registry);
        for want in [
            "app_requests_total{method=\"GET\"} 4\n",
            "deep_hits_total 1\n",
            "deep_hits_total{route=\"/a\"} 3\n",
            "deep_pool{a=\"first\",z=\"last\"} 7.5\n",
            "deep_pool{a=\"b\",z=\"a \\\"quoted\\\" \\\\ value\\n\"} -0\n",
            "deep_size_bucket{kind=\"doc\",le=\"1000000\"} 1\n",
            "deep_size_bucket{kind=\"doc\",le=\"+Inf\"} 2\n",
            "deep_work_seconds{a=\"y\",b=\"x\",quantile=\"0.5\"} 3\n",
            "deep_work_seconds_count{a=\"y\",b=\"x\"} 2\n",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
        assert!(
            !text.contains("deep_unused"),
            "a metric without series is left out"
        );
    }

    #[test]
    fn the_registry_prefix_and_common_labels_apply_to_metrics_written_directly() {
        let labels = HashMap::from([
            ("region".to_owned(), "eu".to_owned()),
            ("cell".to_owned(), "c\"1".to_owned()),
        ]);
        let registry = Registry::new_custom(Some("app".into()), Some(labels)).unwrap();
        let p = PrometheusProvider::new(registry.clone());
        let orders = p
            .register(&spec("deep_orders", MetricKind::Counter, &["country"]))
            .unwrap();
        orders.series(&["NZ"]).unwrap().record(3.0).unwrap();
        let text = assert_both_paths_agree(&registry);
        assert!(
            text.contains("# TYPE app_deep_orders_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("app_deep_orders_total{country=\"NZ\",region=\"eu\",cell=\"c\\\"1\"} 3")
                || text.contains(
                    "app_deep_orders_total{country=\"NZ\",cell=\"c\\\"1\",region=\"eu\"} 3"
                ),
            "{text}"
        );
    }

    #[test]
    fn a_name_the_application_registers_too_is_written_once() {
        let registry = Registry::new();
        let p = PrometheusProvider::new(registry.clone());
        let ours = p
            .register(&spec("deep_dup", MetricKind::Counter, &["k"]))
            .unwrap();
        ours.series(&["ours"]).unwrap().record(1.0).unwrap();
        // Registered after ours: the registry does not know our metric's name. (Same help: which
        // of the two `gather()` keeps depends on the order it meets the collectors in.)
        let theirs =
            prometheus::CounterVec::new(prometheus::Opts::new("deep_dup_total", "help"), &["k"])
                .unwrap();
        theirs.with_label_values(&["theirs"]).inc();
        registry.register(Box::new(theirs)).unwrap();
        let text = assert_both_paths_agree(&registry);
        assert!(text.contains("deep_dup_total{k=\"ours\"} 1\n"), "{text}");
        assert!(text.contains("deep_dup_total{k=\"theirs\"} 1\n"), "{text}");
    }

    #[test]
    fn a_collector_panicking_mid_scrape_does_not_leave_metrics_held_back() {
        struct Boom(Desc);
        impl Collector for Boom {
            fn desc(&self) -> Vec<&Desc> {
                vec![&self.0]
            }
            fn collect(&self) -> Vec<MetricFamily> {
                panic!("boom");
            }
        }
        let broken = Registry::new();
        let _p = PrometheusProvider::new(broken.clone())
            .register(&spec("deep_a", MetricKind::Counter, &[]))
            .unwrap();
        let desc = Desc::new("boom".into(), "Boom.".into(), Vec::new(), HashMap::new()).unwrap();
        broken.register(Box::new(Boom(desc))).unwrap();
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let scrape = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::metrics::exposition::encode_registry(
                &broken,
                crate::metrics::exposition::Format::Text,
            )
        }));
        std::panic::set_hook(hook);
        assert!(scrape.is_err());

        let registry = Registry::new();
        let p = PrometheusProvider::new(registry.clone());
        let c = p
            .register(&spec("deep_b", MetricKind::Counter, &[]))
            .unwrap();
        c.series(&[]).unwrap().record(2.0).unwrap();
        assert!(exposition(&registry).contains("deep_b_total 2\n"));
    }

    #[test]
    fn invalid_names_labels_and_buckets_are_refused_at_registration() {
        let p = PrometheusProvider::new(Registry::new());
        for bad in [
            spec("deep-bad", MetricKind::Counter, &[]),
            spec("deep_bad", MetricKind::Gauge, &["bad-key"]),
            spec("deep_bad", MetricKind::Histogram, &["le"]),
            MetricSpec {
                help: "",
                ..spec("deep_bad", MetricKind::Counter, &[])
            },
            MetricSpec {
                buckets: Some(&[1.0, 0.5]),
                ..spec("deep_bad", MetricKind::Histogram, &[])
            },
        ] {
            assert!(
                matches!(p.register(&bad), Err(ProviderError::Backend(_))),
                "{bad:?}"
            );
        }
        let c = p
            .register(&spec("deep_ok", MetricKind::Counter, &["a", "b"]))
            .unwrap();
        assert!(matches!(c.series(&["x"]), Err(ProviderError::Backend(_))));
    }
}
