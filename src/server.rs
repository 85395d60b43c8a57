//! [`Server`]: the control plane. gRPC for agents on one port, HTTP for people and tools on
//! another, both over the same in-memory tracepoint lists backed by the durable store.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use sonde::server::{Server, ServerConfig};
//!
//! let server = Server::bind(ServerConfig::ephemeral("/tmp/sonde-data")).await?;
//! println!("grpc on {}, http on {}", server.grpc_addr(), server.http_addr());
//! let running = server.spawn();
//! // ...
//! running.shutdown().await?;
//! # Ok(())
//! # }
//! ```

mod adhoc;
mod agents;
mod audit;
mod auth;
mod catalog;
mod config;
mod foresee;
mod grpc;
mod http;
mod metrics;
mod net;
mod replicas;
mod snapshots;
mod state;
mod store;
mod tokens;
mod validate;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

pub use agents::{AgentKind, AgentView, Binding, BindingSummary, TracepointStatusView};
pub use audit::{Actor, Via, parse_since, rfc3339};
pub use auth::TokensError;
pub use catalog::{Catalog, MergedSite, SiteView};
pub use config::{LogFormat, ServerConfig};
pub use state::{DEFAULT_TENANT, Resource};
pub use store::{
    AuditEntry, AuditQuery, AuditRecord, Change, PgStore, SharedAgent, SqliteStore, Store,
    StoreError, StoredRecord, Written,
};
pub use tokens::{BadToken, Role, SecretHash, random as random_bytes};

/// Parses one tokens-file line (`NAME:ROLE[@TENANT]:SECRET`, SECRET possibly `hash:...`) as the
/// server does; the error names the field.
pub fn parse_token_line(line: &str) -> Result<(), BadToken> {
    tokens::parse_token(line, true).map(drop)
}
pub use validate::{
    KNOWN_ARGS, LANGUAGE_ATTRIBUTE, Limits, Position, ValidationError, exposed_name, is_foreign,
    validate,
};

use self::{
    adhoc::AdhocMetrics, agents::Agents, auth::Auth, metrics::ServerMetrics, snapshots::Snapshots,
    state::Tracepoints,
};

/// Longest accepted tenant name (as Cortex, Loki and Tempo limit `X-Scope-OrgID`).
const MAX_TENANT_LEN: usize = 150;

/// State shared by every request.
#[derive(Debug)]
pub(crate) struct App {
    config: ServerConfig,
    tracepoints: Tracepoints,
    agents: Agents,
    snapshots: Snapshots,
    metrics: ServerMetrics,
    /// Series reported with `POST /api/sessions/{id}/metrics` (exposed through `metrics`).
    adhoc: AdhocMetrics,
    auth: Auth,
    shutdown: watch::Receiver<bool>,
}

impl App {
    /// Records a refused API request in the audit log (on its own: there is no change). A store
    /// failure is logged; the request is refused either way.
    async fn audit_refusal(
        self: &Arc<Self>,
        refusal: &auth::Refusal,
        via: audit::Via,
        address: Option<std::net::IpAddr>,
        request: String,
    ) {
        let actor = audit::Actor {
            who: refusal.who.clone(),
            via,
            address,
        };
        let mut record = actor.record(&refusal.tenant, "denied", None, None, None);
        record.detail = Some(format!("{request}: {}", refusal.denied));
        tracing::info!(who = %refusal.who, tenant = %refusal.tenant, ?address, %request,
            reason = %refusal.denied, "API request refused");
        let app = self.clone();
        let written =
            tokio::task::spawn_blocking(move || app.tracepoints.store().append_audit(&record))
                .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(%err, "cannot write a refusal to the audit log"),
            Err(err) => tracing::error!(%err, "the audit task failed"),
        }
    }

    fn refresh_gauges(&self) {
        self.metrics
            .tracepoints
            .set(self.tracepoints.total() as i64);
        self.metrics.agents.set(self.agents.live() as i64);
    }
}

/// Why a tenant name was refused.
#[derive(Debug, thiserror::Error)]
#[error("tenant {0:?} is not valid: use 1 to 150 characters of letters, digits and !-_.*'()")]
pub struct BadTenant(String);

/// The tenant a request names (`X-Scope-OrgID`), or [`DEFAULT_TENANT`].
pub(crate) fn tenant_from(header: Option<&str>) -> Result<String, BadTenant> {
    match header.map(str::trim) {
        None | Some("") => Ok(DEFAULT_TENANT.to_owned()),
        Some(t)
            if t.len() <= MAX_TENANT_LEN
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "!-_.*'()".contains(c))
                && t != "."
                && t != ".." =>
        {
            Ok(t.to_owned())
        }
        Some(t) => Err(BadTenant(t.to_owned())),
    }
}

/// A bound, not yet running server.
pub struct Server {
    app: Arc<App>,
    grpc: TcpListener,
    http: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown_tx: watch::Sender<bool>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("grpc", &self.grpc_addr())
            .field("http", &self.http_addr())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Opens the store (PostgreSQL with `--database-url`, else SQLite in the data directory),
    /// loads the tracepoints and binds both ports.
    pub async fn bind(config: ServerConfig) -> anyhow::Result<Self> {
        // Tokens first: a bad one stops the server before anything is created on disk.
        let auth = Auth::from_config(&config).context("reading the API tokens")?;
        let store: Arc<dyn Store> = match &config.database_url {
            Some(url) => {
                let store = tokio::task::block_in_place(|| PgStore::open(url))
                    .context("opening the PostgreSQL store (--database-url)")?;
                tracing::info!(database = %store.target(), "store opened");
                Arc::new(store)
            }
            None => {
                let store = SqliteStore::open(&config.data_dir).with_context(|| {
                    format!("opening the store in {}", config.data_dir.display())
                })?;
                tracing::info!(path = %store.path().display(), "store opened");
                Arc::new(store)
            }
        };
        Self::bind_inner(config, store, auth).await
    }

    /// As [`Server::bind`], with a store of the caller's choosing.
    pub async fn bind_with_store(
        config: ServerConfig,
        store: Arc<dyn Store>,
    ) -> anyhow::Result<Self> {
        let auth = Auth::from_config(&config).context("reading the API tokens")?;
        Self::bind_inner(config, store, auth).await
    }

    async fn bind_inner(
        config: ServerConfig,
        store: Arc<dyn Store>,
        auth: Auth,
    ) -> anyhow::Result<Self> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(net::tls_acceptor(cert, key)?),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        let tracepoints = tokio::task::block_in_place(|| Tracepoints::load(store, config.limits()))
            .context("loading tracepoints from the store")?;
        let grpc = TcpListener::bind(SocketAddr::new(config.listen, config.grpc_port))
            .await
            .with_context(|| {
                format!(
                    "binding the gRPC port {}:{}",
                    config.listen, config.grpc_port
                )
            })?;
        let http = TcpListener::bind(SocketAddr::new(config.listen, config.http_port))
            .await
            .with_context(|| {
                format!(
                    "binding the HTTP port {}:{}",
                    config.listen, config.http_port
                )
            })?;
        let (shutdown_tx, shutdown) = watch::channel(false);
        let metrics = ServerMetrics::new();
        let adhoc = AdhocMetrics::new(adhoc::MAX_SERIES_PER_TENANT);
        metrics
            .register(Box::new(adhoc.clone()))
            .context("registering the ad-hoc metrics")?;
        let app = Arc::new(App {
            agents: Agents::new(config.agent_ttl()),
            snapshots: Snapshots::new(config.snapshots_per_tracepoint, 1000),
            metrics,
            adhoc,
            auth,
            tracepoints,
            config,
            shutdown,
        });
        app.refresh_gauges();
        Ok(Self {
            app,
            grpc,
            http,
            tls,
            shutdown_tx,
        })
    }

    /// Where the gRPC API listens.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Runs until `signal` completes, then shuts down gracefully.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let running = self.spawn();
        signal.await;
        running.shutdown().await
    }

    /// Starts serving in the background.
    pub fn spawn(self) -> RunningServer {
        let (grpc_addr, http_addr) = (self.grpc_addr(), self.http_addr());
        tracing::info!(%grpc_addr, %http_addr, tls = self.tls.is_some(), "listening");
        if !self.app.config.listen.is_loopback() {
            if !self.app.config.any_api_token() {
                tracing::warn!(
                    "the HTTP API is exposed on {} with no --admin-token: anyone who can reach it can change tracepoints",
                    self.app.config.listen
                );
            }
            if !self.app.config.any_agent_credential() {
                tracing::warn!(
                    "the agent API is exposed on {} with no --agent-token or --agent-basic",
                    self.app.config.listen
                );
            }
        }
        let grpc = tokio::spawn(net::serve(
            self.grpc,
            self.tls.clone(),
            grpc::router(self.app.clone()),
            self.app.shutdown.clone(),
        ));
        let http = tokio::spawn(net::serve(
            self.http,
            self.tls,
            http::router(self.app.clone()),
            self.app.shutdown.clone(),
        ));
        let app = self.app.clone();
        let mut shutdown = self.app.shutdown.clone();
        let housekeeping = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            let mut ticks: u64 = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        app.agents.prune();
                        app.refresh_gauges();
                        // The audit log is pruned at start and then hourly.
                        if ticks.is_multiple_of(120) {
                            prune_audit(&app).await;
                        }
                        ticks += 1;
                    }
                    () = net::stopped(&mut shutdown) => break,
                }
            }
        });
        let mut tasks = vec![grpc, http, housekeeping];
        if let Some(changes) = self.app.tracepoints.store().changes() {
            tasks.push(tokio::spawn(replicas::run(
                self.app.clone(),
                changes,
                self.app.shutdown.clone(),
            )));
        }
        RunningServer {
            grpc_addr,
            http_addr,
            app: self.app,
            shutdown_tx: self.shutdown_tx,
            tasks,
        }
    }
}

/// Removes audit entries older than the retention.
async fn prune_audit(app: &Arc<App>) {
    let cutoff = audit::now_ms()
        - i64::try_from(app.config.audit_retention().as_millis()).unwrap_or(i64::MAX);
    let app = app.clone();
    match tokio::task::spawn_blocking(move || app.tracepoints.store().prune_audit(cutoff)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(removed = n, "old audit entries pruned"),
        Ok(Err(err)) => tracing::error!(%err, "pruning the audit log failed"),
        Err(err) => tracing::error!(%err, "the audit prune task failed"),
    }
}

/// A server running in the background; [`RunningServer::shutdown`] stops it gracefully.
#[derive(Debug)]
pub struct RunningServer {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    app: Arc<App>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Where the gRPC API listens.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Re-reads `--tokens-file` (what SIGHUP does): the file's tokens replace the previous file's
    /// from the next request on, and connections (agents' watch streams included) stay open.
    /// On error (no file, unreadable, a bad line) the tokens in force stay. Returns how many API
    /// tokens are now in force.
    pub fn reload_tokens(&self) -> Result<usize, TokensError> {
        self.app.auth.reload()
    }

    /// Stops accepting, ends watch streams, lets requests in flight finish, and waits.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown_tx.send(true);
        for task in self.tasks {
            task.await.context("a server task failed")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_default_and_are_checked() {
        assert_eq!(tenant_from(None).unwrap(), DEFAULT_TENANT);
        assert_eq!(tenant_from(Some("  ")).unwrap(), DEFAULT_TENANT);
        assert_eq!(tenant_from(Some("team-a")).unwrap(), "team-a");
        assert!(tenant_from(Some("a/b")).is_err());
        assert!(tenant_from(Some("..")).is_err());
        assert!(tenant_from(Some(&"x".repeat(151))).is_err());
    }
}
