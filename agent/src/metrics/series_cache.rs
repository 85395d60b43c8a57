//! [`SeriesCache`]: the series of one metric per label set, looked up without allocating and
//! without taking a lock, with a cap on how many label sets it creates; the excess folds into one
//! overflow series.
//!
//! Used by tracepoint metrics (the hit pipeline) and by the metrics API's labelled instruments,
//! where a lookup is on the application's thread for every tagged add.
//!
//! # Design
//! A lookup hashes the label values once (a short multiply-fold per value, the way foldhash
//! hashes short strings), then probes an open-addressing table of write-once slots
//! (`OnceLock`s): a slot is empty, or holds an entry for good. A reader therefore needs no lock
//! and no reference-count traffic: loading a slot is one acquire load, and an entry is compared by
//! its stored hash first, then value by value against its key (the values, each ended by a `0xff`
//! byte, which UTF-8 never uses), the short values without a call to `memcmp`. An empty slot ends
//! the probe: the label set is new. The hash is not keyed (neither was the foldhash with a fixed
//! seed it replaces): crafted label values could collide, which costs comparisons, never a wrong
//! series, and the cap bounds how many label sets there are to compare.
//!
//! New label sets are added under a mutex, by one writer at a time, which first looks again (a
//! concurrent writer may have added the same set). When the table is half full the writer builds
//! one twice as large, copies the entries (shared, behind `Arc`s) into it and publishes it by
//! bumping `current`; a reader that still probes the old table sees a complete, older snapshot,
//! and on a miss goes to the writer's path, which looks in the live table. Old tables are kept
//! until the cache drops (together they are smaller than the live one), which is what lets
//! readers go without guards or epochs, in safe code.

use std::sync::{
    Arc, Mutex, OnceLock,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use crate::metrics::provider::{Fanout, Instrument, Series};

/// The value label sets beyond the cap are folded into.
pub const OVERFLOW_LABEL: &str = "sonde_overflow";

/// Slots of the first table; each next one doubles.
const FIRST_SLOTS: usize = 8;

/// Tables at most: the last has `FIRST_SLOTS << (LEVELS - 1)` slots (a billion), far past any
/// sensible cap; when it is half full, further label sets fold into the overflow series.
const LEVELS: usize = 28;

/// Ends each label value in an entry's key.
const SEPARATOR: u8 = 0xff;

/// A cached series and the label values it was made for.
struct Entry {
    hash: u64,
    /// The label values, each followed by [`SEPARATOR`].
    key: Box<[u8]>,
    series: Arc<dyn Series>,
}

type Table = Box<[OnceLock<Arc<Entry>>]>;

/// The series of one metric, per label set.
pub(crate) struct SeriesCache {
    /// `tables[current]` is the live table; the ones before it are outgrown copies.
    tables: [OnceLock<Table>; LEVELS],
    current: AtomicUsize,
    /// Held to add a label set; counts the live table's entries.
    writer: Mutex<usize>,
    count: AtomicU64,
    overflow: OnceLock<Option<Arc<dyn Series>>>,
    /// Lookups folded into the overflow series.
    pub overflowed: AtomicU64,
}

impl Default for SeriesCache {
    fn default() -> Self {
        Self {
            tables: [const { OnceLock::new() }; LEVELS],
            current: AtomicUsize::new(0),
            writer: Mutex::new(0),
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

const SEED: u64 = 0x243f_6a88_85a3_08d3;
const MIX: [u64; 2] = [0x1319_8a2e_0370_7344, 0xa409_3822_299f_31d0];

/// The 128-bit product of `x` and `y`, its halves xored.
#[inline(always)]
fn fold(x: u64, y: u64) -> u64 {
    let p = u128::from(x) * u128::from(y);
    (p as u64) ^ ((p >> 64) as u64)
}

#[inline(always)]
fn word(b: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

#[inline(always)]
fn half(b: &[u8], at: usize) -> u32 {
    let mut w = [0; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// A hash of the label values: one multiply-fold per value of up to 16 bytes, each independent of
/// the others (so they overlap), chained by rotating, then one fold to mix. Not keyed: a collision
/// only costs a comparison, and the cap bounds how many label sets there are.
#[inline(always)]
fn hash(values: &[&str]) -> u64 {
    let mut h = SEED ^ values.len() as u64;
    for v in values {
        let b = v.as_bytes();
        let n = b.len();
        let mut x = (n as u64).rotate_left(40);
        let (lo, hi) = if n <= 16 {
            if n >= 8 {
                (word(b, 0), word(b, n - 8))
            } else if n >= 4 {
                (u64::from(half(b, 0)) | u64::from(half(b, n - 4)) << 32, 0)
            } else if n > 0 {
                let lo = u64::from(b[0]) | u64::from(b[n / 2]) << 8 | u64::from(b[n - 1]) << 16;
                (lo, 0)
            } else {
                (0, 0)
            }
        } else {
            let mut at = 0;
            while n - at > 16 {
                x = fold(x ^ word(b, at) ^ MIX[0], word(b, at + 8) ^ MIX[1]);
                at += 16;
            }
            (word(b, n - 16), word(b, n - 8))
        };
        h = h.rotate_left(23) ^ fold(x ^ lo ^ MIX[0], hi ^ MIX[1]);
    }
    fold(h ^ MIX[1], MIX[0])
}

/// `a == b` for slices of the same length, without a call for the short ones label values are.
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    debug_assert_eq!(n, b.len());
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

/// The label values, each followed by `0xff` (a byte UTF-8 never uses, so the encoding is
/// unambiguous).
fn encode_key(values: &[&str]) -> Box<[u8]> {
    let mut key = Vec::with_capacity(values.iter().map(|v| v.len() + 1).sum());
    for v in values {
        key.extend_from_slice(v.as_bytes());
        key.push(SEPARATOR);
    }
    key.into_boxed_slice()
}

fn decode_key(key: &[u8]) -> Vec<String> {
    let mut values: Vec<String> = key
        .split(|b| *b == SEPARATOR)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    // The last separator leaves an empty tail.
    values.pop();
    values
}

impl Entry {
    #[inline(always)]
    fn is(&self, hash: u64, values: &[&str]) -> bool {
        if self.hash != hash {
            return false;
        }
        let key = &*self.key;
        let mut at = 0;
        for v in values {
            let v = v.as_bytes();
            let end = at + v.len();
            // `end < key.len()` also bounds the value's bytes.
            if end >= key.len() || key[end] != SEPARATOR || !same_bytes(&key[at..end], v) {
                return false;
            }
            at = end + 1;
        }
        at == key.len()
    }
}

/// The entry for a label set in `table`, if there is one.
#[inline(always)]
fn probe<'t>(table: &'t [OnceLock<Arc<Entry>>], hash: u64, values: &[&str]) -> Option<&'t Entry> {
    let mask = table.len() - 1;
    let mut i = hash as usize & mask;
    loop {
        // A table is never more than half full, so an empty slot ends the loop.
        let entry = table[i].get()?;
        if entry.is(hash, values) {
            return Some(entry);
        }
        i = (i + 1) & mask;
    }
}

/// Puts `entry` in the first empty slot of its probe sequence (the caller holds the writer lock,
/// so the slot is still empty when set).
fn place(table: &[OnceLock<Arc<Entry>>], entry: Arc<Entry>) {
    let mask = table.len() - 1;
    let mut i = entry.hash as usize & mask;
    while table[i].get().is_some() {
        i = (i + 1) & mask;
    }
    let _ = table[i].set(entry);
}

fn empty_table(slots: usize) -> Table {
    (0..slots).map(|_| OnceLock::new()).collect()
}

impl SeriesCache {
    /// The live table, if any label set was added yet.
    #[inline(always)]
    fn live(&self) -> Option<&[OnceLock<Arc<Entry>>]> {
        self.tables[self.current.load(Ordering::Acquire)]
            .get()
            .map(|t| &**t)
    }

    #[inline(always)]
    fn find(&self, hash: u64, values: &[&str]) -> Option<&Entry> {
        probe(self.live()?, hash, values)
    }

    /// Whether a label set has a series of its own (not folded into the overflow one); makes
    /// nothing.
    #[inline]
    pub fn contains(&self, values: &[&str]) -> bool {
        self.find(hash(values), values).is_some()
    }

    /// Calls `f` with the cached series for a label set (see [`SeriesCache::with`]), made with
    /// `make` on first use, or with the overflow series (made by `make` with every value
    /// [`OVERFLOW_LABEL`]) once `max_series` label sets exist.
    #[inline]
    pub fn with_made<R>(
        &self,
        values: &[&str],
        max_series: usize,
        make: impl Fn(&[&str]) -> Option<Arc<dyn Series>>,
        f: impl FnOnce(&dyn Series) -> R,
    ) -> Option<R> {
        let overflow = || make(&vec![OVERFLOW_LABEL; values.len()]);
        self.with(values, max_series, &make, overflow, f)
    }

    /// As [`SeriesCache::with_made`], returning the series itself.
    #[cfg(test)]
    pub fn get(
        &self,
        values: &[&str],
        max_series: usize,
        make: impl Fn(&[&str]) -> Option<Arc<dyn Series>>,
    ) -> Option<Arc<dyn Series>> {
        let overflow = || make(&vec![OVERFLOW_LABEL; values.len()]);
        self.get_or_overflow(values, max_series, &make, overflow)
    }

    /// The cached series for a label set, made with `make` on first use, or the overflow series
    /// (made by `overflow`) once `max_series` label sets exist.
    pub fn get_or_overflow(
        &self,
        values: &[&str],
        max_series: usize,
        make: impl Fn(&[&str]) -> Option<Arc<dyn Series>>,
        overflow: impl FnOnce() -> Option<Arc<dyn Series>>,
    ) -> Option<Arc<dyn Series>> {
        let hash = hash(values);
        if let Some(entry) = self.find(hash, values) {
            return Some(entry.series.clone());
        }
        self.add(hash, values, max_series, make, overflow)
    }

    /// Calls `f` with the series for a label set, without cloning it when it exists (the hot
    /// path: no lock, no reference count); otherwise as [`SeriesCache::get_or_overflow`].
    #[inline]
    pub fn with<R>(
        &self,
        values: &[&str],
        max_series: usize,
        make: impl Fn(&[&str]) -> Option<Arc<dyn Series>>,
        overflow: impl FnOnce() -> Option<Arc<dyn Series>>,
        f: impl FnOnce(&dyn Series) -> R,
    ) -> Option<R> {
        let hash = hash(values);
        if let Some(entry) = self.find(hash, values) {
            return Some(f(&*entry.series));
        }
        self.add(hash, values, max_series, make, overflow)
            .map(|s| f(&*s))
    }

    /// The slow path: a label set not in the table (as a reader saw it).
    #[cold]
    #[inline(never)]
    fn add(
        &self,
        hash: u64,
        values: &[&str],
        max_series: usize,
        make: impl Fn(&[&str]) -> Option<Arc<dyn Series>>,
        overflow: impl FnOnce() -> Option<Arc<dyn Series>>,
    ) -> Option<Arc<dyn Series>> {
        if self.count.load(Ordering::Relaxed) as usize >= max_series {
            return self.overflow(overflow);
        }
        let mut len = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let level = self.current.load(Ordering::Relaxed);
        if let Some(table) = self.tables[level].get()
            && let Some(entry) = probe(table, hash, values)
        {
            return Some(entry.series.clone());
        }
        if self.count.load(Ordering::Relaxed) as usize >= max_series {
            drop(len);
            return self.overflow(overflow);
        }
        let table = self.tables[level].get_or_init(|| empty_table(FIRST_SLOTS));
        let table = if 2 * (*len + 1) > table.len() {
            if level + 1 == LEVELS {
                drop(len);
                return self.overflow(overflow);
            }
            let bigger = empty_table(table.len() * 2);
            for slot in table.iter() {
                if let Some(entry) = slot.get() {
                    place(&bigger, entry.clone());
                }
            }
            let _ = self.tables[level + 1].set(bigger);
            self.current.store(level + 1, Ordering::Release);
            self.tables[level + 1].get()?
        } else {
            table
        };
        let series = make(values)?;
        place(
            table,
            Arc::new(Entry {
                hash,
                key: encode_key(values),
                series: series.clone(),
            }),
        );
        *len += 1;
        self.count.fetch_add(1, Ordering::Relaxed);
        Some(series)
    }

    fn overflow(&self, make: impl FnOnce() -> Option<Arc<dyn Series>>) -> Option<Arc<dyn Series>> {
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        self.overflow.get_or_init(make).clone()
    }

    /// How many label sets it holds (the overflow series not counted).
    pub fn label_sets(&self) -> usize {
        self.count.load(Ordering::Relaxed) as usize
    }

    /// Every label set made so far, sorted, with its series (not the overflow series).
    pub fn entries(&self) -> Vec<(Vec<String>, Arc<dyn Series>)> {
        let mut out: Vec<(Vec<String>, Arc<dyn Series>)> = {
            let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            self.live()
                .into_iter()
                .flatten()
                .filter_map(OnceLock::get)
                .map(|e| (decode_key(&e.key), e.series.clone()))
                .collect()
        };
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The overflow series, once a lookup past the cap made it.
    pub fn overflow_series(&self) -> Option<Arc<dyn Series>> {
        self.overflow.get().cloned().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::provider::RecordError;
    use std::sync::atomic::AtomicUsize as Made;

    struct Null;
    impl Series for Null {
        fn record(&self, _: f64) -> Result<(), RecordError> {
            Ok(())
        }
    }

    fn make(made: &Made) -> impl Fn(&[&str]) -> Option<Arc<dyn Series>> + '_ {
        |_| {
            made.fetch_add(1, Ordering::Relaxed);
            Some(Arc::new(Null))
        }
    }

    #[test]
    fn label_sets_are_told_apart_by_every_value_and_length() {
        let cache = SeriesCache::default();
        let made = Made::new(0);
        let sets: Vec<Vec<String>> = vec![
            vec![],
            vec!["".into()],
            vec!["".into(), "".into()],
            vec!["a".into()],
            vec!["ab".into()],
            vec!["a".into(), "b".into()],
            vec!["ab".into(), "".into()],
            vec!["".into(), "ab".into()],
            vec!["abcdefg".into()],
            vec!["abcdefgh".into()],
            vec!["abcdefghijklmnop".into()],
            vec!["abcdefghijklmnopq".into()],
            vec!["x".repeat(100)],
            vec!["x".repeat(101)],
            vec![format!("{}y", "x".repeat(99))],
            vec!["é".into(), "/route/{id}".into()],
        ];
        let mut series = Vec::new();
        for set in &sets {
            let values: Vec<&str> = set.iter().map(String::as_str).collect();
            series.push(cache.get(&values, 1000, make(&made)).expect("made"));
        }
        assert_eq!(made.load(Ordering::Relaxed), sets.len());
        for (set, s) in sets.iter().zip(&series) {
            let values: Vec<&str> = set.iter().map(String::as_str).collect();
            let again = cache.get(&values, 1000, make(&made)).expect("cached");
            assert!(Arc::ptr_eq(s, &again), "{set:?}");
            assert!(
                cache
                    .with(&values, 1000, make(&made), || None, |_| true)
                    .expect("cached")
            );
        }
        assert_eq!(
            made.load(Ordering::Relaxed),
            sets.len(),
            "nothing made twice"
        );
        let mut want = sets.clone();
        want.sort();
        let got: Vec<Vec<String>> = cache.entries().into_iter().map(|(v, _)| v).collect();
        assert_eq!(got, want);
    }

    /// Against a `HashMap` as the model: random label sets over a small alphabet (so many share
    /// prefixes, lengths and hashes' inputs) each get one series, the same one every time.
    #[test]
    fn lookups_agree_with_a_map() {
        let cache = SeriesCache::default();
        let made = Made::new(0);
        let mut model: std::collections::HashMap<Vec<String>, Arc<dyn Series>> =
            std::collections::HashMap::new();
        let mut rng = fastrand::Rng::with_seed(42);
        let alphabet = ['a', 'b', 'é', '/', '\u{ff}'];
        for _ in 0..20_000 {
            let set: Vec<String> = (0..rng.usize(0..4))
                .map(|_| {
                    (0..rng.usize(0..20))
                        .map(|_| alphabet[rng.usize(..alphabet.len())])
                        .collect()
                })
                .collect();
            let values: Vec<&str> = set.iter().map(String::as_str).collect();
            let got = cache.get(&values, usize::MAX, make(&made)).expect("made");
            assert!(Arc::ptr_eq(
                &got,
                &cache.get(&values, 0, make(&made)).expect("cached")
            ));
            let want = model.entry(set.clone()).or_insert_with(|| got.clone());
            assert!(Arc::ptr_eq(&got, want), "{set:?}");
        }
        assert_eq!(made.load(Ordering::Relaxed), model.len());
        let mut want: Vec<Vec<String>> = model.into_keys().collect();
        want.sort();
        let got: Vec<Vec<String>> = cache.entries().into_iter().map(|(v, _)| v).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn tables_grow_and_keep_every_entry() {
        let cache = SeriesCache::default();
        let made = Made::new(0);
        let keys: Vec<String> = (0..5000).map(|i| format!("k{i}")).collect();
        let first: Vec<_> = keys
            .iter()
            .map(|k| cache.get(&[k, "v"], 10_000, make(&made)).expect("made"))
            .collect();
        for (k, s) in keys.iter().zip(&first) {
            let again = cache.get(&[k, "v"], 10_000, make(&made)).expect("cached");
            assert!(Arc::ptr_eq(s, &again));
        }
        assert_eq!(made.load(Ordering::Relaxed), keys.len());
        assert_eq!(cache.entries().len(), keys.len());
        assert_eq!(cache.overflowed.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn concurrent_lookups_make_each_label_set_once() {
        let cache = SeriesCache::default();
        let made = Made::new(0);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (cache, made) = (&cache, &made);
                s.spawn(move || {
                    for round in 0..3 {
                        for i in 0..500 {
                            let i = (i * 7 + t * 13 + round) % 500;
                            let k = format!("k{i}");
                            cache
                                .with(&[&k], 10_000, make(made), || None, |_| ())
                                .expect("series");
                        }
                    }
                });
            }
        });
        assert_eq!(made.load(Ordering::Relaxed), 500);
        assert_eq!(cache.entries().len(), 500);
    }

    #[test]
    fn past_the_cap_lookups_fold_into_one_overflow_series() {
        let cache = SeriesCache::default();
        let made = Made::new(0);
        let a = cache.get(&["a"], 2, make(&made)).expect("a");
        cache.get(&["b"], 2, make(&made)).expect("b");
        let c = cache.get(&["c"], 2, make(&made)).expect("overflow");
        let d = cache.get(&["d"], 2, make(&made)).expect("overflow");
        assert!(Arc::ptr_eq(&c, &d));
        assert!(Arc::ptr_eq(
            &a,
            &cache.get(&["a"], 2, make(&made)).expect("a")
        ));
        assert_eq!(made.load(Ordering::Relaxed), 3);
        assert_eq!(cache.overflowed.load(Ordering::Relaxed), 2);
        assert_eq!(cache.entries().len(), 2);
        assert!(Arc::ptr_eq(&cache.overflow_series().expect("made"), &c));
    }
}
