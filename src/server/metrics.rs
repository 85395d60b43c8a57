//! [`ServerMetrics`]: the server's own Prometheus metrics, served on `GET /metrics`.

use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// The server's metrics, registered in a registry of their own.
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    registry: Registry,
    /// Polls answered, by transport (`grpc`, `http`) and result (`update`, `no_change`).
    pub polls: IntCounterVec,
    /// Watch streams open now.
    pub watchers: IntGauge,
    /// Tracepoints held, over all tenants.
    pub tracepoints: IntGauge,
    /// Agents seen within the TTL or watching.
    pub agents: IntGauge,
    /// Snapshots received from agents.
    pub snapshots: IntCounterVec,
    /// Status reports received from agents.
    pub status_reports: IntCounterVec,
    /// HTTP request latency by route, method and status.
    pub http_requests: HistogramVec,
    /// gRPC request latency by method (unary calls).
    pub grpc_requests: HistogramVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

impl ServerMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let polls = IntCounterVec::new(
            Opts::new(
                "sonde_server_polls_total",
                "Polls answered, by transport and result.",
            ),
            &["transport", "result"],
        )
        .expect("valid metric");
        let watchers = IntGauge::new("sonde_server_watchers", "Watch streams open now.")
            .expect("valid metric");
        let tracepoints = IntGauge::new(
            "sonde_server_tracepoints",
            "Tracepoints held, over all tenants.",
        )
        .expect("valid metric");
        let agents = IntGauge::new(
            "sonde_server_agents",
            "Agents that polled within the TTL or hold a watch.",
        )
        .expect("valid metric");
        let snapshots = IntCounterVec::new(
            Opts::new(
                "sonde_server_snapshots_received_total",
                "Snapshots received from agents.",
            ),
            &["tenant"],
        )
        .expect("valid metric");
        let status_reports = IntCounterVec::new(
            Opts::new(
                "sonde_server_status_reports_total",
                "Status reports received from agents.",
            ),
            &["tenant"],
        )
        .expect("valid metric");
        let http_requests = HistogramVec::new(
            HistogramOpts::new(
                "sonde_server_http_request_duration_seconds",
                "HTTP request latency by route, method and status.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let grpc_requests = HistogramVec::new(
            HistogramOpts::new(
                "sonde_server_grpc_request_duration_seconds",
                "gRPC unary request latency by method.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method"],
        )
        .expect("valid metric");
        for c in [
            Box::new(polls.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(watchers.clone()),
            Box::new(tracepoints.clone()),
            Box::new(agents.clone()),
            Box::new(snapshots.clone()),
            Box::new(status_reports.clone()),
            Box::new(http_requests.clone()),
            Box::new(grpc_requests.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            polls,
            watchers,
            tracepoints,
            agents,
            snapshots,
            status_reports,
            http_requests,
            grpc_requests,
        }
    }

    /// Registers another collector (the ad-hoc session metrics) so that `render` exposes it too.
    pub fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> prometheus::Result<()> {
        self.registry.register(collector)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(%err, "encoding server metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
