//! [`SelfMetrics`]: the agent's own metrics, `sonde_agent_*`, through any provider
//! (`AgentBuilder::self_metrics`).
//!
//! | metric | tags | what |
//! |---|---|---|
//! | `sonde_agent_tracepoints_installed_total` | | tracepoints installed (new or changed) |
//! | `sonde_agent_tracepoints_removed_total` | | tracepoints removed (deleted or changed) |
//! | `sonde_agent_tracepoints_expired_total` | | tracepoints hit after their `window_end` (counted once each) |
//! | `sonde_agent_tracepoints_active` | | tracepoints held now |
//! | `sonde_agent_tracepoint_fires_total` | `tracepoint` | hits that recorded or logged |
//! | `sonde_agent_tracepoint_condition_false_total` | `tracepoint` | hits whose condition was false |
//! | `sonde_agent_tracepoint_errors_total` | `tracepoint`, `stage`, `kind` | evaluation errors (`stage`: condition, label, value, log, panic) |
//! | `sonde_agent_tracepoint_evaluation_seconds` | `tracepoint` | CPU time per evaluated hit (at most one evaluation in 64 is timed, on the thread's CPU clock, less what the clock's reads add) |
//! | `sonde_agent_tracepoint_cache_refill_seconds` | `tracepoint` | estimated CPU time the application loses per evaluated hit fetching back what the evaluation displaced from the caches (the timed evaluation less the same one repeated at once; tracepoints with only a condition and metrics) |
//! | `sonde_agent_tracepoint_sample_every` | `tracepoint` | N: one hit in N is evaluated and recorded with weight N (1: every hit) |
//! | `sonde_agent_tracepoint_disarms_total` | `tracepoint`, `reason` | local disarms (`cpu`, `errors`) |
//! | `sonde_agent_cardinality_overflow_total` | `tracepoint` | records folded into the overflow series |
//! | `sonde_agent_control_plane_request_duration_seconds` | `kind` | poll, watch (to first message), report |
//! | `sonde_agent_control_plane_failures_total` | | failed connections and calls |
//! | `sonde_agent_control_plane_retries_total` | | reconnect attempts after a failure |
//! | `sonde_agent_circuit_breaker_opened_total`, `..._half_open_total` | | breaker transitions |
//! | `sonde_agent_circuit_breaker_open` | | 1 while the breaker is open |
//! | `sonde_agent_snapshots_sent_total` | | snapshots the server accepted |
//! | `sonde_agent_snapshots_dropped_total` | | snapshots dropped: the queue was full (server away) or the server refused them |
//!
//! With native breakpoints on (feature `native`), also, updated once a second:
//!
//! | metric | tags | what |
//! |---|---|---|
//! | `sonde_agent_native_traps_total` | `tracepoint` | hits of natively armed lines (int3 or jump) |
//! | `sonde_agent_native_throttled_total` | `tracepoint` | hits the per-tracepoint token bucket turned away |
//! | `sonde_agent_native_dropped_records_total` | | captures lost for want of ring space |
//! | `sonde_agent_native_foreign_traps_total` | | SIGTRAPs that were not Sonde's (passed on) |
//! | `sonde_agent_native_lines_armed` | | lines armed natively now |
//! | `sonde_agent_native_jump_addresses` | | armed addresses served by a jump trampoline now |
//!
//! A native line disarmed by its trap budget counts in `sonde_agent_tracepoint_disarms_total`
//! with `reason="native_traps"`.

use std::sync::Arc;

use crate::{
    metrics::provider::MetricProvider,
    metrics::{Counter, CounterVec, Gauge, GaugeVec, Metrics, Timer, TimerVec},
};

/// The agent's own instruments.
#[derive(Debug)]
pub(crate) struct SelfMetrics {
    #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
    factory: Metrics,
    fires: CounterVec,
    condition_false: CounterVec,
    errors: CounterVec,
    evaluation: TimerVec,
    refill: TimerVec,
    disarms: CounterVec,
    overflow: CounterVec,
    sample_every: GaugeVec,
    pub installed: Counter,
    pub removed: Counter,
    expired: Counter,
    pub active: Gauge,
    pub requests: TimerVec,
    pub failures: Counter,
    pub retries: Counter,
    pub breaker_opened: Counter,
    pub breaker_half_open: Counter,
    pub breaker_open: Gauge,
    pub snapshots_sent: Counter,
    pub snapshots_dropped: Counter,
}

impl SelfMetrics {
    pub fn new(provider: Arc<dyn MetricProvider>) -> Self {
        let m = Metrics::builder()
            .shared_provider(provider)
            .namespace("sonde_agent")
            .build();
        Self {
            #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
            factory: m.clone(),
            fires: m.counter_vec(
                "tracepoint_fires_total",
                "Tracepoint hits that recorded metrics or logged.",
                &["tracepoint"],
            ),
            condition_false: m.counter_vec(
                "tracepoint_condition_false_total",
                "Tracepoint hits whose condition was false.",
                &["tracepoint"],
            ),
            errors: m.counter_vec(
                "tracepoint_errors_total",
                "Tracepoint evaluation errors by stage and kind.",
                &["tracepoint", "stage", "kind"],
            ),
            evaluation: m.timer_vec(
                "tracepoint_evaluation_seconds",
                "CPU time spent evaluating a tracepoint per evaluated hit (at most one in 64 is timed; the clock's reads are not counted).",
                &["tracepoint"],
            ),
            refill: m.timer_vec(
                "tracepoint_cache_refill_seconds",
                "Estimated CPU time the application loses per evaluated hit refilling the caches the evaluation displaced (the timed evaluation less the same one repeated at once, warm).",
                &["tracepoint"],
            ),
            disarms: m.counter_vec(
                "tracepoint_disarms_total",
                "Tracepoints disarmed locally by a budget.",
                &["tracepoint", "reason"],
            ),
            sample_every: m.gauge_vec(
                "tracepoint_sample_every",
                "One hit in this many is evaluated (1: every hit); each evaluated hit records with \
                 this weight to keep the tracepoint within its CPU budget.",
                &["tracepoint"],
            ),
            overflow: m.counter_vec(
                "cardinality_overflow_total",
                "Records folded into a metric's overflow series.",
                &["tracepoint"],
            ),
            installed: m.counter("tracepoints_installed_total", "Tracepoints installed."),
            removed: m.counter("tracepoints_removed_total", "Tracepoints removed."),
            expired: m.counter(
                "tracepoints_expired_total",
                "Tracepoints reached after their window ended.",
            ),
            active: m.gauge("tracepoints_active", "Tracepoints held now."),
            requests: m.timer_vec(
                "control_plane_request_duration_seconds",
                "Control-plane calls: poll, watch (to its first message), report.",
                &["kind"],
            ),
            failures: m.counter(
                "control_plane_failures_total",
                "Failed control-plane connections and calls.",
            ),
            retries: m.counter(
                "control_plane_retries_total",
                "Reconnection attempts after a failure.",
            ),
            breaker_opened: m.counter(
                "circuit_breaker_opened_total",
                "Times the control-plane circuit breaker opened.",
            ),
            breaker_half_open: m.counter(
                "circuit_breaker_half_open_total",
                "Times the breaker let one attempt through after being open.",
            ),
            breaker_open: m.gauge(
                "circuit_breaker_open",
                "1 while the circuit breaker is open.",
            ),
            snapshots_sent: m.counter(
                "snapshots_sent_total",
                "Snapshots the server accepted.",
            ),
            snapshots_dropped: m.counter(
                "snapshots_dropped_total",
                "Snapshots dropped: the bounded queue was full, or the server refused them.",
            ),
        }
    }

    /// The native breakpoints' instruments, made when native breakpoints are switched on.
    #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
    pub fn native(&self) -> NativeMetrics {
        let m = &self.factory;
        NativeMetrics {
            traps: m.counter_vec(
                "native_traps_total",
                "Hits of lines armed natively (int3 or jump trampoline).",
                &["tracepoint"],
            ),
            throttled: m.counter_vec(
                "native_throttled_total",
                "Native hits turned away by the tracepoint's token bucket.",
                &["tracepoint"],
            ),
            dropped_records: m.counter(
                "native_dropped_records_total",
                "Native captures lost for want of ring space.",
            ),
            foreign_traps: m.counter(
                "native_foreign_traps_total",
                "SIGTRAPs that were not Sonde's, passed to the previous handler.",
            ),
            lines_armed: m.gauge("native_lines_armed", "Lines armed natively now."),
            jump_addresses: m.gauge(
                "native_jump_addresses",
                "Natively armed addresses served by a jump trampoline now.",
            ),
        }
    }

    /// The instruments of one tracepoint, resolved once at install.
    pub fn for_tracepoint(&self, id: &str) -> TracepointMetrics {
        TracepointMetrics {
            fires: self.fires.with(&[id]),
            condition_false: self.condition_false.with(&[id]),
            evaluation: self.evaluation.with(&[id]),
            refill: self.refill.with(&[id]),
            overflow: self.overflow.with(&[id]),
            errors: self.errors.clone(),
            disarms: self.disarms.clone(),
            expired: self.expired.clone(),
            sample_every: {
                let g = self.sample_every.with(&[id]);
                g.set(1.0);
                g
            },
            id: id.to_owned(),
        }
    }
}

/// The native breakpoints' instruments (see the module's table).
#[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
#[derive(Debug)]
pub(crate) struct NativeMetrics {
    pub traps: CounterVec,
    pub throttled: CounterVec,
    pub dropped_records: Counter,
    pub foreign_traps: Counter,
    pub lines_armed: Gauge,
    pub jump_addresses: Gauge,
}

/// One tracepoint's instruments.
#[derive(Debug)]
pub(crate) struct TracepointMetrics {
    pub fires: Counter,
    pub condition_false: Counter,
    pub evaluation: Timer,
    pub refill: Timer,
    pub overflow: Counter,
    errors: CounterVec,
    disarms: CounterVec,
    pub expired: Counter,
    pub sample_every: Gauge,
    id: String,
}

impl TracepointMetrics {
    #[cold]
    pub fn error(&self, stage: &str, kind: &str) {
        self.errors.add(&[&self.id, stage, kind], 1.0);
    }

    #[cold]
    pub fn disarm(&self, reason: &str) {
        self.disarms.add(&[&self.id, reason], 1.0);
    }
}
