//! [`Agent`]: configuration ([`AgentBuilder`]) and the running agent ([`AgentHandle`]).
//!
//! The agent's client runs on a thread of its own with its own single-threaded tokio runtime, so
//! it works in applications with or without tokio, and `start()` never waits for the network.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use sonde_proto::tracepoint::TracePointConfig;
use tokio::sync::watch;

mod build_id;

use crate::{
    client::{self, ClientConfig, ClientMode},
    install::{Installer, TracepointStatus},
    metrics::endpoint,
    metrics::provider::MetricProvider,
    metrics::self_metrics::SelfMetrics,
    site::{self, redact::Redaction},
    tracepoint::budget::Budgets,
    tracepoint::snapshot::{PendingSnapshot, SnapshotLimits},
};

/// The resource attribute holding the executable's GNU build-id (lowercase hex), as
/// OpenTelemetry's semantic conventions name it.
pub const BUILD_ID_ATTRIBUTE: &str = "process.executable.build_id.gnu";

/// Only one agent runs in a process at a time: probe sites are global.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Entry point: `Agent::builder()`.
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// A builder with defaults (server `http://127.0.0.1:43315`, watch with poll fallback,
    /// 10 s poll interval, no providers).
    pub fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }
}

/// Why the agent did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another agent is running in this process.
    #[error("a Sonde agent is already running in this process")]
    AlreadyRunning,
    /// A setting is not valid.
    #[error("invalid agent configuration: {0}")]
    Config(String),
    /// The agent's thread could not be started.
    #[error("starting the agent thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The metrics endpoint's address could not be bound.
    #[error("binding the metrics endpoint on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Configuration of an agent.
pub struct AgentBuilder {
    service_name: Option<String>,
    service_version: Option<String>,
    attributes: Vec<(String, String)>,
    servers: Vec<String>,
    token: Option<String>,
    basic: Option<(String, String)>,
    tenant: Option<String>,
    ca_pem: Option<Vec<u8>>,
    poll_interval: Duration,
    mode: ClientMode,
    providers: Vec<Arc<dyn MetricProvider>>,
    budgets: Budgets,
    log_level: tracing::Level,
    offline: bool,
    metrics_endpoint: Option<(std::net::SocketAddr, prometheus::Registry)>,
    self_metrics: Option<Arc<dyn MetricProvider>>,
    env_error: Option<String>,
    redaction: Redaction,
    snapshot_limits: SnapshotLimits,
    snapshot_queue: usize,
    thread_nice: i32,
    #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
    native: Option<crate::native::NativeBudget>,
}

impl std::fmt::Debug for AgentBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentBuilder")
            .field("service_name", &self.service_name)
            .field("servers", &self.servers)
            .field("mode", &self.mode)
            .field("providers", &self.providers.len())
            .finish_non_exhaustive()
    }
}

impl Default for AgentBuilder {
    fn default() -> Self {
        Self {
            service_name: None,
            service_version: None,
            attributes: Vec::new(),
            servers: Vec::new(),
            token: None,
            basic: None,
            tenant: None,
            ca_pem: None,
            poll_interval: Duration::from_secs(10),
            mode: ClientMode::Auto,
            providers: Vec::new(),
            budgets: Budgets::default(),
            log_level: tracing::Level::INFO,
            offline: false,
            metrics_endpoint: None,
            self_metrics: None,
            env_error: None,
            redaction: Redaction::default(),
            snapshot_limits: SnapshotLimits::default(),
            snapshot_queue: 64,
            thread_nice: DEFAULT_THREAD_NICE,
            #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
            native: None,
        }
    }
}

impl AgentBuilder {
    /// `service.name` of this process (default: the executable's name).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// `service.version` of this process: the application's own version, so that a tracepoint
    /// can target one deployed version (`--target service.version=1.4.2`). Pass
    /// [`service_version!()`](crate::service_version), which is the application's
    /// `CARGO_PKG_VERSION`; `SONDE_SERVICE_VERSION` overrides it in [`AgentBuilder::from_env`].
    /// Unset, the agent reports no `service.version` (it cannot know the application's).
    pub fn service_version(mut self, version: impl Into<String>) -> Self {
        self.service_version = Some(version.into());
        self
    }

    /// Adds a resource attribute (tracepoints target agents by these).
    pub fn resource_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.push((key.into(), value.into()));
        self
    }

    /// A control-plane gRPC URL (`http://host:43315`, `https://...`); several are tried in turn.
    pub fn server(mut self, url: impl Into<String>) -> Self {
        self.servers.push(url.into());
        self
    }

    /// Bearer token sent as `authorization` metadata.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Basic credentials (`Basic <base64(user:password)>`), as Deep's agents send.
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.basic = Some((user.into(), password.into()));
        self
    }

    /// Tenant, sent as `x-scope-orgid`.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// A PEM CA certificate to trust for `https://` servers (else the system's roots).
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Interval of Deep's poll (when polling).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Watch, poll, or watch with poll fallback (the default).
    pub fn mode(mut self, mode: ClientMode) -> Self {
        self.mode = mode;
        self
    }

    /// Adds a metrics backend.
    pub fn provider(mut self, provider: impl MetricProvider) -> Self {
        self.providers.push(Arc::new(provider));
        self
    }

    /// Local safety limits per tracepoint: the CPU budget (a share of the process's own CPU,
    /// past which a metric tracepoint samples), the error budget and the cardinality cap. A
    /// share that is not above 0 or a CPU window under 10 ms makes `start()` fail.
    pub fn budgets(mut self, budgets: Budgets) -> Self {
        self.budgets = budgets;
        self
    }

    /// Level of the `tracing` events that log tracepoints (`log_msg`) emit (default INFO).
    pub fn log_level(mut self, level: tracing::Level) -> Self {
        self.log_level = level;
        self
    }

    /// Serves `registry` at `http://<addr>/metrics` from the agent's thread, for applications
    /// that do not expose one themselves (Sonde's usual port is 9464).
    pub fn serve_metrics(
        mut self,
        addr: std::net::SocketAddr,
        registry: prometheus::Registry,
    ) -> Self {
        self.metrics_endpoint = Some((addr, registry));
        self
    }

    /// Exports the agent's own metrics (`sonde_agent_*`: fires, errors, evaluation time,
    /// disarms, overflows, control-plane calls and failures) through `provider`. For
    /// Prometheus, pass a clone of the same `PrometheusProvider` given to [`AgentBuilder::provider`]
    /// (one provider per registry).
    pub fn self_metrics(mut self, provider: impl MetricProvider) -> Self {
        self.self_metrics = Some(Arc::new(provider));
        self
    }

    /// Arms tracepoints on lines that have no probe site as native breakpoints, from the
    /// binary's debug info (feature `native`, Linux x86_64; needs `debug = 2` or a separate
    /// debug file found by build-id). The debug info is indexed on a background thread at start.
    /// Also switched on by `SONDE_AGENT_NATIVE=1` in [`AgentBuilder::from_env`].
    #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
    pub fn native_breakpoints(mut self, budget: crate::native::NativeBudget) -> Self {
        self.native = Some(budget);
        self
    }

    /// Adds names to the redaction list (default: password, passwd, secret, token, api_key,
    /// apikey, authorization, cookie, session_id, ssn, credit_card, card_number, cvv,
    /// private_key). A variable, field or map key whose name spells one of them in whole
    /// words, case and separators aside (`accessToken`, `DB_PASSWORD`), is redacted: a snapshot
    /// shows its name with no value, a log line or label reads `[redacted]`, and a label, value,
    /// condition or log template that names it is refused when the tracepoint is bound.
    pub fn redact<S: AsRef<str>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.redaction = self.redaction.with(names);
        self
    }

    /// Replaces the redaction list (an empty list redacts by name nothing; types and fields
    /// marked `#[capture(redact)]` stay redacted).
    pub fn redact_only<S: AsRef<str>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.redaction = Redaction::new(names);
        self
    }

    /// The bounds of one snapshot (depth, collection sizes, string lengths, variables, bytes,
    /// frames; Deep's defaults), and how many snapshots may wait to be sent (64; past that the
    /// oldest is dropped and counted in `sonde_agent_snapshots_dropped_total`).
    pub fn snapshots(mut self, limits: SnapshotLimits, queue: usize) -> Self {
        self.snapshot_limits = limits;
        self.snapshot_queue = queue.max(1);
        self
    }

    /// How much lower than the application's threads the agent's own thread runs, as a nice
    /// increment from 0 to 19 (default 10; Linux, elsewhere ignored). Above 0 the thread also
    /// takes the batch scheduling policy, so that when it wakes it waits for its turn rather than
    /// preempting the application's thread on the core. The agent's thread sends status reports,
    /// polls the control plane and serves the metrics endpoint: nothing there is urgent to the
    /// millisecond, and where the cores are busy its bursts (a status report is a few hundred
    /// microseconds) would otherwise delay the application's requests. At 10 it still gets about
    /// a tenth of a core the application keeps busy; 0 leaves it as the application's threads.
    /// The hits themselves run on the application's threads and are not affected.
    pub fn thread_nice(mut self, increment: i32) -> Self {
        self.thread_nice = increment;
        self
    }

    /// No control plane: tracepoints come only from [`AgentHandle::apply`].
    pub fn offline(mut self) -> Self {
        self.offline = true;
        self
    }

    /// Reads `SONDE_AGENT_SERVER` (comma-separated gRPC URLs of the control plane, port 43315 —
    /// not the HTTP API that the CLI's `SONDE_SERVER` names), `SONDE_AGENT_TOKEN` (the server's
    /// `--agent-token`), `SONDE_AGENT_CA_CERT` (a PEM file), `SONDE_AGENT_POLL_INTERVAL_MS`,
    /// `SONDE_AGENT_MODE` (`auto`, `watch`, `poll`), `SONDE_AGENT_REDACT` (comma-separated names
    /// added to the redaction list, or `only:a,b` to replace it), `SONDE_AGENT_CPU_PERCENT` and
    /// `SONDE_AGENT_TOTAL_CPU_PERCENT` (a tracepoint's and all tracepoints' share of the process's
    /// CPU, [`Budgets::cpu_share`] and [`Budgets::agent_cpu_share`] in percent, default 1 and 2),
    /// `SONDE_AGENT_THREAD_NICE` ([`AgentBuilder::thread_nice`]),
    /// `SONDE_SERVICE_NAME`, `SONDE_SERVICE_VERSION`, `SONDE_TENANT` and
    /// `SONDE_RESOURCE_ATTRIBUTES` (`k=v,k=v`), and with feature `native` `SONDE_AGENT_NATIVE`
    /// (`1` arms lines without a probe site natively). Values set on the builder before this call are
    /// replaced by the environment's; a malformed value makes `start()` fail, naming it.
    pub fn from_env(mut self) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let Some(servers) = var("SONDE_AGENT_SERVER") {
            self.servers = servers
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(name) = var("SONDE_SERVICE_NAME") {
            self.service_name = Some(name);
        }
        if let Some(version) = var("SONDE_SERVICE_VERSION") {
            self.service_version = Some(version);
        }
        if let Some(token) = var("SONDE_AGENT_TOKEN") {
            self.token = Some(token);
        }
        if let Some(tenant) = var("SONDE_TENANT") {
            self.tenant = Some(tenant);
        }
        if let Some(ms) = var("SONDE_AGENT_POLL_INTERVAL_MS") {
            match ms.trim().parse::<u64>() {
                Ok(ms) => self.poll_interval = Duration::from_millis(ms),
                Err(_) => {
                    self.env_error = Some(format!(
                        "SONDE_AGENT_POLL_INTERVAL_MS: not a number: {ms:?}"
                    ))
                }
            }
        }
        if let Some(names) = var("SONDE_AGENT_REDACT") {
            self.redaction = self.redaction.apply_env(&names);
        }
        if let Some(mode) = var("SONDE_AGENT_MODE") {
            match mode.trim() {
                "auto" => self.mode = ClientMode::Auto,
                "watch" => self.mode = ClientMode::Watch,
                "poll" => self.mode = ClientMode::Poll,
                other => {
                    self.env_error = Some(format!(
                        "SONDE_AGENT_MODE: {other:?} is not auto, watch or poll"
                    ))
                }
            }
        }
        for (key, share) in [
            ("SONDE_AGENT_CPU_PERCENT", &mut self.budgets.cpu_share),
            (
                "SONDE_AGENT_TOTAL_CPU_PERCENT",
                &mut self.budgets.agent_cpu_share,
            ),
        ] {
            if let Some(value) = var(key) {
                match value.trim().parse::<f64>() {
                    Ok(p) if p > 0.0 && p <= 100.0 => *share = p / 100.0,
                    _ => {
                        self.env_error = Some(format!(
                            "{key}: not a percentage above 0 and at most 100: {value:?}"
                        ))
                    }
                }
            }
        }
        if let Some(value) = var("SONDE_AGENT_THREAD_NICE") {
            match value.trim().parse::<i32>() {
                Ok(n) if (0..=19).contains(&n) => self.thread_nice = n,
                _ => {
                    self.env_error = Some(format!(
                        "SONDE_AGENT_THREAD_NICE: not a whole number from 0 to 19: {value:?}"
                    ))
                }
            }
        }
        if let Some(attrs) = var("SONDE_RESOURCE_ATTRIBUTES") {
            for pair in attrs.split(',').filter(|p| !p.trim().is_empty()) {
                match pair.split_once('=') {
                    Some((k, v)) if !k.trim().is_empty() => self
                        .attributes
                        .push((k.trim().to_owned(), v.trim().to_owned())),
                    _ => {
                        self.env_error = Some(format!(
                            "SONDE_RESOURCE_ATTRIBUTES: {pair:?} is not key=value"
                        ))
                    }
                }
            }
        }
        #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
        if let Some(on) = var("SONDE_AGENT_NATIVE") {
            match on.as_str() {
                "1" | "true" | "on" => self.native = Some(self.native.unwrap_or_default()),
                "0" | "false" | "off" => self.native = None,
                other => {
                    self.env_error = Some(format!(
                        "SONDE_AGENT_NATIVE: {other:?} is not 1/true/on or 0/false/off"
                    ))
                }
            }
        }
        if let Some(path) = var("SONDE_AGENT_CA_CERT") {
            match std::fs::read(&path) {
                Ok(pem) => self.ca_pem = Some(pem),
                Err(e) => {
                    self.env_error = Some(format!("SONDE_AGENT_CA_CERT: reading {path}: {e}"))
                }
            }
        }
        self
    }

    /// Starts the agent. Returns at once; the client connects in the background.
    pub fn start(self) -> Result<AgentHandle, StartError> {
        if let Some(err) = self.env_error {
            return Err(StartError::Config(err));
        }
        let servers = if self.servers.is_empty() {
            vec!["http://127.0.0.1:43315".to_owned()]
        } else {
            self.servers
        };
        for s in &servers {
            if !(s.starts_with("http://") || s.starts_with("https://")) {
                return Err(StartError::Config(format!(
                    "server {s:?}: expected an http:// or https:// URL"
                )));
            }
        }
        self.budgets.check().map_err(StartError::Config)?;
        if !(0..=19).contains(&self.thread_nice) {
            return Err(StartError::Config(format!(
                "the agent thread's nice increment must be from 0 to 19, not {}",
                self.thread_nice
            )));
        }
        let thread_nice = self.thread_nice;
        if self.poll_interval.is_zero() {
            return Err(StartError::Config(
                "the poll interval must not be zero".into(),
            ));
        }
        if RUNNING.swap(true, Ordering::AcqRel) {
            return Err(StartError::AlreadyRunning);
        }
        let agent_id = uuid::Uuid::new_v4().to_string();
        let service_name = self.service_name.unwrap_or_else(default_service_name);
        let mut resource = vec![
            ("service.name".to_owned(), service_name),
            ("service.instance.id".to_owned(), agent_id.clone()),
            ("telemetry.sdk.language".to_owned(), "rust".to_owned()),
            ("telemetry.sdk.name".to_owned(), "sonde".to_owned()),
            (
                "telemetry.sdk.version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ),
            ("process.pid".to_owned(), std::process::id().to_string()),
        ];
        if let Some(version) = self.service_version {
            resource.push(("service.version".to_owned(), version));
        }
        if let Some(id) = build_id::gnu_build_id() {
            resource.push((BUILD_ID_ATTRIBUTE.to_owned(), id));
        }
        for (k, v) in self.attributes {
            match resource.iter_mut().find(|(key, _)| *key == k) {
                Some(slot) => slot.1 = v,
                None => resource.push((k, v)),
            }
        }
        let own = self.self_metrics.map(|p| Arc::new(SelfMetrics::new(p)));
        // Before any tracepoint binds: the list decides what binding refuses.
        site::redact::set(self.redaction);
        let mut installer = Installer::new(
            site::sites().collect(),
            self.providers,
            self.budgets,
            self.log_level,
            own.clone(),
        );
        installer.set_snapshots(self.snapshot_limits, self.snapshot_queue);
        #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
        let installer = {
            let mut installer = installer;
            if let Some(budget) = self.native {
                installer.set_native(crate::native::Native::start(budget));
            }
            installer
        };
        let installer = Arc::new(Mutex::new(installer));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let endpoint = match self.metrics_endpoint {
            Some((addr, registry)) => match endpoint::bind(addr) {
                Ok(listener) => Some((listener, registry)),
                Err(source) => {
                    RUNNING.store(false, Ordering::Release);
                    return Err(StartError::Bind { addr, source });
                }
            },
            None => None,
        };
        let metrics_addr = endpoint.as_ref().and_then(|(l, _)| l.local_addr().ok());
        let client = (!self.offline).then(|| ClientConfig {
            servers,
            token: self.token,
            basic: self.basic,
            tenant: self.tenant,
            ca_pem: self.ca_pem,
            poll_interval: self.poll_interval,
            mode: self.mode,
            resource,
            agent_id: agent_id.clone(),
            own,
        });
        let thread = if client.is_none() && endpoint.is_none() {
            None
        } else {
            let installer = installer.clone();
            let spawned = std::thread::Builder::new()
                .name("sonde-agent".into())
                .spawn(move || {
                    lower_priority(thread_nice);
                    agent_thread(client, endpoint, installer, shutdown_rx)
                });
            match spawned {
                Ok(handle) => Some(handle),
                Err(e) => {
                    RUNNING.store(false, Ordering::Release);
                    return Err(StartError::Thread(e));
                }
            }
        };
        Ok(AgentHandle {
            agent_id,
            metrics_addr,
            installer,
            shutdown_tx,
            thread,
            stopped: false,
        })
    }
}

/// The agent thread's default nice increment ([`AgentBuilder::thread_nice`]).
const DEFAULT_THREAD_NICE: i32 = 10;

/// Puts the calling thread behind the application's: with `increment` above 0, the batch policy
/// (`SCHED_BATCH`: when it wakes it waits for its turn instead of preempting the thread on the
/// core, and a thread of the application that wakes preempts it as usual) and `increment` nice
/// steps lower (a smaller share of a core the application keeps busy, though never none). On
/// Linux both are a thread's own (0 names the calling thread), so the application's threads keep
/// theirs; elsewhere a nice value would be the whole process's, so nothing is done. Lowering a
/// priority needs no privilege; a failure is logged and changes nothing else.
fn lower_priority(increment: i32) {
    #[cfg(target_os = "linux")]
    if increment > 0 {
        let warn = |what: &str| {
            tracing::warn!(err = %std::io::Error::last_os_error(),
                "sonde agent: cannot {what}; its thread stays as it is");
        };
        // SAFETY: sched_setscheduler, getpriority and setpriority on the calling thread read
        // and write its policy and nice value only; the parameter lives on the stack.
        // getpriority may return -1 as a value, hence errno is cleared and checked.
        unsafe {
            let param = libc::sched_param { sched_priority: 0 };
            if libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) != 0 {
                warn("take the batch scheduling policy");
            }
            *libc::__errno_location() = 0;
            let now = libc::getpriority(libc::PRIO_PROCESS, 0);
            if now == -1 && *libc::__errno_location() != 0 {
                return warn("read its nice value");
            }
            if libc::setpriority(libc::PRIO_PROCESS, 0, (now + increment).min(19)) != 0 {
                warn("raise its nice value");
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = increment;
}

/// The agent's thread: its own single-threaded runtime running the client and the endpoint.
fn agent_thread(
    client: Option<ClientConfig>,
    endpoint: Option<(std::net::TcpListener, prometheus::Registry)>,
    installer: Arc<Mutex<Installer>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(%err, "sonde agent: cannot start its runtime; tracepoints stay off");
            return;
        }
    };
    rt.block_on(async move {
        if let Some((listener, registry)) = endpoint {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    tokio::spawn(endpoint::serve(listener, registry, shutdown.clone()));
                }
                Err(err) => tracing::error!(%err, "sonde agent: metrics endpoint"),
            }
        }
        match client {
            Some(config) => client::run(config, installer, shutdown).await,
            None => {
                let _ = shutdown.wait_for(|stop| *stop).await;
            }
        }
    });
}

fn default_service_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown_service:rust".to_owned())
}

/// A running agent. [`AgentHandle::shutdown`] (or dropping it) disarms every site, unregisters
/// the tracepoint metrics and stops the client thread.
#[derive(Debug)]
pub struct AgentHandle {
    agent_id: String,
    metrics_addr: Option<std::net::SocketAddr>,
    installer: Arc<Mutex<Installer>>,
    shutdown_tx: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    stopped: bool,
}

impl std::fmt::Debug for Installer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installer").finish_non_exhaustive()
    }
}

impl AgentHandle {
    /// This agent instance's ID (also its `service.instance.id`).
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// Where the agent's own `/metrics` endpoint listens, if it serves one.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// Installs a tracepoint list directly, replacing what is installed (as an UPDATE from the
    /// control plane would). Meant for offline agents and tests.
    pub fn apply(&self, tracepoints: Vec<TracePointConfig>) {
        self.installer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(&tracepoints);
    }

    /// What became of each tracepoint held.
    pub fn statuses(&self) -> Vec<TracepointStatus> {
        self.installer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .statuses()
    }

    /// Takes the oldest snapshot waiting to be sent. A connected agent's sender takes them as
    /// they come; an offline agent's wait here (at most the queue's bound, the oldest dropped
    /// first), for tests and for applications that ship snapshots themselves.
    pub fn take_pending_snapshot(&self) -> Option<PendingSnapshot> {
        self.queue().pop().map(PendingSnapshot::new)
    }

    /// Snapshots waiting to be sent.
    pub fn snapshots_queued(&self) -> usize {
        self.queue().len()
    }

    /// Snapshots dropped so far: the queue was full (no server to send them to), or the server
    /// refused them.
    pub fn snapshots_dropped(&self) -> u64 {
        self.queue()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn queue(&self) -> Arc<crate::tracepoint::snapshot::SnapshotQueue> {
        self.installer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot_queue()
    }

    /// How many times a tracepoint fired in this process.
    pub fn fires(&self, tracepoint_id: &str) -> Option<u64> {
        self.installer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fires(tracepoint_id)
    }

    /// Stops the agent: the client thread ends, sites disarm, metrics unregister.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let _ = self.shutdown_tx.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.installer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        RUNNING.store(false, Ordering::Release);
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
