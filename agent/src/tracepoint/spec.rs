//! [`TracepointSpec`]: the agent's own model of a tracepoint, converted once from the wire type.
//!
//! This is the one place where `TracePointConfig` (generated protobuf) becomes domain types; the
//! rest of the agent never sees the wire format.

use std::time::{SystemTime, UNIX_EPOCH};

use sonde_proto::{
    common::any_value,
    tracepoint::{MetricType, TracePointConfig, label_expression},
};

use crate::metrics::provider::MetricKind;

/// One tracepoint as the agent understands it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TracepointSpec {
    pub id: String,
    pub path: String,
    pub line: u32,
    pub condition: Option<String>,
    pub log_msg: Option<String>,
    /// Fires allowed per action; `None` is the action's default.
    pub fire_count: Option<i64>,
    /// Minimum milliseconds between fires; `None` is the action's default.
    pub fire_period_ms: Option<u64>,
    /// Active window, Unix milliseconds; `None` = open on that side.
    pub window_start_ms: Option<u64>,
    pub window_end_ms: Option<u64>,
    pub metrics: Vec<MetricRule>,
    /// The share of the process's CPU it may use, in percent (`args.cpu_percent`); `None` is
    /// the agent's.
    pub cpu_percent: Option<f64>,
    /// Whether it may sample when over its CPU budget (`args.sampling`: `auto`, the default, or
    /// `off`, which disarms it instead).
    pub sampling: bool,
    /// `args.snapshot`: `Some(true)` for `collect`, `Some(false)` for `no_collect`; `None` is
    /// Deep's default (collect when the tracepoint has no metrics).
    pub snapshot: Option<bool>,
    /// The watch expressions a snapshot evaluates.
    pub watches: Vec<String>,
    /// Whether a snapshot holds the stack (`args.stack_type` other than `no_stack`).
    pub stack: bool,
    /// `args.span`: a span around the line or the enclosing function.
    pub span: Option<SpanKind>,
    /// The tracepoint as a snapshot names it: ID, path, line, args and watches.
    pub reference: TracePointConfig,
}

/// What `args.span` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanKind {
    /// A span of the line itself (opened and closed at the hit).
    Line,
    /// A span of the enclosing function, closed when it returns.
    Method,
}

impl TracepointSpec {
    /// Whether a firing hit takes a snapshot: `snapshot: collect`, or by Deep's default when
    /// the tracepoint has no metrics.
    pub fn collects(&self) -> bool {
        self.snapshot.unwrap_or(self.metrics.is_empty())
    }
}

/// `args.span`: `line` or `method` (any case, as Grafana sends `Line` and `Method`), or `none`.
pub(crate) fn parse_span(raw: &str) -> Result<Option<SpanKind>, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "" | "none" => Ok(None),
        "line" => Ok(Some(SpanKind::Line)),
        "method" => Ok(Some(SpanKind::Method)),
        _ => Err(format!("{raw:?} is not \"line\", \"method\" or \"none\"")),
    }
}

/// A metric a tracepoint feeds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MetricRule {
    /// The exposed base name, `<namespace>_<name>[_<unit>]` (no `_total`).
    pub name: String,
    pub help: String,
    pub kind: MetricKind,
    /// The value expression; `None` means 1.
    pub value: Option<String>,
    pub labels: Vec<(String, LabelRule)>,
    /// Histogram bucket upper bounds: the tracepoint's `args.buckets`, else chosen by the
    /// metric's unit; `None` for other kinds.
    pub buckets: Option<Vec<f64>>,
}

/// Where a label's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LabelRule {
    Static(String),
    Expression(String),
}

/// `args.buckets`: comma-separated finite numbers, strictly increasing (the server checks the
/// same, naming the position).
fn parse_buckets(raw: &str) -> Result<Vec<f64>, String> {
    let mut bounds: Vec<f64> = Vec::new();
    for (i, item) in raw.split(',').enumerate() {
        let item = item.trim();
        match item.parse::<f64>() {
            Ok(b) if b.is_finite() => {
                if bounds.last().is_some_and(|p| b <= *p) {
                    return Err(format!(
                        "bound {} ({item}) is not greater than the one before it",
                        i + 1
                    ));
                }
                bounds.push(b);
            }
            _ => return Err(format!("bound {} ({item:?}) is not a finite number", i + 1)),
        }
    }
    Ok(bounds)
}

/// A window bound in milliseconds: numbers below 10^11 are Unix seconds, larger ones
/// milliseconds; 0 is unset.
fn window_ms(raw: Option<&String>) -> Result<Option<u64>, String> {
    match raw.map(|s| s.trim()) {
        None | Some("") | Some("0") => Ok(None),
        Some(s) => {
            let v: u64 = s.parse().map_err(|_| format!("not a time: {s:?}"))?;
            Ok(Some(if v < 100_000_000_000 {
                v.saturating_mul(1000)
            } else {
                v
            }))
        }
    }
}

pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl TracepointSpec {
    /// From the wire type; an error names the field.
    pub fn from_proto(tp: &TracePointConfig) -> Result<Self, String> {
        let args = &tp.args;
        let nonempty = |key: &str| args.get(key).filter(|v| !v.trim().is_empty()).cloned();
        let fire_count = match nonempty("fire_count") {
            None => None,
            Some(s) => Some(
                s.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("args.fire_count: not an integer: {s:?}"))?,
            ),
        };
        let fire_period_ms = match nonempty("fire_period") {
            None => None,
            Some(s) => Some(
                s.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("args.fire_period: not a number of ms: {s:?}"))?,
            ),
        };
        let cpu_percent = match nonempty("cpu_percent") {
            None => None,
            Some(s) => match s.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => Some(p),
                _ => {
                    return Err(format!(
                        "args.cpu_percent: not a percentage above 0 and at most 100: {s:?}"
                    ));
                }
            },
        };
        let sampling = match nonempty("sampling").as_deref().map(str::trim) {
            None | Some("auto") => true,
            Some("off") => false,
            Some(other) => {
                return Err(format!(
                    "args.sampling: {other:?} is not \"auto\" or \"off\""
                ));
            }
        };
        let buckets = nonempty("buckets")
            .map(|s| parse_buckets(&s))
            .transpose()
            .map_err(|e| format!("args.buckets: {e}"))?;
        let snapshot = match nonempty("snapshot").as_deref().map(str::trim) {
            None => None,
            Some("collect") => Some(true),
            Some("no_collect") => Some(false),
            Some(other) => {
                return Err(format!(
                    "args.snapshot: {other:?} is not \"collect\" or \"no_collect\""
                ));
            }
        };
        let span = match nonempty("span") {
            None => None,
            Some(s) => parse_span(&s).map_err(|e| format!("args.span: {e}"))?,
        };
        let stack = nonempty("stack_type").as_deref().map(str::trim) != Some("no_stack");
        let reference = TracePointConfig {
            id: tp.id.clone(),
            path: tp.path.clone(),
            line_number: tp.line_number,
            args: tp.args.clone(),
            watches: tp.watches.clone(),
            ..Default::default()
        };
        let window_start_ms =
            window_ms(args.get("window_start")).map_err(|e| format!("args.window_start: {e}"))?;
        let window_end_ms =
            window_ms(args.get("window_end")).map_err(|e| format!("args.window_end: {e}"))?;
        let metrics = tp
            .metrics
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let kind = match MetricType::try_from(m.r#type) {
                    Ok(MetricType::Counter) => MetricKind::Counter,
                    Ok(MetricType::Gauge) => MetricKind::Gauge,
                    Ok(MetricType::Histogram) => MetricKind::Histogram,
                    Ok(MetricType::Summary) => MetricKind::Summary,
                    Err(_) => return Err(format!("metrics[{i}].type: unknown type {}", m.r#type)),
                };
                let ns = m.namespace.as_deref().filter(|s| !s.is_empty()).unwrap_or("deep");
                let unit = m.unit.as_deref().filter(|s| !s.is_empty());
                let buckets = (kind == MetricKind::Histogram).then(|| {
                    buckets
                        .clone()
                        .unwrap_or_else(|| crate::metrics::buckets::for_unit(unit).to_vec())
                });
                let name = match unit {
                    Some(unit) => format!("{ns}_{}_{unit}", m.name),
                    None => format!("{ns}_{}", m.name),
                };
                let labels = m
                    .label_expressions
                    .iter()
                    .enumerate()
                    .map(|(j, l)| {
                        let rule = match &l.value {
                            Some(label_expression::Value::Expression(e)) => LabelRule::Expression(e.clone()),
                            Some(label_expression::Value::Static(v)) => LabelRule::Static(match &v.value {
                                Some(any_value::Value::StringValue(s)) => s.clone(),
                                Some(any_value::Value::IntValue(n)) => n.to_string(),
                                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                                _ => {
                                    return Err(format!(
                                        "metrics[{i}].labelExpressions[{j}].static: not a scalar"
                                    ));
                                }
                            }),
                            None => {
                                return Err(format!("metrics[{i}].labelExpressions[{j}]: no value"));
                            }
                        };
                        Ok((l.key.clone(), rule))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(MetricRule {
                    help: m
                        .help
                        .clone()
                        .filter(|h| !h.is_empty())
                        .unwrap_or_else(|| format!("Sonde tracepoint metric at {}:{}", tp.path, tp.line_number)),
                    name,
                    kind,
                    value: m.expression.clone().filter(|e| !e.trim().is_empty()),
                    labels,
                    buckets,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            id: tp.id.clone(),
            path: tp.path.clone(),
            line: tp.line_number,
            condition: nonempty("condition"),
            log_msg: nonempty("log_msg"),
            fire_count,
            fire_period_ms,
            window_start_ms,
            window_end_ms,
            metrics,
            cpu_percent,
            sampling,
            snapshot,
            watches: tp.watches.clone(),
            stack,
            span,
            reference,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_proto::{
        common::AnyValue,
        tracepoint::{LabelExpression, Metric},
    };

    #[test]
    fn converts_names_windows_and_labels() {
        let mut tp = TracePointConfig {
            id: "1".into(),
            path: "src/a.rs".into(),
            line_number: 3,
            ..Default::default()
        };
        tp.args.insert("window_start".into(), "1700000000".into());
        tp.args.insert("window_end".into(), "1700000001000".into());
        tp.args.insert("fire_count".into(), "-1".into());
        tp.metrics.push(Metric {
            name: "latency".into(),
            r#type: MetricType::Histogram as i32,
            namespace: Some("shop".into()),
            unit: Some("seconds".into()),
            label_expressions: vec![
                LabelExpression {
                    key: "a".into(),
                    value: Some(label_expression::Value::Expression("x.y".into())),
                },
                LabelExpression {
                    key: "b".into(),
                    value: Some(label_expression::Value::Static(AnyValue {
                        value: Some(any_value::Value::IntValue(3)),
                    })),
                },
            ],
            ..Default::default()
        });
        let spec = TracepointSpec::from_proto(&tp).unwrap();
        assert_eq!(spec.window_start_ms, Some(1_700_000_000_000));
        assert_eq!(spec.window_end_ms, Some(1_700_000_001_000));
        assert_eq!(spec.fire_count, Some(-1));
        assert_eq!(spec.metrics[0].name, "shop_latency_seconds");
        assert_eq!(spec.metrics[0].kind, MetricKind::Histogram);
        assert_eq!(spec.metrics[0].labels[1].1, LabelRule::Static("3".into()));
        assert_eq!(spec.metrics[0].value, None);
        assert_eq!(
            spec.metrics[0].buckets.as_deref(),
            Some(crate::metrics::buckets::Buckets::LATENCY_SECONDS)
        );
    }

    #[test]
    fn histogram_buckets_come_from_the_args_or_the_unit() {
        let histogram = |unit: Option<&str>| Metric {
            name: "m".into(),
            r#type: MetricType::Histogram as i32,
            unit: unit.map(Into::into),
            ..Default::default()
        };
        let mut tp = TracePointConfig {
            path: "src/a.rs".into(),
            line_number: 3,
            ..Default::default()
        };
        tp.metrics = vec![
            histogram(None),
            histogram(Some("milliseconds")),
            histogram(Some("bytes")),
            Metric {
                name: "c".into(),
                ..Default::default()
            },
        ];
        let spec = TracepointSpec::from_proto(&tp).unwrap();
        let got: Vec<_> = spec.metrics.iter().map(|m| m.buckets.as_deref()).collect();
        use crate::metrics::buckets::Buckets;
        assert_eq!(
            got,
            [
                Some(Buckets::WIDE),
                Some(Buckets::LATENCY_MILLISECONDS),
                Some(Buckets::SIZES_BYTES),
                None
            ]
        );
        tp.args.insert("buckets".into(), " 1, 5,10,50".into());
        let spec = TracepointSpec::from_proto(&tp).unwrap();
        assert_eq!(
            spec.metrics[1].buckets.as_deref(),
            Some(&[1.0, 5.0, 10.0, 50.0][..])
        );
        tp.args.insert("buckets".into(), "1,5,5".into());
        let err = TracepointSpec::from_proto(&tp).unwrap_err();
        assert_eq!(
            err,
            "args.buckets: bound 3 (5) is not greater than the one before it"
        );
    }
}
