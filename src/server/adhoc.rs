//! [`AdhocMetrics`]: numbers that scripts and jobs report for a session over HTTP
//! (`POST /api/sessions/{id}/metrics`), exposed on the server's own `GET /metrics`.
//!
//! A session is an agent instance the server knows: an ID that `GET /api/agents` lists for the
//! request's tenant (a poller's derived `poll-…` ID, a watcher's own `agent_id`).
//!
//! - **Kind**: a gauge holding the last value reported. Deep's wire documents nothing for this
//!   route, and "report a number" reads as "this is the number now".
//! - **Name**: `sonde_adhoc_<name>`. The server's own metrics are all `sonde_server_*` (this
//!   module's own count is `sonde_server_adhoc_series`), so no ad-hoc name can collide with them.
//! - **Labels**: `session` (the agent ID), `tenant`, one label per `key:value` tag (split at the
//!   first `:`), and the bare tags (no `:`) sorted, de-duplicated and joined with `,` into one
//!   `tags` label (absent when there are none). `session`, `tenant`, `tags`, `le`, `quantile` and
//!   `__*` may not be tag keys.
//! - **Series**: one per tenant, name, session and tag label set. A name may be reported with
//!   other tag keys over time (or by other sessions at once): those are further series of the
//!   same gauge family, which is valid exposition, so different label keys are never refused.
//!   Reporting the same label set again replaces the value.
//! - **Bounds**: at most [`MAX_SERIES_PER_TENANT`] series per tenant; a new series past that is
//!   refused ([`CapReached`], HTTP 409) while existing ones still update. Series belong to their
//!   session and go away when it is no longer listed (its agent stopped polling for the TTL):
//!   they are pruned before every scrape and before every report of the tenant.
//!
//! The series live in one collector registered once: the Prometheus registry pins the label
//! names of every metric name it ever registered for the life of the process, so registering
//! one vector per ad-hoc name would forbid reporting it later with other tags. The collector's
//! only descriptor is its fixed `sonde_server_adhoc_series` gauge; the ad-hoc families are built
//! at scrape time.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
};

use prometheus::{
    IntGauge,
    core::{Collector, Desc},
    proto::{self, MetricFamily, MetricType},
};
use serde_json::Value;

use super::validate::{ValidationError, check_len, check_prometheus_name};

/// What every ad-hoc metric name is prefixed with.
pub const PREFIX: &str = "sonde_adhoc_";
/// Distinct ad-hoc series one tenant may hold.
pub const MAX_SERIES_PER_TENANT: usize = 1000;
/// Tags on one report.
pub const MAX_TAGS: usize = 16;
/// Characters in the `name` (before the prefix) and in a tag key.
pub const MAX_NAME_LEN: usize = 128;
/// Characters in one tag (`key:value` or bare).
pub const MAX_TAG_LEN: usize = 256;
/// Label names a tag may not use: the ones this module sets, and those Prometheus gives a meaning
/// (`__*` is refused as well).
pub const RESERVED_KEYS: &[&str] = &["session", "tenant", "tags", "le", "quantile"];

const HELP: &str = "Ad-hoc value reported with POST /api/sessions/{id}/metrics (the last one).";

/// A validated report: the exposed name, the value, and the labels from the tags (sorted by key).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// `sonde_adhoc_<name>`.
    pub name: String,
    /// A finite number.
    pub value: f64,
    /// `key:value` tags and the joined bare tags, sorted by key.
    pub labels: Vec<(String, String)>,
}

/// Parses and checks a report body `{"name": ..., "value": ..., "tags": [...]}`. Errors name the
/// field (`body`, `name`, `value`, `tags`, `tags[2]`, or an unknown key).
pub fn parse(body: &[u8]) -> Result<Sample, ValidationError> {
    const SHAPE: &str =
        "send {\"name\": \"...\", \"value\": <number>, \"tags\": [\"key:value\", ...]}";
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ValidationError::new("body", format!("is empty: {SHAPE}")));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ValidationError::new("body", format!("is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ValidationError::new(
            "body",
            format!("is not a JSON object: {SHAPE}"),
        ));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "name" | "value" | "tags"))
    {
        return Err(ValidationError::new(
            unknown.as_str(),
            "is not a known field; known ones are name, value, tags",
        ));
    }

    let name = match fields.get("name") {
        None | Some(Value::Null) => return Err(ValidationError::new("name", "is required")),
        Some(Value::String(s)) => s,
        Some(_) => return Err(ValidationError::new("name", "must be a string")),
    };
    check_prometheus_name("name", name, true, MAX_NAME_LEN)?;

    let value = match fields.get("value") {
        None | Some(Value::Null) => return Err(ValidationError::new("value", "is required")),
        Some(Value::Number(n)) => n.as_f64().filter(|v| v.is_finite()).ok_or_else(|| {
            ValidationError::new("value", format!("{n} is not a finite 64-bit number"))
        })?,
        Some(other) => {
            return Err(ValidationError::new(
                "value",
                format!("must be a JSON number, not {other}"),
            ));
        }
    };

    let tags: &[Value] = match fields.get("tags") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(tags)) => tags,
        Some(_) => {
            return Err(ValidationError::new(
                "tags",
                "must be an array of strings (\"key:value\" or bare)",
            ));
        }
    };
    if tags.len() > MAX_TAGS {
        return Err(ValidationError::new(
            "tags",
            format!("has {} entries; the limit is {MAX_TAGS}", tags.len()),
        ));
    }
    let mut labels = BTreeMap::new();
    let mut bare = BTreeSet::new();
    for (i, tag) in tags.iter().enumerate() {
        let field = format!("tags[{i}]");
        let Value::String(tag) = tag else {
            return Err(ValidationError::new(field, "must be a string"));
        };
        if tag.is_empty() {
            return Err(ValidationError::new(field, "is empty"));
        }
        check_len(&field, tag, MAX_TAG_LEN)?;
        if tag.chars().any(char::is_control) {
            return Err(ValidationError::new(
                field,
                "must not contain control characters",
            ));
        }
        let Some((key, value)) = tag.split_once(':') else {
            if tag.contains(',') {
                return Err(ValidationError::new(
                    field,
                    format!(
                        "{tag:?}: a bare tag may not contain ',' (bare tags are joined with ',' into the \"tags\" label)"
                    ),
                ));
            }
            bare.insert(tag.as_str());
            continue;
        };
        if key.is_empty() {
            return Err(ValidationError::new(
                field,
                format!("{tag:?} has an empty key: use \"key:value\", or a bare tag without ':'"),
            ));
        }
        check_prometheus_name(&field, key, true, MAX_NAME_LEN)?;
        if key.starts_with("__") {
            return Err(ValidationError::new(
                field,
                format!("key \"{key}\" starts with \"__\", which Prometheus reserves"),
            ));
        }
        if RESERVED_KEYS.contains(&key) {
            return Err(ValidationError::new(
                field,
                format!(
                    "key \"{key}\" is reserved (reserved keys: {})",
                    RESERVED_KEYS.join(", ")
                ),
            ));
        }
        if value.is_empty() {
            return Err(ValidationError::new(
                field,
                format!("{tag:?} has an empty value: use \"key:value\", or a bare tag without ':'"),
            ));
        }
        if labels.insert(key, value).is_some() {
            return Err(ValidationError::new(
                field,
                format!("key \"{key}\" appears twice"),
            ));
        }
    }
    let joined = bare.into_iter().collect::<Vec<_>>().join(",");
    if !joined.is_empty() {
        labels.insert("tags", &joined);
    }
    Ok(Sample {
        name: format!("{PREFIX}{name}"),
        value,
        labels: labels
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    })
}

/// A new series was refused: the tenant holds [`MAX_SERIES_PER_TENANT`] already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "this tenant holds {limit} ad-hoc series already (the limit); report into an existing series, or wait until sessions that are gone are pruned"
)]
pub struct CapReached {
    /// The limit.
    pub limit: usize,
}

/// One series of a tenant: exposed name, session, tag labels (sorted by key).
type SeriesKey = (String, String, Vec<(String, String)>);

type ByTenant = HashMap<String, BTreeMap<SeriesKey, f64>>;

/// The ad-hoc series of every tenant; a [`Collector`] (clones share the series).
#[derive(Debug, Clone)]
pub struct AdhocMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_series_per_tenant: usize,
    series: Mutex<ByTenant>,
    /// `sonde_server_adhoc_series`: the collector's one fixed descriptor.
    count: IntGauge,
}

impl AdhocMetrics {
    /// An empty set holding at most `max_series_per_tenant` series per tenant.
    pub fn new(max_series_per_tenant: usize) -> Self {
        let count = IntGauge::new(
            "sonde_server_adhoc_series",
            "Ad-hoc series held (reported with POST /api/sessions/{id}/metrics), over all tenants.",
        )
        .expect("valid metric");
        Self {
            inner: Arc::new(Inner {
                max_series_per_tenant,
                series: Mutex::new(HashMap::new()),
                count,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ByTenant> {
        self.inner.series.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the series of `sample` for `session` of `tenant`, after dropping the tenant's series
    /// whose session is not in `live`. A new series past the cap is refused and changes nothing.
    pub fn record(
        &self,
        tenant: &str,
        session: &str,
        sample: Sample,
        live: &HashSet<String>,
    ) -> Result<(), CapReached> {
        let mut all = self.lock();
        let series = all.entry(tenant.to_owned()).or_default();
        series.retain(|(_, s, _), _| live.contains(s));
        let key = (sample.name, session.to_owned(), sample.labels);
        if let Some(value) = series.get_mut(&key) {
            *value = sample.value;
            return Ok(());
        }
        if series.len() >= self.inner.max_series_per_tenant {
            let limit = self.inner.max_series_per_tenant;
            if series.is_empty() {
                all.remove(tenant);
            }
            return Err(CapReached { limit });
        }
        series.insert(key, sample.value);
        Ok(())
    }

    /// Drops every series whose session `live_sessions(tenant)` does not list. The closure runs
    /// under this set's lock (so it must not call back into it).
    pub fn prune(&self, live_sessions: impl Fn(&str) -> HashSet<String>) {
        let mut all = self.lock();
        all.retain(|tenant, series| {
            let live = live_sessions(tenant);
            series.retain(|(_, s, _), _| live.contains(s));
            !series.is_empty()
        });
    }

    /// How many series are held, over all tenants.
    #[cfg(test)]
    fn series_count(&self) -> usize {
        self.lock().values().map(BTreeMap::len).sum()
    }
}

fn label(name: &str, value: &str) -> proto::LabelPair {
    let mut pair = proto::LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

impl Collector for AdhocMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.count.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let all = self.lock();
        let mut families: BTreeMap<&str, MetricFamily> = BTreeMap::new();
        let mut total = 0;
        for (tenant, series) in all.iter() {
            total += series.len();
            for ((name, session, tags), value) in series {
                let family = families.entry(name.as_str()).or_insert_with(|| {
                    let mut family = MetricFamily::default();
                    family.set_name(name.clone());
                    family.set_help(HELP.to_owned());
                    family.set_field_type(MetricType::GAUGE);
                    family
                });
                let mut labels: Vec<_> = tags.iter().map(|(k, v)| label(k, v)).collect();
                labels.push(label("session", session));
                labels.push(label("tenant", tenant));
                labels.sort_by(|a, b| a.name().cmp(b.name()));
                let mut gauge = proto::Gauge::default();
                gauge.set_value(*value);
                let mut metric = proto::Metric::default();
                metric.set_label(labels);
                metric.set_gauge(gauge);
                family.mut_metric().push(metric);
            }
        }
        self.inner.count.set(total as i64);
        let mut out = self.inner.count.collect();
        out.extend(families.into_values());
        out
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder as _, Registry, TextEncoder};

    use super::*;

    fn sample(body: &str) -> Sample {
        parse(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    fn field(body: &str) -> String {
        parse(body.as_bytes()).expect_err(body).field
    }

    fn live(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    fn render(m: &AdhocMetrics) -> String {
        let registry = Registry::new();
        registry.register(Box::new(m.clone())).unwrap();
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn tags_become_sorted_labels_and_bare_tags_one_label() {
        let s =
            sample(r#"{"name": "depth", "value": 2.5, "tags": ["z:1", "b", "a", "b", "k:v:w"]}"#);
        assert_eq!(s.name, "sonde_adhoc_depth");
        assert_eq!(s.value, 2.5);
        let labels: Vec<_> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(labels, ["k=v:w", "tags=a,b", "z=1"]);
        assert!(sample(r#"{"name": "x", "value": -1}"#).labels.is_empty());
    }

    #[test]
    fn bad_reports_name_the_field() {
        for (body, expected) in [
            ("", "body"),
            ("[1]", "body"),
            ("{", "body"),
            (r#"{"value": 1}"#, "name"),
            (r#"{"name": "a-b", "value": 1}"#, "name"),
            (r#"{"name": "x", "value": "1"}"#, "value"),
            (r#"{"name": "x"}"#, "value"),
            (r#"{"name": "x", "value": 1, "unit": "s"}"#, "unit"),
            (r#"{"name": "x", "value": 1, "tags": "a"}"#, "tags"),
            (r#"{"name": "x", "value": 1, "tags": ["a", 1]}"#, "tags[1]"),
            (
                r#"{"name": "x", "value": 1, "tags": ["session:s"]}"#,
                "tags[0]",
            ),
            (r#"{"name": "x", "value": 1, "tags": ["__a:s"]}"#, "tags[0]"),
            (
                r#"{"name": "x", "value": 1, "tags": ["a:1", "a:2"]}"#,
                "tags[1]",
            ),
            (r#"{"name": "x", "value": 1, "tags": ["a,b"]}"#, "tags[0]"),
        ] {
            assert_eq!(field(body), expected, "{body}");
        }
    }

    #[test]
    fn the_cap_refuses_new_series_only_and_gone_sessions_are_pruned() {
        let m = AdhocMetrics::new(2);
        let s = |tags: &str| sample(&format!(r#"{{"name": "x", "value": 1, "tags": [{tags}]}}"#));
        let l = live(&["a", "b"]);
        m.record("t", "a", s(r#""k:1""#), &l).unwrap();
        m.record("t", "a", s(r#""k:2""#), &l).unwrap();
        assert_eq!(
            m.record("t", "a", s(r#""k:3""#), &l),
            Err(CapReached { limit: 2 })
        );
        m.record("t", "a", s(r#""k:2""#), &l).unwrap();
        m.record("other", "a", s(r#""k:3""#), &l).unwrap();
        assert_eq!(m.series_count(), 3, "the cap is per tenant");
        m.record("t", "b", s(r#""k:3""#), &live(&["b"])).unwrap();
        assert_eq!(m.series_count(), 2, "a's series went with a");
        m.prune(|tenant| {
            if tenant == "t" {
                live(&[])
            } else {
                live(&["a"])
            }
        });
        assert_eq!(m.series_count(), 1);
    }

    #[test]
    fn one_family_holds_series_with_different_label_keys() {
        let m = AdhocMetrics::new(10);
        let l = live(&["s1", "s2"]);
        m.record(
            "t",
            "s1",
            sample(r#"{"name": "x", "value": 1, "tags": ["a:1"]}"#),
            &l,
        )
        .unwrap();
        m.record(
            "t",
            "s2",
            sample(r#"{"name": "x", "value": 2, "tags": ["b:2", "bare"]}"#),
            &l,
        )
        .unwrap();
        m.record("u", "s1", sample(r#"{"name": "x", "value": 3}"#), &l)
            .unwrap();
        let text = render(&m);
        assert_eq!(
            text.matches("# TYPE sonde_adhoc_x gauge\n").count(),
            1,
            "{text}"
        );
        for line in [
            "sonde_adhoc_x{a=\"1\",session=\"s1\",tenant=\"t\"} 1\n",
            "sonde_adhoc_x{b=\"2\",session=\"s2\",tags=\"bare\",tenant=\"t\"} 2\n",
            "sonde_adhoc_x{session=\"s1\",tenant=\"u\"} 3\n",
            "sonde_server_adhoc_series 3\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
