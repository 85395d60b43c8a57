//! [`Encoder`]: writes exposition text family by family, series by series, in the Prometheus text
//! format 0.0.4 or OpenMetrics 1.0 ([`Format`]). Both the exposition of a gathered registry
//! (`exposition.rs`) and the Prometheus provider's own series (`prometheus.rs`) write through it.

use std::fmt::Write as _;

use prometheus::proto::{Metric, MetricFamily, MetricType};

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

/// The kind of a family, as the formats name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl From<MetricType> for Kind {
    fn from(t: MetricType) -> Kind {
        match t {
            MetricType::COUNTER => Kind::Counter,
            MetricType::GAUGE => Kind::Gauge,
            MetricType::HISTOGRAM => Kind::Histogram,
            MetricType::SUMMARY => Kind::Summary,
            MetricType::UNTYPED => Kind::Untyped,
        }
    }
}

/// A number in a sample line: a value (a float) or a count (an integer in OpenMetrics).
#[derive(Clone, Copy)]
enum Num {
    Float(f64),
    Count(u64),
}

/// Writes an exposition family by family, series by series, in one format. Both the gathered
/// `MetricFamily` values ([`Encoder::proto_family`]) and the provider's own series (which call
/// [`Encoder::family`], [`Encoder::series`] and one of the value methods) go through it, so the
/// two paths cannot format differently.
pub(crate) struct Encoder {
    format: Format,
    out: String,
    /// The name samples start with: the family's, but for an OpenMetrics counter without
    /// `_total` (each of its samples adds it).
    base: String,
    kind: Kind,
    /// The current series' labels, escaped and rendered once for all its lines: `{k="v",k2="v2"`
    /// without the closing brace, or empty.
    labels: String,
    timestamp_ms: i64,
}

impl Encoder {
    pub(crate) fn new(format: Format, capacity: usize) -> Self {
        Self {
            format,
            out: String::with_capacity(capacity),
            base: String::new(),
            kind: Kind::Untyped,
            labels: String::new(),
            timestamp_ms: 0,
        }
    }

    /// The body: for OpenMetrics, with its `# EOF`.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out.into_bytes()
    }

    /// Starts a family: its `# HELP` (when there is help text) and `# TYPE` lines.
    pub(crate) fn family(&mut self, name: &str, help: &str, kind: Kind) {
        self.kind = kind;
        let om = matches!(self.format, Format::OpenMetrics);
        // OpenMetrics names a counter family without `_total`; its samples add it back.
        let base = match kind {
            Kind::Counter if om => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        self.base.clear();
        self.base.push_str(base);
        let type_name = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
            Kind::Untyped if om => "unknown",
            Kind::Untyped => "untyped",
        };
        // The text format writes HELP before TYPE, OpenMetrics after it.
        if !om {
            self.help(base, help, false);
        }
        self.out.push_str("# TYPE ");
        self.out.push_str(base);
        self.out.push(' ');
        self.out.push_str(type_name);
        self.out.push('\n');
        if om {
            self.help(base, help, true);
        }
    }

    /// A family's `# HELP` line, unless `help` is empty.
    fn help(&mut self, name: &str, help: &str, openmetrics: bool) {
        if !help.is_empty() {
            self.out.push_str("# HELP ");
            self.out.push_str(name);
            self.out.push(' ');
            escape_into(&mut self.out, help, openmetrics);
            self.out.push('\n');
        }
    }

    /// Starts a series of the current family: its labels (names as given, values escaped here)
    /// and its timestamp (0 for none).
    pub(crate) fn series<'a>(
        &mut self,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        timestamp_ms: i64,
    ) {
        self.labels.clear();
        for (name, value) in labels {
            self.labels
                .push(if self.labels.is_empty() { '{' } else { ',' });
            self.labels.push_str(name);
            self.labels.push_str("=\"");
            escape_into(&mut self.labels, value, true);
            self.labels.push('"');
        }
        self.timestamp_ms = timestamp_ms;
    }

    /// The current series' value: a counter's total.
    pub(crate) fn counter(&mut self, value: f64) {
        let suffix = match self.format {
            Format::Text => "",
            Format::OpenMetrics => "_total",
        };
        self.line(suffix, None, Num::Float(value));
    }

    /// The current series' value: a gauge's (or an untyped metric's).
    pub(crate) fn gauge(&mut self, value: f64) {
        self.line("", None, Num::Float(value));
    }

    /// The current series' value: a histogram's cumulative counts per upper bound (the `+Inf`
    /// bucket is added unless given), count and sum.
    pub(crate) fn histogram(
        &mut self,
        buckets: impl IntoIterator<Item = (f64, u64)>,
        count: u64,
        sum: f64,
    ) {
        let mut saw_inf = false;
        for (bound, cumulative) in buckets {
            saw_inf |= bound == f64::INFINITY;
            self.line("_bucket", Some(("le", bound)), Num::Count(cumulative));
        }
        if !saw_inf {
            self.line("_bucket", Some(("le", f64::INFINITY)), Num::Count(count));
        }
        self.count_and_sum(count, sum);
    }

    /// The current series' value: a summary's `(quantile, value)` pairs, count and sum.
    pub(crate) fn summary(
        &mut self,
        quantiles: impl IntoIterator<Item = (f64, f64)>,
        count: u64,
        sum: f64,
    ) {
        for (q, value) in quantiles {
            self.line("", Some(("quantile", q)), Num::Float(value));
        }
        self.count_and_sum(count, sum);
    }

    fn count_and_sum(&mut self, count: u64, sum: f64) {
        match self.format {
            // The order the `prometheus` crate's encoder writes them in.
            Format::Text => {
                self.line("_sum", None, Num::Float(sum));
                self.line("_count", None, Num::Count(count));
            }
            Format::OpenMetrics => {
                self.line("_count", None, Num::Count(count));
                self.line("_sum", None, Num::Float(sum));
            }
        }
    }

    /// One sample line of the current series: `extra` is the `le` or `quantile` label.
    fn line(&mut self, suffix: &str, extra: Option<(&str, f64)>, value: Num) {
        let out = &mut self.out;
        out.push_str(&self.base);
        out.push_str(suffix);
        out.push_str(&self.labels);
        if let Some((name, bound)) = extra {
            out.push(if self.labels.is_empty() { '{' } else { ',' });
            out.push_str(name);
            out.push_str("=\"");
            match self.format {
                Format::Text if bound == f64::INFINITY => out.push_str("+Inf"),
                Format::Text => push_display(out, bound),
                Format::OpenMetrics => canonical_into(out, bound),
            }
            out.push('"');
        }
        if !self.labels.is_empty() || extra.is_some() {
            out.push('}');
        }
        out.push(' ');
        match (self.format, value) {
            (Format::Text, Num::Float(v)) => push_display(out, v),
            // As the `prometheus` crate writes counts: through an `f64`.
            (Format::Text, Num::Count(n)) => push_display(out, n as f64),
            (Format::OpenMetrics, Num::Float(v)) => canonical_into(out, v),
            (Format::OpenMetrics, Num::Count(n)) => push_u64(out, n),
        }
        let ms = self.timestamp_ms;
        if ms != 0 {
            out.push(' ');
            match self.format {
                Format::Text => {
                    let _ = write!(out, "{ms}");
                }
                Format::OpenMetrics => {
                    let sign = if ms < 0 { "-" } else { "" };
                    let ms = ms.unsigned_abs();
                    let _ = write!(out, "{sign}{}.{:03}", ms / 1000, ms % 1000);
                }
            }
        }
        out.push('\n');
    }

    /// A gathered family. Left out when it has no name or no metrics.
    pub(crate) fn proto_family(&mut self, family: &MetricFamily) {
        let name = family.name();
        if name.is_empty() || family.get_metric().is_empty() {
            return;
        }
        let kind = Kind::from(family.get_field_type());
        self.family(name, family.help(), kind);
        for metric in family.get_metric() {
            self.proto_metric(kind, metric);
        }
    }

    fn proto_metric(&mut self, kind: Kind, metric: &Metric) {
        let labels = metric.get_label().iter().map(|l| (l.name(), l.value()));
        self.series(labels, metric.timestamp_ms());
        match kind {
            Kind::Counter => self.counter(metric.get_counter().get_value()),
            Kind::Gauge => self.gauge(metric.get_gauge().get_value()),
            Kind::Untyped => {
                // Deprecated in `prometheus` 0.14 (its own metrics are never untyped), but a
                // custom collector may still produce one.
                #[allow(deprecated)]
                let v = metric.get_untyped().get_value();
                self.gauge(v);
            }
            Kind::Histogram => {
                let h = metric.get_histogram();
                let buckets = h
                    .get_bucket()
                    .iter()
                    .map(|b| (b.upper_bound(), b.cumulative_count()));
                self.histogram(buckets, h.get_sample_count(), h.get_sample_sum());
            }
            Kind::Summary => {
                let s = metric.get_summary();
                let quantiles = s.get_quantile().iter().map(|q| (q.quantile(), q.value()));
                self.summary(quantiles, s.sample_count(), s.sample_sum());
            }
        }
    }
}

/// Escapes `\\` and newlines, and `"` when `quotes` (label values in both formats, help text in
/// OpenMetrics; the 0.0.4 format leaves `"` alone in help text).
fn escape_into(out: &mut String, s: &str, quotes: bool) {
    let special = |b: u8| b == b'\\' || b == b'\n' || (quotes && b == b'"');
    if !s.bytes().any(special) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[at..]).unwrap_or_default());
}

/// A whole number small enough to print exactly through an integer (the common case of counts,
/// counters and bucket bounds), or `None`.
fn whole(v: f64) -> Option<(bool, u64)> {
    (v.fract() == 0.0 && v.abs() < 9.0e15).then(|| (v.is_sign_negative(), v.abs() as u64))
}

/// A float as Rust's `Display` writes it (and the `prometheus` crate's 0.0.4 encoder with it):
/// `3`, `0.25`, `-0`, `inf`, `NaN`.
pub(super) fn push_display(out: &mut String, v: f64) {
    match whole(v) {
        Some((negative, n)) => {
            if negative {
                out.push('-');
            }
            push_u64(out, n);
        }
        None => {
            let _ = write!(out, "{v}");
        }
    }
}

/// [`canonical`] appended to `out`.
pub(super) fn canonical_into(out: &mut String, v: f64) {
    match whole(v) {
        Some((negative, n)) if n < 1_000_000 => {
            if negative {
                out.push('-');
            }
            push_u64(out, n);
            out.push_str(".0");
        }
        _ => out.push_str(&canonical(v)),
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
