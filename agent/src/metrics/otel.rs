//! [`OtelProvider`]: tracepoint metrics recorded through an OpenTelemetry `Meter` that the
//! application provides (feature `opentelemetry`).
//!
//! The provider speaks only the `opentelemetry` API; the application owns the SDK, its readers
//! and exporters (OTLP, Prometheus, stdout), so the measurements go wherever its other metrics go.
//!
//! Kinds: COUNTER is an `f64` counter (adds), GAUGE an `f64` gauge (records the value), HISTOGRAM
//! an `f64` histogram. OpenTelemetry has no summary instrument, so SUMMARY is an `f64` histogram
//! too: quantiles are left to the backend (or to an exponential-histogram view). Histograms are
//! created with the same bucket boundaries as the Prometheus provider (the tracepoint's
//! `args.buckets`, else chosen by the metric's unit) as advice; a view of the application
//! overrides them.
//!
//! Names: the metric name without `_total` on counters (OpenTelemetry's convention: exporters such
//! as Prometheus add suffixes themselves), the help text as the description. A series is the
//! instrument plus the label values as attributes, built once per label set, so a hit is one call
//! into the instrument with a prebuilt attribute slice.
//!
//! Unregistering: OpenTelemetry instruments cannot be removed from a meter. When a tracepoint is
//! deleted its instrument simply stops receiving data: with cumulative temporality (the OTLP
//! default) exporters keep reporting its last totals until the process restarts; with delta
//! temporality it disappears from the next export. A tracepoint that defines the same name again
//! gets the same instrument back (the provider keeps every instrument it created, by name), so
//! its data continues the old series. A name once used for one kind stays that kind for the life
//! of the provider: registering it as another kind is a [`ProviderError::Conflict`] (HISTOGRAM and
//! SUMMARY count as one kind here). Label keys may differ between registrations, since attributes
//! are free per measurement in OpenTelemetry.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use opentelemetry::{
    Key, KeyValue,
    metrics::{Counter, Gauge, Histogram, Meter},
};

use crate::metrics::provider::{
    Instrument, MetricKind, MetricProvider, MetricSpec, ProviderError, RecordError, Series,
};

/// Records tracepoint metrics through an OpenTelemetry [`Meter`].
///
/// ```
/// # use sonde_agent::{Agent, OtelProvider};
/// let meter = opentelemetry::global::meter("sonde");
/// let builder = Agent::builder().provider(OtelProvider::new(meter));
/// # drop(builder);
/// ```
#[derive(Clone)]
pub struct OtelProvider {
    inner: Arc<Inner>,
}

struct Inner {
    meter: Meter,
    /// Every instrument this provider created, by OpenTelemetry name. Never shrinks: a meter
    /// cannot forget an instrument either.
    instruments: Mutex<HashMap<String, Otel>>,
}

impl std::fmt::Debug for OtelProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtelProvider")
            .field("meter", &self.inner.meter)
            .finish_non_exhaustive()
    }
}

/// One OpenTelemetry instrument (cheap to clone: the SDK's state is shared).
#[derive(Clone)]
enum Otel {
    Counter(Counter<f64>),
    Gauge(Gauge<f64>),
    Histogram(Histogram<f64>),
}

impl Otel {
    fn kind_name(&self) -> &'static str {
        match self {
            Otel::Counter(_) => "a counter",
            Otel::Gauge(_) => "a gauge",
            Otel::Histogram(_) => "a histogram",
        }
    }

    fn same_kind(&self, kind: MetricKind) -> bool {
        matches!(
            (self, kind),
            (Otel::Counter(_), MetricKind::Counter)
                | (Otel::Gauge(_), MetricKind::Gauge)
                | (
                    Otel::Histogram(_),
                    MetricKind::Histogram | MetricKind::Summary
                )
        )
    }
}

impl OtelProvider {
    /// Records through `meter` (for example `opentelemetry::global::meter("sonde")`, or one from
    /// the application's `SdkMeterProvider`).
    pub fn new(meter: Meter) -> Self {
        Self {
            inner: Arc::new(Inner {
                meter,
                instruments: Mutex::default(),
            }),
        }
    }

    fn create(&self, name: &str, spec: &MetricSpec<'_>) -> Otel {
        let meter = &self.inner.meter;
        let name = name.to_owned();
        let help = spec.help.to_owned();
        match spec.kind {
            MetricKind::Counter => {
                Otel::Counter(meter.f64_counter(name).with_description(help).build())
            }
            MetricKind::Gauge => Otel::Gauge(meter.f64_gauge(name).with_description(help).build()),
            MetricKind::Histogram | MetricKind::Summary => Otel::Histogram(
                meter
                    .f64_histogram(name)
                    .with_description(help)
                    .with_boundaries(spec.buckets.unwrap_or(prometheus::DEFAULT_BUCKETS).to_vec())
                    .build(),
            ),
        }
    }
}

/// The OpenTelemetry name: counters lose a `_total` suffix.
fn otel_name<'a>(spec: &MetricSpec<'a>) -> &'a str {
    match spec.kind {
        MetricKind::Counter => spec.name.strip_suffix("_total").unwrap_or(spec.name),
        _ => spec.name,
    }
}

/// OpenTelemetry's instrument-name syntax. The SDK answers a bad name with a no-op instrument and
/// a log line; checking here turns that into a status the operator sees.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("an OpenTelemetry instrument name has 1 to 255 characters".into());
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err("an OpenTelemetry instrument name starts with a letter".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')))
    {
        return Err(format!(
            "{c:?} is not allowed in an OpenTelemetry instrument name (letters, digits, _ . - /)"
        ));
    }
    Ok(())
}

impl MetricProvider for OtelProvider {
    fn name(&self) -> &str {
        "opentelemetry"
    }

    fn register(&self, spec: &MetricSpec<'_>) -> Result<Box<dyn Instrument>, ProviderError> {
        let name = otel_name(spec);
        check_name(name).map_err(|e| ProviderError::Backend(format!("metric {name}: {e}")))?;
        let mut instruments = self
            .inner
            .instruments
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let instrument = match instruments.get(name) {
            Some(existing) if existing.same_kind(spec.kind) => existing.clone(),
            Some(existing) => {
                return Err(ProviderError::Conflict {
                    name: name.to_owned(),
                    reason: format!(
                        "already {} in this OpenTelemetry meter (instruments cannot be removed, \
                         so the name keeps its kind until the process restarts)",
                        existing.kind_name()
                    ),
                });
            }
            None => {
                let created = self.create(name, spec);
                instruments.insert(name.to_owned(), created.clone());
                created
            }
        };
        Ok(Box::new(OtelInstrument {
            name: name.to_owned(),
            instrument,
            keys: spec
                .label_keys
                .iter()
                .map(|k| Key::new((*k).to_owned()))
                .collect(),
        }))
    }
}

/// A tracepoint's view of an instrument. Dropping it unregisters nothing: see the module doc.
struct OtelInstrument {
    name: String,
    instrument: Otel,
    keys: Vec<Key>,
}

impl Instrument for OtelInstrument {
    fn series(&self, label_values: &[&str]) -> Result<Arc<dyn Series>, ProviderError> {
        if label_values.len() != self.keys.len() {
            return Err(ProviderError::Backend(format!(
                "metric {}: {} label values for {} label keys",
                self.name,
                label_values.len(),
                self.keys.len()
            )));
        }
        let attributes: Box<[KeyValue]> = self
            .keys
            .iter()
            .zip(label_values)
            .map(|(k, v)| KeyValue::new(k.clone(), (*v).to_owned()))
            .collect();
        Ok(Arc::new(OtelSeries {
            instrument: self.instrument.clone(),
            attributes,
        }))
    }
}

/// The instrument and one label set's attributes, built once.
struct OtelSeries {
    instrument: Otel,
    attributes: Box<[KeyValue]>,
}

impl Series for OtelSeries {
    fn record(&self, value: f64) -> Result<(), RecordError> {
        let value = RecordError::finite(value)?;
        match &self.instrument {
            Otel::Counter(c) => c.add(RecordError::counter(value)?, &self.attributes),
            Otel::Gauge(g) => g.record(value, &self.attributes),
            Otel::Histogram(h) => h.record(value, &self.attributes),
        }
        Ok(())
    }

    /// Counters add `value × weight` and gauges record the value. OpenTelemetry's histogram
    /// has no weighted record, so a histogram records `weight` times (the same bucket counts and
    /// sum as `weight` hits; it costs one record per hit that the sample stands for, which the
    /// CPU budget charges like any other evaluation cost).
    fn record_weighted(&self, value: f64, weight: u64) -> Result<(), RecordError> {
        let value = RecordError::finite(value)?;
        match &self.instrument {
            Otel::Counter(c) => c.add(
                RecordError::counter(RecordError::counter(value)? * weight as f64)?,
                &self.attributes,
            ),
            Otel::Gauge(g) => g.record(value, &self.attributes),
            Otel::Histogram(h) => {
                for _ in 0..weight {
                    h.record(value, &self.attributes);
                }
            }
        }
        Ok(())
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

    /// The API's no-op meter: enough for everything but the exported data (tests/otel_provider.rs).
    fn provider() -> OtelProvider {
        OtelProvider::new(opentelemetry::global::meter("sonde-test"))
    }

    #[test]
    fn counters_lose_total_and_other_kinds_keep_their_names() {
        assert_eq!(
            otel_name(&spec("deep_orders_total", MetricKind::Counter, &[])),
            "deep_orders"
        );
        assert_eq!(
            otel_name(&spec("deep_orders", MetricKind::Counter, &[])),
            "deep_orders"
        );
        assert_eq!(
            otel_name(&spec("deep_x_total", MetricKind::Gauge, &[])),
            "deep_x_total"
        );
    }

    #[test]
    fn counters_refuse_negative_and_every_kind_refuses_non_finite_values() {
        let p = provider();
        let c = p
            .register(&spec("deep_c", MetricKind::Counter, &[]))
            .unwrap();
        let c = c.series(&[]).unwrap();
        assert_eq!(c.record(-1.0), Err(RecordError::NegativeCounter));
        assert_eq!(c.record(0.0), Ok(()));
        for kind in [
            MetricKind::Counter,
            MetricKind::Gauge,
            MetricKind::Histogram,
            MetricKind::Summary,
        ] {
            let name = format!("deep_{kind:?}").to_lowercase();
            let s = p.register(&spec(&name, kind, &["k"])).unwrap();
            let s = s.series(&["v"]).unwrap();
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                assert_eq!(s.record(bad), Err(RecordError::NotFinite), "{kind:?} {bad}");
            }
            assert_eq!(s.record(1.5), Ok(()), "{kind:?}");
        }
        let g = p.register(&spec("deep_g", MetricKind::Gauge, &[])).unwrap();
        assert_eq!(g.series(&[]).unwrap().record(-3.0), Ok(()));
    }

    #[test]
    fn a_name_keeps_its_kind_and_summary_shares_with_histogram() {
        let p = provider();
        let first = p
            .register(&spec("deep_lat", MetricKind::Histogram, &["a"]))
            .unwrap();
        drop(first);
        p.register(&spec("deep_lat", MetricKind::Summary, &["b"]))
            .expect("same OpenTelemetry kind, other labels");
        assert!(matches!(
            p.register(&spec("deep_lat", MetricKind::Gauge, &[])),
            Err(ProviderError::Conflict { .. })
        ));
        // `deep_n_total` and `deep_n` are one counter.
        p.register(&spec("deep_n_total", MetricKind::Counter, &[]))
            .unwrap();
        assert!(matches!(
            p.register(&spec("deep_n", MetricKind::Gauge, &[])),
            Err(ProviderError::Conflict { .. })
        ));
    }

    #[test]
    fn bad_names_and_label_counts_are_errors_not_silent_no_ops() {
        let p = provider();
        for bad in ["", "9lives", "deep orders", "deep_é"] {
            assert!(
                p.register(&spec(bad, MetricKind::Gauge, &[])).is_err(),
                "{bad:?}"
            );
        }
        let long = format!("d{}", "x".repeat(255));
        assert!(p.register(&spec(&long, MetricKind::Gauge, &[])).is_err());
        let ok = p
            .register(&spec("deep.ok-name/x_1", MetricKind::Gauge, &["a", "b"]))
            .unwrap();
        assert!(matches!(
            ok.series(&["only one"]),
            Err(ProviderError::Backend(_))
        ));
        assert!(ok.series(&["1", "2"]).is_ok());
    }
}
