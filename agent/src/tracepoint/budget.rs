//! [`Budgets`]: what one tracepoint may cost, and the counters that enforce it ([`FireBudget`]
//! for Deep's fire count and period, [`WindowCounter`] for CPU and errors per window).

use std::{
    sync::{
        Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::spec::now_unix_ms;

/// One hit in this many is timed for the CPU budget (timing costs two clock reads).
pub const CPU_SAMPLE_EVERY: u64 = 16;

/// Timed hits a window needs before the CPU budget may disarm (so 8 × 16 = 128 hits at least):
/// the budget guards hot lines; a line hit a few times cannot cost much.
pub const MIN_CPU_SAMPLES: u64 = 8;

/// Local safety limits of one tracepoint.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    /// CPU time a tracepoint may spend evaluating per [`Budgets::window`].
    pub cpu: Duration,
    /// Evaluation errors a tracepoint may make per [`Budgets::window`].
    pub errors: u64,
    /// The accounting window.
    pub window: Duration,
    /// Label sets per metric before excess ones fold into the overflow series.
    pub max_series: usize,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            cpu: Duration::from_millis(50),
            errors: 100,
            window: Duration::from_secs(10),
            max_series: 1000,
        }
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

    /// Takes one fire if the budget allows.
    pub(crate) fn try_fire(&self) -> bool {
        if self.remaining.load(Ordering::Relaxed) == 0 {
            return false;
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
