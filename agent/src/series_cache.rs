//! [`SeriesCache`]: the series of one metric per label set, looked up without allocating, with a
//! cap on how many label sets it creates; the excess folds into one overflow series.
//!
//! Used by tracepoint metrics (the hit pipeline) and by the metrics API's labelled instruments.
//! A lookup hashes the label values (foldhash), takes the read lock and compares the stored
//! values; only a new label set takes the write lock and allocates.

use std::{
    collections::HashMap,
    hash::{BuildHasher as _, Hasher as _},
    sync::{
        Arc, OnceLock, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::provider::{Fanout, Instrument, Series};

/// The value label sets beyond the cap are folded into.
pub const OVERFLOW_LABEL: &str = "sonde_overflow";

/// A cached series and the label values it was made for.
type SeriesEntry = (Box<[Box<str>]>, Arc<dyn Series>);

/// The series of one metric, per label set.
pub(crate) struct SeriesCache {
    /// Keyed by a foldhash of the label values (so the map's own hasher need not be strong).
    map: RwLock<HashMap<u64, Vec<SeriesEntry>, foldhash::fast::FixedState>>,
    count: AtomicU64,
    overflow: OnceLock<Option<(usize, Arc<dyn Series>)>>,
    /// Lookups folded into the overflow series.
    pub overflowed: AtomicU64,
}

impl Default for SeriesCache {
    fn default() -> Self {
        Self {
            map: RwLock::new(HashMap::with_hasher(foldhash::fast::FixedState::with_seed(
                0,
            ))),
            count: AtomicU64::new(0),
            overflow: OnceLock::new(),
            overflowed: AtomicU64::new(0),
        }
    }
}

/// One series over every instrument (one per provider): the single one, or a fan-out.
pub(crate) fn make_series(
    instruments: &[Box<dyn Instrument>],
    values: &[&str],
) -> Option<Arc<dyn Series>> {
    let mut all: Vec<Arc<dyn Series>> = Vec::with_capacity(instruments.len());
    for inst in instruments {
        match inst.series(values) {
            Ok(s) => all.push(s),
            Err(err) => tracing::debug!(%err, "creating a series"),
        }
    }
    match all.len() {
        0 => None,
        1 => all.pop(),
        _ => Some(Arc::new(Fanout(all))),
    }
}

fn hash(values: &[&str]) -> u64 {
    let mut h = foldhash::fast::FixedState::with_seed(0x50_4e_44_45).build_hasher();
    for v in values {
        h.write(v.as_bytes());
        h.write_u8(0xff);
    }
    h.finish()
}

impl SeriesCache {
    /// The cached series for a label set, made with `make` on first use, or the overflow series
    /// once `max_series` label sets exist.
    pub fn get(
        &self,
        values: &[&str],
        max_series: usize,
        make: impl Fn(&[&str]) -> Option<Arc<dyn Series>>,
    ) -> Option<Arc<dyn Series>> {
        let key = hash(values);
        let same = |stored: &[Box<str>]| stored.iter().map(|s| &**s).eq(values.iter().copied());
        {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            if let Some(bucket) = map.get(&key)
                && let Some((_, s)) = bucket.iter().find(|(k, _)| same(k))
            {
                return Some(s.clone());
            }
        }
        if self.count.load(Ordering::Relaxed) as usize >= max_series {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            return self
                .overflow
                .get_or_init(|| {
                    make(&vec![OVERFLOW_LABEL; values.len()]).map(|s| (values.len(), s))
                })
                .as_ref()
                .map(|(_, s)| s.clone());
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let bucket = map.entry(key).or_default();
        if let Some((_, s)) = bucket.iter().find(|(k, _)| same(k)) {
            return Some(s.clone());
        }
        let series = make(values)?;
        bucket.push((
            values.iter().map(|v| Box::<str>::from(*v)).collect(),
            series.clone(),
        ));
        self.count.fetch_add(1, Ordering::Relaxed);
        Some(series)
    }

    /// Calls `f` with the series for a label set without cloning it when it exists (the read
    /// lock is held during `f`: keep `f` short); otherwise as [`SeriesCache::get`].
    pub fn with<R>(
        &self,
        values: &[&str],
        max_series: usize,
        make: impl Fn(&[&str]) -> Option<Arc<dyn Series>>,
        f: impl FnOnce(&dyn Series) -> R,
    ) -> Option<R> {
        let key = hash(values);
        {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            if let Some(bucket) = map.get(&key)
                && let Some((_, s)) = bucket
                    .iter()
                    .find(|(k, _)| k.iter().map(|s| &**s).eq(values.iter().copied()))
            {
                return Some(f(&**s));
            }
        }
        self.get(values, max_series, make).map(|s| f(&*s))
    }

    /// Every label set made so far (the overflow series last, if used), with its series.
    pub fn entries(&self) -> Vec<(Vec<String>, Arc<dyn Series>)> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(Vec<String>, Arc<dyn Series>)> = map
            .values()
            .flatten()
            .map(|(k, s)| (k.iter().map(|v| v.to_string()).collect(), s.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(Some((n, s))) = self.overflow.get() {
            out.push((vec![OVERFLOW_LABEL.to_owned(); *n], s.clone()));
        }
        out
    }
}
