//! [`SlidingSummary`]: count, sum and quantiles over a sliding time window, for SUMMARY metrics.
//!
//! Count and sum cover all time, as Prometheus expects of a summary. Quantiles cover the last
//! `max_age`: the window is split into `age_buckets` rotating buckets, each keeping a uniform
//! reservoir sample of at most `reservoir` observations (Vitter's algorithm R), so memory is
//! bounded whatever the rate. A quantile is read from the merged, sorted samples of the live
//! buckets when metrics are collected, never on the observing thread.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::metrics::provider::{RecordError, Series, SeriesSnapshot};

/// Quantiles reported unless configured otherwise: median, p90, p99.
pub const DEFAULT_QUANTILES: &[f64] = &[0.5, 0.9, 0.99];

/// Settings of a summary's window.
#[derive(Debug, Clone, Copy)]
pub struct SummaryWindow {
    /// How far back quantiles look.
    pub max_age: Duration,
    /// How many buckets the window rotates through.
    pub age_buckets: u32,
    /// Samples kept per bucket.
    pub reservoir: usize,
}

impl Default for SummaryWindow {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(60),
            age_buckets: 5,
            reservoir: 512,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    started: Instant,
    seen: u64,
    samples: Vec<f64>,
}

#[derive(Debug)]
struct State {
    count: u64,
    sum: f64,
    buckets: Vec<Bucket>,
    current: usize,
    rng: fastrand::Rng,
}

/// A summary: count, sum, and quantiles over a sliding window.
#[derive(Debug)]
pub struct SlidingSummary {
    window: SummaryWindow,
    state: Mutex<State>,
}

impl SlidingSummary {
    /// An empty summary.
    pub fn new(window: SummaryWindow) -> Self {
        let window = SummaryWindow {
            age_buckets: window.age_buckets.max(1),
            reservoir: window.reservoir.max(1),
            ..window
        };
        let now = Instant::now();
        Self {
            window,
            state: Mutex::new(State {
                count: 0,
                sum: 0.0,
                buckets: (0..window.age_buckets)
                    .map(|_| Bucket {
                        started: now,
                        seen: 0,
                        samples: Vec::new(),
                    })
                    .collect(),
                current: 0,
                rng: fastrand::Rng::with_seed(0x5eed),
            }),
        }
    }

    fn bucket_span(&self) -> Duration {
        self.window.max_age / self.window.age_buckets
    }

    fn rotate(&self, state: &mut State, now: Instant) {
        let span = self.bucket_span();
        // Advance at most one full turn; buckets older than the window are emptied.
        for _ in 0..state.buckets.len() {
            if now.duration_since(state.buckets[state.current].started) < span {
                break;
            }
            state.current = (state.current + 1) % state.buckets.len();
            let b = &mut state.buckets[state.current];
            b.started = now;
            b.seen = 0;
            b.samples.clear();
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        self.observe_weighted(value, 1);
    }

    /// Records `weight` observations of `value`: the count and the sum as `weight` of them,
    /// the window's sample once (the observation stands for `weight` hits of which it is a
    /// uniform sample, so the quantiles keep their shape).
    pub fn observe_weighted(&self, value: f64, weight: u64) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.count += weight;
        state.sum += value * weight as f64;
        self.rotate(&mut state, now);
        let reservoir = self.window.reservoir;
        let State {
            buckets,
            current,
            rng,
            ..
        } = &mut *state;
        let b = &mut buckets[*current];
        b.seen += 1;
        if b.samples.len() < reservoir {
            b.samples.push(value);
        } else {
            let j = rng.u64(0..b.seen) as usize;
            if j < reservoir {
                b.samples[j] = value;
            }
        }
    }

    /// All-time count and sum, and the requested quantiles over the window (`NaN` when the
    /// window holds no observation, as Prometheus clients report it).
    pub fn snapshot(&self, quantiles: &[f64]) -> (u64, f64, Vec<(f64, f64)>) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.rotate(&mut state, now);
        let horizon = self.window.max_age;
        let mut samples: Vec<f64> = state
            .buckets
            .iter()
            .filter(|b| now.duration_since(b.started) < horizon)
            .flat_map(|b| b.samples.iter().copied())
            .collect();
        let (count, sum) = (state.count, state.sum);
        drop(state);
        samples.sort_by(f64::total_cmp);
        let qs = quantiles
            .iter()
            .map(|&q| {
                let v = if samples.is_empty() {
                    f64::NAN
                } else {
                    let rank = (q.clamp(0.0, 1.0) * (samples.len() - 1) as f64).round() as usize;
                    samples[rank]
                };
                (q, v)
            })
            .collect();
        (count, sum, qs)
    }
}

impl Series for SlidingSummary {
    fn record(&self, value: f64) -> Result<(), RecordError> {
        self.observe(RecordError::finite(value)?);
        Ok(())
    }

    fn record_weighted(&self, value: f64, weight: u64) -> Result<(), RecordError> {
        self.observe_weighted(RecordError::finite(value)?, weight);
        Ok(())
    }

    fn snapshot(&self) -> Option<SeriesSnapshot> {
        let (count, sum, quantiles) = SlidingSummary::snapshot(self, DEFAULT_QUANTILES);
        Some(SeriesSnapshot::Summary {
            count,
            sum,
            quantiles,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_uniform_stream() {
        let s = SlidingSummary::new(SummaryWindow {
            reservoir: 10_000,
            ..SummaryWindow::default()
        });
        for i in 1..=1000 {
            s.observe(f64::from(i));
        }
        let (count, sum, qs) = s.snapshot(DEFAULT_QUANTILES);
        assert_eq!(count, 1000);
        assert_eq!(sum, 500_500.0);
        assert_eq!(qs[0], (0.5, 501.0));
        assert_eq!(qs[1], (0.9, 900.0));
        assert_eq!(qs[2], (0.99, 990.0));
    }

    #[test]
    fn the_reservoir_bounds_memory_and_stays_representative() {
        let s = SlidingSummary::new(SummaryWindow {
            reservoir: 200,
            ..SummaryWindow::default()
        });
        for i in 0..100_000 {
            s.observe(f64::from(i % 1000));
        }
        let (count, _, qs) = s.snapshot(&[0.5]);
        assert_eq!(count, 100_000);
        let median = qs[0].1;
        assert!((350.0..650.0).contains(&median), "median {median}");
        assert!(
            s.state
                .lock()
                .unwrap()
                .buckets
                .iter()
                .all(|b| b.samples.len() <= 200)
        );
    }

    #[test]
    fn old_observations_leave_the_window_but_not_the_count() {
        let s = SlidingSummary::new(SummaryWindow {
            max_age: Duration::from_millis(50),
            age_buckets: 2,
            reservoir: 100,
        });
        s.observe(1000.0);
        std::thread::sleep(Duration::from_millis(80));
        s.observe(1.0);
        let (count, sum, qs) = s.snapshot(&[0.99]);
        assert_eq!((count, sum), (2, 1001.0));
        assert_eq!(qs[0].1, 1.0, "the old 1000 has aged out");
        std::thread::sleep(Duration::from_millis(80));
        let (_, _, qs) = s.snapshot(&[0.5]);
        assert!(qs[0].1.is_nan(), "an empty window reports NaN");
    }
}
