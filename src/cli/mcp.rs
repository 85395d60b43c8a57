//! `sonde mcp`: the server's operations for AI assistants, over the Model Context Protocol (stdio
//! transport, with the official SDK `rmcp`). It talks to a `sonde server` over the HTTP API with a
//! token, as the CLI does, so every change it makes is validated, budgeted and audited like any
//! other (the audit log names the token).
//!
//! Safe by default: every tracepoint a session creates carries a TTL (`--ttl`, 15 minutes unless
//! set) and the tag `mcp:<session>` (its `tag` argument), so a forgotten one goes quiet by itself
//! and `sonde tracepoint list` shows who made it; `--read-only` offers only the reading tools.
//! Errors come back as tool errors the assistant can read (the field and the reason, as the API
//! gives them), never as a failed session.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use clap::Args;
use rmcp::{
    ServerHandler, ServiceExt,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{Implementation, ServerCapabilities, ServerConfig},
    tool, tool_handler, tool_router,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use sonde_proto::{
    common::KeyValue,
    tracepoint::{LabelExpression, Metric, MetricType, TracePointConfig, label_expression},
};

use super::{
    CliError, Client, ClientOpts, client::path_segment, parse_ttl, string_value, unix_secs, wait,
};

/// Arguments of `sonde mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    /// Offer only the reading tools (services, sites, lines, a tracepoint's summary, snapshots):
    /// the assistant cannot create or delete anything.
    #[arg(long)]
    pub read_only: bool,
    /// How long a tracepoint the assistant creates lives (`90s`, `15m`, `1h`; at most `24h`): it
    /// sets the tracepoint's `window_end`, after which agents stop recording it.
    #[arg(long, default_value = "15m", value_name = "DURATION")]
    pub ttl: String,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// The longest TTL a session may give its tracepoints.
const MAX_TTL_SECS: u64 = 24 * 3600;
/// The longest a create waits for the agents' reports.
const MAX_WAIT_SECS: u64 = 30;

/// Runs `sonde mcp` on stdin and stdout until the client closes them.
pub fn run(args: McpArgs) -> Result<(), CliError> {
    let ttl = parse_ttl(&args.ttl)?;
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return Err(CliError::usage(format!(
            "--ttl {}: must be between 1s and 24h",
            args.ttl
        )));
    }
    let client = Client::new(&args.client)?;
    let session = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let mut server = Sonde {
        client: Arc::new(client),
        session: session.clone(),
        ttl,
        created: Arc::new(Mutex::new(Vec::new())),
        tool_router: Sonde::tool_router(),
    };
    if args.read_only {
        for name in WRITING {
            server.tool_router.remove_route(name);
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::unavailable(format!("starting the runtime: {e}")))?;
    rt.block_on(async move {
        let running = server
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| CliError::unavailable(format!("MCP session {session}: {e}")))?;
        running
            .waiting()
            .await
            .map_err(|e| CliError::unavailable(format!("MCP session {session}: {e}")))?;
        Ok(())
    })
}

/// The tools that change something, left out by `--read-only`.
const WRITING: &[&str] = &["create_tracepoint", "delete_tracepoint"];

/// One MCP session's server.
#[derive(Clone)]
struct Sonde {
    client: Arc<Client>,
    /// Names this session in the tag of what it creates.
    session: String,
    ttl: u64,
    /// IDs of the tracepoints this session created.
    created: Arc<Mutex<Vec<String>>>,
    tool_router: ToolRouter<Self>,
}

/// A tool's answer: JSON text for the assistant, or an error it can read.
type Answer = Result<String, String>;

/// `value` as the tool's answer.
fn answer(value: &Value) -> Answer {
    serde_json::to_string_pretty(value).map_err(|e| e.to_string())
}

impl Sonde {
    /// Runs a blocking API call off the runtime's thread.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Client) -> Result<T, CliError> + Send + 'static,
    ) -> Result<T, String> {
        let client = self.client.clone();
        tokio::task::spawn_blocking(move || f(&client))
            .await
            .map_err(|e| format!("the call failed: {e}"))?
            .map_err(|e| e.message)
    }

    async fn get(&self, path: String) -> Answer {
        answer(&self.call(move |c| c.get_json(&path)).await?)
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
struct ServiceArgs {
    /// The service (`service.name` of its agents), as `list_services` names it.
    service: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct LinesArgs {
    /// The service (`service.name` of its agents).
    service: String,
    /// The file, as `list_files` or `list_sites` names it (`examples/shop.rs`).
    file: String,
    /// Only this line: its variables with their types, or why it has no code (with the nearest
    /// lines that have some).
    line: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct IdArgs {
    /// The tracepoint's ID, as `create_tracepoint` or `list_session_tracepoints` gave it.
    id: String,
}

/// What a tracepoint records on each hit of its line.
#[derive(Debug, Deserialize, JsonSchema)]
struct MetricArgs {
    /// `counter` (counts hits, or adds `value`), `gauge` (sets `value`), `histogram` or
    /// `summary` (observe `value`).
    #[serde(rename = "type")]
    kind: String,
    /// The metric's name (letters, digits, `_`): exposed as `deep_<name>` in the application's
    /// Prometheus registry.
    name: String,
    /// An expression over the line's variables for the value (`order.total`); a counter without
    /// one counts hits.
    value: Option<String>,
    /// Labels: name → expression over the line's variables (`{"country": "order.country"}`).
    /// Keep them few-valued: each distinct set is a series.
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    /// The value's unit, appended to the name (`seconds`, `bytes`).
    unit: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct CreateArgs {
    /// The service whose agents arm it (`service.name`).
    service: String,
    /// The file, as `list_sites`/`list_lines` name it (`examples/shop.rs`).
    file: String,
    /// The line: one `list_lines` lists (a probe site, or a line with code where native lines are
    /// on).
    line: u32,
    /// A metric to record on each hit (give this, or `log`, or both).
    metric: Option<MetricArgs>,
    /// A log line to write on each hit: text with `{expression}` holes (`charged {charged}`).
    log: Option<String>,
    /// Only hits where this expression is true (`order.total > 100`).
    condition: Option<String>,
    /// Seconds to wait for the agents to report whether they armed it (default 5, at most 30).
    wait_seconds: Option<u64>,
}

#[tool_router]
impl Sonde {
    /// Lists the services with live agents, and each agent.
    #[tool(
        description = "List the services whose agents are connected to Sonde, and each agent \
                       (ID, service, language, last seen, tracepoints it holds). Start here to \
                       find the service name the other tools take."
    )]
    async fn list_services(&self) -> Answer {
        let agents = self.call(|c| c.get_json("/api/agents")).await?;
        let mut services: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
        for a in agents["agents"].as_array().into_iter().flatten() {
            let r = &a["resource"];
            let service = r["service.name"].as_str().unwrap_or("(none)").to_owned();
            services.entry(service.clone()).or_default().push(json!({
                "id": a["id"],
                "service": service,
                "language": r["telemetry.sdk.language"],
                "version": r["service.version"],
                "last_seen_ms": a["last_seen_ms"],
                "watching": a["watching"],
                "tracepoints": a["tracepoints"].as_array().map_or(0, Vec::len),
            }));
        }
        answer(&json!({
            "services": services
                .iter()
                .map(|(name, agents)| json!({"name": name, "agents": agents.len()}))
                .collect::<Vec<_>>(),
            "agents": services.into_values().flatten().collect::<Vec<_>>(),
        }))
    }

    /// The probe sites of a service.
    #[tool(
        description = "List the probe sites of a service: FILE:LINE places compiled into the \
                       program with the variable names captured there (the cheapest places to \
                       put a tracepoint)."
    )]
    async fn list_sites(&self, Parameters(a): Parameters<ServiceArgs>) -> Answer {
        self.get(format!(
            "/api/sites?service.name={}",
            path_segment(&a.service)
        ))
        .await
    }

    /// The source files of a service.
    #[tool(
        description = "List the source files of a service where a tracepoint can go: those with \
                       probe sites, and, where its agents arm lines natively, every file of the \
                       application's own code."
    )]
    async fn list_files(&self, Parameters(a): Parameters<ServiceArgs>) -> Answer {
        self.get(format!(
            "/api/files?service.name={}",
            path_segment(&a.service)
        ))
        .await
    }

    /// The lines of a file, with the variables at each.
    #[tool(
        description = "List the lines of a file where a tracepoint can bind, with the variables \
                       in scope at each and whether each can be read there (`readable`; if not, \
                       `why`: optimized out, async state, ...). Expressions may only read readable \
                       variables. Give `line` for one line's variables with their types."
    )]
    async fn list_lines(&self, Parameters(a): Parameters<LinesArgs>) -> Answer {
        let mut path = format!(
            "/api/lines?service.name={}&file={}",
            path_segment(&a.service),
            path_segment(&a.file)
        );
        if let Some(line) = a.line {
            path.push_str(&format!("&line={line}"));
        }
        self.get(path).await
    }

    /// Creates a metric or log tracepoint, waits for the agents and says what each made of it.
    #[tool(
        description = "Create a tracepoint on a line of a service: a metric (counter, gauge, \
                          histogram, summary) and/or a log line, with an optional condition. \
                          Expressions read the line's variables (`order.total`, \
                          `order.items.len()`). It expires by itself after the session's TTL. \
                          Answers the ID, the server's warnings, and per agent `bound`, \
                          `unbound` or `error` with the agent's message."
    )]
    async fn create_tracepoint(&self, Parameters(a): Parameters<CreateArgs>) -> Answer {
        let tp = self.tracepoint(&a)?;
        let wait_for = Duration::from_secs(a.wait_seconds.unwrap_or(5).min(MAX_WAIT_SECS));
        let (stored, warnings, status) = self
            .call(move |c| {
                let (stored, warnings) = c.send_tracepoint("POST", "/api/tracepoints", &tp)?;
                let status = wait::wait(c, &stored.id, wait_for)?;
                Ok((stored, warnings, status))
            })
            .await?;
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stored.id.clone());
        answer(&json!({
            "id": stored.id,
            "expires_at_unix": stored.args.get("window_end"),
            "warnings": warnings,
            "summary": status["summary"],
            "agents": wait::lines(&status, wait_for),
        }))
    }

    /// A tracepoint's live summary and per-agent status.
    #[tool(
        description = "Read a tracepoint: its definition, what each agent made of it (bound, \
                       unbound, error and the message), and its live counters from the agents' \
                       reports (hits, fires, errors, last error, series). A counter without a \
                       value expression has counted `fires` hits."
    )]
    async fn read_tracepoint(&self, Parameters(a): Parameters<IdArgs>) -> Answer {
        let id = a.id;
        let (config, status) = self
            .call(move |c| {
                let config = c.get_json(&format!("/api/tracepoints/{}", path_segment(&id)))?;
                let status =
                    c.get_json(&format!("/api/tracepoints/{}/status", path_segment(&id)))?;
                Ok((config, status))
            })
            .await?;
        answer(&json!({
            "tracepoint": config["tracepoint"],
            "status": status,
        }))
    }

    /// A tracepoint's latest snapshots.
    #[tool(
        description = "Read the latest snapshots agents sent for a tracepoint (variables and \
                       stack at a hit). Needs a token with the `capture` role."
    )]
    async fn read_snapshots(&self, Parameters(a): Parameters<IdArgs>) -> Answer {
        self.get(format!(
            "/api/tracepoints/{}/snapshots",
            path_segment(&a.id)
        ))
        .await
    }

    /// Deletes a tracepoint.
    #[tool(
        description = "Delete a tracepoint: agents disarm its line within a second and its \
                       metrics disappear."
    )]
    async fn delete_tracepoint(&self, Parameters(a): Parameters<IdArgs>) -> Answer {
        let id = a.id.clone();
        let removed = self.call(move |c| c.delete_tracepoint(&id)).await?;
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|c| *c != a.id);
        answer(&json!({"deleted": removed.id}))
    }

    /// What this session created.
    #[tool(
        description = "List the tracepoints this session created that still exist, with their \
                       expiry."
    )]
    async fn list_session_tracepoints(&self) -> Answer {
        let tag = self.tag();
        let all = self.call(|c| c.list_tracepoints()).await?;
        let mine: Vec<Value> = all
            .iter()
            .filter(|tp| tp.args.get("tag") == Some(&tag))
            .map(|tp| {
                json!({
                    "id": tp.id,
                    "location": format!("{}:{}", tp.path, tp.line_number),
                    "metrics": tp.metrics.iter().map(|m| &m.name).collect::<Vec<_>>(),
                    "expires_at_unix": tp.args.get("window_end"),
                })
            })
            .collect();
        answer(&json!({"session": self.session, "tracepoints": mine}))
    }
}

impl Sonde {
    fn tag(&self) -> String {
        format!("mcp:{}", self.session)
    }

    /// The tracepoint `a` describes, with the session's TTL and tag.
    fn tracepoint(&self, a: &CreateArgs) -> Result<TracePointConfig, String> {
        if a.metric.is_none() && a.log.as_deref().is_none_or(str::is_empty) {
            return Err(
                "give `metric`, `log`, or both: a tracepoint that records nothing \
                        would only snapshot"
                    .into(),
            );
        }
        let mut tp = TracePointConfig {
            path: a.file.clone(),
            line_number: a.line,
            targeting: vec![KeyValue {
                key: "service.name".into(),
                value: Some(string_value(&a.service)),
            }],
            ..TracePointConfig::default()
        };
        tp.args.insert("tag".into(), self.tag());
        tp.args.insert(
            "window_end".into(),
            unix_secs().saturating_add(self.ttl).to_string(),
        );
        if let Some(c) = a.condition.as_deref().filter(|c| !c.is_empty()) {
            tp.args.insert("condition".into(), c.to_owned());
        }
        if let Some(l) = a.log.as_deref().filter(|l| !l.is_empty()) {
            tp.args.insert("log_msg".into(), l.to_owned());
        }
        if let Some(m) = &a.metric {
            let kind = match m.kind.to_ascii_lowercase().as_str() {
                "counter" => MetricType::Counter,
                "gauge" => MetricType::Gauge,
                "histogram" => MetricType::Histogram,
                "summary" => MetricType::Summary,
                other => {
                    return Err(format!(
                        "metric.type: {other:?} is not counter, gauge, histogram or summary"
                    ));
                }
            };
            tp.metrics.push(Metric {
                name: m.name.clone(),
                r#type: kind as i32,
                expression: m.value.clone(),
                unit: m.unit.clone(),
                label_expressions: m
                    .labels
                    .iter()
                    .map(|(k, v)| LabelExpression {
                        key: k.clone(),
                        value: Some(label_expression::Value::Expression(v.clone())),
                    })
                    .collect(),
                ..Metric::default()
            });
        }
        Ok(tp)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Sonde {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build());
        info.server_info = Implementation::new("sonde", env!("CARGO_PKG_VERSION"));
        info.instructions = Some(
            "Sonde puts metrics and log lines on lines of running programs without a redeploy. \
             Find the service (list_services), the file and line and the variables readable \
             there (list_files, list_sites, list_lines), create a tracepoint \
             (create_tracepoint; it expires by itself), let the program run, read its counters \
             (read_tracepoint), then delete it (delete_tracepoint)."
                .into(),
        );
        info
    }
}
