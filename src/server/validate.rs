//! [`validate`]: the checks a tracepoint passes before anything is stored.
//!
//! Errors name the offending field by its proto3 JSON path (`metrics[0].labelExpressions[1].expression`)
//! and, for an expression, the position inside it, so a person can fix the request.
//!
//! # Which expressions are compiled
//! Sonde's agents evaluate expressions with `sonde-expr` (rhai), so the server compiles every
//! expression with the same crate and refuses what would not compile in an agent. Deep's own agents
//! evaluate expressions in their own language (Python, Java), which is not rhai. The rule: a
//! tracepoint whose `targeting` pins `telemetry.sdk.language` to a value other than `rust` is meant
//! for those agents only; its expressions are checked for size and emptiness, not compiled. Every
//! other tracepoint (untargeted, or targeted at `rust`) may reach a Sonde agent and is compiled.

use std::collections::BTreeSet;

use serde::Serialize;
use sonde_expr::ExprKind;
use sonde_proto::{
    common::{AnyValue, any_value},
    tracepoint::{LabelExpression, MetricType, TracePointConfig, label_expression},
};

/// The resource attribute that names an agent's language.
pub const LANGUAGE_ATTRIBUTE: &str = "telemetry.sdk.language";

/// Bounds on what one tracepoint (and one tenant) may hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Tracepoints one tenant may hold.
    pub max_tracepoints_per_tenant: usize,
    /// Metrics in one tracepoint.
    pub max_metrics: usize,
    /// Labels on one metric.
    pub max_labels: usize,
    /// Watch expressions in one tracepoint.
    pub max_watches: usize,
    /// Targeting entries in one tracepoint.
    pub max_targeting: usize,
    /// Characters in one expression or log template.
    pub max_expression_len: usize,
    /// Characters in the path.
    pub max_path_len: usize,
    /// Characters in a name (metric, namespace, unit, label key) or short text value.
    pub max_name_len: usize,
    /// Characters in a static label value, a targeting value or `help`.
    pub max_text_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tracepoints_per_tenant: 1000,
            max_metrics: 16,
            max_labels: 16,
            max_watches: 32,
            max_targeting: 16,
            max_expression_len: 1024,
            max_path_len: 1024,
            max_name_len: 128,
            max_text_len: 1024,
        }
    }
}

/// Where in an expression an error is, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Position {
    /// Line, from 1.
    pub line: u32,
    /// Column (character), from 1.
    pub column: u32,
}

/// A tracepoint that failed validation: which field, why, and where in an expression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}{}", position.map(|p| format!(" (line {}, column {})", p.line, p.column)).unwrap_or_default())]
pub struct ValidationError {
    /// The field, as a proto3 JSON path (`args.condition`, `metrics[1].name`).
    pub field: String,
    /// What is wrong, in words a person can act on.
    pub message: String,
    /// For an expression, where in it the problem is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
}

impl ValidationError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            position: None,
        }
    }
}

/// The `args` keys tracepoints may carry.
pub const KNOWN_ARGS: &[&str] = &[
    "buckets",
    "condition",
    "cpu_percent",
    "fire_count",
    "fire_period",
    "frame_type",
    "log_msg",
    "method_name",
    "sampling",
    "snapshot",
    "span",
    "stack_type",
    "stage",
    "tag",
    "window_end",
    "window_start",
];

/// The most bucket bounds `args.buckets` may list.
pub const MAX_BUCKETS: usize = 64;

/// `args.buckets`: comma-separated finite numbers, strictly increasing, at most [`MAX_BUCKETS`].
/// An error names the item (1-based) and its column in the value.
fn check_buckets(field: &str, value: &str) -> Result<(), ValidationError> {
    let at = |column: usize, message: String| ValidationError {
        field: field.to_owned(),
        message,
        position: Some(Position {
            line: 1,
            column: u32::try_from(column + 1).unwrap_or(u32::MAX),
        }),
    };
    if value.trim().is_empty() {
        return Err(ValidationError::new(
            field,
            "is empty: list the bucket upper bounds, e.g. \"1,5,10,50\"",
        ));
    }
    let mut previous: Option<f64> = None;
    let mut column = 0;
    for (i, item) in value.split(',').enumerate() {
        let n = i + 1;
        if n > MAX_BUCKETS {
            return Err(at(column, format!("more than {MAX_BUCKETS} bucket bounds")));
        }
        let start = column + value[column..].len() - value[column..].trim_start().len();
        let text = item.trim();
        match text.parse::<f64>() {
            Ok(bound) if bound.is_finite() => {
                if let Some(p) = previous.filter(|p| bound <= *p) {
                    return Err(at(
                        start,
                        format!(
                            "bound {n} ({text}) is not greater than bound {} ({p}): list the bounds in increasing order",
                            n - 1
                        ),
                    ));
                }
                previous = Some(bound);
            }
            _ => {
                return Err(at(
                    start,
                    format!("bound {n} ({text:?}) is not a finite number"),
                ));
            }
        }
        column += item.len() + 1;
    }
    Ok(())
}

/// Checks a tracepoint as received from a client. `ID` is not checked here (the caller decides
/// whether one may be given).
pub fn validate(tp: &TracePointConfig, limits: &Limits) -> Result<(), ValidationError> {
    let compile = !is_foreign(tp);
    let ctx = Ctx { limits, compile };

    if tp.path.trim().is_empty() {
        return Err(ValidationError::new(
            "path",
            "is required: the source file of the line, e.g. \"src/checkout.rs\"",
        ));
    }
    ctx.check_len("path", &tp.path, limits.max_path_len)?;
    if tp.path.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "path",
            "must not contain control characters",
        ));
    }
    if tp.line_number == 0 {
        return Err(ValidationError::new(
            "lineNumber",
            "is required and must be at least 1",
        ));
    }

    for (key, value) in &tp.args {
        ctx.check_arg(key, value)?;
    }
    check_window(tp)?;

    if tp.watches.len() > limits.max_watches {
        return Err(too_many("watches", tp.watches.len(), limits.max_watches));
    }
    for (i, watch) in tp.watches.iter().enumerate() {
        ctx.check_expression(&format!("watches[{i}]"), watch, ExprKind::Any)?;
    }

    if tp.targeting.len() > limits.max_targeting {
        return Err(too_many(
            "targeting",
            tp.targeting.len(),
            limits.max_targeting,
        ));
    }
    let mut target_keys = BTreeSet::new();
    for (i, kv) in tp.targeting.iter().enumerate() {
        let field = format!("targeting[{i}]");
        if kv.key.is_empty() {
            return Err(ValidationError::new(format!("{field}.key"), "is empty"));
        }
        ctx.check_len(&format!("{field}.key"), &kv.key, limits.max_text_len)?;
        if !target_keys.insert(kv.key.as_str()) {
            return Err(ValidationError::new(
                format!("{field}.key"),
                format!("\"{}\" appears twice", kv.key),
            ));
        }
        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => ctx.check_len(
                &format!("{field}.value.stringValue"),
                s,
                limits.max_text_len,
            )?,
            _ => {
                return Err(ValidationError::new(
                    format!("{field}.value"),
                    "must be a string value ({\"stringValue\": \"...\"}): targeting compares resource attributes as strings",
                ));
            }
        }
    }

    if tp.metrics.len() > limits.max_metrics {
        return Err(too_many("metrics", tp.metrics.len(), limits.max_metrics));
    }
    let mut metric_names = BTreeSet::new();
    for (i, metric) in tp.metrics.iter().enumerate() {
        let field = format!("metrics[{i}]");
        ctx.check_name(&format!("{field}.name"), &metric.name, true)?;
        if let Some(ns) = &metric.namespace
            && !ns.is_empty()
        {
            ctx.check_name(&format!("{field}.namespace"), ns, false)?;
        }
        if let Some(unit) = &metric.unit
            && !unit.is_empty()
        {
            ctx.check_name(&format!("{field}.unit"), unit, false)?;
        }
        if let Some(help) = &metric.help {
            ctx.check_len(&format!("{field}.help"), help, limits.max_text_len)?;
        }
        let kind = MetricType::try_from(metric.r#type).map_err(|_| {
            ValidationError::new(
                format!("{field}.type"),
                format!(
                    "unknown metric type {}: use COUNTER, GAUGE, HISTOGRAM or SUMMARY",
                    metric.r#type
                ),
            )
        })?;
        let full_name = exposed_name(
            metric.namespace.as_deref(),
            &metric.name,
            metric.unit.as_deref(),
        );
        if full_name.starts_with("__") {
            return Err(ValidationError::new(
                format!("{field}.name"),
                format!("\"{full_name}\" starts with \"__\", which Prometheus reserves"),
            ));
        }
        if !metric_names.insert(full_name.clone()) {
            return Err(ValidationError::new(
                format!("{field}.name"),
                format!("another metric of this tracepoint is also exposed as \"{full_name}\""),
            ));
        }
        if let Some(expr) = &metric.expression
            && !expr.trim().is_empty()
        {
            ctx.check_expression(&format!("{field}.expression"), expr, ExprKind::Value)?;
        }
        ctx.check_labels(&field, kind, &metric.label_expressions)?;
    }
    Ok(())
}

/// The Prometheus name a metric is exposed under (before any `_total` suffix):
/// `<namespace>_<name>[_<unit>]`, namespace `deep` by default, as Deep's agents do.
pub fn exposed_name(namespace: Option<&str>, name: &str, unit: Option<&str>) -> String {
    let ns = namespace.filter(|ns| !ns.is_empty()).unwrap_or("deep");
    match unit.filter(|u| !u.is_empty()) {
        Some(unit) => format!("{ns}_{name}_{unit}"),
        None => format!("{ns}_{name}"),
    }
}

/// Whether the tracepoint is pinned to agents whose language is not Rust (see the module docs).
pub fn is_foreign(tp: &TracePointConfig) -> bool {
    tp.targeting.iter().any(|kv| {
        kv.key == LANGUAGE_ATTRIBUTE
            && match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(lang)) => !lang.eq_ignore_ascii_case("rust"),
                _ => false,
            }
    })
}

/// Refuses `value` when it is longer than `limit` characters.
pub(crate) fn check_len(field: &str, value: &str, limit: usize) -> Result<(), ValidationError> {
    let len = value.chars().count();
    if len > limit {
        return Err(ValidationError::new(
            field,
            format!("is {len} characters long; the limit is {limit}"),
        ));
    }
    Ok(())
}

/// The check every Prometheus name passes (metric names, namespaces, units, label keys; also the
/// server's ad-hoc metrics): non-empty, at most `max_len` characters of `[a-zA-Z_][a-zA-Z0-9_]*`.
pub(crate) fn check_prometheus_name(
    field: &str,
    name: &str,
    required: bool,
    max_len: usize,
) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(ValidationError::new(
            field,
            if required { "is required" } else { "is empty" },
        ));
    }
    check_len(field, name, max_len)?;
    if let Some((at, ch)) = name
        .chars()
        .enumerate()
        .find(|&(i, c)| !(c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
    {
        return Err(ValidationError::new(
            field,
            format!(
                "\"{name}\" is not a legal Prometheus name: character {ch:?} at position {} (use letters, digits and '_', not starting with a digit)",
                at + 1
            ),
        ));
    }
    Ok(())
}

fn too_many(field: &str, count: usize, limit: usize) -> ValidationError {
    ValidationError::new(field, format!("has {count} entries; the limit is {limit}"))
}

fn check_window(tp: &TracePointConfig) -> Result<(), ValidationError> {
    let get = |key: &str| {
        tp.args
            .get(key)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|v| *v != 0)
    };
    if let (Some(start), Some(end)) = (get("window_start"), get("window_end"))
        && window_millis(start) >= window_millis(end)
    {
        return Err(ValidationError::new(
            "args.window_end",
            "must be later than args.window_start",
        ));
    }
    Ok(())
}

/// A window bound in milliseconds: numbers below 10^11 are Unix seconds, larger ones milliseconds.
pub fn window_millis(value: u64) -> u64 {
    if value < 100_000_000_000 {
        value.saturating_mul(1000)
    } else {
        value
    }
}

struct Ctx<'a> {
    limits: &'a Limits,
    compile: bool,
}

impl Ctx<'_> {
    fn check_len(&self, field: &str, value: &str, limit: usize) -> Result<(), ValidationError> {
        check_len(field, value, limit)
    }

    /// Metric names, namespaces, units and label keys: `[a-zA-Z_][a-zA-Z0-9_]*`.
    fn check_name(&self, field: &str, name: &str, required: bool) -> Result<(), ValidationError> {
        check_prometheus_name(field, name, required, self.limits.max_name_len)
    }

    fn check_expression(
        &self,
        field: &str,
        source: &str,
        kind: ExprKind,
    ) -> Result<(), ValidationError> {
        if source.trim().is_empty() {
            return Err(ValidationError::new(field, "is an empty expression"));
        }
        self.check_len(field, source, self.limits.max_expression_len)?;
        if self.compile
            && let Err(err) = sonde_expr::compile(source, kind)
        {
            return Err(ValidationError {
                field: field.to_owned(),
                message: err.message().to_owned(),
                position: err.position().map(|p| Position {
                    line: p.line,
                    column: p.column,
                }),
            });
        }
        Ok(())
    }

    fn check_arg(&self, key: &str, value: &str) -> Result<(), ValidationError> {
        let field = format!("args.{key}");
        let int = |min: i64| -> Result<(), ValidationError> {
            match value.trim().parse::<i64>() {
                Ok(v) if v >= min => Ok(()),
                _ => Err(ValidationError::new(
                    &field,
                    format!("\"{value}\" is not an integer of at least {min}"),
                )),
            }
        };
        match key {
            "fire_count" => match value.trim().parse::<i64>() {
                Ok(-1) => Ok(()),
                Ok(v) if v >= 1 => Ok(()),
                _ => Err(ValidationError::new(
                    field,
                    format!(
                        "\"{value}\" is not a fire count: use a positive integer, or -1 for unlimited"
                    ),
                )),
            },
            "fire_period" => int(0),
            // Sonde's: a tracepoint's share of its process's CPU, and whether it may sample.
            "cpu_percent" => match value.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => Ok(()),
                _ => Err(ValidationError::new(
                    field,
                    format!("\"{value}\" is not a percentage above 0 and at most 100"),
                )),
            },
            "sampling" => match value.trim() {
                "auto" | "off" => Ok(()),
                _ => Err(ValidationError::new(
                    field,
                    format!("\"{value}\" is not a sampling mode: use \"auto\" or \"off\""),
                )),
            },
            "window_start" | "window_end" => int(0),
            // Sonde's: the upper bounds of the tracepoint's histogram buckets.
            "buckets" => check_buckets(&field, value),
            "condition" => {
                if value.trim().is_empty() {
                    Ok(())
                } else {
                    self.check_expression(&field, value, ExprKind::Condition)
                }
            }
            "log_msg" => {
                if value.is_empty() {
                    Ok(())
                } else {
                    self.check_expression(&field, value, ExprKind::Template)
                }
            }
            "snapshot" => match value {
                "collect" | "no_collect" => Ok(()),
                _ => Err(ValidationError::new(
                    field,
                    format!(
                        "\"{value}\" is not a snapshot mode: use \"collect\" or \"no_collect\""
                    ),
                )),
            },
            // `tag`: free text naming who made it (`sonde mcp` sets `mcp:<session>`).
            "method_name" | "span" | "stage" | "frame_type" | "stack_type" | "tag" => {
                self.check_len(&field, value, self.limits.max_name_len)
            }
            _ => Err(ValidationError::new(
                field,
                format!("unknown argument; known ones are {}", KNOWN_ARGS.join(", ")),
            )),
        }
    }

    fn check_labels(
        &self,
        metric_field: &str,
        kind: MetricType,
        labels: &[LabelExpression],
    ) -> Result<(), ValidationError> {
        let field = format!("{metric_field}.labelExpressions");
        if labels.len() > self.limits.max_labels {
            return Err(too_many(&field, labels.len(), self.limits.max_labels));
        }
        let mut keys = BTreeSet::new();
        for (i, label) in labels.iter().enumerate() {
            let field = format!("{field}[{i}]");
            self.check_name(&format!("{field}.key"), &label.key, true)?;
            if label.key.starts_with("__") {
                return Err(ValidationError::new(
                    format!("{field}.key"),
                    format!(
                        "\"{}\" starts with \"__\", which Prometheus reserves",
                        label.key
                    ),
                ));
            }
            let reserved = match kind {
                MetricType::Histogram => Some("le"),
                MetricType::Summary => Some("quantile"),
                _ => None,
            };
            if reserved == Some(label.key.as_str()) {
                return Err(ValidationError::new(
                    format!("{field}.key"),
                    format!("\"{}\" is reserved for this metric type", label.key),
                ));
            }
            if !keys.insert(label.key.as_str()) {
                return Err(ValidationError::new(
                    format!("{field}.key"),
                    format!("label \"{}\" appears twice", label.key),
                ));
            }
            match &label.value {
                None => {
                    return Err(ValidationError::new(
                        field,
                        "needs a value: \"expression\" or \"static\"",
                    ));
                }
                Some(label_expression::Value::Expression(expr)) => {
                    self.check_expression(&format!("{field}.expression"), expr, ExprKind::Label)?
                }
                Some(label_expression::Value::Static(value)) => {
                    self.check_static(&format!("{field}.static"), value)?
                }
            }
        }
        Ok(())
    }

    fn check_static(&self, field: &str, value: &AnyValue) -> Result<(), ValidationError> {
        match &value.value {
            Some(any_value::Value::StringValue(s)) => {
                self.check_len(field, s, self.limits.max_text_len)
            }
            Some(any_value::Value::BoolValue(_) | any_value::Value::IntValue(_)) => Ok(()),
            Some(any_value::Value::DoubleValue(d)) if d.is_finite() => Ok(()),
            Some(any_value::Value::DoubleValue(_)) => {
                Err(ValidationError::new(field, "must be a finite number"))
            }
            None => Err(ValidationError::new(field, "is empty")),
            Some(_) => Err(ValidationError::new(
                field,
                "must be a string, bool, int or double value (a label holds one value)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_proto::{common::KeyValue, tracepoint::Metric};

    fn base() -> TracePointConfig {
        TracePointConfig {
            path: "src/checkout.rs".into(),
            line_number: 42,
            ..Default::default()
        }
    }

    fn string(s: &str) -> Option<AnyValue> {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(s.into())),
        })
    }

    fn err(tp: &TracePointConfig) -> ValidationError {
        validate(tp, &Limits::default()).expect_err("should be refused")
    }

    #[test]
    fn a_minimal_tracepoint_passes() {
        validate(&base(), &Limits::default()).unwrap();
    }

    #[test]
    fn path_and_line_are_required() {
        let mut tp = base();
        tp.path.clear();
        assert_eq!(err(&tp).field, "path");
        let mut tp = base();
        tp.line_number = 0;
        assert_eq!(err(&tp).field, "lineNumber");
    }

    #[test]
    fn unknown_and_malformed_args_name_the_key() {
        for (key, value) in [
            ("fire_cnt", "1"),
            ("fire_count", "0"),
            ("fire_count", "many"),
            ("fire_period", "-5"),
            ("cpu_percent", "0"),
            ("cpu_percent", "101"),
            ("cpu_percent", "lots"),
            ("sampling", "sometimes"),
            ("buckets", ""),
            ("buckets", "1,x"),
            ("buckets", "1,inf"),
            ("buckets", "5,1"),
            ("snapshot", "sometimes"),
            ("window_start", "yesterday"),
        ] {
            let mut tp = base();
            tp.args.insert(key.into(), value.into());
            assert_eq!(err(&tp).field, format!("args.{key}"), "{key}={value}");
        }
        let mut tp = base();
        tp.args.insert("fire_count".into(), "-1".into());
        tp.args.insert("fire_period".into(), "0".into());
        tp.args.insert("snapshot".into(), "no_collect".into());
        tp.args.insert("cpu_percent".into(), "2.5".into());
        tp.args.insert("sampling".into(), "off".into());
        tp.args.insert("buckets".into(), "0.5, 1,5,1e3".into());
        validate(&tp, &Limits::default()).unwrap();
    }

    #[test]
    fn bad_buckets_name_the_bound_and_its_column() {
        let mut tp = base();
        tp.args.insert("buckets".into(), "1,5, 5,10".into());
        let e = err(&tp);
        assert_eq!(e.field, "args.buckets");
        assert!(
            e.message
                .starts_with("bound 3 (5) is not greater than bound 2"),
            "{}",
            e.message
        );
        assert_eq!(e.position, Some(Position { line: 1, column: 6 }));
        tp.args.insert("buckets".into(), "1,2,ten".into());
        let e = err(&tp);
        assert_eq!(e.message, "bound 3 (\"ten\") is not a finite number");
        assert_eq!(e.position, Some(Position { line: 1, column: 5 }));
    }

    #[test]
    fn window_end_must_follow_start_in_either_unit() {
        let mut tp = base();
        tp.args.insert("window_start".into(), "1700000000".into());
        tp.args.insert("window_end".into(), "1700000000000".into());
        assert_eq!(err(&tp).field, "args.window_end", "same instant, s vs ms");
        tp.args.insert("window_end".into(), "1700000001000".into());
        validate(&tp, &Limits::default()).unwrap();
    }

    #[test]
    fn illegal_metric_and_label_names_are_refused() {
        let metric = |name: &str| Metric {
            name: name.into(),
            ..Default::default()
        };
        let mut tp = base();
        tp.metrics.push(metric("9lives"));
        assert_eq!(err(&tp).field, "metrics[0].name");
        let mut tp = base();
        tp.metrics.push(metric("ok"));
        tp.metrics.push(metric("bad-name"));
        let e = err(&tp);
        assert_eq!(e.field, "metrics[1].name");
        assert!(e.message.contains("'-'"), "{}", e.message);

        let mut tp = base();
        let mut m = metric("latency");
        m.r#type = MetricType::Histogram as i32;
        m.label_expressions.push(LabelExpression {
            key: "le".into(),
            value: Some(label_expression::Value::Expression("x".into())),
        });
        tp.metrics.push(m);
        assert_eq!(err(&tp).field, "metrics[0].labelExpressions[0].key");
    }

    #[test]
    fn duplicate_exposed_names_are_refused() {
        let mut tp = base();
        tp.metrics.push(Metric {
            name: "x".into(),
            ..Default::default()
        });
        tp.metrics.push(Metric {
            name: "x".into(),
            namespace: Some("deep".into()),
            ..Default::default()
        });
        assert_eq!(err(&tp).field, "metrics[1].name");
    }

    #[test]
    fn targeting_values_must_be_strings() {
        let mut tp = base();
        tp.targeting.push(KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(3)),
            }),
        });
        assert_eq!(err(&tp).field, "targeting[0].value");
    }

    #[test]
    fn limits_are_enforced() {
        let mut tp = base();
        tp.watches = vec!["x".into(); 33];
        assert_eq!(err(&tp).field, "watches");
        let mut tp = base();
        tp.path = "a".repeat(1025);
        assert_eq!(err(&tp).field, "path");
    }

    #[test]
    fn exposed_names_follow_deep() {
        assert_eq!(exposed_name(None, "orders", None), "deep_orders");
        assert_eq!(
            exposed_name(Some("shop"), "latency", Some("seconds")),
            "shop_latency_seconds"
        );
        assert_eq!(exposed_name(Some(""), "x", Some("")), "deep_x");
    }

    #[test]
    fn foreign_language_targeting_is_detected() {
        let mut tp = base();
        assert!(!is_foreign(&tp));
        tp.targeting.push(KeyValue {
            key: LANGUAGE_ATTRIBUTE.into(),
            value: string("python"),
        });
        assert!(is_foreign(&tp));
        tp.targeting[0].value = string("Rust");
        assert!(!is_foreign(&tp));
    }
}
