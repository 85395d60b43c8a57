//! The gRPC face for agents and tools: Deep's `PollConfig/poll` and `SnapshotService/send`,
//! Sonde's `WatchService` (in [`watch`]), `StatusService`, `CatalogService` and
//! `TracepointService`.

mod watch;

use std::{pin::Pin, sync::Arc, time::Instant};

use futures_util::Stream;
use sonde_proto::{
    poll::{
        PollRequest, PollResponse, ResponseType,
        poll_config_server::{PollConfig, PollConfigServer},
    },
    sonde::{
        CatalogAnswer, CatalogQuery, CreateTracepointRequest, DeleteTracepointRequest,
        GetTracepointRequest, ListTracepointsRequest, ListTracepointsResponse, SiteCatalog,
        SiteCatalogResponse, StatusReport, StatusReportResponse, TracepointResponse,
        UpdateTracepointRequest,
        catalog_service_server::{CatalogService, CatalogServiceServer},
        status_service_server::{StatusService, StatusServiceServer},
        tracepoint_service_server::{TracepointService, TracepointServiceServer},
    },
    tracepoint::{
        Snapshot, SnapshotResponse,
        snapshot_service_server::{SnapshotService, SnapshotServiceServer},
    },
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, codec::CompressionEncoding, metadata::MetadataMap};

use super::{
    App,
    agents::{AgentKind, Agents},
    audit::{Actor, Via},
    auth::Denied,
    catalog::{Asker, Catalog},
    foresee::foresee,
    net::PeerAddr,
    state::{ChangeError, Resource, TenantList},
    tenant_from,
    tokens::Role,
};

/// Every gRPC service, as one router.
pub(crate) fn router(app: Arc<App>) -> axum::Router {
    let svc = Grpc::new(app);
    let gzip = CompressionEncoding::Gzip;
    tonic::service::Routes::new(
        PollConfigServer::new(svc.clone())
            .accept_compressed(gzip)
            .send_compressed(gzip),
    )
    .add_service(
        SnapshotServiceServer::new(svc.clone())
            .accept_compressed(gzip)
            .send_compressed(gzip),
    )
    .add_service(watch::WatchServer::new(svc.clone()))
    .add_service(StatusServiceServer::new(svc.clone()).accept_compressed(gzip))
    .add_service(CatalogServiceServer::new(svc.clone()).accept_compressed(gzip))
    .add_service(TracepointServiceServer::new(svc).accept_compressed(gzip))
    .prepare()
    .into_axum_router()
}

#[derive(Debug, Clone)]
struct Grpc {
    app: Arc<App>,
    /// The metrics every poll touches, with their labels resolved once (`with_label_values`
    /// hashes the labels and takes a lock on each call).
    poll_metrics: PollMetrics,
}

#[derive(Debug, Clone)]
struct PollMetrics {
    no_change: prometheus::IntCounter,
    update: prometheus::IntCounter,
    latency: prometheus::Histogram,
}

impl PollMetrics {
    fn new(app: &App) -> Self {
        let polls = |result| app.metrics.polls.with_label_values(&["grpc", result]);
        Self {
            no_change: polls("no_change"),
            update: polls("update"),
            latency: app.metrics.grpc_requests.with_label_values(&["poll"]),
        }
    }
}

fn denied(d: Denied) -> Status {
    match d {
        Denied::Unauthenticated => Status::unauthenticated(
            "missing or invalid credentials: send authorization: Bearer <token>",
        ),
        Denied::Forbidden { .. } | Denied::OtherTenant { .. } => {
            Status::permission_denied(d.to_string())
        }
    }
}

fn change_status(err: ChangeError) -> Status {
    match err {
        ChangeError::Invalid(e) => Status::invalid_argument(e.to_string()),
        ChangeError::NotFound(_) => Status::not_found(err.to_string()),
        ChangeError::TenantFull { .. } => Status::resource_exhausted(err.to_string()),
        ChangeError::Store(e) => {
            tracing::error!(%e, "store failure");
            Status::unavailable(e.to_string())
        }
    }
}

fn authorization(md: &MetadataMap) -> Option<&str> {
    md.get("authorization").and_then(|v| v.to_str().ok())
}

impl Grpc {
    fn new(app: Arc<App>) -> Self {
        let poll_metrics = PollMetrics::new(&app);
        Self { app, poll_metrics }
    }

    fn agent_context<T>(
        &self,
        req: &Request<T>,
    ) -> Result<(String, Option<std::net::IpAddr>), Status> {
        self.app
            .auth
            .agent(authorization(req.metadata()))
            .map_err(denied)?;
        let tenant = tenant_from(
            req.metadata()
                .get("x-scope-orgid")
                .and_then(|v| v.to_str().ok()),
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
        Ok((tenant, peer))
    }

    /// Authenticates and authorises an API call that needs `needs`: the tenant it acts in and
    /// who it is, for the audit log. A refusal is written to the audit log first.
    async fn api_context<T>(
        &self,
        req: &Request<T>,
        method: &str,
        needs: Role,
    ) -> Result<(String, Actor), Status> {
        let requested = match req
            .metadata()
            .get("x-scope-orgid")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
        {
            None | Some("") => None,
            Some(t) => {
                Some(tenant_from(Some(t)).map_err(|e| Status::invalid_argument(e.to_string()))?)
            }
        };
        let address = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
        match self
            .app
            .auth
            .api(authorization(req.metadata()), requested.as_deref(), needs)
        {
            Ok(caller) => Ok((
                caller.tenant,
                Actor {
                    who: caller.who,
                    via: Via::Grpc,
                    address,
                },
            )),
            Err(refusal) => {
                self.app
                    .audit_refusal(
                        &refusal,
                        Via::Grpc,
                        address,
                        format!("sonde.v1.TracepointService/{method}"),
                    )
                    .await;
                Err(denied(refusal.denied))
            }
        }
    }

    fn observe(&self, method: &str, started: Instant) {
        self.app
            .metrics
            .grpc_requests
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&App) -> Result<T, ChangeError> + Send + 'static,
    ) -> Result<T, Status> {
        let app = self.app.clone();
        let result = tokio::task::spawn_blocking(move || f(&app))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
            .map_err(change_status);
        self.app.refresh_gauges();
        result
    }
}

/// The poll answer for one client: UPDATE with the list unless `current_hash` is non-empty and
/// equal to the client's hash.
pub(crate) fn poll_answer(
    list: &TenantList,
    resource: &Resource,
    current_hash: &str,
) -> PollResponse {
    let ts_nanos = now_nanos();
    let hash = list.hash_for_client(resource);
    if !current_hash.is_empty() && current_hash == hash {
        return PollResponse {
            ts_nanos,
            current_hash: hash,
            response: Vec::new(),
            response_type: ResponseType::NoChange as i32,
        };
    }
    let (matching, hash) = list.for_client(resource);
    PollResponse {
        ts_nanos,
        current_hash: hash,
        response: matching.into_iter().map(|e| e.config.clone()).collect(),
        response_type: ResponseType::Update as i32,
    }
}

pub(crate) fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

#[tonic::async_trait]
impl PollConfig for Grpc {
    async fn poll(&self, req: Request<PollRequest>) -> Result<Response<PollResponse>, Status> {
        let started = Instant::now();
        let (tenant, peer) = self.agent_context(&req)?;
        let req = req.into_inner();
        let resource = req
            .resource
            .as_ref()
            .map(|r| Resource::from_attributes(&r.attributes))
            .unwrap_or_default();
        let list = self.app.tracepoints.list(&tenant);
        let resp = poll_answer(&list, &resource, &req.current_hash);
        let id = Agents::poller_id(&resource, peer);
        self.app.agents.seen(
            &tenant,
            &id,
            AgentKind::Poll,
            &resource,
            peer,
            &resp.current_hash,
        );
        let metrics = &self.poll_metrics;
        if resp.response_type == ResponseType::Update as i32 {
            metrics.update.inc();
        } else {
            metrics.no_change.inc();
        }
        metrics.latency.observe(started.elapsed().as_secs_f64());
        Ok(Response::new(resp))
    }
}

#[tonic::async_trait]
impl SnapshotService for Grpc {
    async fn send(&self, req: Request<Snapshot>) -> Result<Response<SnapshotResponse>, Status> {
        let started = Instant::now();
        let (tenant, _) = self.agent_context(&req)?;
        let snapshot = req.into_inner();
        if snapshot
            .tracepoint
            .as_ref()
            .is_none_or(|tp| tp.id.is_empty())
        {
            return Err(Status::invalid_argument(
                "tracepoint: a snapshot must name the tracepoint (tracepoint.ID) it was taken for",
            ));
        }
        self.app
            .metrics
            .snapshots
            .with_label_values(&[&tenant])
            .inc();
        self.app.snapshots.add(&tenant, snapshot);
        self.observe("send", started);
        Ok(Response::new(SnapshotResponse {}))
    }
}

#[tonic::async_trait]
impl StatusService for Grpc {
    async fn report(
        &self,
        req: Request<StatusReport>,
    ) -> Result<Response<StatusReportResponse>, Status> {
        let started = Instant::now();
        let (tenant, peer) = self.agent_context(&req)?;
        let report = req.into_inner();
        if report.agent_id.is_empty() || report.agent_id.len() > 128 {
            return Err(Status::invalid_argument(
                "agent_id: required, at most 128 characters",
            ));
        }
        self.app.agents.report(&tenant, &report, peer);
        self.app
            .metrics
            .status_reports
            .with_label_values(&[&tenant])
            .inc();
        self.observe("report", started);
        Ok(Response::new(StatusReportResponse {}))
    }

    async fn report_catalog(
        &self,
        req: Request<SiteCatalog>,
    ) -> Result<Response<SiteCatalogResponse>, Status> {
        let started = Instant::now();
        let (tenant, peer) = self.agent_context(&req)?;
        let wire = req.into_inner();
        if wire.agent_id.is_empty() || wire.agent_id.len() > 128 {
            return Err(Status::invalid_argument(
                "agent_id: required, at most 128 characters",
            ));
        }
        let catalog =
            Catalog::from_wire(&wire).map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::debug!(%tenant, agent = %wire.agent_id, sites = catalog.sites.len(),
            "probe-site catalog reported");
        self.app.agents.catalog(
            &tenant,
            &wire.agent_id,
            wire.resource.as_ref(),
            peer,
            catalog,
        );
        self.observe("report_catalog", started);
        Ok(Response::new(SiteCatalogResponse {}))
    }
}

#[tonic::async_trait]
impl TracepointService for Grpc {
    async fn create(
        &self,
        req: Request<CreateTracepointRequest>,
    ) -> Result<Response<TracepointResponse>, Status> {
        let (tenant, actor) = self.api_context(&req, "Create", Role::Write).await?;
        let tenant2 = tenant.clone();
        let config = req
            .into_inner()
            .tracepoint
            .ok_or_else(|| Status::invalid_argument("tracepoint: is required"))?;
        let entry = self
            .blocking(move |app| app.tracepoints.create(&tenant2, config, &actor))
            .await?;
        let (warnings, agents) =
            foresee(&entry.config, &self.app.agents.live_agents(&tenant)).await;
        Ok(Response::new(TracepointResponse {
            warnings,
            agents,
            tracepoint: Some(entry.config.clone()),
        }))
    }

    async fn get(
        &self,
        req: Request<GetTracepointRequest>,
    ) -> Result<Response<TracepointResponse>, Status> {
        let (tenant, _) = self.api_context(&req, "Get", Role::Read).await?;
        let id = req.into_inner().id;
        let list = self.app.tracepoints.list(&tenant);
        let entry = list
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("no tracepoint with ID {id}")))?;
        Ok(Response::new(TracepointResponse {
            tracepoint: Some(entry.config.clone()),
            warnings: Vec::new(),
            agents: 0,
        }))
    }

    async fn list(
        &self,
        req: Request<ListTracepointsRequest>,
    ) -> Result<Response<ListTracepointsResponse>, Status> {
        let (tenant, _) = self.api_context(&req, "List", Role::Read).await?;
        let list = self.app.tracepoints.list(&tenant);
        Ok(Response::new(ListTracepointsResponse {
            tracepoints: list.iter().map(|e| e.config.clone()).collect(),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateTracepointRequest>,
    ) -> Result<Response<TracepointResponse>, Status> {
        let (tenant, actor) = self.api_context(&req, "Update", Role::Write).await?;
        let tenant2 = tenant.clone();
        let config = req
            .into_inner()
            .tracepoint
            .ok_or_else(|| Status::invalid_argument("tracepoint: is required"))?;
        if config.id.is_empty() {
            return Err(Status::invalid_argument(
                "tracepoint.ID: names the tracepoint to edit and is required",
            ));
        }
        let id = config.id.clone();
        let entry = self
            .blocking(move |app| app.tracepoints.update(&tenant2, &id, config, &actor))
            .await?;
        let (warnings, agents) =
            foresee(&entry.config, &self.app.agents.live_agents(&tenant)).await;
        Ok(Response::new(TracepointResponse {
            warnings,
            agents,
            tracepoint: Some(entry.config.clone()),
        }))
    }

    async fn delete(
        &self,
        req: Request<DeleteTracepointRequest>,
    ) -> Result<Response<TracepointResponse>, Status> {
        let (tenant, actor) = self.api_context(&req, "Delete", Role::Write).await?;
        let id = req.into_inner().id;
        let entry = self
            .blocking(move |app| app.tracepoints.delete(&tenant, &id, &actor))
            .await?;
        Ok(Response::new(TracepointResponse {
            tracepoint: Some(entry.config.clone()),
            warnings: Vec::new(),
            agents: 0,
        }))
    }
}

/// Distinguishes question streams, so that a stream's end forgets only its own asker.
static STREAMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[tonic::async_trait]
impl CatalogService for Grpc {
    type ServeStream = Pin<Box<dyn Stream<Item = Result<CatalogQuery, Status>> + Send>>;

    /// Keeps an agent's question stream: registers an [`Asker`] for it, sends each question
    /// down the stream with a fresh ID and hands each answer to whoever asked.
    async fn serve(
        &self,
        req: Request<tonic::Streaming<CatalogAnswer>>,
    ) -> Result<Response<Self::ServeStream>, Status> {
        let (tenant, peer) = self.agent_context(&req)?;
        let mut answers = req.into_inner();
        let hello = answers
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before naming the agent"))?;
        if hello.agent_id.is_empty() || hello.agent_id.len() > 128 {
            return Err(Status::invalid_argument(
                "agent_id: required in the first message, at most 128 characters",
            ));
        }
        let stream = STREAMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (asker, mut questions) = Asker::new(stream);
        let agent = hello.agent_id;
        self.app
            .agents
            .asker(&tenant, &agent, hello.resource.as_ref(), peer, asker);
        tracing::debug!(%tenant, %agent, "agent serves catalog questions");
        let (tx, rx) = mpsc::channel(crate::server::catalog::ASK_QUEUE);
        let app = self.app.clone();
        tokio::spawn(async move {
            let mut waiting: std::collections::HashMap<
                u64,
                tokio::sync::oneshot::Sender<CatalogAnswer>,
            > = std::collections::HashMap::new();
            let mut next = 1u64;
            loop {
                tokio::select! {
                    question = questions.recv() => {
                        let Some((query, reply)) = question else { break };
                        let id = next;
                        next += 1;
                        waiting.retain(|_, r| !r.is_closed());
                        waiting.insert(id, reply);
                        if tx.send(Ok(CatalogQuery { id, query: Some(query) })).await.is_err() {
                            break;
                        }
                    }
                    answer = answers.message() => match answer {
                        Ok(Some(answer)) => {
                            if let Some(reply) = waiting.remove(&answer.id) {
                                let _ = reply.send(answer);
                            }
                        }
                        Ok(None) | Err(_) => break,
                    },
                }
            }
            app.agents.asker_gone(&tenant, &agent, stream);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
