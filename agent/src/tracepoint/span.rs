//! [`SpanAction`]: the OpenTelemetry span a span point (`args.span`) records on a firing hit
//! (feature `opentelemetry`), through the global tracer provider's `sonde` tracer.
//!
//! - `line`: a span of the hit itself, opened and ended at the hit.
//! - `method`: a span of the enclosing function. At an `#[instrument]`ed function the
//!   tracepoint binds to the function's exit site (a tracepoint on the `fn` line moves there),
//!   which knows how long the call took (`elapsed`): the span starts at the call's entry and
//!   ends at its return. Where no exit is known (a bare `probe!` site, a native line) there is
//!   no return to wait for: the span is the line's, with `sonde.span.method_exit` = `false`.
//!
//! The span is named after the tracepoint (`args.method_name` when it has one, else its ID)
//! and carries `sonde.tracepoint.id`, `code.filepath`, `code.lineno`, and the tracepoint's
//! metric labels, evaluated at the hit, as attributes. Its parent is the current OpenTelemetry
//! context, so a span point inside a traced request joins that trace.

use std::time::{Duration, SystemTime};

use opentelemetry::{
    KeyValue,
    global::{self, BoxedTracer},
    trace::{Span as _, Tracer as _},
};
use sonde_expr::{Expr, Lookup, Value};

use super::{
    snapshot::Place,
    spec::{SpanKind, TracepointSpec},
};

/// Where a span attribute's value comes from, compiled.
pub(crate) enum SpanLabel {
    Static(String),
    Expr(Expr),
}

/// A span point's settings, resolved at install.
pub(crate) struct SpanAction {
    name: String,
    kind: SpanKind,
    tracer: BoxedTracer,
    attributes: Vec<KeyValue>,
    labels: Vec<(String, SpanLabel)>,
}

impl std::fmt::Debug for SpanAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanAction")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl SpanAction {
    /// For `spec`, with its metric labels compiled (`labels`: key and source).
    pub fn new(spec: &TracepointSpec, kind: SpanKind, labels: Vec<(String, SpanLabel)>) -> Self {
        let name = spec
            .reference
            .args
            .get("method_name")
            .filter(|m| !m.trim().is_empty())
            .cloned()
            .unwrap_or_else(|| spec.id.clone());
        Self {
            name,
            kind,
            tracer: global::tracer("sonde"),
            attributes: vec![
                KeyValue::new("sonde.tracepoint.id", spec.id.clone()),
                KeyValue::new("code.filepath", spec.path.clone()),
                KeyValue::new("code.lineno", i64::from(spec.line)),
            ],
            labels,
        }
    }

    /// Records the span of one hit.
    pub fn record<L: Lookup + ?Sized>(&self, vars: &L, place: Option<Place>) {
        let now = SystemTime::now();
        let mut attributes = self.attributes.clone();
        if let Some(place) = place {
            attributes.push(KeyValue::new("code.namespace", place.module));
        }
        for (key, label) in &self.labels {
            let mut out = String::new();
            let ok = match label {
                SpanLabel::Static(s) => {
                    out.push_str(s);
                    true
                }
                SpanLabel::Expr(e) => e.eval_label(vars, &mut out).is_ok(),
            };
            if ok {
                attributes.push(KeyValue::new(key.clone(), out));
            }
        }
        let mut start = now;
        if self.kind == SpanKind::Method {
            let elapsed = match vars.get("elapsed").as_deref() {
                Some(Value::Float(secs)) if secs.is_finite() && *secs >= 0.0 => {
                    Some(Duration::from_secs_f64(*secs))
                }
                _ => None,
            };
            attributes.push(KeyValue::new("sonde.span.method_exit", elapsed.is_some()));
            if let Some(elapsed) = elapsed {
                start = now.checked_sub(elapsed).unwrap_or(now);
            }
        }
        let mut span = self
            .tracer
            .span_builder(self.name.clone())
            .with_start_time(start)
            .with_attributes(attributes)
            .start(&self.tracer);
        span.end_with_timestamp(now);
    }
}
