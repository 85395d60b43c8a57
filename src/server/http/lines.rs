//! The catalog's files and lines: `GET /api/agents/{id}/files`, `GET /api/files?KEY=VALUE`,
//! `GET /api/agents/{id}/lines?file=F[&line=N]` and `GET /api/lines?KEY=VALUE&file=F[&line=N]`.
//!
//! Probe sites come from the catalogs the agents reported; native lines are asked of the agents
//! themselves, down their `CatalogService/Serve` streams, when the request comes. Agents of one
//! binary report the same catalog (the server keeps one shared copy), so each group of agents
//! sharing a catalog is asked once, through the first of them that answers, and the answer counts
//! for all of them.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    extract::{Path, Query, State},
    response::Response,
};
use serde::Serialize;
use sonde_proto::sonde::{FilesQuery, LinesQuery, catalog_query::Query as Ask};

use super::{ApiError, App, Meta, agents_with, context, json_response, live_agent};
use crate::server::{
    agents::LiveAgent,
    catalog::{self, GroupLines},
    tokens::Role,
};

/// How long a request waits for an agent's answer.
const ASK_LIMIT: Duration = Duration::from_secs(10);
/// Agents of one group tried before giving up on it.
const TRIES: usize = 3;
/// Query parameters that are not resource attributes.
const RESERVED: &[&str] = &["file", "line", "all"];

/// An agent that could not answer.
#[derive(Debug, Serialize)]
struct AgentError {
    agent: String,
    message: String,
}

/// A file and how many agents have it.
#[derive(Debug, Serialize)]
struct FileView {
    file: String,
    agents: usize,
}

pub(super) async fn agent_files(
    State(app): State<Arc<App>>,
    meta: Meta,
    Path(id): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let ctx = context(&app, &meta, Role::Read).await?;
    let agent = live_agent(&app, &ctx.tenant, &id)?;
    files(vec![agent], &params).await
}

pub(super) async fn service_files(
    State(app): State<Arc<App>>,
    meta: Meta,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let ctx = context(&app, &meta, Role::Read).await?;
    files(agents_with(&app, &ctx.tenant, &params, RESERVED), &params).await
}

pub(super) async fn agent_lines(
    State(app): State<Arc<App>>,
    meta: Meta,
    Path(id): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let ctx = context(&app, &meta, Role::Read).await?;
    let agent = live_agent(&app, &ctx.tenant, &id)?;
    lines(vec![agent], &params).await
}

pub(super) async fn service_lines(
    State(app): State<Arc<App>>,
    meta: Meta,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let ctx = context(&app, &meta, Role::Read).await?;
    lines(agents_with(&app, &ctx.tenant, &params, RESERVED), &params).await
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Groups of agents sharing a catalog (one binary), in a stable order.
fn groups(agents: &[LiveAgent]) -> Vec<Vec<&LiveAgent>> {
    let mut by_catalog: BTreeMap<usize, Vec<&LiveAgent>> = BTreeMap::new();
    for a in agents {
        if let Some(c) = &a.catalog {
            by_catalog
                .entry(Arc::as_ptr(c) as usize)
                .or_default()
                .push(a);
        }
    }
    let mut out: Vec<Vec<&LiveAgent>> = by_catalog.into_values().collect();
    out.sort_by(|a, b| a[0].view.id.cmp(&b[0].view.id));
    out
}

/// Asks a group through the first agents with a question stream, until one answers.
async fn ask_group(
    group: &[&LiveAgent],
    query: Ask,
) -> Option<Result<sonde_proto::sonde::CatalogAnswer, AgentError>> {
    let mut last = None;
    for agent in group.iter().filter(|a| a.asker.is_some()).take(TRIES) {
        let asker = agent.asker.as_ref()?;
        match asker.ask(query.clone(), ASK_LIMIT).await {
            Ok(answer) => return Some(Ok(answer)),
            Err(message) => {
                let no_such = message.starts_with("no file matching")
                    || message.contains("has no code in this build");
                last = Some(Err(AgentError {
                    agent: agent.view.id.clone(),
                    message,
                }));
                if no_such {
                    break; // the binary does not have it: another agent of it will not either
                }
            }
        }
    }
    last
}

async fn files(agents: Vec<LiveAgent>, params: &[(String, String)]) -> Result<Response, ApiError> {
    let all = param(params, "all").is_some_and(|v| v == "true" || v == "1");
    let groups = groups(&agents);
    let answers = futures_util::future::join_all(
        groups
            .iter()
            .map(|g| ask_group(g, Ask::Files(FilesQuery { all }))),
    )
    .await;
    let mut files: BTreeMap<String, usize> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut asked = 0;
    for (group, answer) in groups.iter().zip(answers) {
        let mut have: Vec<String> = group[0]
            .catalog
            .as_ref()
            .map(|c| c.sites.iter().map(|s| s.file.clone()).collect())
            .unwrap_or_default();
        match answer {
            Some(Ok(answer)) => {
                asked += 1;
                match catalog::files_from_wire(&answer) {
                    Ok(native) => have.extend(native),
                    Err(e) => errors.push(AgentError {
                        agent: group[0].view.id.clone(),
                        message: format!("a malformed answer: {e}"),
                    }),
                }
            }
            Some(Err(e)) => errors.push(e),
            None => {}
        }
        have.sort();
        have.dedup();
        for f in have {
            *files.entry(f).or_default() += group.len();
        }
    }
    Ok(json_response(&serde_json::json!({
        "agents": agents.len(),
        "reporting": groups.iter().map(Vec::len).sum::<usize>(),
        "asked": asked,
        "files": files
            .into_iter()
            .map(|(file, agents)| FileView { file, agents })
            .collect::<Vec<_>>(),
        "errors": errors,
    })))
}

async fn lines(agents: Vec<LiveAgent>, params: &[(String, String)]) -> Result<Response, ApiError> {
    let Some(file) = param(params, "file").filter(|f| !f.is_empty() && f.len() <= 1024) else {
        return Err(ApiError::invalid(
            "file",
            "required: the file, as a tracepoint's path names it (1 to 1024 bytes)",
        ));
    };
    let line = match param(params, "line") {
        None => None,
        Some(l) => Some(l.parse::<u32>().ok().filter(|&l| l > 0).ok_or_else(|| {
            ApiError::invalid("line", format!("{l:?} is not a line number (1 or more)"))
        })?),
    };
    let groups = groups(&agents);
    let query = Ask::Lines(LinesQuery {
        file: file.to_owned(),
        line: line.unwrap_or(0),
    });
    let answers = futures_util::future::join_all(
        groups
            .iter()
            .filter(|g| g[0].catalog.as_ref().is_some_and(|c| c.native))
            .map(|g| ask_group(g, query.clone())),
    )
    .await;
    let mut answers = answers.into_iter();
    let mut errors = Vec::new();
    let mut asked = 0;
    let mut merged_input = Vec::with_capacity(groups.len());
    for group in &groups {
        let catalog = group[0].catalog.as_ref().expect("grouped by catalog");
        let probes: Vec<&catalog::SiteView> = catalog
            .sites
            .iter()
            .filter(|s| sonde_proto::path_matches(file, &s.file))
            .filter(|s| line.is_none_or(|l| s.line == l))
            .collect();
        let native = if catalog.native {
            match answers.next().flatten() {
                Some(Ok(answer)) => {
                    asked += 1;
                    match catalog::lines_from_wire(&answer) {
                        Ok(lines) => Some(lines),
                        Err(e) => {
                            errors.push(AgentError {
                                agent: group[0].view.id.clone(),
                                message: format!("a malformed answer: {e}"),
                            });
                            None
                        }
                    }
                }
                Some(Err(e)) => {
                    errors.push(e);
                    None
                }
                None => None,
            }
        } else {
            None
        };
        merged_input.push(GroupLines {
            agents: group.len(),
            probes,
            native,
        });
    }
    let merged = catalog::merge_lines(&merged_input);
    Ok(json_response(&serde_json::json!({
        "file": file,
        "agents": agents.len(),
        "reporting": groups.iter().map(Vec::len).sum::<usize>(),
        "asked": asked,
        "lines": merged,
        "errors": errors,
    })))
}
