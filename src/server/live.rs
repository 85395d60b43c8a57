//! [`Live`]: how fast each tracepoint is hit, summed over the agents that report counters, over
//! the last minutes: what the console plots.
//!
//! Agents send their counters with their status reports (about once a second while they move).
//! Each report adds how far an agent's counters moved since its previous one (a counter that went
//! down started again, after an edit or a restart, so it moved by its whole value) to the bucket of
//! the current [`BUCKET`] of the tracepoint. A tracepoint keeps [`BUCKETS`] of them (five
//! minutes) in a ring; one that no report has touched for [`FORGET_AFTER`] is dropped by
//! [`Live::prune`], so memory follows the tracepoints agents report on.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use super::agents::Counters;

/// The width of one bucket.
pub const BUCKET: Duration = Duration::from_secs(5);
/// Buckets kept per tracepoint: five minutes.
pub const BUCKETS: usize = 60;
/// A tracepoint no report touched for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The rates of one tracepoint over one bucket, summed over agents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rate {
    /// The bucket's start, Unix milliseconds.
    pub t: u64,
    /// Hits per second.
    pub hits: f64,
    /// Fires per second.
    pub fires: f64,
    /// Evaluation errors per second.
    pub errors: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Bucket number (Unix time divided by [`BUCKET`]).
    n: u64,
    hits: u64,
    fires: u64,
    errors: u64,
}

/// Recent rates of every tracepoint, per tenant.
#[derive(Debug, Default)]
pub struct Live {
    inner: Mutex<HashMap<(String, String), VecDeque<Bucket>>>,
}

/// How far counters moved from `before` to `now` (all of `now` when they went down or there was
/// no previous report).
pub fn moved(before: Option<&Counters>, now: &Counters) -> Counters {
    let step = |b: Option<u64>, n: u64| match b {
        Some(b) if n >= b => n - b,
        _ => n,
    };
    Counters {
        hits: step(before.map(|b| b.hits), now.hits),
        fires: step(before.map(|b| b.fires), now.fires),
        errors: step(before.map(|b| b.errors), now.errors),
        ..Counters::default()
    }
}

fn bucket_now() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    ms / BUCKET.as_millis() as u64
}

impl Live {
    /// Adds what moved, per tracepoint, to the current bucket of each.
    pub fn add(&self, tenant: &str, moved: Vec<(String, Counters)>) {
        self.add_at(tenant, moved, bucket_now());
    }

    fn add_at(&self, tenant: &str, moved: Vec<(String, Counters)>, n: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (id, c) in moved {
            if c.hits == 0 && c.fires == 0 && c.errors == 0 {
                continue;
            }
            let ring = inner.entry((tenant.to_owned(), id)).or_default();
            match ring.back_mut() {
                Some(last) if last.n == n => {
                    last.hits += c.hits;
                    last.fires += c.fires;
                    last.errors += c.errors;
                }
                _ => {
                    ring.push_back(Bucket {
                        n,
                        hits: c.hits,
                        fires: c.fires,
                        errors: c.errors,
                    });
                    while ring.front().is_some_and(|b| b.n + BUCKETS as u64 <= n) {
                        ring.pop_front();
                    }
                }
            }
        }
    }

    /// The last [`BUCKETS`] buckets of the tracepoint, oldest first, ending with the current
    /// (still filling) one, each as rates per second; buckets without reports are zero.
    pub fn rates(&self, tenant: &str, tracepoint: &str) -> Vec<Rate> {
        self.rates_at(tenant, tracepoint, bucket_now())
    }

    fn rates_at(&self, tenant: &str, tracepoint: &str, now: u64) -> Vec<Rate> {
        let secs = BUCKET.as_secs_f64();
        let width = BUCKET.as_millis() as u64;
        let first = now + 1 - BUCKETS as u64;
        let mut out: Vec<Rate> = (first..=now)
            .map(|n| Rate {
                t: n * width,
                ..Rate::default()
            })
            .collect();
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ring) = inner.get(&(tenant.to_owned(), tracepoint.to_owned())) {
            for b in ring.iter().filter(|b| b.n >= first && b.n <= now) {
                let slot = &mut out[(b.n - first) as usize];
                slot.hits = b.hits as f64 / secs;
                slot.fires = b.fires as f64 / secs;
                slot.errors = b.errors as f64 / secs;
            }
        }
        out
    }

    /// Forgets tracepoints no report touched for ten minutes.
    pub fn prune(&self) {
        let horizon = FORGET_AFTER.as_secs() / BUCKET.as_secs();
        let now = bucket_now();
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, ring| ring.back().is_some_and(|b| b.n + horizon > now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(n: u64) -> Counters {
        Counters {
            hits: n,
            fires: n / 2,
            ..Counters::default()
        }
    }

    #[test]
    fn moves_count_from_the_previous_report_and_restart_from_zero() {
        assert_eq!(moved(None, &hits(10)).hits, 10);
        assert_eq!(moved(Some(&hits(10)), &hits(25)).hits, 15);
        assert_eq!(moved(Some(&hits(25)), &hits(4)).hits, 4, "reinstalled");
    }

    #[test]
    fn rates_sum_agents_per_bucket_and_old_buckets_fall_off() {
        let live = Live::default();
        live.add_at("t", vec![("a".into(), hits(10))], 100);
        live.add_at("t", vec![("a".into(), hits(15))], 100);
        live.add_at("t", vec![("a".into(), hits(5))], 102);
        live.add_at("other", vec![("a".into(), hits(99))], 102);
        let rates = live.rates_at("t", "a", 102);
        assert_eq!(rates.len(), BUCKETS);
        let secs = BUCKET.as_secs_f64();
        assert_eq!(rates[BUCKETS - 1].hits, 5.0 / secs);
        assert_eq!(rates[BUCKETS - 2].hits, 0.0);
        assert_eq!(rates[BUCKETS - 3].hits, 25.0 / secs);
        assert_eq!(rates[BUCKETS - 3].t, 100 * BUCKET.as_millis() as u64);
        // Sixty buckets later the first two are gone.
        live.add_at("t", vec![("a".into(), hits(1))], 100 + BUCKETS as u64);
        let inner = live.inner.lock().unwrap();
        let ring = &inner[&("t".to_owned(), "a".to_owned())];
        assert_eq!(ring.iter().map(|b| b.n).collect::<Vec<_>>(), [102, 160]);
    }
}
