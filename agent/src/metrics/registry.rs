//! [`Metrics`]: a set of instruments on one provider, and the instrument handles
//! ([`Counter`], [`Gauge`], [`Histogram`], [`Timer`] and their `*Vec` forms).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    backends::NullProvider,
    buckets::Buckets,
    provider::{Instrument, MetricKind, MetricProvider, MetricSpec, Series, SeriesSnapshot},
    series_cache::{SeriesCache, make_series},
};

/// A handle on a set of instruments and the provider behind them. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("provider", &self.inner.provider.name())
            .field("prefix", &self.inner.prefix)
            .field("global_tags", &self.inner.global_tags)
            .finish_non_exhaustive()
    }
}

/// A metric is identified by its full name and its sorted label keys.
type FamilyKey = (String, Vec<String>);

struct Inner {
    provider: Arc<dyn MetricProvider>,
    prefix: String,
    /// Sorted by key.
    global_tags: Vec<(String, String)>,
    max_series: usize,
    families: RwLock<HashMap<FamilyKey, Arc<Family>>>,
    callbacks: Mutex<Vec<(String, Box<dyn Instrument>)>>,
    errors: AtomicU64,
}

/// One registered metric: name, kind, label keys, and its series per label set.
struct Family {
    name: String,
    help: String,
    kind: MetricKind,
    /// All label keys: global ones and the instrument's own, sorted.
    keys: Vec<String>,
    /// For each key in `keys`, the global tag value, if it is a global tag.
    fixed: Vec<Option<String>>,
    /// How many of `keys` are not global tags: the series cache keys a label set by their
    /// values only (in the order of `keys`), global tags being the same for every series.
    varying: usize,
    /// Emptied by [`Metrics::unregister`]: the provider drops the metric even while handles
    /// to it live on (they then record into series nothing exports).
    instruments: Mutex<Vec<Box<dyn Instrument>>>,
    series: SeriesCache,
    warned: AtomicBool,
}

/// Label values on the stack: enough for the usual few keys without initialising sixteen
/// (which shows up in a tagged add).
macro_rules! with_values {
    ($len:expr, |$values:ident| $body:expr) => {
        if $len <= 4 {
            let mut $values: [&str; 4] = [""; 4];
            $body
        } else {
            let mut $values: [&str; 16] = [""; 16];
            $body
        }
    };
}

impl Family {
    /// For each of the family's varying keys, the index of the instrument's own value for it
    /// (`None`: the instrument has no such key, its value is empty). Computed once per
    /// instrument.
    fn slots(&self, own_keys: &[String]) -> Arc<[Option<usize>]> {
        self.keys
            .iter()
            .zip(&self.fixed)
            .filter(|(_, fixed)| fixed.is_none())
            .map(|(key, _)| own_keys.iter().position(|k| k == key))
            .collect()
    }

    /// The series for the varying values, made through the instruments with the global tags'
    /// values put back in.
    fn make(&self, varying: &[&str]) -> Option<Arc<dyn Series>> {
        let mut varying = varying.iter();
        let values: Vec<&str> = self
            .fixed
            .iter()
            .map(|fixed| match fixed {
                Some(v) => v.as_str(),
                None => varying.next().copied().unwrap_or(""),
            })
            .collect();
        let instruments = self.instruments.lock().unwrap_or_else(|p| p.into_inner());
        make_series(&instruments, &values)
    }

    /// The overflow series: every label, global tags too, [`crate::OVERFLOW_LABEL`].
    fn make_overflow(&self) -> Option<Arc<dyn Series>> {
        let instruments = self.instruments.lock().unwrap_or_else(|p| p.into_inner());
        make_series(
            &instruments,
            &vec![super::series_cache::OVERFLOW_LABEL; self.keys.len()],
        )
    }

    /// Records `value` into the series for the own values, mapped through `slots` (no string
    /// comparison of keys, no reference-count traffic once the series exists). When the own
    /// values are the varying ones in order (`direct`: the instrument's keys are the family's
    /// varying keys in their order), they are looked up as given, without a copy.
    #[inline]
    fn record(
        &self,
        slots: &[Option<usize>],
        direct: bool,
        own_values: &[&str],
        max: usize,
        value: f64,
    ) -> bool {
        let record = |s: &dyn Series| s.record(value).is_ok();
        let make = |v: &[&str]| self.make(v);
        let overflow = || self.make_overflow();
        if direct && own_values.len() == slots.len() {
            return self
                .series
                .with(own_values, max, make, overflow, record)
                .unwrap_or(true);
        }
        with_values!(slots.len(), |values| {
            let Some(values) = values.get_mut(..slots.len()) else {
                return false;
            };
            for (value, slot) in values.iter_mut().zip(slots) {
                *value = slot.and_then(|j| own_values.get(j).copied()).unwrap_or("");
            }
            self.series
                .with(values, max, make, overflow, record)
                .unwrap_or(true)
        })
    }

    /// The series for the instrument's own values (in the order of its own keys).
    fn series(
        &self,
        own_keys: &[String],
        own_values: &[&str],
        max: usize,
    ) -> Option<Arc<dyn Series>> {
        with_values!(self.varying, |values| {
            let values = values.get_mut(..self.varying)?;
            let varying_keys = self
                .keys
                .iter()
                .zip(&self.fixed)
                .filter(|(_, f)| f.is_none());
            for (value, (key, _)) in values.iter_mut().zip(varying_keys) {
                *value = own_keys
                    .iter()
                    .position(|k| k == key)
                    .and_then(|j| own_values.get(j).copied())
                    .unwrap_or("");
            }
            self.series
                .get_or_overflow(values, max, |v| self.make(v), || self.make_overflow())
        })
    }

    /// Every series made so far, with all its label values (the overflow series last).
    fn entries(&self) -> Vec<(Vec<String>, Arc<dyn Series>)> {
        let mut out: Vec<(Vec<String>, Arc<dyn Series>)> = self
            .series
            .entries()
            .into_iter()
            .map(|(varying, s)| {
                let mut varying = varying.into_iter();
                let values = self
                    .fixed
                    .iter()
                    .map(|fixed| match fixed {
                        Some(v) => v.clone(),
                        None => varying.next().unwrap_or_default(),
                    })
                    .collect();
                (values, s)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(s) = self.series.overflow_series() {
            out.push((
                vec![super::series_cache::OVERFLOW_LABEL.to_owned(); self.keys.len()],
                s,
            ));
        }
        out
    }
}

/// Builds a [`Metrics`].
pub struct MetricsBuilder {
    provider: Arc<dyn MetricProvider>,
    namespace: Option<String>,
    subsystem: Option<String>,
    global_tags: Vec<(String, String)>,
    max_series: usize,
}

impl std::fmt::Debug for MetricsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsBuilder")
            .field("provider", &self.provider.name())
            .finish_non_exhaustive()
    }
}

impl MetricsBuilder {
    /// The backend (default [`NullProvider`]). Use `MultiProvider` for several.
    pub fn provider(mut self, provider: impl MetricProvider) -> Self {
        self.provider = Arc::new(provider);
        self
    }

    /// A shared backend.
    pub fn shared_provider(mut self, provider: Arc<dyn MetricProvider>) -> Self {
        self.provider = provider;
        self
    }

    /// Prefixes every name with `<namespace>_`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Prefixes every name with `<subsystem>_` (after the namespace).
    pub fn subsystem(mut self, subsystem: impl Into<String>) -> Self {
        self.subsystem = Some(subsystem.into());
        self
    }

    /// A tag on every metric.
    pub fn global_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.global_tags.retain(|(k, _)| *k != key);
        self.global_tags.push((key, value.into()));
        self
    }

    /// Label sets per metric before the excess folds into the overflow series (default 1,000).
    pub fn max_series(mut self, max: usize) -> Self {
        self.max_series = max.max(1);
        self
    }

    /// The handle.
    pub fn build(mut self) -> Metrics {
        self.global_tags.sort();
        let prefix = [self.namespace, self.subsystem]
            .into_iter()
            .flatten()
            .filter(|p| !p.is_empty())
            .map(|p| format!("{p}_"))
            .collect();
        Metrics {
            inner: Arc::new(Inner {
                provider: self.provider,
                prefix,
                global_tags: self.global_tags,
                max_series: self.max_series,
                families: RwLock::default(),
                callbacks: Mutex::default(),
                errors: AtomicU64::new(0),
            }),
        }
    }
}

/// One metric's state, as [`Metrics::snapshot`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSnapshot {
    /// Exposed name (with namespace and subsystem).
    pub name: String,
    /// Kind.
    pub kind: MetricKind,
    /// Tags, sorted by key.
    pub tags: Vec<(String, String)>,
    /// Value.
    pub value: SeriesSnapshot,
}

/// What [`Metrics::visit`] shows of a metric.
#[derive(Debug, Clone, Copy)]
pub struct MetricInfo<'a> {
    /// Exposed name.
    pub name: &'a str,
    /// Help text.
    pub help: &'a str,
    /// Kind.
    pub kind: MetricKind,
    /// Label keys, sorted.
    pub keys: &'a [String],
}

impl Default for Metrics {
    /// Discards everything.
    fn default() -> Self {
        Self::builder().build()
    }
}

impl Metrics {
    /// A builder: null provider, no prefix, no global tags.
    pub fn builder() -> MetricsBuilder {
        MetricsBuilder {
            provider: Arc::new(NullProvider),
            namespace: None,
            subsystem: None,
            global_tags: Vec::new(),
            max_series: 1000,
        }
    }

    /// Misuses so far (a name reused for another kind, a provider refusal); each is logged once.
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    fn family(
        &self,
        name: &str,
        help: &str,
        kind: MetricKind,
        own_keys: &[String],
        buckets: Option<&[f64]>,
    ) -> Option<Arc<Family>> {
        let full = format!("{}{name}", self.inner.prefix);
        let mut keys: Vec<String> = self
            .inner
            .global_tags
            .iter()
            .map(|(k, _)| k.clone())
            .chain(own_keys.iter().cloned())
            .collect();
        keys.sort();
        keys.dedup();
        let key = (full.clone(), keys.clone());
        if let Some(f) = self
            .inner
            .families
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return self.same_kind(f, kind);
        }
        let mut families = self
            .inner
            .families
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(f) = families.get(&key) {
            return self.same_kind(f, kind);
        }
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let spec = MetricSpec {
            name: &full,
            help,
            kind,
            label_keys: &key_refs,
            tracepoint_id: "",
            buckets,
        };
        let instrument = match self.inner.provider.register(&spec) {
            Ok(i) => i,
            Err(err) => {
                self.misuse(&format!("registering {full}: {err}"));
                return None;
            }
        };
        let fixed: Vec<Option<String>> = keys
            .iter()
            .map(|k| {
                // An instrument's own key of the same name wins over a global tag.
                if own_keys.contains(k) {
                    None
                } else {
                    self.inner
                        .global_tags
                        .iter()
                        .find(|(gk, _)| gk == k)
                        .map(|(_, v)| v.clone())
                }
            })
            .collect();
        let varying = fixed
            .iter()
            .filter(|f: &&Option<String>| f.is_none())
            .count();
        let family = Arc::new(Family {
            name: full,
            help: help.to_owned(),
            kind,
            keys,
            fixed,
            varying,
            instruments: Mutex::new(vec![instrument]),
            series: SeriesCache::default(),
            warned: AtomicBool::new(false),
        });
        families.insert(key, family.clone());
        Some(family)
    }

    fn same_kind(&self, f: &Arc<Family>, kind: MetricKind) -> Option<Arc<Family>> {
        if f.kind == kind {
            return Some(f.clone());
        }
        if !f.warned.swap(true, Ordering::Relaxed) {
            self.misuse(&format!("{} is a {:?}, not a {kind:?}", f.name, f.kind));
        } else {
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
        }
        None
    }

    #[cold]
    fn misuse(&self, what: &str) {
        self.inner.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "sonde::metrics", "{what}; the instrument records nothing");
    }

    fn handle(&self, name: &str, help: &str, kind: MetricKind, buckets: Option<&[f64]>) -> Handle {
        let family = self.family(name, help, kind, &[], buckets);
        let series = family
            .as_ref()
            .and_then(|f| f.series(&[], &[], self.inner.max_series));
        Handle {
            metrics: self.clone(),
            family,
            own: Arc::new(Vec::new()),
            series,
            buckets: buckets.map(Arc::from),
        }
    }

    fn vec(
        &self,
        name: &str,
        help: &str,
        kind: MetricKind,
        keys: &[&str],
        buckets: Option<&[f64]>,
    ) -> HandleVec {
        let own: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        let family = self.family(name, help, kind, &own, buckets);
        let slots = family
            .as_ref()
            .map_or_else(|| Arc::from([]), |f| f.slots(&own));
        let direct =
            slots.len() == own.len() && slots.iter().enumerate().all(|(i, s)| *s == Some(i));
        HandleVec {
            metrics: self.clone(),
            family,
            own: Arc::new(own),
            slots,
            direct,
            buckets: buckets.map(Arc::from),
        }
    }

    /// A counter.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        Counter(self.handle(name, help, MetricKind::Counter, None))
    }

    /// Counters with label keys; [`CounterVec::with`] picks one by values.
    pub fn counter_vec(&self, name: &str, help: &str, keys: &[&str]) -> CounterVec {
        CounterVec(self.vec(name, help, MetricKind::Counter, keys, None))
    }

    /// A gauge.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        Gauge(self.handle(name, help, MetricKind::Gauge, None))
    }

    /// Gauges with label keys.
    pub fn gauge_vec(&self, name: &str, help: &str, keys: &[&str]) -> GaugeVec {
        GaugeVec(self.vec(name, help, MetricKind::Gauge, keys, None))
    }

    /// A gauge read from `read` whenever metrics are collected (global tags apply). It lives as
    /// long as this `Metrics` or until [`Metrics::unregister`] of its name.
    pub fn gauge_fn(&self, name: &str, help: &str, read: impl Fn() -> f64 + Send + Sync + 'static) {
        let full = format!("{}{name}", self.inner.prefix);
        let keys: Vec<&str> = self
            .inner
            .global_tags
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        let values: Vec<&str> = self
            .inner
            .global_tags
            .iter()
            .map(|(_, v)| v.as_str())
            .collect();
        let spec = MetricSpec {
            name: &full,
            help,
            kind: MetricKind::Gauge,
            label_keys: &keys,
            tracepoint_id: "",
            buckets: None,
        };
        match self
            .inner
            .provider
            .register_callback(&spec, &values, Arc::new(read))
        {
            Ok(i) => self
                .inner
                .callbacks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((full, i)),
            Err(err) => self.misuse(&format!("registering {full}: {err}")),
        }
    }

    /// A histogram with the given bucket upper bounds (see [`Buckets`]).
    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        Histogram(self.handle(name, help, MetricKind::Histogram, Some(buckets)))
    }

    /// Histograms with label keys.
    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
        keys: &[&str],
    ) -> HistogramVec {
        HistogramVec(self.vec(name, help, MetricKind::Histogram, keys, Some(buckets)))
    }

    /// A summary: quantiles 0.5, 0.9, 0.99 over a sliding window, count and sum.
    pub fn summary(&self, name: &str, help: &str) -> Histogram {
        Histogram(self.handle(name, help, MetricKind::Summary, None))
    }

    /// A timer: a histogram of seconds with [`Buckets::LATENCY_SECONDS`]. Name it `*_seconds`.
    pub fn timer(&self, name: &str, help: &str) -> Timer {
        Timer(self.histogram(name, help, Buckets::LATENCY_SECONDS))
    }

    /// Timers with label keys.
    pub fn timer_vec(&self, name: &str, help: &str, keys: &[&str]) -> TimerVec {
        TimerVec(self.histogram_vec(name, help, Buckets::LATENCY_SECONDS, keys))
    }

    /// Removes every metric of that (unprefixed) name: the provider unregisters it; existing
    /// handles keep working but record into nothing exported.
    pub fn unregister(&self, name: &str) {
        let full = format!("{}{name}", self.inner.prefix);
        self.inner
            .families
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(n, _), family| {
                if *n == full {
                    family
                        .instruments
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clear();
                }
                *n != full
            });
        self.inner
            .callbacks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(n, _)| *n != full);
    }

    /// Calls `f` for every metric with each of its series' tags and snapshot (snapshots are
    /// `None` where the provider cannot read values back).
    pub fn visit(
        &self,
        mut f: impl FnMut(MetricInfo<'_>, &[(Vec<(String, String)>, Option<SeriesSnapshot>)]),
    ) {
        let families: Vec<Arc<Family>> = self
            .inner
            .families
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut families = families;
        families.sort_by(|a, b| a.name.cmp(&b.name).then(a.keys.cmp(&b.keys)));
        for fam in families {
            let series: Vec<_> = fam
                .entries()
                .into_iter()
                .map(|(values, s)| {
                    let tags = fam.keys.iter().cloned().zip(values).collect();
                    (tags, s.snapshot())
                })
                .collect();
            f(
                MetricInfo {
                    name: &fam.name,
                    help: &fam.help,
                    kind: fam.kind,
                    keys: &fam.keys,
                },
                &series,
            );
        }
    }

    /// Every series' current state, where the provider can read it back (in-memory and
    /// Prometheus can), sorted by name and tags.
    pub fn snapshot(&self) -> Vec<MetricSnapshot> {
        let mut out = Vec::new();
        self.visit(|info, series| {
            for (tags, snap) in series {
                if let Some(value) = snap {
                    out.push(MetricSnapshot {
                        name: info.name.to_owned(),
                        kind: info.kind,
                        tags: tags.clone(),
                        value: value.clone(),
                    });
                }
            }
        });
        out
    }
}

/// What every instrument handle holds.
#[derive(Clone)]
struct Handle {
    metrics: Metrics,
    family: Option<Arc<Family>>,
    /// This handle's own tags (beyond the global ones), sorted by key.
    own: Arc<Vec<(String, String)>>,
    series: Option<Arc<dyn Series>>,
    buckets: Option<Arc<[f64]>>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instrument")
            .field("name", &self.family.as_ref().map(|f| f.name.as_str()))
            .field("tags", &self.own)
            .finish()
    }
}

impl Handle {
    #[inline]
    fn record(&self, value: f64) {
        if let Some(s) = &self.series
            && s.record(value).is_err()
        {
            self.metrics.inner.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[inline]
    fn add(&self, delta: f64) {
        if let Some(s) = &self.series
            && s.add(delta).is_err()
        {
            self.metrics.inner.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn with_tags(&self, tags: &[(&str, &str)]) -> Handle {
        let Some(family) = &self.family else {
            return self.clone();
        };
        let mut own: Vec<(String, String)> = self.own.as_ref().clone();
        for (k, v) in tags {
            own.retain(|(ok, _)| ok != k);
            own.push(((*k).to_owned(), (*v).to_owned()));
        }
        own.sort();
        let keys: Vec<String> = own.iter().map(|(k, _)| k.clone()).collect();
        let values: Vec<&str> = own.iter().map(|(_, v)| v.as_str()).collect();
        let unprefixed = family
            .name
            .strip_prefix(&self.metrics.inner.prefix)
            .unwrap_or(&family.name)
            .to_owned();
        let fam = self.metrics.family(
            &unprefixed,
            &family.help,
            family.kind,
            &keys,
            self.buckets.as_deref(),
        );
        let series = fam
            .as_ref()
            .and_then(|f| f.series(&keys, &values, self.metrics.inner.max_series));
        Handle {
            metrics: self.metrics.clone(),
            family: fam,
            own: Arc::new(own),
            series,
            buckets: self.buckets.clone(),
        }
    }
}

/// Instruments of one name with label keys, picked by values.
#[derive(Clone)]
struct HandleVec {
    metrics: Metrics,
    family: Option<Arc<Family>>,
    own: Arc<Vec<String>>,
    /// Where each of the family's varying label values comes from (see [`Family::slots`]).
    slots: Arc<[Option<usize>]>,
    /// The own values are the varying ones, in order (see [`Family::record`]).
    direct: bool,
    buckets: Option<Arc<[f64]>>,
}

impl std::fmt::Debug for HandleVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstrumentVec")
            .field("name", &self.family.as_ref().map(|f| f.name.as_str()))
            .field("keys", &self.own)
            .finish()
    }
}

impl HandleVec {
    fn with(&self, values: &[&str]) -> Handle {
        let series = self
            .family
            .as_ref()
            .and_then(|f| f.series(&self.own, values, self.metrics.inner.max_series));
        Handle {
            metrics: self.metrics.clone(),
            family: self.family.clone(),
            own: Arc::new(
                self.own
                    .iter()
                    .cloned()
                    .zip(values.iter().map(|v| (*v).to_owned()))
                    .collect(),
            ),
            series,
            buckets: self.buckets.clone(),
        }
    }

    /// Records without building a handle (the hot-path form of `with(..).add(..)`).
    fn record(&self, values: &[&str], value: f64) {
        if let Some(f) = &self.family
            && !f.record(
                &self.slots,
                self.direct,
                values,
                self.metrics.inner.max_series,
                value,
            )
        {
            self.metrics.inner.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A monotonic counter.
#[derive(Debug, Clone)]
pub struct Counter(Handle);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.record(1.0);
    }

    /// Adds `v` (negative values are refused and counted as errors).
    #[inline]
    pub fn add(&self, v: f64) {
        self.0.record(v);
    }

    /// The same counter with more tags.
    pub fn with_tags(&self, tags: &[(&str, &str)]) -> Counter {
        Counter(self.0.with_tags(tags))
    }
}

/// Counters picked by label values.
#[derive(Debug, Clone)]
pub struct CounterVec(HandleVec);

impl CounterVec {
    /// The counter for these values (in the order of the keys).
    pub fn with(&self, values: &[&str]) -> Counter {
        Counter(self.0.with(values))
    }

    /// Adds `v` to the counter for these values, without building a handle.
    #[inline]
    pub fn add(&self, values: &[&str], v: f64) {
        self.0.record(values, v);
    }
}

/// A value that goes up and down.
#[derive(Debug, Clone)]
pub struct Gauge(Handle);

impl Gauge {
    /// Sets it.
    #[inline]
    pub fn set(&self, v: f64) {
        self.0.record(v);
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.add(1.0);
    }

    /// Subtracts one.
    #[inline]
    pub fn dec(&self) {
        self.0.add(-1.0);
    }

    /// Adds `v`.
    #[inline]
    pub fn add(&self, v: f64) {
        self.0.add(v);
    }

    /// Subtracts `v`.
    #[inline]
    pub fn sub(&self, v: f64) {
        self.0.add(-v);
    }

    /// +1 now, −1 when the guard drops (also on early return and unwinding).
    pub fn track_in_flight(&self) -> InFlight {
        self.inc();
        InFlight(self.clone())
    }

    /// The same gauge with more tags.
    pub fn with_tags(&self, tags: &[(&str, &str)]) -> Gauge {
        Gauge(self.0.with_tags(tags))
    }
}

/// Gauges picked by label values.
#[derive(Debug, Clone)]
pub struct GaugeVec(HandleVec);

impl GaugeVec {
    /// The gauge for these values.
    pub fn with(&self, values: &[&str]) -> Gauge {
        Gauge(self.0.with(values))
    }
}

/// Decrements its gauge when dropped.
#[derive(Debug)]
#[must_use = "the gauge goes back down when this guard drops"]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A histogram (or a summary): observes values.
#[derive(Debug, Clone)]
pub struct Histogram(Handle);

impl Histogram {
    /// Observes `v`.
    #[inline]
    pub fn observe(&self, v: f64) {
        self.0.record(v);
    }

    /// The same histogram with more tags.
    pub fn with_tags(&self, tags: &[(&str, &str)]) -> Histogram {
        Histogram(self.0.with_tags(tags))
    }
}

/// Histograms picked by label values.
#[derive(Debug, Clone)]
pub struct HistogramVec(HandleVec);

impl HistogramVec {
    /// The histogram for these values.
    pub fn with(&self, values: &[&str]) -> Histogram {
        Histogram(self.0.with(values))
    }

    /// Observes `v` in the histogram for these values, without building a handle.
    #[inline]
    pub fn observe(&self, values: &[&str], v: f64) {
        self.0.record(values, v);
    }
}

/// Records durations, in seconds, into a histogram.
#[derive(Debug, Clone)]
pub struct Timer(Histogram);

impl Timer {
    /// Records a duration.
    #[inline]
    pub fn record(&self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }

    /// Runs `f` and records how long it took (also when it panics).
    pub fn time<R>(&self, f: impl FnOnce() -> R) -> R {
        let _watch = self.start();
        f()
    }

    /// A stopwatch that records when dropped (also on early return and unwinding).
    pub fn start(&self) -> Stopwatch {
        Stopwatch {
            timer: self.clone(),
            started: Instant::now(),
            done: false,
        }
    }

    /// The same timer with more tags.
    pub fn with_tags(&self, tags: &[(&str, &str)]) -> Timer {
        Timer(self.0.with_tags(tags))
    }
}

/// Timers picked by label values.
#[derive(Debug, Clone)]
pub struct TimerVec(HistogramVec);

impl TimerVec {
    /// The timer for these values.
    pub fn with(&self, values: &[&str]) -> Timer {
        Timer(self.0.with(values))
    }
}

/// Records the time since it was started when dropped, or at [`Stopwatch::stop`].
#[derive(Debug)]
#[must_use = "the duration is recorded when this guard drops"]
pub struct Stopwatch {
    timer: Timer,
    started: Instant,
    done: bool,
}

impl Stopwatch {
    /// Records now and returns the duration.
    pub fn stop(mut self) -> Duration {
        let d = self.started.elapsed();
        self.timer.record(d);
        self.done = true;
        d
    }

    /// Drops without recording.
    pub fn discard(mut self) {
        self.done = true;
    }
}

impl Drop for Stopwatch {
    fn drop(&mut self) {
        if !self.done {
            self.timer.record(self.started.elapsed());
        }
    }
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// Makes `metrics` the process-wide instance [`global`] returns (and that `#[timed]` and
/// `#[track_errors]` use). Only the first call takes effect; later ones return `false`.
pub fn set_global(metrics: Metrics) -> bool {
    GLOBAL.set(metrics).is_ok()
}

/// The process-wide instance: what [`set_global`] installed, else one that discards everything.
pub fn global() -> &'static Metrics {
    GLOBAL.get_or_init(Metrics::default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InMemoryProvider, PrometheusProvider};

    fn mem() -> Metrics {
        Metrics::builder()
            .provider(InMemoryProvider::new())
            .namespace("app")
            .subsystem("api")
            .global_tag("env", "prod")
            .build()
    }

    fn find<'a>(
        snap: &'a [MetricSnapshot],
        name: &str,
        tags: &[(&str, &str)],
    ) -> &'a SeriesSnapshot {
        let tags: Vec<(String, String)> = tags
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        &snap
            .iter()
            .find(|m| m.name == name && m.tags == tags)
            .unwrap_or_else(|| panic!("no {name} {tags:?} in {snap:#?}"))
            .value
    }

    #[test]
    fn names_tags_and_kinds() {
        let m = mem();
        let c = m.counter("requests_total", "Requests.");
        c.inc();
        c.with_tags(&[("route", "/a")]).add(2.0);
        c.with_tags(&[("route", "/a")]).inc();
        let g = m.gauge("queue_depth", "Queue depth.");
        g.set(10.0);
        g.dec();
        g.sub(2.0);
        g.add(0.5);
        let h = m.histogram_vec("size_bytes", "Sizes.", Buckets::SIZES_BYTES, &["kind"]);
        h.observe(&["img"], 100.0);
        h.with(&["img"]).observe(5000.0);
        let snap = m.snapshot();
        assert_eq!(
            find(&snap, "app_api_requests_total", &[("env", "prod")]),
            &SeriesSnapshot::Counter(1.0)
        );
        assert_eq!(
            find(
                &snap,
                "app_api_requests_total",
                &[("env", "prod"), ("route", "/a")]
            ),
            &SeriesSnapshot::Counter(3.0)
        );
        assert_eq!(
            find(&snap, "app_api_queue_depth", &[("env", "prod")]),
            &SeriesSnapshot::Gauge(7.5)
        );
        match find(
            &snap,
            "app_api_size_bytes",
            &[("env", "prod"), ("kind", "img")],
        ) {
            SeriesSnapshot::Histogram {
                count,
                sum,
                buckets,
            } => {
                assert_eq!((*count, *sum), (2, 5100.0));
                assert_eq!(buckets[1], (256.0, 1));
                assert_eq!(buckets[4], (16384.0, 2));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_name_reused_for_another_kind_records_nothing_and_counts_an_error() {
        let m = mem();
        m.counter("x", "x").inc();
        let g = m.gauge("x", "x");
        g.set(5.0);
        assert_eq!(m.errors(), 1);
        assert_eq!(m.snapshot().len(), 1);
        m.counter("x", "x").add(-1.0);
        assert_eq!(
            m.errors(),
            2,
            "a negative counter add is an error, not a panic"
        );
    }

    #[test]
    fn guards_record_on_drop_and_unwind() {
        let m = mem();
        let t = m.timer("work_seconds", "Work.");
        t.time(|| std::thread::sleep(Duration::from_millis(2)));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _w = t.start();
            panic!("boom");
        }));
        assert!(r.is_err());
        t.start().discard();
        let g = m.gauge("in_flight", "In flight.");
        {
            let _a = g.track_in_flight();
            let _b = g.track_in_flight();
            assert_eq!(
                find(&m.snapshot(), "app_api_in_flight", &[("env", "prod")]),
                &SeriesSnapshot::Gauge(2.0)
            );
        }
        let snap = m.snapshot();
        assert_eq!(
            find(&snap, "app_api_in_flight", &[("env", "prod")]),
            &SeriesSnapshot::Gauge(0.0)
        );
        match find(&snap, "app_api_work_seconds", &[("env", "prod")]) {
            SeriesSnapshot::Histogram { count, sum, .. } => {
                assert_eq!(
                    *count, 2,
                    "the time() call and the unwound stopwatch; not the discarded one"
                );
                assert!(*sum >= 0.002);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn callback_gauges_summaries_and_unregister_through_prometheus() {
        let registry = prometheus::Registry::new();
        let m = Metrics::builder()
            .provider(PrometheusProvider::new(registry.clone()))
            .global_tag("service", "shop")
            .build();
        let depth = Arc::new(AtomicU64::new(7));
        let d = depth.clone();
        m.gauge_fn("pool_size", "Pool size.", move || {
            d.load(Ordering::Relaxed) as f64
        });
        let s = m.summary("latency_seconds", "Latency.");
        for v in [1.0, 2.0, 3.0] {
            s.observe(v);
        }
        let text = || {
            prometheus::TextEncoder::new()
                .encode_to_string(&registry.gather())
                .unwrap()
        };
        assert!(
            text().contains(r#"pool_size{service="shop"} 7"#),
            "{}",
            text()
        );
        depth.store(9, Ordering::Relaxed);
        assert!(
            text().contains(r#"pool_size{service="shop"} 9"#),
            "read at collection"
        );
        assert!(
            text().contains(r#"latency_seconds{service="shop",quantile="0.5"} 2"#),
            "{}",
            text()
        );
        m.unregister("pool_size");
        m.unregister("latency_seconds");
        assert!(!text().contains("pool_size"), "{}", text());
        assert!(!text().contains("latency_seconds"), "{}", text());
    }

    #[test]
    fn label_sets_past_the_cap_fold_into_overflow() {
        let m = Metrics::builder()
            .provider(InMemoryProvider::new())
            .max_series(2)
            .build();
        let v = m.counter_vec("hits_total", "Hits.", &["user"]);
        for u in ["a", "b", "c", "d"] {
            v.add(&[u], 1.0);
        }
        let snap = m.snapshot();
        assert_eq!(snap.len(), 3);
        assert_eq!(
            find(&snap, "hits_total", &[("user", crate::OVERFLOW_LABEL)]),
            &SeriesSnapshot::Counter(2.0)
        );
    }
}
