//! [`PushGateway`]: pushes a registry to a Prometheus Pushgateway from a background thread, for
//! batch jobs and services a Prometheus cannot scrape.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::Duration,
};

use base64::Engine as _;
use prometheus::Registry;

use crate::metrics::exposition::{self, Format};

/// Pushes a registry to a Prometheus Pushgateway on an interval, from a background thread.
///
/// Every push is an HTTP `PUT` of the registry's text exposition (format 0.0.4) to
/// `<url>/metrics/job/<job>{/<label>/<value>}`, which replaces everything the gateway holds for
/// that grouping key. The thread pushes once at start, then every interval, and a last time when
/// the [`PushHandle`] is shut down or dropped, so a short job's final values arrive.
///
/// A failed push (connection refused, timeout, an HTTP error status) is counted
/// ([`PushHandle::failures`]) and logged through `tracing` (a warning when pushes start failing,
/// debug while they go on failing, info when they work again); it never panics and never stops
/// the thread. Each push is bounded by the timeout (default 10 s), so a shutdown takes at most
/// about two timeouts (one push in flight, the final one).
///
/// Grouping values that are empty or hold anything but `[A-Za-z0-9_.~-]` (a `/` above all) are
/// sent base64url-encoded with the `@base64` suffix the Pushgateway defines, as is such a job name.
///
/// ```no_run
/// use std::time::Duration;
/// use sonde_agent::PushGateway;
///
/// let registry = prometheus::Registry::new();
/// let pusher = PushGateway::builder("http://pushgateway:9091")
///     .job("nightly_import")
///     .grouping("instance", "worker-3")
///     .interval(Duration::from_secs(15))
///     .registry(registry.clone())
///     .start()?;
/// // ... the job's work, recording into `registry` ...
/// pusher.shutdown(); // one last push, then the thread ends
/// # Ok::<(), sonde_agent::PushError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct PushGateway;

impl PushGateway {
    /// A builder for pushes to the gateway at `url` (`http://host:9091`, optionally with a path
    /// prefix). Defaults: interval 15 s, timeout 10 s, the `prometheus` crate's default registry.
    pub fn builder(url: impl Into<String>) -> PushGatewayBuilder {
        PushGatewayBuilder {
            url: url.into(),
            job: None,
            grouping: Vec::new(),
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            registry: None,
        }
    }
}

/// Configures a [`PushGateway`] pusher.
#[derive(Debug)]
pub struct PushGatewayBuilder {
    url: String,
    job: Option<String>,
    grouping: Vec<(String, String)>,
    interval: Duration,
    timeout: Duration,
    registry: Option<Registry>,
}

/// Why a pusher could not start.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// No job name was given (the Pushgateway requires one).
    #[error("a Pushgateway push needs a job name")]
    NoJob,
    /// The URL is not `http://` or `https://`.
    #[error("Pushgateway URL {0:?}: expected http:// or https://")]
    BadUrl(String),
    /// A grouping label name is not a valid Prometheus label name.
    #[error("grouping label {0:?} is not a valid label name")]
    BadLabel(String),
    /// The background thread could not be spawned.
    #[error("spawning the push thread: {0}")]
    Spawn(#[source] std::io::Error),
}

impl PushGatewayBuilder {
    /// The job name (required).
    pub fn job(mut self, job: impl Into<String>) -> Self {
        self.job = Some(job.into());
        self
    }

    /// A grouping label, added to the push path after the job (in the order given; a repeated
    /// name replaces the earlier value).
    pub fn grouping(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.grouping.retain(|(n, _)| *n != name);
        self.grouping.push((name, value.into()));
        self
    }

    /// Time between pushes (default 15 s; at least 10 ms).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Bound on each push, connecting included (default 10 s; at least 10 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(10));
        self
    }

    /// The registry to push (default: the `prometheus` crate's default registry).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Starts the background thread, which pushes at once and then every interval.
    pub fn start(self) -> Result<PushHandle, PushError> {
        let job = self.job.filter(|j| !j.is_empty()).ok_or(PushError::NoJob)?;
        let base = self.url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(PushError::BadUrl(self.url));
        }
        let mut url = format!("{base}/metrics/{}", segment("job", &job));
        for (name, value) in &self.grouping {
            if !valid_label_name(name) {
                return Err(PushError::BadLabel(name.clone()));
            }
            url.push('/');
            url.push_str(&segment(name, value));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .build()
            .into();
        let shared = Arc::new(Shared {
            url,
            registry: self
                .registry
                .unwrap_or_else(|| prometheus::default_registry().clone()),
            agent,
            pushes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            last_error: Mutex::new(None),
        });
        let (stop, stopped) = mpsc::channel::<()>();
        let interval = self.interval;
        let thread = std::thread::Builder::new()
            .name("sonde-pushgateway".into())
            .spawn({
                let shared = shared.clone();
                move || {
                    shared.push();
                    loop {
                        match stopped.recv_timeout(interval) {
                            Err(RecvTimeoutError::Timeout) => shared.push(),
                            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                                shared.push();
                                return;
                            }
                        }
                    }
                }
            })
            .map_err(PushError::Spawn)?;
        Ok(PushHandle {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// The running pusher. [`PushHandle::shutdown`] (or dropping it) pushes one last time and stops
/// the thread.
#[derive(Debug)]
pub struct PushHandle {
    shared: Arc<Shared>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl PushHandle {
    /// The URL pushed to.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// Pushes that succeeded.
    pub fn pushes(&self) -> u64 {
        self.shared.pushes.load(Ordering::Relaxed)
    }

    /// Pushes that failed.
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// Why the last failed push failed, if any did.
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Pushes one last time and waits for the thread to end (at most about two timeouts).
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for PushHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

struct Shared {
    url: String,
    registry: Registry,
    agent: ureq::Agent,
    pushes: AtomicU64,
    failures: AtomicU64,
    /// Whether the last push failed (to log the start and the end of an outage, not each push).
    failing: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushGateway")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn push(&self) {
        // A collector that panics must not end the thread (nor reach the application).
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let body = exposition::encode_registry(&self.registry, Format::Text);
            self.agent
                .put(&self.url)
                .header("Content-Type", Format::Text.content_type())
                .send(body)
                .map(drop)
                .map_err(|e| e.to_string())
        }))
        .unwrap_or_else(|_| Err("gathering the registry panicked".to_owned()));
        match result {
            Ok(()) => {
                self.pushes.fetch_add(1, Ordering::Relaxed);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(target: "sonde::metrics", url = %self.url, "Pushgateway pushes work again");
                }
            }
            Err(err) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                if self.failing.swap(true, Ordering::Relaxed) {
                    tracing::debug!(target: "sonde::metrics", url = %self.url, %err, "Pushgateway push failed");
                } else {
                    tracing::warn!(target: "sonde::metrics", url = %self.url, %err, "Pushgateway push failed");
                }
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
            }
        }
    }
}

/// `name/value` for the push path, base64url-encoded (`name@base64/...`) where the value is
/// not plain.
fn segment(name: &str, value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'~' | b'-'));
    if plain {
        format!("{name}/{value}")
    } else if value.is_empty() {
        // The Pushgateway's spelling of an empty value.
        format!("{name}@base64/=")
    } else {
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value);
        format!("{name}@base64/{encoded}")
    }
}

fn valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_encode_what_is_not_plain() {
        assert_eq!(segment("job", "batch-1"), "job/batch-1");
        assert_eq!(segment("path", "/var/tmp"), "path@base64/L3Zhci90bXA");
        assert_eq!(segment("instance", ""), "instance@base64/=");
        assert_eq!(segment("name", "a b"), "name@base64/YSBi");
    }

    #[test]
    fn the_builder_refuses_what_the_gateway_would() {
        let start = |b: PushGatewayBuilder| b.start().map(drop);
        assert!(matches!(
            start(PushGateway::builder("http://localhost:9091")),
            Err(PushError::NoJob)
        ));
        assert!(matches!(
            start(PushGateway::builder("localhost:9091").job("j")),
            Err(PushError::BadUrl(_))
        ));
        assert!(matches!(
            start(
                PushGateway::builder("http://localhost:9091")
                    .job("j")
                    .grouping("0bad", "v")
            ),
            Err(PushError::BadLabel(_))
        ));
    }
}
