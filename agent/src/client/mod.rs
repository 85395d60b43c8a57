//! The control-plane client: Sonde's watch stream when the server offers it, else Deep's poll;
//! exponential backoff with full jitter, a circuit breaker, and the last configuration kept (the
//! installed tracepoints stay armed) while the server is unreachable.
//!
//! After every change it applies, and whenever a tracepoint's status changes on the hot path, it
//! reports the status of every tracepoint (`sonde.v1.StatusService/Report`); against a server
//! without that service (Deep's) reporting is switched off after the first `UNIMPLEMENTED`.
//! Each report carries the hash of the list it is about, so the server can tell when an agent has
//! reported on a change (`sonde tracepoint add --wait`).
//!
//! On every connection it also sends the probe-site catalog (`StatusService/ReportCatalog`): every
//! site's file, line and captured names, so that people can find a line before they arm it. Sites
//! are link-time statics, so the catalog changes only with the binary; sending it per connection
//! covers a server that restarted or a new replica. An agent that arms lines natively also
//! answers questions about them (`CatalogService/Serve`, in `catalog`): which source files it
//! has, and per file the lines with code and the variables readable at each.
//!
//! Snapshots that firing hits queue are sent by [`snapshots`] (`SnapshotService/send`) on the
//! same connection.
//!
//! May use: `install` (it applies what it receives and reports the statuses) and `metrics` (the
//! agent's connection metrics). The only part of the agent that knows tonic and the wire types.

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use base64::Engine as _;
use sonde_proto::{
    common::{AnyValue, KeyValue, any_value},
    poll::{PollRequest, PollResponse, ResponseType, poll_config_client::PollConfigClient},
    resource::Resource,
    sonde::{
        CapturedFields, ProbeSite, SiteCatalog, SiteKind, StatusReport,
        TracepointState as WireState, TracepointStatus as WireStatus,
        TracepointSummary as WireSummary, WatchRequest, status_service_client::StatusServiceClient,
        watch_service_client::WatchServiceClient,
    },
};
use tokio::sync::watch;
use tonic::{
    Code, Status,
    metadata::{Ascii, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

#[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
mod catalog;

use crate::{
    install::{Installer, TracepointState, TracepointStatus},
    metrics::self_metrics::SelfMetrics,
};

mod snapshots;

/// How the agent follows the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientMode {
    /// Sonde's watch stream when the server offers it, else Deep's poll.
    #[default]
    Auto,
    /// Only the watch stream.
    Watch,
    /// Only Deep's poll (works against a Deep server).
    Poll,
}

/// Settings of the client.
#[derive(Debug, Clone)]
pub(crate) struct ClientConfig {
    pub servers: Vec<String>,
    pub token: Option<String>,
    pub basic: Option<(String, String)>,
    pub tenant: Option<String>,
    pub ca_pem: Option<Vec<u8>>,
    pub poll_interval: Duration,
    pub mode: ClientMode,
    pub resource: Vec<(String, String)>,
    pub agent_id: String,
    pub own: Option<Arc<SelfMetrics>>,
}

/// First retry delay; doubles per consecutive failure up to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Consecutive failures that open the circuit, and how long it stays open.
const BREAKER_THRESHOLD: u32 = 8;
const BREAKER_OPEN: Duration = Duration::from_secs(30);
/// How often a watch checks for status changes made on the hot path.
const STATUS_TICK: Duration = Duration::from_millis(500);
/// How often, at most, changed counters alone (hits, fires, errors) lead to a status report:
/// a busy tracepoint reports about once a second, not once a tick.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the client until shutdown.
pub(crate) async fn run(
    config: ClientConfig,
    installer: Arc<Mutex<Installer>>,
    shutdown: watch::Receiver<bool>,
) {
    let client = Client::new(config, installer);
    let queue = client
        .installer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .snapshot_queue();
    let sender = snapshots::Sender {
        queue,
        channel: client.channels.subscribe(),
        auth: client.auth.clone(),
        tenant: client.tenant.clone(),
        resource: client.resource.attributes.clone(),
        own: client.config.own.clone(),
    };
    tokio::spawn(sender.run(shutdown.clone()));
    client.run(shutdown).await;
}

struct Client {
    config: ClientConfig,
    installer: Arc<Mutex<Installer>>,
    resource: Resource,
    auth: Option<MetadataValue<Ascii>>,
    tenant: Option<MetadataValue<Ascii>>,
    hash: String,
    watch_supported: bool,
    status_supported: bool,
    catalog_supported: bool,
    failures: u32,
    server: usize,
    /// The current connection, for the snapshot sender.
    channels: watch::Sender<Option<Channel>>,
    /// When the last status report was sent, and a digest of the counters it carried.
    last_report: std::time::Instant,
    /// [`crate::site::fields_seen`] when the catalog was last reported.
    fields_reported: u64,
    last_counters: u64,
}

enum Ended {
    /// The server closed the stream or the poll loop ended: reconnect soon.
    Reconnect,
    /// The call failed.
    Failed(String),
    /// Shut down.
    Shutdown,
}

impl Client {
    fn new(config: ClientConfig, installer: Arc<Mutex<Installer>>) -> Self {
        let resource = Resource {
            attributes: config
                .resource
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(v.clone())),
                    }),
                })
                .collect(),
            dropped_attributes_count: 0,
        };
        let auth = match (&config.token, &config.basic) {
            (Some(token), _) => format!("Bearer {token}").parse().ok(),
            (None, Some((user, pass))) => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            )
            .parse()
            .ok(),
            (None, None) => None,
        };
        let tenant = config.tenant.as_deref().and_then(|t| t.parse().ok());
        Self {
            watch_supported: config.mode != ClientMode::Poll,
            config,
            installer,
            resource,
            auth,
            tenant,
            hash: String::new(),
            status_supported: true,
            catalog_supported: true,
            failures: 0,
            server: 0,
            channels: watch::Sender::new(None),
            last_report: std::time::Instant::now(),
            last_counters: 0,
            fields_reported: 0,
        }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        if let Some(auth) = &self.auth {
            req.metadata_mut().insert("authorization", auth.clone());
        }
        if let Some(tenant) = &self.tenant {
            req.metadata_mut().insert("x-scope-orgid", tenant.clone());
        }
        req
    }

    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let url = self.config.servers[self.server % self.config.servers.len()].clone();
            let ended = match self.connect(&url).await {
                Ok(channel) => {
                    self.channels.send_replace(Some(channel.clone()));
                    // Once per connection: a new server (or a restarted one) learns the sites.
                    self.report_catalog(&channel).await;
                    // Questions about native lines, for as long as this connection lasts.
                    let questions = self.catalog_server(channel.clone()).map(tokio::spawn);
                    let ended = if self.watch_supported {
                        self.watch(channel, &mut shutdown).await
                    } else {
                        self.poll_loop(channel, &mut shutdown).await
                    };
                    if let Some(task) = questions {
                        task.abort();
                    }
                    ended
                }
                Err(e) => {
                    let hint = port_mixup(&e).map(|h| format!("; {h}")).unwrap_or_default();
                    Ended::Failed(format!("connecting to {url}: {e}{hint}"))
                }
            };
            let delay = match ended {
                Ended::Shutdown => return,
                Ended::Reconnect => BACKOFF_BASE,
                Ended::Failed(err) => {
                    self.channels.send_replace(None);
                    self.failures += 1;
                    let logged =
                        self.failures == 1 || self.failures.is_multiple_of(BREAKER_THRESHOLD);
                    let err = if logged && port_mixup(&err).is_none() && answers_http1(&url).await {
                        format!("{err}; {HTTP1_HINT}")
                    } else {
                        err
                    };
                    self.server += 1;
                    if let Some(own) = &self.config.own {
                        own.failures.inc();
                        own.retries.inc();
                    }
                    if logged {
                        tracing::warn!(failures = self.failures, server = %url, %err,
                            "sonde agent: control plane unreachable; keeping the installed tracepoints");
                    }
                    if self.failures.is_multiple_of(BREAKER_THRESHOLD) {
                        tracing::warn!(open_for = ?BREAKER_OPEN, "sonde agent: circuit open");
                        if let Some(own) = &self.config.own {
                            own.breaker_opened.inc();
                            own.breaker_open.set(1.0);
                        }
                        BREAKER_OPEN
                    } else {
                        backoff(self.failures)
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
            if delay == BREAKER_OPEN
                && let Some(own) = &self.config.own
            {
                // Half-open: the next attempt decides.
                own.breaker_half_open.inc();
                own.breaker_open.set(0.0);
            }
        }
    }

    fn time(&self, kind: &str, started: std::time::Instant) {
        if let Some(own) = &self.config.own {
            own.requests.with(&[kind]).record(started.elapsed());
        }
    }

    async fn connect(&self, url: &str) -> Result<Channel, String> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("bad URL: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(pem) = &self.config.ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
        }
        endpoint.connect().await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        })
    }

    fn apply(&mut self, resp: &PollResponse) -> bool {
        self.hash = resp.current_hash.clone();
        if resp.response_type != ResponseType::Update as i32 {
            return false;
        }
        self.installer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(&resp.response);
        tracing::info!(tracepoints = resp.response.len(), hash = %resp.current_hash,
            "sonde agent: tracepoints updated");
        true
    }

    async fn watch(&mut self, channel: Channel, shutdown: &mut watch::Receiver<bool>) -> Ended {
        let mut client = WatchServiceClient::new(channel.clone());
        let request = self.request(WatchRequest {
            resource: Some(self.resource.clone()),
            current_hash: self.hash.clone(),
            agent_id: self.config.agent_id.clone(),
        });
        let started = std::time::Instant::now();
        let watched = client.watch(request).await;
        self.time("watch", started);
        let mut stream = match watched {
            Ok(resp) => resp.into_inner(),
            // A 404 from a plain HTTP server also maps to Unimplemented: that is no Deep server
            // without the watch stream but the wrong port, and polling would not help.
            Err(status)
                if status.code() == Code::Unimplemented
                    && self.config.mode == ClientMode::Auto
                    && port_mixup(&describe(&status)).is_none() =>
            {
                tracing::info!(interval = ?self.config.poll_interval,
                    "sonde agent: the server has no watch stream; polling");
                self.watch_supported = false;
                return self.poll_loop(channel, shutdown).await;
            }
            Err(status) => return Ended::Failed(describe(&status)),
        };
        let mut tick = tokio::time::interval(STATUS_TICK);
        loop {
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(resp)) => {
                        self.failures = 0;
                        if self.apply(&resp) {
                            self.report(&channel).await;
                        }
                    }
                    Ok(None) => return Ended::Reconnect,
                    Err(status) => return Ended::Failed(describe(&status)),
                },
                _ = tick.tick() => self.report_if_dirty(&channel).await,
                _ = shutdown.changed() => return Ended::Shutdown,
            }
        }
    }

    async fn poll_loop(&mut self, channel: Channel, shutdown: &mut watch::Receiver<bool>) -> Ended {
        let mut client = PollConfigClient::new(channel.clone());
        loop {
            let request = self.request(PollRequest {
                ts_nanos: now_nanos(),
                current_hash: self.hash.clone(),
                resource: Some(self.resource.clone()),
            });
            let started = std::time::Instant::now();
            let polled = client.poll(request).await;
            self.time("poll", started);
            match polled {
                Ok(resp) => {
                    self.failures = 0;
                    let resp = resp.into_inner();
                    if self.apply(&resp) {
                        self.report(&channel).await;
                    } else {
                        self.report_if_dirty(&channel).await;
                    }
                }
                Err(status) => return Ended::Failed(describe(&status)),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.poll_interval) => {}
                _ = shutdown.changed() => return Ended::Shutdown,
            }
        }
    }

    /// Reports when a status changed (the hot path set `dirty`), or when the counters changed
    /// and the last report is at least [`SUMMARY_INTERVAL`] old.
    async fn report_if_dirty(&mut self, channel: &Channel) {
        // A site ran for the first time and told the fields of what it captures.
        if self.catalog_supported && crate::site::fields_seen() != self.fields_reported {
            self.report_catalog(channel).await;
        }
        let statuses = {
            let installer = self.installer.lock().unwrap_or_else(|p| p.into_inner());
            if installer.dirty.swap(false, Ordering::Relaxed) {
                Some(installer.statuses())
            } else if self.status_supported && self.last_report.elapsed() >= SUMMARY_INTERVAL {
                let statuses = installer.statuses();
                (counters_digest(&statuses) != self.last_counters).then_some(statuses)
            } else {
                None
            }
        };
        if let Some(statuses) = statuses {
            self.send_report(channel, statuses).await;
        }
    }

    async fn report(&mut self, channel: &Channel) {
        if !self.status_supported {
            return;
        }
        let statuses = {
            let installer = self.installer.lock().unwrap_or_else(|p| p.into_inner());
            installer.dirty.store(false, Ordering::Relaxed);
            installer.statuses()
        };
        self.send_report(channel, statuses).await;
    }

    async fn send_report(&mut self, channel: &Channel, statuses: Vec<TracepointStatus>) {
        if !self.status_supported {
            return;
        }
        self.last_report = std::time::Instant::now();
        self.last_counters = counters_digest(&statuses);
        let report = StatusReport {
            agent_id: self.config.agent_id.clone(),
            resource: Some(self.resource.clone()),
            ts_nanos: now_nanos(),
            config_hash: self.hash.clone(),
            tracepoints: statuses
                .into_iter()
                .map(|s| WireStatus {
                    tracepoint_id: s.id,
                    state: match s.state {
                        TracepointState::Bound => WireState::Bound,
                        TracepointState::Unbound => WireState::Unbound,
                        TracepointState::Error => WireState::Error,
                        TracepointState::Disarmed => WireState::Disarmed,
                    } as i32,
                    message: s.message,
                    sites: s.sites,
                    summary: s.summary.map(|c| WireSummary {
                        hits: c.hits,
                        fires: c.fires,
                        condition_false: c.condition_false,
                        errors: c.errors,
                        last_error: c.last_error,
                        series: c.series,
                        overflowed: c.overflowed,
                        sample_every: c.sample_every,
                        disarmed: c.disarmed,
                    }),
                })
                .collect(),
        };
        let request = self.request(report);
        let started = std::time::Instant::now();
        let reported = StatusServiceClient::new(channel.clone())
            .report(request)
            .await;
        self.time("report", started);
        match reported {
            Ok(_) => {}
            Err(status) if status.code() == Code::Unimplemented => {
                tracing::debug!("sonde agent: the server takes no status reports");
                self.status_supported = false;
            }
            Err(status) => {
                tracing::debug!(error = %describe(&status), "sonde agent: status report failed")
            }
        }
    }
}

/// A digest of the counters in `statuses`, to tell whether they moved since the last report.
fn counters_digest(statuses: &[TracepointStatus]) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for s in statuses {
        if let Some(c) = &s.summary {
            (&s.id, c.hits, c.fires, c.condition_false, c.errors).hash(&mut h);
            (c.series, c.overflowed, c.sample_every).hash(&mut h);
        }
    }
    h.finish()
}

impl Client {
    /// Sends the probe-site catalog (`sonde.v1.StatusService/ReportCatalog`). A server without
    /// it (Deep's, or an older Sonde) is not asked again; any other failure is retried on the
    /// next connection.
    async fn report_catalog(&mut self, channel: &Channel) {
        if !self.catalog_supported || !self.status_supported {
            return;
        }
        // Read before the sites: a site that first runs meanwhile is reported again next time.
        self.fields_reported = crate::site::fields_seen();
        let (sites, native) = {
            let installer = self.installer.lock().unwrap_or_else(|p| p.into_inner());
            (installer.catalog(), installer.native())
        };
        let catalog = SiteCatalog {
            agent_id: self.config.agent_id.clone(),
            resource: Some(self.resource.clone()),
            sites: sites
                .into_iter()
                .map(|s| ProbeSite {
                    file: s.file,
                    line: s.line,
                    kind: SiteKind::Probe as i32,
                    names: s.names.iter().map(|n| (*n).to_owned()).collect(),
                    module: s.module.to_owned(),
                    fields: s
                        .fields
                        .iter()
                        .map(|(name, fields)| CapturedFields {
                            name: (*name).to_owned(),
                            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
                        })
                        .collect(),
                })
                .collect(),
            native,
        };
        let request = self.request(catalog);
        let started = std::time::Instant::now();
        let reported = StatusServiceClient::new(channel.clone())
            .report_catalog(request)
            .await;
        self.time("catalog", started);
        match reported {
            Ok(_) => {}
            Err(status) if status.code() == Code::Unimplemented => {
                tracing::debug!("sonde agent: the server takes no site catalog");
                self.catalog_supported = false;
            }
            Err(status) => {
                tracing::debug!(error = %describe(&status), "sonde agent: catalog report failed")
            }
        }
    }
}

#[cfg(not(all(feature = "native", target_os = "linux", target_arch = "x86_64")))]
impl Client {
    /// Without native breakpoints there is nothing to answer about lines.
    fn catalog_server(&self, _channel: Channel) -> Option<std::future::Ready<()>> {
        None
    }
}

/// What `status` says, with its causes, and what to do when it shows a port mix-up.
fn describe(status: &Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    if let Some(hint) = port_mixup(&text) {
        text.push_str("; ");
        text.push_str(hint);
    }
    text
}

/// The hint for an error showing that the server is an HTTP server, not a gRPC one: an answer
/// without a `grpc-status` (tonic maps its HTTP status), or an HTTP/1 answer to the HTTP/2
/// connection preface (which h2 reads as a frame of an impossible size).
fn port_mixup(error: &str) -> Option<&'static str> {
    const HINT: &str = "the server answered as an HTTP server, not a gRPC one: is this Sonde's \
        HTTP API port (default 3300)? An agent connects to the control plane's gRPC port, \
        default 43315 (SONDE_AGENT_SERVER=http://HOST:43315)";
    // What tonic makes of a plain HTTP answer: no grpc-status (mapped from the HTTP status), or
    // a JSON or HTML body read as a gRPC frame (`{` is not a compression flag).
    let http = error.contains("grpc-status header missing")
        || error.contains("while receiving response with status")
        || error.contains("invalid compression flag")
        || error.contains("frame with invalid size");
    http.then_some(HINT)
}

/// What the agent says when the server answers the HTTP/2 connection preface with HTTP/1.
const HTTP1_HINT: &str = "the server answers HTTP/2 (gRPC) with HTTP/1: it is an HTTP server, \
    not a gRPC one: is this Sonde's HTTP API port (default 3300)? An agent connects to the \
    control plane's gRPC port, default 43315 (SONDE_AGENT_SERVER=http://HOST:43315)";

/// Whether the plaintext server at `url` answers the HTTP/2 connection preface with an HTTP/1
/// response (`HTTP/1.x ...`), as an HTTP/1-only server does. Asked once when a connection fails
/// for a reason that does not show it (the h2 client may see only the closed connection).
async fn answers_http1(url: &str) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(uri) = url.parse::<tonic::transport::Uri>() else {
        return false;
    };
    if uri.scheme_str() != Some("http") {
        return false;
    }
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let sniff = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .ok()?;
        let mut answer = [0u8; 8];
        let mut read = 0;
        while read < answer.len() {
            match stream.read(&mut answer[read..]).await.ok()? {
                0 => break,
                n => read += n,
            }
        }
        Some(answer[..read].starts_with(b"HTTP/1."))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), sniff).await,
        Ok(Some(true))
    )
}

/// Exponential backoff with full jitter: a random delay up to `base * 2^(failures-1)`, capped.
fn backoff(failures: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let cap = exp.min(BACKOFF_MAX);
    cap.mul_f64(fastrand::f64()).max(Duration::from_millis(50))
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for failures in 1..40 {
            let d = backoff(failures);
            assert!(d <= BACKOFF_MAX, "{failures}: {d:?}");
            assert!(d >= Duration::from_millis(50));
        }
        let early: Duration = (0..200).map(|_| backoff(1)).max().unwrap();
        assert!(early <= BACKOFF_BASE);
    }
}
