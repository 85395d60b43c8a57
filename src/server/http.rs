//! The HTTP API: Deep's tracepoint routes (what Deep's Grafana data source calls) and Sonde's own.
//!
//! | route | what |
//! |---|---|
//! | `GET /api/tracepoints` | Deep's poll over HTTP: the list for the resource in the query (`hash`, `ts`, other parameters are resource attributes) |
//! | `POST /api/tracepoints` | create: body `{"tracepoint": {...}}`, answer `{"tracepoint": {... "ID": ...}}`, plus `"warnings"` when the line is no probe site in the catalogs of the agents it targets; with `?dry_run=true` every check and warning, nothing stored or audited (the answer has no ID) |
//! | `GET /api/tracepoints/{id}` | one tracepoint |
//! | `PUT /api/tracepoints/{id}` | replace one tracepoint (edit); `?dry_run=true` as for create |
//! | `DELETE /api/tracepoints/{id}` | remove one; answers with what was removed |
//! | `GET /api/tracepoints/{id}/snapshots` | the latest snapshots agents sent for it |
//! | `GET /api/tracepoints/{id}/status` | what became of it in each live agent it targets (`bound`, `unbound`, `error`, `disarmed`, `pending`, `silent`) and the counts; `live`, its counters summed over agents, and `rates`, hits, fires and errors per second over the last five minutes |
//! | `GET /api/status` | those counts for every tracepoint |
//! | `GET /api/agents` | agents seen recently, with resource and per-tracepoint status; `view=summary`: counts per state and the first problems instead |
//! | `GET /`, `GET /console/{file}` | the web console (see `console`) |
//! | `GET /api/agents/{id}/sites` | the probe sites one agent reported (its catalog) |
//! | `GET /api/sites` | the probe sites of the live agents whose resource has every query parameter (`service.name=shop`), merged, with how many agents have each |
//! | `GET /api/audit` | the audit log, oldest first: `since`, `tracepoint`, `who`, `after` (the previous page's `next`), `limit` (1..1000, default 100); `tenant` (a name or `*`) for admin tokens only |
//! | `POST /api/sessions/{id}/metrics` | report a number for a session (an agent ID `GET /api/agents` lists): body `{"name", "value", "tags": ["key:value", "bare"]}`, answer `{"success": true}`; exposed on `/metrics` as gauge `sonde_adhoc_<name>` labelled `session`, `tenant`, the tag keys and `tags` (see `adhoc`). Unknown session: 404; a new series past 1000 per tenant: 409. Allowed with an API write token or an agent credential |
//! | `GET /healthz`, `GET /metrics` | liveness; the server's own Prometheus metrics |
//!
//! The tracepoint routes also exist without the `/api` prefix, as in Deep. Bodies and answers are
//! proto3 JSON, or binary protobuf with `Content-Type`/`Accept: application/protobuf`. The tenant
//! comes from `X-Scope-OrgID`. Errors are `{"error": {"code", "field", "message", "position"}}`.
//!
//! Roles: reads of tracepoints, their status, agents, sites and the audit log need `read`; create, edit and delete need
//! `write`; snapshots need `capture` (they hold production values); another tenant's audit log
//! needs `admin`. Refusals answer 401 (no or unknown token) or 403 naming the role lacking, and
//! are written to the audit log.
//!
//! Ad-hoc metrics are what agents (and scripts speaking for a session) report, so that route takes
//! either credential: whatever `Auth::api` allows to write or `Auth::agent` allows to speak as an
//! agent. It is therefore open exactly when the API is open or agents are (no agent credential
//! configured), as agents' status reports and snapshots are. A read token alone is refused (403).

use std::{collections::HashSet, convert::Infallible, net::IpAddr, sync::Arc, time::Instant};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{FromRequestParts, MatchedPath, Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use prost::Message as _;
use serde::Serialize;
use sonde_proto::{
    poll::{PollResponse, ResponseType},
    sonde::{CreateTracepointRequest, TracepointResponse},
    tracepoint::TracePointConfig,
};

use super::{
    App, DEFAULT_TENANT,
    adhoc::{self, CapReached},
    agents::{BindingSummary, Counters, Judge, LiveAgent},
    audit::{self, Actor, CLI_USER_AGENT, EntryView, Via},
    auth::{Caller, Denied, Refusal},
    catalog,
    foresee::foresee,
    grpc::poll_answer,
    net::PeerAddr,
    state::{ChangeError, Entry, Resource},
    store::AuditQuery,
    tenant_from,
    tokens::Role,
    validate::{Position, ValidationError},
};

mod lines;

/// The HTTP router.
pub(crate) fn router(app: Arc<App>) -> Router {
    let tracepoints = || {
        Router::new()
            .route("/tracepoints", get(poll_list).post(create))
            .route("/tracepoints/{id}", get(get_one).put(update).delete(delete))
            .route("/tracepoints/{id}/snapshots", get(snapshots))
    };
    Router::new()
        .nest(
            "/api",
            tracepoints()
                .route("/tracepoints/{id}/status", get(tracepoint_status))
                .route("/status", get(all_status))
                .route("/agents", get(agents))
                .route("/agents/{id}/sites", get(agent_sites))
                .route("/sites", get(sites))
                .route("/agents/{id}/files", get(lines::agent_files))
                .route("/files", get(lines::service_files))
                .route("/agents/{id}/lines", get(lines::agent_lines))
                .route("/lines", get(lines::service_lines))
                .route("/audit", get(audit_log))
                .route("/sessions/{id}/metrics", post(session_metric)),
        )
        .merge(tracepoints())
        .merge(super::console::routes())
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// An error answer: status plus `{"error": {...}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<Position>,
    /// On 403 for a role: the role the request needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    needs: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                code,
                field: None,
                message: message.into(),
                position: None,
                needs: None,
            },
        }
    }

    fn invalid(field: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message);
        e.body.field = Some(field.to_owned());
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Wrapper {
            error: ErrorBody,
        }
        (self.status, Json(Wrapper { error: self.body })).into_response()
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Unauthenticated => {
                let mut e = Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", d.to_string());
                e.body.message =
                    "missing or invalid credentials: send Authorization: Bearer <token>".into();
                e
            }
            Denied::Forbidden { needs, .. } => {
                let mut e = Self::new(StatusCode::FORBIDDEN, "permission_denied", d.to_string());
                e.body.needs = Some(needs.as_str());
                e
            }
            Denied::OtherTenant { .. } => {
                Self::new(StatusCode::FORBIDDEN, "permission_denied", d.to_string())
            }
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(v: ValidationError) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody {
                code: "invalid_argument",
                field: Some(v.field),
                message: v.message,
                position: v.position,
                needs: None,
            },
        }
    }
}

impl From<CapReached> for ApiError {
    fn from(err: CapReached) -> Self {
        Self::new(StatusCode::CONFLICT, "resource_exhausted", err.to_string())
    }
}

impl From<ChangeError> for ApiError {
    fn from(err: ChangeError) -> Self {
        match err {
            ChangeError::Invalid(v) => Self::from(v),
            ChangeError::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "not_found", err.to_string())
            }
            ChangeError::TenantFull { .. } => {
                Self::new(StatusCode::CONFLICT, "resource_exhausted", err.to_string())
            }
            ChangeError::Store(e) => {
                tracing::error!(%e, "store failure");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    e.to_string(),
                )
            }
        }
    }
}

/// The request's path as it arrived (nested routers see it without their prefix).
#[derive(Debug, Clone)]
struct FullPath(String);

/// What a handler needs to know about a request besides its body.
pub(crate) struct Meta {
    headers: HeaderMap,
    method: Method,
    path: String,
    peer: Option<IpAddr>,
}

impl<S: Send + Sync> FromRequestParts<S> for Meta {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self {
            headers: parts.headers.clone(),
            method: parts.method.clone(),
            path: parts
                .extensions
                .get::<FullPath>()
                .map(|p| p.0.clone())
                .unwrap_or_else(|| parts.uri.path().to_owned()),
            peer: parts.extensions.get::<PeerAddr>().map(|p| p.0.ip()),
        })
    }
}

impl Meta {
    fn via(&self) -> Via {
        if header_str(&self.headers, header::USER_AGENT)
            .is_some_and(|ua| ua.starts_with(CLI_USER_AGENT))
        {
            Via::Cli
        } else {
            Via::Http
        }
    }

    /// The tenant the request names (`X-Scope-OrgID`), `None` when it names none.
    fn requested_tenant(&self) -> Result<Option<String>, ApiError> {
        match header_str(&self.headers, "x-scope-orgid").map(str::trim) {
            None | Some("") => Ok(None),
            Some(t) => tenant_from(Some(t))
                .map(Some)
                .map_err(|e| ApiError::invalid("X-Scope-OrgID", e.to_string())),
        }
    }

    fn request_line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

struct Ctx {
    tenant: String,
    protobuf: bool,
    caller: Caller,
    actor: Actor,
}

impl Ctx {
    fn new(meta: &Meta, caller: Caller) -> Self {
        Self {
            tenant: caller.tenant.clone(),
            protobuf: header_str(&meta.headers, header::ACCEPT).is_some_and(is_protobuf),
            actor: Actor {
                who: caller.who.clone(),
                via: meta.via(),
                address: meta.peer,
            },
            caller,
        }
    }
}

/// Authenticates and authorises a request that needs `needs`; a refusal is written to the audit
/// log before it is answered.
async fn context(app: &Arc<App>, meta: &Meta, needs: Role) -> Result<Ctx, ApiError> {
    let requested = meta.requested_tenant()?;
    match app.auth.api(
        header_str(&meta.headers, header::AUTHORIZATION),
        requested.as_deref(),
        needs,
    ) {
        Ok(caller) => Ok(Ctx::new(meta, caller)),
        Err(refusal) => Err(refuse(app, meta, refusal).await),
    }
}

async fn refuse(app: &Arc<App>, meta: &Meta, refusal: Refusal) -> ApiError {
    app.audit_refusal(&refusal, meta.via(), meta.peer, meta.request_line())
        .await;
    refusal.denied.into()
}

/// As [`context`] for reports from agents: an API write token or an agent credential.
async fn report_context(app: &Arc<App>, meta: &Meta) -> Result<Ctx, ApiError> {
    let requested = meta.requested_tenant()?;
    let authorization = header_str(&meta.headers, header::AUTHORIZATION);
    match app
        .auth
        .api(authorization, requested.as_deref(), Role::Write)
    {
        Ok(caller) => Ok(Ctx::new(meta, caller)),
        Err(_) if app.auth.agent(authorization).is_ok() => Ok(Ctx::new(
            meta,
            Caller {
                who: "(agent)".into(),
                role: None,
                tenant: requested.unwrap_or_else(|| DEFAULT_TENANT.to_owned()),
            },
        )),
        Err(refusal) => Err(refuse(app, meta, refusal).await),
    }
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_protobuf(media: &str) -> bool {
    media.contains("application/protobuf") || media.contains("application/x-protobuf")
}

fn protobuf_response(message: &impl prost::Message) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/protobuf"),
        )],
        message.encode_to_vec(),
    )
        .into_response()
}

fn json_response(value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            .into_response(),
    }
}

fn tracepoint_response(ctx: &Ctx, entry: &Entry) -> Response {
    tracepoint_response_warning(ctx, entry, Vec::new(), 0)
}

fn tracepoint_response_warning(
    ctx: &Ctx,
    entry: &Entry,
    warnings: Vec<String>,
    agents: u32,
) -> Response {
    let resp = TracepointResponse {
        tracepoint: Some(entry.config.clone()),
        warnings,
        agents,
    };
    if ctx.protobuf {
        protobuf_response(&resp)
    } else {
        json_response(&resp)
    }
}

/// Reads the body within the configured limit (413 past it).
async fn read_body(app: &App, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = app.config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than the limit of {limit} bytes"),
        )
    };
    if header_str(headers, header::CONTENT_LENGTH)
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| len > limit)
    {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())
}

/// Reads the body within the configured limit and parses `{"tracepoint": {...}}` (JSON or
/// protobuf).
async fn read_tracepoint(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<TracePointConfig, ApiError> {
    let bytes = read_body(app, headers, body).await?;
    let request = if header_str(headers, header::CONTENT_TYPE).is_some_and(is_protobuf) {
        CreateTracepointRequest::decode(bytes).map_err(|e| {
            ApiError::invalid(
                "body",
                format!("not a valid protobuf CreateTracepointRequest: {e}"),
            )
        })?
    } else {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid(
                "body",
                "is empty: send {\"tracepoint\": {...}}",
            ));
        }
        serde_json::from_slice::<CreateTracepointRequest>(&bytes).map_err(|e| {
            ApiError::invalid("body", format!("not a valid tracepoint request: {e}"))
        })?
    };
    request
        .tracepoint
        .ok_or_else(|| ApiError::invalid("tracepoint", "is required: send {\"tracepoint\": {...}}"))
}

async fn blocking<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&App) -> Result<T, ChangeError> + Send + 'static,
) -> Result<T, ApiError> {
    let app2 = app.clone();
    let result = tokio::task::spawn_blocking(move || f(&app2))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(ApiError::from);
    app.refresh_gauges();
    result
}

async fn poll_list(
    State(app): State<Arc<App>>,
    meta: Meta,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let ctx = context(&app, &meta, Role::Read).await?;
    let mut hash = String::new();
    let mut attrs = Vec::new();
    for (key, value) in params {
        match key.as_str() {
            "hash" => hash = value,
            "ts" => {}
            _ => attrs.push((key, value)),
        }
    }
    let resource = Resource::from_pairs(attrs);
    let list = app.tracepoints.list(&ctx.tenant);
    let resp: PollResponse = poll_answer(&list, &resource, &hash);
    app.metrics
        .polls
        .with_label_values(&[
            "http",
            if resp.response.is_empty() && !hash.is_empty() {
                "no_change"
            } else {
                "update"
            },
        ])
        .inc();
    Ok(if ctx.protobuf {
        protobuf_response(&resp)
    } else {
        json_response(&poll_json(&resp))
    })
}

/// The poll answer as proto3 JSON, with `responseType` always present: NO_CHANGE is the enum's
/// default, which proto3 JSON leaves out, and a JSON reader should not have to infer it from an
/// absent field (an error body lacks it too).
fn poll_json(resp: &PollResponse) -> serde_json::Value {
    let mut json = serde_json::to_value(resp).unwrap_or_default();
    if let Some(obj) = json.as_object_mut() {
        let name = ResponseType::try_from(resp.response_type)
            .unwrap_or(ResponseType::NoChange)
            .as_str_name();
        obj.insert("responseType".into(), name.into());
    }
    json
}

/// Whether the query asks for a dry run (`dry_run=true`): every check of the change, its
/// warnings, and nothing stored or audited.
fn dry_run(params: &[(String, String)]) -> Result<bool, ApiError> {
    let mut dry = false;
    for (key, value) in params {
        if key == "dry_run" || key == "dryRun" {
            dry = match value.as_str() {
                "" | "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(ApiError::invalid(key, "is true or false")),
            };
        }
    }
    Ok(dry)
}

/// The answer to a dry run: what the change would store (a create's without an ID) and its
/// warnings, in the shape of the real answer.
fn dry_run_response(
    ctx: &Ctx,
    config: TracePointConfig,
    warnings: Vec<String>,
    agents: u32,
) -> Response {
    let resp = TracepointResponse {
        tracepoint: Some(config),
        warnings,
        agents,
    };
    if ctx.protobuf {
        protobuf_response(&resp)
    } else {
        json_response(&resp)
    }
}

async fn create(
    State(app): State<Arc<App>>,
    meta: Meta,
    Query(params): Query<Vec<(String, String)>>,
    body: Body,
) -> Result<Response, ApiError> {
    let ctx = context(&app, &meta, Role::Write).await?;
    let dry = dry_run(&params)?;
    let config = read_tracepoint(&app, &meta.headers, body).await?;
    if dry {
        app.tracepoints.check_create(&ctx.tenant, &config)?;
        let (warnings, agents) = foresee(&config, &app.agents.live_agents(&ctx.tenant)).await;
        return Ok(dry_run_response(&ctx, config, warnings, agents));
    }
    let tenant = ctx.tenant.clone();
    let actor = ctx.actor.clone();
    let entry = blocking(&app, move |app| {
        app.tracepoints.create(&tenant, config, &actor)
    })
    .await?;
    tracing::info!(tenant = %ctx.tenant, who = %ctx.actor.who, id = %entry.config.id, path = %entry.config.path,
        line = entry.config.line_number, "tracepoint created");
    let (warnings, agents) = foresee(&entry.config, &app.agents.live_agents(&ctx.tenant)).await;
    Ok(tracepoint_response_warning(&ctx, &entry, warnings, agents))
}

async fn get_one(
    State(app): State<Arc<App>>,
    meta: Meta,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ctx = context(&app, &meta, Role::Read).await?;
    let list = app.tracepoints.list(&ctx.tenant);
    let entry = list
        .get(&id)
        .ok_or_else(|| ApiError::from(ChangeError::NotFound(id.clone())))?;
    Ok(tracepoint_response(&ctx, entry))
}

async fn update(
    State(app): State<Arc<App>>,
    meta: Meta,
    Path(id): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    body: Body,
) -> Result<Response, ApiError> {
    let ctx = context(&app, &meta, Role::Write).await?;
    let dry = dry_run(&params)?;
    let mut config = read_tracepoint(&app, &meta.headers, body).await?;
    if dry {
        app.tracepoints.check_update(&ctx.tenant, &id, &config)?;
        config.id = id;
        let (warnings, agents) = foresee(&config, &app.agents.live_agents(&ctx.tenant)).await;
        return Ok(dry_run_response(&ctx, config, warnings, agents));
    }
    let tenant = ctx.tenant.clone();
    let id2 = id.clone();
    let actor = ctx.actor.clone();
    let entry = blocking(&app, move |app| {
        app.tracepoints.update(&tenant, &id2, config, &actor)
    })
    .await?;
    tracing::info!(tenant = %ctx.tenant, who = %ctx.actor.who, %id, "tracepoint edited");
    let (warnings, agents) = foresee(&entry.config, &app.agents.live_agents(&ctx.tenant)).await;
    Ok(tracepoint_response_warning(&ctx, &entry, warnings, agents))
}

async fn delete(
    State(app): State<Arc<App>>,
    meta: Meta,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ctx = context(&app, &meta, Role::Write).await?;
    let tenant = ctx.tenant.clone();
    let id2 = id.clone();
    let actor = ctx.actor.clone();
    let entry = blocking(&app, move |app| {
        app.tracepoints.delete(&tenant, &id2, &actor)
    })
    .await?;
    tracing::info!(tenant = %ctx.tenant, who = %ctx.actor.who, %id, "tracepoint deleted");
    Ok(tracepoint_response(&ctx, &entry))
}

async fn snapshots(
    State(app): State<Arc<App>>,
    meta: Meta,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ctx = context(&app, &meta, Role::Capture).await?;
    let snaps = app.snapshots.for_tracepoint(&ctx.tenant, &id);
    let list: Vec<_> = snaps.iter().map(|s| &**s).collect();
    #[derive(Serialize)]
    struct Snapshots<'a> {
        snapshots: Vec<&'a sonde_proto::tracepoint::Snapshot>,
    }
    Ok(json_response(&Snapshots { snapshots: list }))
}

/// Most problems (`unbound`, `error`, `disarmed` statuses) one agent lists in the summary view.
const MAX_PROBLEMS: usize = 20;

/// `GET /api/agents`: the tenant's live agents with every status they reported; with
/// `view=summary`, counts per state and their first problems instead of every status (what the
/// console shows: an agent holding a thousand tracepoints stays a few hundred bytes).
async fn agents(
    State(app): State<Arc<App>>,
    meta: Meta,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let ctx = context(&app, &meta, Role::Read).await?;
    let mut summary = false;
    for (key, value) in &params {
        match (key.as_str(), value.as_str()) {
            ("view", "summary") => summary = true,
            ("view", "full") => summary = false,
            ("view", _) => return Err(ApiError::invalid("view", "is full or summary")),
            _ => {}
        }
    }
    let agents = app.agents.list(&ctx.tenant);
    if !summary {
        #[derive(Serialize)]
        struct Agents {
            agents: Vec<super::agents::AgentView>,
        }
        return Ok(json_response(&Agents { agents }));
    }
    #[derive(Serialize, Default)]
    struct Counts {
        bound: usize,
        unbound: usize,
        error: usize,
        disarmed: usize,
    }
    #[derive(Serialize)]
    struct Problem {
        id: String,
        state: &'static str,
        message: String,
    }
    let out: Vec<serde_json::Value> = agents
        .into_iter()
        .map(|mut view| {
            let mut counts = Counts::default();
            let mut problems = Vec::new();
            for t in std::mem::take(&mut view.tracepoints).iter() {
                match t.state {
                    "bound" => counts.bound += 1,
                    "unbound" => counts.unbound += 1,
                    "disarmed" => counts.disarmed += 1,
                    _ => counts.error += 1,
                }
                if t.state != "bound" && problems.len() < MAX_PROBLEMS {
                    problems.push(Problem {
                        id: t.id.clone(),
                        state: t.state,
                        message: t.message.clone(),
                    });
                }
            }
            let mut json = serde_json::to_value(&view).unwrap_or_default();
            if let Some(obj) = json.as_object_mut() {
                obj.remove("tracepoints");
                obj.insert("counts".into(), serde_json::json!(counts));
                obj.insert("problems".into(), serde_json::json!(problems));
            }
            json
        })
        .collect();
    let json = serde_json::json!({ "agents": out });
    Ok(json_response(&json))
}

/// `GET /api/tracepoints/{id}/status`: what became of the tracepoint in each live agent it
/// targets.
async fn tracepoint_status(
    State(app): State<Arc<App>>,
    meta: Meta,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ctx = context(&app, &meta, Role::Read).await?;
    let list = app.tracepoints.list(&ctx.tenant);
    let entry = list
        .get(&id)
        .ok_or_else(|| ApiError::from(ChangeError::NotFound(id.clone())))?;
    let agents = app.agents.live_agents(&ctx.tenant);
    let bindings = Judge::new(&list, &agents).binding(entry);
    let mut live: Option<Counters> = None;
    for c in bindings.iter().filter_map(|b| b.counters.as_ref()) {
        live.get_or_insert_with(Counters::default).add(c);
    }
    Ok(json_response(&serde_json::json!({
        "tracepoint": id,
        "summary": BindingSummary::of(&bindings),
        "agents": bindings,
        "live": live,
        "rates": app.agents.rates(&ctx.tenant, &id),
    })))
}

/// `GET /api/status`: the binding counts of every tracepoint of the tenant.
async fn all_status(State(app): State<Arc<App>>, meta: Meta) -> Result<Response, ApiError> {
    let ctx = context(&app, &meta, Role::Read).await?;
    let list = app.tracepoints.list(&ctx.tenant);
    let agents = app.agents.live_agents(&ctx.tenant);
    let judge = Judge::new(&list, &agents);
    let summaries: std::collections::BTreeMap<&str, BindingSummary> = list
        .iter()
        .map(|e| e.config.id.as_str())
        .zip(judge.summaries(&list))
        .collect();
    Ok(json_response(
        &serde_json::json!({ "tracepoints": summaries }),
    ))
}

/// `GET /api/agents/{id}/sites`: one live agent's catalog.
async fn agent_sites(
    State(app): State<Arc<App>>,
    meta: Meta,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ctx = context(&app, &meta, Role::Read).await?;
    let agent = live_agent(&app, &ctx.tenant, &id)?;
    let empty = Vec::new();
    Ok(json_response(&serde_json::json!({
        "agent": id,
        "reported": agent.catalog.is_some(),
        "native": agent.catalog.as_ref().is_some_and(|c| c.native),
        "sites": agent.catalog.as_ref().map_or(&empty, |c| &c.sites),
    })))
}

/// The tenant's live agent `id`, or 404.
fn live_agent(app: &App, tenant: &str, id: &str) -> Result<LiveAgent, ApiError> {
    app.agents
        .live_agents(tenant)
        .into_iter()
        .find(|a| a.view.id == id)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no agent {id:?} in this tenant: GET /api/agents lists the live ones"),
            )
        })
}

/// The tenant's live agents whose resource has every parameter not named in `reserved`.
fn agents_with(
    app: &App,
    tenant: &str,
    params: &[(String, String)],
    reserved: &[&str],
) -> Vec<LiveAgent> {
    app.agents
        .live_agents(tenant)
        .into_iter()
        .filter(|a| {
            params
                .iter()
                .filter(|(k, _)| !reserved.contains(&k.as_str()))
                .all(|(k, v)| a.view.resource.get(k).is_some_and(|have| have == v))
        })
        .collect()
}

/// `GET /api/sites?KEY=VALUE...`: the merged catalogs of the live agents whose resource has every
/// parameter, counting the agents that have each site.
async fn sites(
    State(app): State<Arc<App>>,
    meta: Meta,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let ctx = context(&app, &meta, Role::Read).await?;
    let agents = agents_with(&app, &ctx.tenant, &params, &[]);
    let reporting = agents.iter().filter(|a| a.catalog.is_some()).count();
    let merged = catalog::merge(agents.iter().filter_map(|a| a.catalog.as_deref()));
    Ok(json_response(&serde_json::json!({
        "agents": agents.len(),
        "reporting": reporting,
        "sites": merged,
    })))
}

/// `POST /api/sessions/{id}/metrics`: sets the ad-hoc gauge a report names for a session of the
/// tenant. Bad input (400), an unknown session (404) or a full tenant (409) change nothing.
async fn session_metric(
    State(app): State<Arc<App>>,
    meta: Meta,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let ctx = report_context(&app, &meta).await?;
    let bytes = read_body(&app, &meta.headers, body).await?;
    if header_str(&meta.headers, header::CONTENT_TYPE).is_some_and(is_protobuf) {
        return Err(ApiError::invalid(
            "body",
            "ad-hoc metrics are JSON only: send Content-Type: application/json",
        ));
    }
    let sample = adhoc::parse(&bytes)?;
    let live: HashSet<String> = app
        .agents
        .list(&ctx.tenant)
        .into_iter()
        .map(|a| a.id)
        .collect();
    if !live.contains(&id) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no session {id:?} in this tenant: a session is an agent ID that GET /api/agents lists"
            ),
        ));
    }
    let name = sample.name.clone();
    app.adhoc.record(&ctx.tenant, &id, sample, &live)?;
    tracing::debug!(tenant = %ctx.tenant, session = %id, %name, "ad-hoc metric reported");
    Ok(json_response(&serde_json::json!({"success": true})))
}

/// Most entries one page of `GET /api/audit` holds.
const MAX_AUDIT_PAGE: usize = 1000;

/// `GET /api/audit`: the audit log of the caller's tenant (any tenant, or all with `*`, for
/// admins), oldest first, one page at a time.
async fn audit_log(
    State(app): State<Arc<App>>,
    meta: Meta,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let ctx = context(&app, &meta, Role::Read).await?;
    let mut query = AuditQuery {
        tenant: Some(ctx.tenant.clone()),
        limit: 100,
        ..AuditQuery::default()
    };
    let mut asked_tenant = None;
    for (key, value) in params {
        let nonempty = || Some(value.clone()).filter(|v| !v.is_empty());
        match key.as_str() {
            "since" => {
                query.since_ms = Some(
                    audit::parse_since(&value, audit::now_ms())
                        .map_err(|m| ApiError::invalid("since", m))?,
                )
            }
            "tracepoint" => query.tracepoint = nonempty(),
            "who" => query.who = nonempty(),
            "after" => {
                query.after_seq = Some(value.parse::<i64>().map_err(|_| {
                    ApiError::invalid("after", "is the `next` number of the previous page")
                })?)
            }
            "limit" => {
                query.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_AUDIT_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid("limit", format!("is 1 to {MAX_AUDIT_PAGE}"))
                    })?
            }
            "tenant" => asked_tenant = Some(value),
            other => {
                return Err(ApiError::invalid(
                    other,
                    "is not a parameter of /api/audit (since, tracepoint, who, after, limit, tenant)",
                ));
            }
        }
    }
    if let Some(asked) = asked_tenant.filter(|t| *t != ctx.tenant) {
        if !ctx.caller.is_admin() {
            let refusal = Refusal {
                denied: Denied::Forbidden {
                    who: ctx.caller.who.clone(),
                    role: ctx.caller.role.unwrap_or(Role::Read),
                    needs: Role::Admin,
                },
                who: ctx.caller.who.clone(),
                tenant: if asked == "*" {
                    ctx.tenant.clone()
                } else {
                    asked
                },
            };
            return Err(refuse(&app, &meta, refusal).await);
        }
        query.tenant = if asked == "*" {
            None
        } else {
            Some(
                tenant_from(Some(&asked))
                    .map_err(|e| ApiError::invalid("tenant", e.to_string()))?,
            )
        };
    }
    let page = query.limit;
    query.limit += 1;
    let mut entries = blocking(&app, move |app| {
        Ok(app.tracepoints.store().audit(&query)?)
    })
    .await?;
    let next = (entries.len() > page).then(|| {
        entries.truncate(page);
        entries.last().map(|e| e.seq)
    });
    #[derive(Serialize)]
    struct Page {
        entries: Vec<EntryView>,
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<i64>,
    }
    Ok(json_response(&Page {
        entries: entries.into_iter().map(EntryView::from).collect(),
        next: next.flatten(),
    }))
}

async fn healthz() -> Response {
    json_response(&serde_json::json!({"status": "ok"}))
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.refresh_gauges();
    // Ad-hoc series go with their session (lock order: ad-hoc set, then agents; nothing takes
    // them the other way round).
    app.adhoc
        .prune(|tenant| app.agents.list(tenant).into_iter().map(|a| a.id).collect());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        app.metrics.render(),
    )
        .into_response()
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

async fn observe(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let path = FullPath(req.uri().path().to_owned());
    req.extensions_mut().insert(path);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    app.metrics
        .http_requests
        .with_label_values(&[route.as_str(), method.as_str(), resp.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    resp
}
