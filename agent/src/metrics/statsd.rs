//! [`StatsdProvider`]: metrics sent over UDP in the StatsD line protocol, with DogStatsD tags,
//! through the `cadence` client.

use std::{
    net::{SocketAddr, ToSocketAddrs as _, UdpSocket},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    time::Duration,
};

use cadence::{
    BufferedUdpMetricSink, Counted as _, Distributed as _, Gauged as _, Histogrammed as _,
    MetricBuilder, StatsdClient,
};

use crate::metrics::provider::{
    Instrument, MetricKind, MetricProvider, MetricSpec, ProviderError, RecordError, Series,
};

/// Sends metrics to a StatsD server over UDP. Cheap to clone: clones share the socket, the
/// buffer and the flush thread.
///
/// What each kind becomes (`<prefix>.<name>:<value>|<type>[|@<rate>][|#k:v,...]`):
///
/// | kind | StatsD | notes |
/// | --- | --- | --- |
/// | COUNTER | count, `c` | StatsD counts are integers: whole units are sent and the fraction is carried to the next add (2.5 then 0.5 sends 2, then 1), so totals are kept to within 1 |
/// | GAUGE | gauge, `g` | the absolute value, also for `add`/`sub`: the provider keeps each series' value and sends the result, never a `+`/`-` delta (which a lost packet would skew for good) |
/// | HISTOGRAM | histogram, `h` | the raw value, in its own unit (seconds stay seconds); buckets are the server's business and the spec's are ignored |
/// | SUMMARY | distribution, `d` | DogStatsD's server-side percentiles over all hosts |
/// | callback gauge | gauge, `g` | read at every flush |
///
/// The builder's [`tag`](StatsdProviderBuilder::tag)s come first, then label keys and values as
/// `key:value` tags in label-key order (a label with an empty value is left out). Names are sent
/// as given (`orders_total` stays `orders_total`), after the optional prefix and a `.`.
///
/// Lines are buffered and sent as datagrams of at most
/// [`max_packet_size`](StatsdProviderBuilder::max_packet_size) bytes (default 1432, what fits an
/// Ethernet frame), when the buffer fills and every
/// [`flush_period`](StatsdProviderBuilder::flush_period) (default 1 s) from a background thread,
/// which also reads the callback gauges; the buffer is flushed when the last clone of the provider
/// drops. With a [`sample_rate`](StatsdProviderBuilder::sample_rate) below 1, counts, histograms
/// and distributions are sent with that probability and tagged `|@rate` so the server scales them
/// back; gauges are always sent.
///
/// Each record formats one line (an allocation) and appends it to the buffer under a lock: fine
/// for request-rate metrics, not free. Send errors (a full socket buffer: the socket is
/// non-blocking, so the application never waits on the network) are counted in
/// [`StatsdProvider::errors`] and logged once; they never reach the application.
///
/// ```
/// use sonde_agent::{StatsdProvider, metrics::Metrics};
///
/// let server = std::net::UdpSocket::bind("127.0.0.1:0")?;
/// let statsd = StatsdProvider::builder(server.local_addr()?.to_string())
///     .prefix("shop")
///     .build()?;
/// let metrics = Metrics::builder().provider(statsd.clone()).global_tag("env", "prod").build();
/// metrics.counter("orders_total", "Orders.").inc();
/// statsd.flush();
///
/// let mut buf = [0; 1500];
/// let n = server.recv(&mut buf)?;
/// assert_eq!(&buf[..n], b"shop.orders_total:1|c|#env:prod\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct StatsdProvider {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StatsdProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsdProvider")
            .field("addr", &self.inner.addr)
            .field("sample_rate", &self.inner.sample_rate)
            .finish_non_exhaustive()
    }
}

/// Configures a [`StatsdProvider`].
#[derive(Debug, Clone)]
pub struct StatsdProviderBuilder {
    addr: String,
    prefix: String,
    tags: Vec<(String, String)>,
    flush_period: Duration,
    max_packet_size: usize,
    sample_rate: f64,
}

/// Why a [`StatsdProvider`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StatsdError {
    /// The server address did not resolve.
    #[error("StatsD address {addr:?}: {reason}")]
    Address {
        /// The address given.
        addr: String,
        /// Why it did not resolve.
        reason: String,
    },
    /// The local UDP socket could not be set up.
    #[error("StatsD socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The flush thread could not be spawned.
    #[error("spawning the StatsD flush thread: {0}")]
    Spawn(#[source] std::io::Error),
}

impl StatsdProviderBuilder {
    /// A prefix for every name (`shop` sends `shop.<name>`). Default: none.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// A tag on everything sent (before the metric's own).
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.push((key.into(), value.into()));
        self
    }

    /// How often the buffer is sent even when not full, and callback gauges read (default 1 s;
    /// at least 1 ms).
    pub fn flush_period(mut self, period: Duration) -> Self {
        self.flush_period = period.max(Duration::from_millis(1));
        self
    }

    /// The largest datagram, in bytes (default 1432; at least 64). A single line longer than
    /// this goes out alone.
    pub fn max_packet_size(mut self, bytes: usize) -> Self {
        self.max_packet_size = bytes.max(64);
        self
    }

    /// The fraction of counts, histogram and distribution values sent (default 1; clamped to
    /// (0, 1]).
    pub fn sample_rate(mut self, rate: f64) -> Self {
        self.sample_rate = if rate.is_nan() {
            1.0
        } else {
            rate.clamp(f64::MIN_POSITIVE, 1.0)
        };
        self
    }

    /// Resolves the address, binds a non-blocking UDP socket and starts the flush thread.
    pub fn build(self) -> Result<StatsdProvider, StatsdError> {
        let address_error = |reason: String| StatsdError::Address {
            addr: self.addr.clone(),
            reason,
        };
        let addr: SocketAddr = self
            .addr
            .to_socket_addrs()
            .map_err(|e| address_error(e.to_string()))?
            .next()
            .ok_or_else(|| address_error("no address".into()))?;
        let local: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = UdpSocket::bind(local).map_err(StatsdError::Socket)?;
        socket.set_nonblocking(true).map_err(StatsdError::Socket)?;
        let sink = BufferedUdpMetricSink::with_capacity(addr, socket, self.max_packet_size)
            .map_err(|e| address_error(e.to_string()))?;
        let errors = Arc::new(AtomicU64::new(0));
        let warned = AtomicBool::new(false);
        let mut client = StatsdClient::builder(&self.prefix, sink).with_error_handler({
            let errors = errors.clone();
            move |err| {
                errors.fetch_add(1, Ordering::Relaxed);
                if !warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(target: "sonde::metrics", %err, "StatsD send failed (further failures are only counted)");
                }
            }
        });
        for (k, v) in &self.tags {
            client = client.with_tag(k, v);
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let inner = Arc::new(Inner {
            addr,
            client: client.build(),
            sample_rate: self.sample_rate,
            errors,
            callbacks: Mutex::default(),
            next_id: AtomicU64::new(0),
            _stop: stop,
        });
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        let period = self.flush_period;
        std::thread::Builder::new()
            .name("sonde-statsd-flush".into())
            .spawn(move || {
                // Ends when the last provider clone drops `Inner` and with it the sender.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(period) {
                    match weak.upgrade() {
                        Some(inner) => inner.flush(),
                        None => return,
                    }
                }
            })
            .map_err(StatsdError::Spawn)?;
        Ok(StatsdProvider { inner })
    }
}

impl StatsdProvider {
    /// A builder for a provider sending to `addr` (`host:port`; StatsD's usual port is 8125).
    pub fn builder(addr: impl Into<String>) -> StatsdProviderBuilder {
        StatsdProviderBuilder {
            addr: addr.into(),
            prefix: String::new(),
            tags: Vec::new(),
            flush_period: Duration::from_secs(1),
            max_packet_size: 1432,
            sample_rate: 1.0,
        }
    }

    /// Reads the callback gauges and sends everything buffered now.
    pub fn flush(&self) {
        self.inner.flush();
    }

    /// Lines that could not be sent so far.
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }
}

type ReadFn = Arc<dyn Fn() -> f64 + Send + Sync>;

#[derive(Clone)]
struct Callback {
    id: u64,
    name: Arc<str>,
    tags: Arc<[(String, String)]>,
    read: ReadFn,
}

struct Inner {
    addr: SocketAddr,
    client: StatsdClient,
    sample_rate: f64,
    errors: Arc<AtomicU64>,
    callbacks: Mutex<Vec<Callback>>,
    next_id: AtomicU64,
    /// Dropped with the last provider clone, which ends the flush thread.
    _stop: mpsc::Sender<()>,
}

impl Inner {
    fn flush(&self) {
        // Read the callbacks outside the lock: a callback may register or drop metrics.
        let callbacks: Vec<Callback> = self
            .callbacks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for c in callbacks {
            // A panicking callback must not end the flush thread.
            let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (c.read)()))
                .unwrap_or(f64::NAN);
            if value.is_finite() {
                tagged(self.client.gauge_with_tags(&c.name, value), &c.tags).send();
            }
        }
        if self.client.flush().is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether to send this value, given the sample rate.
    #[inline]
    fn sampled(&self) -> bool {
        self.sample_rate >= 1.0 || fastrand::f64() < self.sample_rate
    }
}

fn tagged<'a, T>(
    mut b: MetricBuilder<'a, 'a, T>,
    tags: &'a [(String, String)],
) -> MetricBuilder<'a, 'a, T>
where
    T: cadence::Metric + From<String>,
{
    for (k, v) in tags {
        b = b.with_tag(k, v);
    }
    b
}

fn tags_for(keys: &[String], values: &[&str]) -> Vec<(String, String)> {
    keys.iter()
        .zip(values)
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), (*v).to_owned()))
        .collect()
}

impl MetricProvider for StatsdProvider {
    fn name(&self) -> &str {
        "statsd"
    }

    fn register(&self, spec: &MetricSpec<'_>) -> Result<Box<dyn Instrument>, ProviderError> {
        Ok(Box::new(StatsdInstrument {
            inner: self.inner.clone(),
            name: spec.name.into(),
            kind: spec.kind,
            keys: spec.label_keys.iter().map(|k| (*k).to_owned()).collect(),
        }))
    }

    fn register_callback(
        &self,
        spec: &MetricSpec<'_>,
        label_values: &[&str],
        read: ReadFn,
    ) -> Result<Box<dyn Instrument>, ProviderError> {
        let keys: Vec<String> = spec.label_keys.iter().map(|k| (*k).to_owned()).collect();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner
            .callbacks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Callback {
                id,
                name: spec.name.into(),
                tags: tags_for(&keys, label_values).into(),
                read,
            });
        Ok(Box::new(StatsdCallback {
            inner: self.inner.clone(),
            id,
        }))
    }
}

struct StatsdInstrument {
    inner: Arc<Inner>,
    name: Arc<str>,
    kind: MetricKind,
    keys: Vec<String>,
}

impl Instrument for StatsdInstrument {
    fn series(&self, label_values: &[&str]) -> Result<Arc<dyn Series>, ProviderError> {
        Ok(Arc::new(StatsdSeries {
            inner: self.inner.clone(),
            name: self.name.clone(),
            tags: tags_for(&self.keys, label_values),
            kind: self.kind,
            // Counters: the fraction not sent yet. Gauges: the value.
            cell: AtomicU64::new(0f64.to_bits()),
        }))
    }
}

struct StatsdSeries {
    inner: Arc<Inner>,
    name: Arc<str>,
    tags: Vec<(String, String)>,
    kind: MetricKind,
    cell: AtomicU64,
}

impl StatsdSeries {
    fn send_gauge(&self, value: f64) {
        let b = self.inner.client.gauge_with_tags(&self.name, value);
        tagged(b, &self.tags).send();
    }

    /// Applies `f` to the cell's value; returns the old and new values.
    fn update(&self, f: impl Fn(f64) -> f64) -> (f64, f64) {
        let mut old = f64::from_bits(self.cell.load(Ordering::Relaxed));
        loop {
            let new = f(old);
            match self.cell.compare_exchange_weak(
                old.to_bits(),
                new.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return (old, new),
                Err(actual) => old = f64::from_bits(actual),
            }
        }
    }
}

impl Series for StatsdSeries {
    fn record(&self, value: f64) -> Result<(), RecordError> {
        self.record_weighted(value, 1)
    }

    /// Counters send `value × weight`, gauges the value; histograms and distributions send the
    /// value once with the sampling rate divided by `weight` (`|@0.0625` for 1 in 16), which
    /// StatsD servers scale back, as they do for the provider's own sampling.
    fn record_weighted(&self, value: f64, weight: u64) -> Result<(), RecordError> {
        if !value.is_finite() {
            return Err(RecordError::NotFinite);
        }
        let value = match self.kind {
            MetricKind::Counter => value * weight as f64,
            _ => value,
        };
        if !value.is_finite() {
            return Err(RecordError::NotFinite);
        }
        let rate = match self.kind {
            MetricKind::Histogram | MetricKind::Summary => {
                self.inner.sample_rate / weight.max(1) as f64
            }
            _ => self.inner.sample_rate,
        };
        let client = &self.inner.client;
        match self.kind {
            MetricKind::Counter => {
                if value < 0.0 {
                    return Err(RecordError::NegativeCounter);
                }
                if !self.inner.sampled() {
                    return Ok(());
                }
                let (old, new) = self.update(|carry| {
                    let f = (carry + value).fract();
                    // 0.7 + 0.3 may come to 0.999...: that is a whole unit, not a fraction.
                    if 1.0 - f < 1e-9 { 0.0 } else { f }
                });
                let whole = (old + value - new).round();
                if whole >= 1.0 {
                    // `as` saturates: a count past i64::MAX is sent as i64::MAX.
                    let mut b =
                        tagged(client.count_with_tags(&self.name, whole as i64), &self.tags);
                    if rate < 1.0 {
                        b = b.with_sampling_rate(rate);
                    }
                    b.send();
                }
            }
            MetricKind::Gauge => {
                self.cell.store(value.to_bits(), Ordering::Relaxed);
                self.send_gauge(value);
            }
            MetricKind::Histogram => {
                if self.inner.sampled() {
                    let mut b = tagged(client.histogram_with_tags(&self.name, value), &self.tags);
                    if rate < 1.0 {
                        b = b.with_sampling_rate(rate);
                    }
                    b.send();
                }
            }
            MetricKind::Summary => {
                if self.inner.sampled() {
                    let mut b =
                        tagged(client.distribution_with_tags(&self.name, value), &self.tags);
                    if rate < 1.0 {
                        b = b.with_sampling_rate(rate);
                    }
                    b.send();
                }
            }
        }
        Ok(())
    }

    fn add(&self, delta: f64) -> Result<(), RecordError> {
        if self.kind != MetricKind::Gauge {
            return Err(RecordError::Unsupported);
        }
        if !delta.is_finite() {
            return Err(RecordError::NotFinite);
        }
        let (_, new) = self.update(|v| v + delta);
        self.send_gauge(new);
        Ok(())
    }
}

/// A registered callback gauge; dropping it stops its reading.
struct StatsdCallback {
    inner: Arc<Inner>,
    id: u64,
}

impl Instrument for StatsdCallback {
    fn series(&self, _label_values: &[&str]) -> Result<Arc<dyn Series>, ProviderError> {
        Err(ProviderError::Unsupported(
            "a callback gauge is read, not recorded".into(),
        ))
    }
}

impl Drop for StatsdCallback {
    fn drop(&mut self) {
        self.inner
            .callbacks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|c| c.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_fractions_carry_to_the_next_add() {
        let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let p = StatsdProvider::builder(server.local_addr().expect("addr").to_string())
            .flush_period(Duration::from_secs(3600))
            .build()
            .expect("provider");
        let spec = MetricSpec {
            name: "c",
            help: "",
            kind: MetricKind::Counter,
            label_keys: &[],
            tracepoint_id: "",
            buckets: None,
        };
        let s = p
            .register(&spec)
            .expect("register")
            .series(&[])
            .expect("series");
        for v in [0.4, 0.4, 0.4, 2.5, 0.3] {
            s.record(v).expect("record");
        }
        assert_eq!(s.record(-1.0), Err(RecordError::NegativeCounter));
        assert_eq!(s.record(f64::NAN), Err(RecordError::NotFinite));
        assert_eq!(s.add(1.0), Err(RecordError::Unsupported));
        p.flush();
        let mut buf = [0; 1500];
        let n = server.recv(&mut buf).expect("a datagram");
        // 1.2 sends 1 (0.2 carried), 2.7 sends 2 (0.7), 1.0 sends 1.
        assert_eq!(
            std::str::from_utf8(&buf[..n]).expect("utf-8"),
            "c:1|c\nc:2|c\nc:1|c\n"
        );
    }
}
