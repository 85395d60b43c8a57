//! [`encode`]: a registry's exposition text, in the Prometheus text format 0.0.4 or, when the
//! scraper's `Accept` header asks for it, in OpenMetrics 1.0.
//!
//! The `prometheus` crate writes the 0.0.4 format; it has no OpenMetrics encoder, so the one here
//! writes OpenMetrics 1.0 text from the same `MetricFamily` values. What changes from 0.0.4:
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

use std::fmt::Write as _;

use prometheus::{
    Registry, TextEncoder,
    proto::{LabelPair, Metric, MetricFamily, MetricType},
};

/// The content type of the Prometheus text format 0.0.4 (the default).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The content type of the OpenMetrics 1.0 text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0 text format.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it accepts
    /// `application/openmetrics-text` (version 1.0.0, 0.0.1 or none) with a quality at least
    /// that of `text/plain`; otherwise (no header, nothing we know) the 0.0.4 text format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let (mut om, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0f32;
            let mut version_ok = true;
            for param in parts {
                let Some((key, value)) = param.split_once('=') else {
                    continue;
                };
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "q" => q = value.parse().unwrap_or(0.0),
                    "version" => version_ok = matches!(value, "1.0.0" | "0.0.1"),
                    _ => {}
                }
            }
            match media.as_str() {
                "application/openmetrics-text" if version_ok => om = om.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if om > 0.0 && om >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The `Content-Type` of an exposition in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// Gathers `registry` and encodes it in the format `accept` (an HTTP `Accept` header) asks for.
/// Returns the content type and the body.
pub fn encode(registry: &Registry, accept: Option<&str>) -> (&'static str, Vec<u8>) {
    let format = Format::negotiate(accept);
    (
        format.content_type(),
        encode_families(&registry.gather(), format),
    )
}

/// Encodes metric families in `format`. Families without a name or without metrics are left
/// out (the 0.0.4 encoder refuses them).
pub fn encode_families(families: &[MetricFamily], format: Format) -> Vec<u8> {
    match format {
        Format::Text => {
            let valid: Vec<MetricFamily> = families
                .iter()
                .filter(|f| !f.name().is_empty() && !f.get_metric().is_empty())
                .cloned()
                .collect();
            let mut out = String::new();
            if let Err(err) = TextEncoder::new().encode_utf8(&valid, &mut out) {
                // Unreachable with the families filtered; never fail a scrape over it.
                tracing::warn!(target: "sonde::metrics", %err, "encoding metrics");
            }
            out.into_bytes()
        }
        Format::OpenMetrics => openmetrics(families).into_bytes(),
    }
}

fn openmetrics(families: &[MetricFamily]) -> String {
    let mut out = String::with_capacity(families.len() * 128);
    for family in families {
        let name = family.name();
        if name.is_empty() || family.get_metric().is_empty() {
            continue;
        }
        let kind = family.get_field_type();
        let base = match kind {
            MetricType::COUNTER => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        let type_name = match kind {
            MetricType::COUNTER => "counter",
            MetricType::GAUGE => "gauge",
            MetricType::HISTOGRAM => "histogram",
            MetricType::SUMMARY => "summary",
            MetricType::UNTYPED => "unknown",
        };
        let _ = writeln!(out, "# TYPE {base} {type_name}");
        if !family.help().is_empty() {
            out.push_str("# HELP ");
            out.push_str(base);
            out.push(' ');
            escape_into(&mut out, family.help());
            out.push('\n');
        }
        for metric in family.get_metric() {
            let labels = metric.get_label();
            match kind {
                MetricType::COUNTER => {
                    let v = Value::Float(metric.get_counter().get_value());
                    sample(&mut out, base, "_total", labels, None, v, metric);
                }
                MetricType::GAUGE => {
                    let v = Value::Float(metric.get_gauge().get_value());
                    sample(&mut out, base, "", labels, None, v, metric);
                }
                MetricType::UNTYPED => {
                    // Deprecated in `prometheus` 0.14 (its own metrics are never untyped), but a
                    // custom collector may still produce one.
                    #[allow(deprecated)]
                    let v = Value::Float(metric.get_untyped().get_value());
                    sample(&mut out, base, "", labels, None, v, metric);
                }
                MetricType::HISTOGRAM => {
                    let h = metric.get_histogram();
                    let mut saw_inf = false;
                    for b in h.get_bucket() {
                        let bound = b.upper_bound();
                        saw_inf |= bound == f64::INFINITY;
                        let le = ("le", canonical(bound));
                        let v = Value::Int(b.cumulative_count());
                        sample(&mut out, base, "_bucket", labels, Some(le), v, metric);
                    }
                    if !saw_inf {
                        let le = ("le", "+Inf".to_owned());
                        let v = Value::Int(h.get_sample_count());
                        sample(&mut out, base, "_bucket", labels, Some(le), v, metric);
                    }
                    let count = Value::Int(h.get_sample_count());
                    sample(&mut out, base, "_count", labels, None, count, metric);
                    let sum = Value::Float(h.get_sample_sum());
                    sample(&mut out, base, "_sum", labels, None, sum, metric);
                }
                MetricType::SUMMARY => {
                    let s = metric.get_summary();
                    for q in s.get_quantile() {
                        let quantile = ("quantile", canonical(q.quantile()));
                        let v = Value::Float(q.value());
                        sample(&mut out, base, "", labels, Some(quantile), v, metric);
                    }
                    let count = Value::Int(s.sample_count());
                    sample(&mut out, base, "_count", labels, None, count, metric);
                    let sum = Value::Float(s.sample_sum());
                    sample(&mut out, base, "_sum", labels, None, sum, metric);
                }
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

enum Value {
    Int(u64),
    Float(f64),
}

fn sample(
    out: &mut String,
    base: &str,
    suffix: &str,
    labels: &[LabelPair],
    extra: Option<(&str, String)>,
    value: Value,
    metric: &Metric,
) {
    out.push_str(base);
    out.push_str(suffix);
    if !labels.is_empty() || extra.is_some() {
        out.push('{');
        let extra = extra.as_ref().map(|(k, v)| (*k, v.as_str()));
        let pairs = labels.iter().map(|l| (l.name(), l.value())).chain(extra);
        for (i, (k, v)) in pairs.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_into(out, v);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    match value {
        Value::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Float(f) => out.push_str(&canonical(f)),
    }
    let ms = metric.timestamp_ms();
    if ms != 0 {
        let sign = if ms < 0 { "-" } else { "" };
        let ms = ms.unsigned_abs();
        let _ = write!(out, " {sign}{}.{:03}", ms / 1000, ms % 1000);
    }
    out.push('\n');
}

/// Escapes `\`, `"` and newlines, as OpenMetrics requires in label values and help text.
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A float as OpenMetrics' canonical numbers want it: Go's `%g` (the shortest digits that read
/// back to the same value; an exponent, of at least two digits, below 1e-4 and from 1e+06 on)
/// with `.0` appended when there is neither a point nor an exponent; `+Inf`, `-Inf`, `NaN`.
pub(crate) fn canonical(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_owned();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    // `{:e}` gives the shortest round-trip digits: `1.5e-7`, `1e6`, `-2.25e0`.
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..6).contains(&exp) {
        let mut s = format!("{v}");
        if !s.contains('.') {
            s.push_str(".0");
        }
        s
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
