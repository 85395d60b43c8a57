//! [`encode`]: a registry's exposition text, in the Prometheus text format 0.0.4 or, when the
//! scraper's `Accept` header asks for it, in OpenMetrics 1.0.
//!
//! Both formats are written here, by one encoder that takes a family and its series either
//! from gathered `MetricFamily` values or straight from the series of Sonde's
//! [`PrometheusProvider`](crate::PrometheusProvider): a scrape of a registry
//! ([`encode_registry`]) writes the provider's metrics without building the `MetricFamily`
//! values `Registry::gather()` would, which for many series was most of its cost. The 0.0.4 text
//! is byte for byte what the `prometheus` crate's `TextEncoder` writes for the same families
//! (except `le="+Inf"`, never `inf`, for an explicit infinite bucket, and untyped families, which
//! it cannot write). What changes in OpenMetrics 1.0:
//!
//! - a counter's family is named without `_total` in `# TYPE` and `# HELP`, and its sample
//!   carries `_total` (added when the registered name lacks it);
//! - `# TYPE` comes before `# HELP`; `untyped` is `unknown`; `"` is escaped in help text too;
//! - sample values are floats with a decimal point or an exponent (`1.0`, `2.5e-07`), counts are
//!   integers, and `le` / `quantile` label values are canonical numbers (Go's `%g` with `.0`
//!   appended: `0.005`, `1.0`, `1e+06`, `+Inf`);
//! - timestamps are in seconds, not milliseconds;
//! - the exposition ends with `# EOF`.
//!
//! ```
//! use sonde_agent::exposition::{self, OPENMETRICS_CONTENT_TYPE};
//!
//! let registry = prometheus::Registry::new();
//! let requests = prometheus::Counter::new("requests_total", "Requests served.")?;
//! registry.register(Box::new(requests.clone()))?;
//! requests.inc_by(3.0);
//!
//! let (content_type, body) = exposition::encode(&registry, Some("application/openmetrics-text"));
//! assert_eq!(content_type, OPENMETRICS_CONTENT_TYPE);
//! assert_eq!(
//!     String::from_utf8(body)?,
//!     "# TYPE requests counter\n# HELP requests Requests served.\nrequests_total 3.0\n# EOF\n"
//! );
//!
//! let (content_type, body) = exposition::encode(&registry, None);
//! assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
//! assert!(String::from_utf8(body)?.contains("requests_total 3\n"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::{Registry, proto::MetricFamily};

use super::encoder::Encoder;
pub use super::encoder::{Format, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};

/// Gathers `registry` and encodes it in the format `accept` (an HTTP `Accept` header) asks for.
/// Returns the content type and the body.
pub fn encode(registry: &Registry, accept: Option<&str>) -> (&'static str, Vec<u8>) {
    let format = Format::negotiate(accept);
    (format.content_type(), encode_registry(registry, format))
}

/// The size of the last exposition, to size the next one's buffer.
static LAST_LEN: AtomicUsize = AtomicUsize::new(0);

/// Gathers `registry` and encodes it in `format`.
///
/// The families of the registry's [`PrometheusProvider`](crate::PrometheusProvider) (there is at
/// most one per registry) are written straight from its series, without building the
/// `MetricFamily` values `Registry::gather()` would (that copying of every label pair is most of
/// what a scrape of many series costs); anything else registered in the registry is gathered as
/// usual. The two are merged by name, so the output is the one [`encode_families`] would write for
/// `registry.gather()`: families sorted by name, series sorted by label values, one `# TYPE` per
/// name (a name both sides expose is gathered, and written once).
pub fn encode_registry(registry: &Registry, format: Format) -> Vec<u8> {
    let gathered = crate::metrics::prometheus::gather(registry);
    let hint = LAST_LEN.load(Ordering::Relaxed);
    let mut enc = Encoder::new(format, hint + hint / 8);
    let mut own = gathered.own.iter().peekable();
    for family in &gathered.families {
        while let Some(o) = own.next_if(|o| o.name() < family.name()) {
            o.encode(&mut enc);
        }
        enc.proto_family(family);
    }
    for o in own {
        o.encode(&mut enc);
    }
    let out = enc.finish();
    LAST_LEN.store(out.len(), Ordering::Relaxed);
    out
}

/// Encodes metric families in `format`. Families without a name or without metrics are left
/// out (the 0.0.4 format has no way to write them).
pub fn encode_families(families: &[MetricFamily], format: Format) -> Vec<u8> {
    let mut enc = Encoder::new(format, families.len() * 128);
    for family in families {
        enc.proto_family(family);
    }
    enc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::encoder::*;
    use prometheus::proto::LabelPair;
    use prometheus::proto::{Metric, MetricType};

    #[test]
    fn canonical_numbers_follow_the_spec_examples() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0.0"),
            (0.001, "0.001"),
            (0.002, "0.002"),
            (0.01, "0.01"),
            (0.1, "0.1"),
            (0.9, "0.9"),
            (0.95, "0.95"),
            (0.99, "0.99"),
            (0.999, "0.999"),
            (1.0, "1.0"),
            (1.7, "1.7"),
            (10.0, "10.0"),
            (1e-10, "1e-10"),
            (1e-9, "1e-09"),
            (1e-5, "1e-05"),
            (1e-4, "0.0001"),
            (100000.0, "100000.0"),
            (1e6, "1e+06"),
            (1e10, "1e+10"),
            (1e23, "1e+23"),
            (1.1e23, "1.1e+23"),
            (0.005, "0.005"),
            (2.5, "2.5"),
            (-3.0, "-3.0"),
            (1234567.0, "1.234567e+06"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ];
        for (v, want) in cases {
            assert_eq!(canonical(*v), *want, "{v}");
        }
    }

    #[test]
    fn accept_headers_pick_the_format() {
        use Format::*;
        let prometheus_default = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, want) in [
            (None, Text),
            (Some(""), Text),
            (Some("*/*"), Text),
            (Some("text/plain"), Text),
            (Some("application/openmetrics-text"), OpenMetrics),
            (Some(prometheus_default), OpenMetrics),
            (
                Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                OpenMetrics,
            ),
            (Some("application/openmetrics-text;version=2.0.0"), Text),
            (
                Some("text/plain;q=0.9, application/openmetrics-text;q=0.5"),
                Text,
            ),
            (Some("application/openmetrics-text;q=0"), Text),
            (
                Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily"),
                Text,
            ),
        ] {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn escaping_and_timestamps() {
        let mut family = MetricFamily::default();
        family.set_name("g".into());
        family.set_help("a \"quoted\" \\ help\nline".into());
        family.set_field_type(MetricType::GAUGE);
        let mut label = LabelPair::default();
        label.set_name("path".into());
        label.set_value("C:\\dir\n\"x\"".into());
        let mut gauge = prometheus::proto::Gauge::default();
        gauge.set_value(0.5);
        let mut metric = Metric::default();
        metric.set_label(vec![label]);
        metric.set_gauge(gauge);
        metric.set_timestamp_ms(1520879607789);
        family.mut_metric().push(metric);
        let text =
            String::from_utf8(encode_families(&[family], Format::OpenMetrics)).expect("utf-8");
        assert_eq!(
            text,
            "# TYPE g gauge\n# HELP g a \\\"quoted\\\" \\\\ help\\nline\n\
             g{path=\"C:\\\\dir\\n\\\"x\\\"\"} 0.5 1520879607.789\n# EOF\n"
        );
    }

    #[test]
    fn fast_number_formatting_matches_display_and_canonical() {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.25,
            1e15,
            8.9e15,
            9.1e15,
            1e21,
            123456789.0,
            999999.0,
            1000000.0,
            -999999.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..2000 {
            values.push((rng.f64() - 0.5) * 10f64.powi(rng.i32(-8..18)));
            values.push(f64::from(rng.i32(..)));
        }
        for v in values {
            let mut display = String::new();
            push_display(&mut display, v);
            assert_eq!(display, format!("{v}"));
            let mut om = String::new();
            canonical_into(&mut om, v);
            assert_eq!(om, canonical(v), "{v}");
        }
    }

    /// Families of every kind the `prometheus` crate encodes, in the 0.0.4 text: the same bytes
    /// as its `TextEncoder` (histograms without `+Inf`, help and label escaping, timestamps).
    #[test]
    fn the_text_format_matches_the_prometheus_crate() {
        let registry = Registry::new();
        let opts = prometheus::HistogramOpts::new("h", "A \"histogram\" \\ help\nline.")
            .buckets(vec![0.001, 0.5, 2.0, 1e7]);
        let h = prometheus::HistogramVec::new(opts, &["path"]).unwrap();
        for v in [0.0005, 0.7, 3.0, 1e9] {
            h.with_label_values(&["C:\\dir\n\"x\""]).observe(v);
        }
        registry.register(Box::new(h)).unwrap();
        let g = prometheus::Gauge::new("g", "Gauge.").unwrap();
        g.set(-1.5e-9);
        registry.register(Box::new(g)).unwrap();
        let c = prometheus::IntCounter::new("c_total", "Counter.").unwrap();
        c.inc_by(12);
        registry.register(Box::new(c)).unwrap();
        let mut families = registry.gather();

        let mut summary = MetricFamily::default();
        summary.set_name("s".into());
        summary.set_help("Summary.".into());
        summary.set_field_type(MetricType::SUMMARY);
        let mut s = prometheus::proto::Summary::default();
        s.set_sample_count(3);
        s.set_sample_sum(0.75);
        s.set_quantile(
            [(0.5, 0.25), (0.99, f64::NAN)]
                .into_iter()
                .map(|(q, v)| {
                    let mut quantile = prometheus::proto::Quantile::default();
                    quantile.set_quantile(q);
                    quantile.set_value(v);
                    quantile
                })
                .collect(),
        );
        let mut metric = Metric::default();
        metric.set_summary(s);
        metric.set_timestamp_ms(-1500);
        summary.mut_metric().push(metric);
        families.push(summary);

        let ours = String::from_utf8(encode_families(&families, Format::Text)).unwrap();
        let theirs = prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn untyped_families_and_empty_ones() {
        let mut untyped = MetricFamily::default();
        untyped.set_name("u".into());
        untyped.set_field_type(MetricType::UNTYPED);
        untyped.mut_metric().push(Metric::default());
        let mut empty = MetricFamily::default();
        empty.set_name("e".into());
        empty.set_help("No metrics.".into());
        let families = [untyped, empty];
        let text = String::from_utf8(encode_families(&families, Format::Text)).unwrap();
        assert_eq!(text, "# TYPE u untyped\nu 0\n");
        let om = String::from_utf8(encode_families(&families, Format::OpenMetrics)).unwrap();
        assert_eq!(om, "# TYPE u unknown\nu 0.0\n# EOF\n");
    }
}
