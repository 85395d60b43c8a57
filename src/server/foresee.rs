//! [`foresee`]: what a created or edited tracepoint will meet in the live agents it targets,
//! told in the answer's `warnings` before any agent has tried (the change is stored whatever
//! they say: an agent that starts later may have the line).
//!
//! - how many agents it reaches, and a warning when it has no targeting and reaches the agents
//!   of several services;
//! - a line that is no probe site in the catalogs of agents that arm no lines natively (with the
//!   nearest probe lines);
//! - a name its expressions read that the probe site there does not capture, or a field of a
//!   captured value that its type does not have (where the agent knows the type's fields);
//! - for agents that arm lines natively, their own answer about the line (asked down their
//!   question stream): no code there (with the nearest lines that have some), or a name not in
//!   scope (with the names that are), or a variable that cannot be read at every address.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use sonde_expr::ExprKind;
use sonde_proto::{
    sonde::{LinesQuery, catalog_query::Query},
    tracepoint::{TracePointConfig, label_expression},
};

use super::{
    agents::{LiveAgent, placement_warnings},
    catalog,
};

/// How long a create waits for native agents' answers about the line.
const ASK_LIMIT: Duration = Duration::from_secs(2);

/// The warnings for `config` and the number of live agents it targets.
pub async fn foresee(config: &TracePointConfig, agents: &[LiveAgent]) -> (Vec<String>, u32) {
    let targeted: Vec<&LiveAgent> = agents
        .iter()
        .filter(|a| a.resource().matches(&config.targeting))
        .collect();
    let mut warnings = placement_warnings(config, agents);
    if config.targeting.is_empty() {
        let services: BTreeSet<&str> = targeted
            .iter()
            .filter_map(|a| a.view.resource.get("service.name").map(String::as_str))
            .collect();
        if services.len() > 1 {
            warnings.push(format!(
                "no targeting: this tracepoint reaches every agent of the tenant, of {} services \
                 ({}); target one with --service NAME (targeting service.name)",
                services.len(),
                services.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let reads = names_read(config);
    let (path, line) = (config.path.as_str(), config.line_number);
    // One question per binary: agents of one binary share a catalog.
    let mut seen = BTreeSet::new();
    let mut native = Vec::new();
    for a in &targeted {
        let Some(c) = &a.catalog else { continue };
        if !seen.insert(Arc::as_ptr(c) as usize) {
            continue;
        }
        if let Some(site) = c
            .sites
            .iter()
            .find(|s| s.line == line && sonde_proto::path_matches(path, &s.file))
        {
            let missing: Vec<&str> = reads
                .names
                .iter()
                .filter(|n| !site.names.iter().any(|have| have == *n))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                warnings.push(format!(
                    "the expressions read {}, which the probe site at {}:{} does not capture; \
                     it captures: {}",
                    quoted(&missing),
                    site.file,
                    site.line,
                    if site.names.is_empty() {
                        "nothing".to_owned()
                    } else {
                        site.names.join(", ")
                    }
                ));
            }
            for (root, field) in &reads.steps {
                if let Some(fields) = site.fields.get(root)
                    && !fields.contains(field)
                {
                    warnings.push(format!(
                        "`{root}.{field}`: the value `{root}` captured at {}:{} has no field \
                         {field:?}; its fields: {}",
                        site.file,
                        site.line,
                        fields.join(", ")
                    ));
                }
            }
        } else if c.native
            && let Some(asker) = &a.asker
        {
            native.push(asker.clone());
        }
    }
    let query = Query::Lines(LinesQuery {
        file: path.to_owned(),
        line,
    });
    let answers = futures_util::future::join_all(
        native
            .iter()
            .map(|asker| asker.ask(query.clone(), ASK_LIMIT)),
    )
    .await;
    for answer in answers {
        match answer {
            Ok(answer) => {
                let Ok(lines) = catalog::lines_from_wire(&answer) else {
                    continue;
                };
                let Some((_, vars)) = lines.iter().find(|(l, _)| *l == line) else {
                    continue;
                };
                let missing: Vec<&str> = reads
                    .names
                    .iter()
                    .filter(|n| !vars.iter().any(|v| v.name == **n))
                    .map(String::as_str)
                    .collect();
                if !missing.is_empty() {
                    let mut names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
                    names.sort_unstable();
                    warnings.push(format!(
                        "the expressions read {}, which {} not a variable in scope at \
                         {path}:{line}; in scope: {}",
                        quoted(&missing),
                        if missing.len() == 1 { "is" } else { "are" },
                        if names.is_empty() {
                            "nothing (is the binary built with debug = 2?)".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ));
                }
                for v in vars
                    .iter()
                    .filter(|v| !v.readable && reads.names.contains(&v.name))
                {
                    warnings.push(format!(
                        "`{}` cannot be read everywhere at {path}:{line} ({}){}",
                        v.name,
                        v.detail,
                        if v.readable_at.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "; it can be read at lines {}",
                                v.readable_at
                                    .iter()
                                    .map(u32::to_string)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }
                    ));
                }
            }
            // The agent's own words: no file, no code on the line (with the nearest lines).
            Err(message) if !message.starts_with("no answer") => {
                warnings.push(format!("{path}:{line}: {message}"));
            }
            Err(_) => {}
        }
    }
    warnings.dedup();
    (warnings, u32::try_from(targeted.len()).unwrap_or(u32::MAX))
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The root variable names every expression of `config` reads (condition, log template,
/// watches, metric values and labels), and the first step into each, each once. Expressions that do not compile read nothing
/// here (validation has refused them already).
fn names_read(config: &TracePointConfig) -> Reads {
    let mut sources: Vec<(&str, ExprKind)> = Vec::new();
    for (key, kind) in [
        ("condition", ExprKind::Condition),
        ("log_msg", ExprKind::Template),
    ] {
        if let Some(v) = config.args.get(key).filter(|v| !v.trim().is_empty()) {
            sources.push((v, kind));
        }
    }
    for w in &config.watches {
        sources.push((w, ExprKind::Any));
    }
    for m in &config.metrics {
        if let Some(e) = m.expression.as_deref().filter(|e| !e.trim().is_empty()) {
            sources.push((e, ExprKind::Value));
        }
        for l in &m.label_expressions {
            if let Some(label_expression::Value::Expression(e)) = &l.value {
                sources.push((e, ExprKind::Label));
            }
        }
    }
    let mut out = Reads::default();
    for (source, kind) in sources {
        if let Ok(expr) = sonde_expr::compile(source, kind) {
            for v in expr.variables() {
                if !out.names.contains(v) {
                    out.names.push(v.clone());
                }
            }
            for p in expr.paths() {
                if let Some(sonde_expr::Segment::Field(f)) = p.segments().first() {
                    let step = (p.root().to_owned(), f.clone());
                    if !out.steps.contains(&step) {
                        out.steps.push(step);
                    }
                }
            }
        }
    }
    out
}

/// What a tracepoint's expressions read: root names, and each first step into one
/// (`order.country` is `("order", "country")`).
#[derive(Default)]
struct Reads {
    names: Vec<String>,
    steps: Vec<(String, String)>,
}
