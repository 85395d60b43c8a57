//! How client commands print: aligned tables for people, the API's JSON for scripts.

use std::time::{SystemTime, UNIX_EPOCH};

use sonde_proto::tracepoint::{MetricType, TracePointConfig, label_expression};

use super::{ClientOpts, Output, attributes};

/// Prints rows under a header, columns padded to the widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub fn json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: {e}"),
    }
}

fn metric_type(t: i32) -> &'static str {
    match MetricType::try_from(t) {
        Ok(MetricType::Counter) => "counter",
        Ok(MetricType::Gauge) => "gauge",
        Ok(MetricType::Histogram) => "histogram",
        Ok(MetricType::Summary) => "summary",
        Err(_) => "?",
    }
}

fn metrics_cell(tp: &TracePointConfig) -> String {
    tp.metrics
        .iter()
        .map(|m| format!("{}:{}", metric_type(m.r#type), m.name))
        .collect::<Vec<_>>()
        .join(",")
}

fn targeting_cell(tp: &TracePointConfig) -> String {
    attributes(&tp.targeting)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The JSON of one tracepoint, with its binding status when there is one.
fn tracepoint_json(tp: &TracePointConfig, status: Option<&serde_json::Value>) -> serde_json::Value {
    let mut v = serde_json::json!({ "tracepoint": tp });
    if let Some(status) = status {
        v["status"] = status.clone();
    }
    v
}

/// After `add`: the ID alone in table mode (easy to capture in a script, also with `--wait`,
/// whose lines go to stderr), the JSON otherwise.
pub fn created(opts: &ClientOpts, tp: &TracePointConfig, status: Option<&serde_json::Value>) {
    match opts.output {
        Output::Json => json(&tracepoint_json(tp, status)),
        Output::Table => println!("{}", tp.id),
    }
}

/// A dry run the server accepted: the tracepoint as it would be stored (JSON), or a line saying
/// so on stderr (stdout stays empty, as there is no ID).
pub fn checked(opts: &ClientOpts, tp: &TracePointConfig) {
    match opts.output {
        Output::Json => json(&tracepoint_json(tp, None)),
        Output::Table => eprintln!(
            "ok: the server would accept the tracepoint at {}:{} (dry run: nothing stored)",
            tp.path, tp.line_number
        ),
    }
}

/// A binding summary (`GET /api/status`) as one cell: `3/4 bound, 1 error`.
pub fn status_cell(summary: &serde_json::Value) -> String {
    let n = |k: &str| summary[k].as_u64().unwrap_or(0);
    if n("agents") == 0 {
        return "no agents".into();
    }
    let mut out = format!("{}/{} bound", n("bound"), n("agents"));
    for state in ["error", "disarmed", "unbound", "pending", "silent"] {
        if n(state) > 0 {
            out.push_str(&format!(", {} {state}", n(state)));
        }
    }
    out
}

/// The probe sites (`GET /api/sites` or `GET /api/agents/{id}/sites`).
pub fn sites(opts: &ClientOpts, value: &serde_json::Value) {
    if opts.output == Output::Json {
        return json(value);
    }
    let total = value["agents"].as_u64();
    let rows: Vec<Vec<String>> = value["sites"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|site| {
            let mut row = vec![
                format!(
                    "{}:{}",
                    site["file"].as_str().unwrap_or_default(),
                    site["line"]
                ),
                site["kind"].as_str().unwrap_or_default().to_owned(),
            ];
            if let Some(total) = total {
                row.push(format!("{}/{total}", site["agents"].as_u64().unwrap_or(0)));
            }
            row.push(captures(site).join(", "));
            row
        })
        .collect();
    if total.is_some() {
        table(&["LOCATION", "KIND", "AGENTS", "CAPTURES"], &rows);
    } else {
        table(&["LOCATION", "KIND", "CAPTURES"], &rows);
    }
}

/// A probe site's captured names (of a site, or a line's `probe`), each followed by its value's
/// field names where the agent knows them: `order {country, items, total}`.
fn captures(site: &serde_json::Value) -> Vec<String> {
    site["names"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str())
        .map(|name| match site["fields"][name].as_array() {
            Some(fields) if !fields.is_empty() => {
                let fields: Vec<&str> = fields.iter().filter_map(|f| f.as_str()).collect();
                format!("{name} {{{}}}", fields.join(", "))
            }
            _ => name.to_owned(),
        })
        .collect()
}

/// `sonde files`.
pub fn files(opts: &ClientOpts, value: &serde_json::Value) {
    if opts.output == Output::Json {
        return json(value);
    }
    let total = value["agents"].as_u64().unwrap_or(0);
    let rows: Vec<Vec<String>> = value["files"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            vec![
                f["file"].as_str().unwrap_or_default().to_owned(),
                format!("{}/{total}", f["agents"].as_u64().unwrap_or(0)),
            ]
        })
        .collect();
    table(&["FILE", "AGENTS"], &rows);
}

/// `sonde lines`: one row per line; with `one_line`, one row per variable of that line.
pub fn lines(opts: &ClientOpts, value: &serde_json::Value, one_line: bool) {
    if opts.output == Output::Json {
        return json(value);
    }
    let total = value["agents"].as_u64().unwrap_or(0);
    let lines = value["lines"].as_array().map_or(&[][..], Vec::as_slice);
    let kind = |l: &serde_json::Value| match (
        !l["probe"].is_null(),
        l["native"].as_bool() == Some(true),
    ) {
        (true, true) => "probe, native",
        (true, false) => "probe",
        _ => "native",
    };
    if one_line {
        for l in lines {
            println!(
                "{}:{}  {}  agents {}/{total}",
                value["file"].as_str().unwrap_or_default(),
                l["line"],
                kind(l),
                l["agents"].as_u64().unwrap_or(0)
            );
            if l["probe"]["names"].is_array() {
                println!("probe site captures: {}", captures(&l["probe"]).join(", "));
            }
            let rows: Vec<Vec<String>> = l["variables"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    let readable = if v["readable"].as_bool() == Some(true) {
                        "yes".to_owned()
                    } else {
                        "no".to_owned()
                    };
                    let mut why = v["why"].as_str().unwrap_or_default().to_owned();
                    if let Some(detail) = v["detail"].as_str() {
                        why = format!("{why}: {detail}");
                    }
                    if let Some(at) = v["readable_at"].as_array() {
                        let at: Vec<String> = at.iter().map(ToString::to_string).collect();
                        why = format!("{why}; readable at line(s) {}", at.join(", "));
                    }
                    vec![
                        v["name"].as_str().unwrap_or_default().to_owned(),
                        v["type"].as_str().unwrap_or("?").to_owned(),
                        readable,
                        why,
                    ]
                })
                .collect();
            if !rows.is_empty() {
                table(&["VARIABLE", "TYPE", "READABLE", "WHY NOT"], &rows);
            }
        }
        return;
    }
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            let mut vars: Vec<String> = l["variables"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    let name = v["name"].as_str().unwrap_or_default();
                    match (v["readable"].as_bool(), v["why"].as_str()) {
                        (Some(true), None) => name.to_owned(),
                        (Some(true), Some(why)) => format!("{name} ({why})"),
                        (_, why) => format!("{name} (not readable: {})", why.unwrap_or("?")),
                    }
                })
                .collect();
            if vars.is_empty() {
                vars = captures(&l["probe"]);
            }
            vec![
                l["line"].to_string(),
                kind(l).to_owned(),
                format!("{}/{total}", l["agents"].as_u64().unwrap_or(0)),
                vars.join(", "),
            ]
        })
        .collect();
    table(&["LINE", "KIND", "AGENTS", "VARIABLES"], &rows);
}

/// After `rm`.
pub fn removed(opts: &ClientOpts, tp: &TracePointConfig) {
    match opts.output {
        Output::Json => json(&serde_json::json!({ "tracepoint": tp })),
        Output::Table => println!("removed {} ({}:{})", tp.id, tp.path, tp.line_number),
    }
}

/// After `rm -o json`: `{"tracepoint": ...}` for one ID (the API's answer), an array of those
/// for several (those removed; the others are errors on stderr).
pub fn removed_json(removed: &[TracePointConfig], several: bool) {
    let docs: Vec<serde_json::Value> = removed
        .iter()
        .map(|tp| serde_json::json!({ "tracepoint": tp }))
        .collect();
    match (several, docs.as_slice()) {
        (false, [one]) => json(one),
        (false, []) => {}
        _ => json(&docs),
    }
}

/// One tracepoint in full, with its status (`GET /api/tracepoints/{id}/status`) when given.
pub fn tracepoint(opts: &ClientOpts, tp: &TracePointConfig, status: Option<&serde_json::Value>) {
    if opts.output == Output::Json {
        return json(&tracepoint_json(tp, status));
    }
    println!("id:        {}", tp.id);
    println!("location:  {}:{}", tp.path, tp.line_number);
    if let Some(status) = status {
        println!("status:    {}", status_cell(&status["summary"]));
    }
    for (k, v) in &tp.args {
        println!("arg:       {k} = {v}");
    }
    for w in &tp.watches {
        println!("watch:     {w}");
    }
    let target = targeting_cell(tp);
    if !target.is_empty() {
        println!("targeting: {target}");
    }
    for m in &tp.metrics {
        println!(
            "metric:    {} {} = {}",
            metric_type(m.r#type),
            crate::server::exposed_name(m.namespace.as_deref(), &m.name, m.unit.as_deref()),
            m.expression
                .as_deref()
                .filter(|e| !e.is_empty())
                .unwrap_or("1")
        );
        for l in &m.label_expressions {
            let value = match &l.value {
                Some(label_expression::Value::Expression(e)) => e.clone(),
                Some(label_expression::Value::Static(v)) => format!(
                    "{:?}",
                    attributes(&[sonde_proto::common::KeyValue {
                        key: String::new(),
                        value: Some(v.clone())
                    }])
                    .into_values()
                    .next()
                    .unwrap_or_default()
                ),
                None => String::new(),
            };
            println!("  label:   {} = {value}", l.key);
        }
    }
}

/// The tracepoint list, with each one's binding counts (`GET /api/status`).
pub fn tracepoints(opts: &ClientOpts, list: &[TracePointConfig], status: &serde_json::Value) {
    if opts.output == Output::Json {
        return json(&serde_json::json!({ "tracepoints": list, "status": status["tracepoints"] }));
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|tp| {
            vec![
                tp.id.clone(),
                format!("{}:{}", tp.path, tp.line_number),
                metrics_cell(tp),
                tp.args.get("condition").cloned().unwrap_or_default(),
                targeting_cell(tp),
                status_cell(&status["tracepoints"][&tp.id]),
                expires_cell(tp),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "LOCATION",
            "METRICS",
            "CONDITION",
            "TARGETING",
            "STATUS",
            "EXPIRES",
        ],
        &rows,
    );
}

/// When the tracepoint's window ends (`args.window_end`: numbers below 10^11 are Unix seconds,
/// larger ones milliseconds): `in 59m`, `expired`, or empty when it never does.
fn expires_cell(tp: &TracePointConfig) -> String {
    let Some(end) = tp
        .args
        .get("window_end")
        .and_then(|v| v.trim().parse::<u64>().ok())
    else {
        return String::new();
    };
    if end == 0 {
        return String::new();
    }
    let end_ms = if end < 100_000_000_000 {
        end * 1000
    } else {
        end
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    if end_ms <= now {
        return "expired".to_owned();
    }
    let secs = (end_ms - now) / 1000;
    match secs {
        0..=59 => format!("in {secs}s"),
        60..=3599 => format!("in {}m", secs / 60),
        3600..=86_399 => format!("in {}h{:02}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("in {}d{:02}h", secs / 86_400, (secs % 86_400) / 3600),
    }
}

fn ago(ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

/// The agent list (`GET /api/agents`).
pub fn agents(opts: &ClientOpts, value: &serde_json::Value) {
    if opts.output == Output::Json {
        return json(value);
    }
    let empty = Vec::new();
    let agents = value
        .get("agents")
        .and_then(|a| a.as_array())
        .unwrap_or(&empty);
    let s = |v: &serde_json::Value, key: &str| {
        v.get(key).and_then(|x| x.as_str()).unwrap_or("").to_owned()
    };
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            let resource = a.get("resource").cloned().unwrap_or_default();
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            for t in a
                .get("tracepoints")
                .and_then(|t| t.as_array())
                .unwrap_or(&empty)
            {
                *counts.entry(s(t, "state")).or_default() += 1;
            }
            let status = counts
                .iter()
                .map(|(state, n)| format!("{n} {state}"))
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                s(a, "id"),
                s(a, "kind"),
                s(&resource, "service.name"),
                s(&resource, "service.version"),
                s(&resource, "telemetry.sdk.language"),
                s(a, "address"),
                ago(a.get("last_seen_ms").and_then(|m| m.as_u64()).unwrap_or(0)),
                status,
                s(&resource, "process.executable.build_id.gnu"),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "KIND",
            "SERVICE",
            "VERSION",
            "LANGUAGE",
            "ADDRESS",
            "LAST SEEN",
            "TRACEPOINTS",
            "BUILD ID",
        ],
        &rows,
    );
    // Then what each agent made of each tracepoint, with its message.
    let details: Vec<Vec<String>> = agents
        .iter()
        .flat_map(|a| {
            a.get("tracepoints")
                .and_then(|t| t.as_array())
                .unwrap_or(&empty)
                .iter()
                .map(|t| {
                    let sites: Vec<&str> = t["sites"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x.as_str())
                        .collect();
                    let message = [sites.join(", "), s(t, "message")]
                        .into_iter()
                        .filter(|m| !m.is_empty())
                        .collect::<Vec<_>>()
                        .join("; ");
                    vec![s(a, "id"), s(t, "id"), s(t, "state"), message]
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if !details.is_empty() {
        println!();
        table(
            &["AGENT", "TRACEPOINT", "STATE", "SITES / MESSAGE"],
            &details,
        );
    }
}

/// A page of the audit log (`GET /api/audit`); in table mode, where the next page starts goes to
/// stderr.
pub fn audit(opts: &ClientOpts, page: &serde_json::Value) {
    if opts.output == Output::Json {
        return json(page);
    }
    let empty = Vec::new();
    let s = |v: &serde_json::Value, key: &str| {
        v.get(key)
            .map(|x| match x {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            })
            .unwrap_or_default()
    };
    let location = |tp: Option<&serde_json::Value>| {
        tp.filter(|t| !t.is_null())
            .map(|t| format!("{}:{}", s(t, "path"), s(t, "lineNumber")))
    };
    let rows: Vec<Vec<String>> = page
        .get("entries")
        .and_then(|e| e.as_array())
        .unwrap_or(&empty)
        .iter()
        .map(|e| {
            let (before, after) = (location(e.get("before")), location(e.get("after")));
            let what = match (before, after) {
                (Some(b), Some(a)) if a != b => format!("{b} -> {a}"),
                (_, Some(a)) => a,
                (Some(b), None) => b,
                (None, None) => s(e, "detail"),
            };
            vec![
                s(e, "seq"),
                s(e, "time"),
                s(e, "tenant"),
                s(e, "who"),
                s(e, "via"),
                s(e, "address"),
                s(e, "action"),
                s(e, "tracepoint"),
                what,
            ]
        })
        .collect();
    table(
        &[
            "SEQ",
            "TIME",
            "TENANT",
            "WHO",
            "VIA",
            "ADDRESS",
            "ACTION",
            "TRACEPOINT",
            "WHAT",
        ],
        &rows,
    );
    if let Some(next) = page.get("next").and_then(|n| n.as_i64()) {
        eprintln!("more entries: add --after {next}");
    }
}
