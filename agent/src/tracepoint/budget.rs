//! [`Budgets`]: what one tracepoint may cost, and the counters that enforce Deep's fire count and
//! period ([`FireBudget`]) and the error budget ([`WindowCounter`]). The CPU budget is
//! `cpu.rs`'s.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::spec::now_unix_ms;

/// Local safety limits of a tracepoint, set on the agent ([`AgentBuilder::budgets`], or
/// `SONDE_AGENT_CPU_PERCENT` and friends in [`AgentBuilder::from_env`]).
///
/// The CPU budget is relative to the process: a tracepoint may use [`Budgets::cpu_share`] of the
/// CPU time the process itself used, and past it a metric tracepoint samples one hit in N with
/// weight N rather than stopping (see the design notes in `tracepoint/cpu.rs`, and docs/budgets.md).
///
/// [`AgentBuilder::budgets`]: crate::AgentBuilder::budgets
/// [`AgentBuilder::from_env`]: crate::AgentBuilder::from_env
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    /// The share of the process's CPU time one tracepoint may use (default 0.01, 1%). A
    /// tracepoint's `cpu_percent` arg overrides it.
    pub cpu_share: f64,
    /// The share all tracepoints of the agent may use together (default 0.02, 2%).
    pub agent_cpu_share: f64,
    /// CPU time per second a tracepoint may always use, however idle the process (default 1 ms,
    /// 0.1% of a core).
    pub cpu_floor: Duration,
    /// How often the CPU budget is judged and the sample factor adjusted (default 1 s).
    pub cpu_window: Duration,
    /// The largest sample factor (rounded up to a power of two; default 4096). A tracepoint
    /// still over budget there disarms.
    pub max_sample_every: u64,
    /// Evaluation errors a tracepoint may make per [`Budgets::window`].
    pub errors: u64,
    /// The error budget's window.
    pub window: Duration,
    /// Label sets per metric before excess ones fold into the overflow series.
    pub max_series: usize,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            cpu_share: 0.01,
            agent_cpu_share: 0.02,
            cpu_floor: Duration::from_millis(1),
            cpu_window: Duration::from_secs(1),
            max_sample_every: 4096,
            errors: 100,
            window: Duration::from_secs(10),
            max_series: 1000,
        }
    }
}

impl Budgets {
    /// Budgets with no CPU limit at all: never samples, never disarms for CPU (benchmarks that
    /// measure every hit, and tests that count them).
    pub fn unlimited_cpu() -> Self {
        Self {
            cpu_share: f64::INFINITY,
            agent_cpu_share: f64::INFINITY,
            cpu_floor: Duration::from_secs(3600),
            ..Self::default()
        }
    }

    /// Checks the values: shares positive (infinite allowed), a window of at least 10 ms.
    pub(crate) fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("cpu_share", self.cpu_share),
            ("agent_cpu_share", self.agent_cpu_share),
        ] {
            if v.is_nan() || v <= 0.0 {
                return Err(format!("budgets: {name} must be above 0, not {v}"));
            }
        }
        if self.cpu_window < Duration::from_millis(10) {
            return Err(format!(
                "budgets: cpu_window must be at least 10ms, not {:?}",
                self.cpu_window
            ));
        }
        Ok(())
    }
}

/// A fire budget: at most `remaining` fires (negative = unlimited), at least `period_ms` apart.
pub(crate) struct FireBudget {
    remaining: AtomicI64,
    period_ms: u64,
    last_ms: AtomicU64,
}

impl FireBudget {
    pub fn new(count: i64, period_ms: u64) -> Self {
        Self {
            remaining: AtomicI64::new(count),
            period_ms,
            last_ms: AtomicU64::new(0),
        }
    }

    /// Whether it allows every fire (no count, no period).
    pub(crate) fn is_unlimited(&self) -> bool {
        self.period_ms == 0 && self.remaining.load(Ordering::Relaxed) < 0
    }

    /// Takes one fire if the budget allows.
    pub(crate) fn try_fire(&self) -> bool {
        let remaining = self.remaining.load(Ordering::Relaxed);
        if remaining == 0 {
            return false;
        }
        // Unlimited (the usual metric tracepoint): nothing to take, so no locked write per hit.
        if remaining < 0 && self.period_ms == 0 {
            return true;
        }
        if self.period_ms > 0 {
            let now = now_unix_ms();
            let last = self.last_ms.load(Ordering::Relaxed);
            if last != 0 && now.saturating_sub(last) < self.period_ms {
                return false;
            }
            if self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                return false;
            }
        }
        // Negative means unlimited; positive counts down to zero.
        self.remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| match r {
                0 => None,
                r if r < 0 => Some(r),
                r => Some(r - 1),
            })
            .is_ok()
    }
}

/// Usage within a fixed window that restarts when it has passed.
pub(crate) struct WindowCounter {
    start: Mutex<Instant>,
    used: AtomicU64,
}

impl WindowCounter {
    pub(crate) fn new() -> Self {
        Self {
            start: Mutex::new(Instant::now()),
            used: AtomicU64::new(0),
        }
    }

    /// Adds `amount`; returns the total in the current window.
    pub(crate) fn add(&self, amount: u64, window: Duration) -> u64 {
        if let Ok(mut start) = self.start.try_lock()
            && start.elapsed() >= window
        {
            *start = Instant::now();
            self.used.store(0, Ordering::Relaxed);
        }
        self.used.fetch_add(amount, Ordering::Relaxed) + amount
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fire_budgets_count_and_space() {
        let unlimited = FireBudget::new(-1, 0);
        assert!((0..1000).all(|_| unlimited.try_fire()));
        let three = FireBudget::new(3, 0);
        assert_eq!((0..10).filter(|_| three.try_fire()).count(), 3);
        let spaced = FireBudget::new(-1, 60_000);
        assert!(spaced.try_fire());
        assert!(!spaced.try_fire(), "within the period");
    }

    #[test]
    fn window_counters_restart() {
        let c = WindowCounter::new();
        assert_eq!(c.add(5, Duration::from_secs(60)), 5);
        assert_eq!(c.add(5, Duration::from_secs(60)), 10);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.add(5, Duration::from_millis(1)), 5, "a new window");
    }
}
