//! [`Sampler`]: a tracepoint's CPU budget, judged against the process's own CPU time, kept by
//! evaluating one hit in N instead of going dark.
//!
//! # Why sampling
//! A fixed CPU allowance per tracepoint disarms the busiest lines first, the ones people most want
//! a metric on, and a counter that stops makes every rate over it read 0 at the peak of traffic.
//! So a metric tracepoint over its budget *samples*: it evaluates one hit in `N` (a power of two)
//! and records each evaluated hit with weight `N`. Each thread numbers its own hits of the
//! tracepoint ([`ThreadCounts`]: a word only that thread writes, so counting a hit is a load and a
//! store, with no locked instruction and no cache line shared between threads) and cuts them into
//! blocks of `N`; in each block exactly one hit is evaluated, at a place drawn from hashes of
//! the block's number and the thread's seed ([`picked`]). The picks nest (the pick of a block of
//! `2N` is a pick of one of its halves), and the tracepoints at a site number a thread's hits
//! alike and share its seed, so the program at a site runs once per block of its densest
//! tracepoint and evaluates the sparser ones on the same hits. So over any `k` blocks exactly `k`
//! hits are evaluated: a count is exact to within `N` per thread that hits the line; and since the
//! offset is random, a periodic workload (round-robin over four backends, with `N` = 4) is not
//! aliased onto one phase: counter totals and rates, histogram and summary counts and sums stay
//! unbiased, and quantiles keep their shape (the evaluated hits are a uniform subsample).
//!
//! # The budget
//! Every [`Budgets::cpu_window`] (1 s) a tracepoint closes its window, on the first hit after it
//! ended (nothing runs off the hot path, and nothing at all while the line is not hit):
//! - its cost is estimated from timed evaluations (one in `64 / N`, at least one in one, each
//!   standing for the evaluations it represents), as if every hit had been evaluated. They are
//!   timed on the thread's CPU clock, not the wall clock: on a busy machine a thread is often
//!   preempted in the middle of an evaluation, and wall time would charge the wait to the
//!   tracepoint (seen: a counter sampled 1 in 1024 under load where 1 in 16 sufficed). Each is
//!   charged its own time and the cache refill it leaves the application, estimated by repeating
//!   it at once, warm ([`Cost`], and `Installed::rehearse` in the pipeline);
//! - its allowance is [`Budgets::cpu_share`] (1%) of the CPU the process used over the window,
//!   times the agent's scale (below), but never less than [`Budgets::cpu_floor`] per second, so a
//!   mostly idle process can still afford its hits;
//! - `N` becomes the smallest power of two that brings the cost within 80% of the allowance when
//!   it must rise, and the smallest that brings it within 40% when it may fall: both at once, and
//!   the gap between the two keeps it from flapping.
//!
//! The process's CPU time is read once per window for the whole agent ([`AgentCpu`]:
//! `getrusage`), never per hit. The agent also holds all tracepoints together to
//! [`Budgets::agent_cpu_share`] (2%): when their total exceeds it, a scale below 1 shrinks every
//! tracepoint's allowance in proportion, and recovers by a quarter a window once it fits.
//!
//! # The last resort
//! A tracepoint still over its allowance at [`Budgets::max_sample_every`] for three windows in a
//! row disarms, saying why. So does one that may not sample (a log-only tracepoint, whose lines
//! would be lost, or `sampling: off`, an operator's hard cap): it disarms as soon as a window with
//! enough timed evaluations (8) shows it over its allowance.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use thread_local::ThreadLocal;

use super::budget::Budgets;

/// Timed evaluations a window needs before its estimate may raise `N` or disarm: a single slow
/// hit (the first creates series and warms caches) must not throttle a line hit a few times.
const MIN_TIMED: u64 = 8;

/// At most one evaluation in this many is timed: reading a thread's CPU clock is a system call
/// (0.2-0.3 µs here), and a timed evaluation reads it three times and repeats itself once to
/// estimate its refill, so timing costs about 10-15 ns per evaluation at this rate (and is
/// charged).
const TIME_EVERY: u64 = 64;

/// `N` is chosen so the cost stays within this share of the allowance.
const TARGET: f64 = 0.8;

/// `N` is lowered only as far as keeps the cost within this share of the allowance.
const LOWER_AT: f64 = 0.4;

/// Windows in a row over budget at the largest `N` before a tracepoint disarms.
const OVER_AT_MAX_WINDOWS: u32 = 3;

/// The process's CPU time so far (user and system), in nanoseconds; `None` where the platform
/// does not say.
pub(crate) fn process_cpu_ns() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes the struct it is given; RUSAGE_SELF is always valid.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: initialised by the successful call above.
        let usage = unsafe { usage.assume_init() };
        let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1_000;
        Some(ns(usage.ru_utime) + ns(usage.ru_stime))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Whether hit number `hit` is the one evaluated in its block of `every` (a power of two): one
/// per block, at a place that hashes of the block's number and `seed` pick. No state, no lock.
///
/// The picks nest: a hit picked in its block of `2 * every` is also picked in its block of
/// `every`. The place in a block is chosen from the top down: a hash bit of the block says which
/// half holds it, a hash bit of that half which quarter, and so on, so the pick of a block is
/// always the pick of one of its halves. Tracepoints at one site number a thread's hits alike and
/// share the thread's seed, so whatever their factors, the hits the sparser ones evaluate are
/// among those the densest one evaluates: the site's program runs on a thread once per block of
/// the smallest factor, and evaluates the tracepoints due together, while their code and the
/// hit's variables are in the caches, instead of each on a hit of its own.
///
/// The hit path uses [`schedule`], which places the block's pick once for both questions; this
/// and [`quiet`] answer each on their own, for the tests to check it against.
#[cfg(test)]
pub(crate) fn picked(hit: u64, every: u64, seed: u64) -> bool {
    // From the bottom up: half the hits fail at the first level, so a hit not picked costs about
    // two hashes.
    (1..=every.trailing_zeros())
        .all(|level| (hit >> (level - 1)) & 1 == half(hit >> level, level, seed))
}

/// Which half (0 or 1) of the block `block` of `1 << level` hits holds the block's pick.
#[inline]
fn half(block: u64, level: u32, seed: u64) -> u64 {
    offset((block << 6) | u64::from(level), seed) >> 63
}

/// The hit picked in block `block` of `1 << shift` hits.
#[inline]
fn pick_in(block: u64, shift: u32, seed: u64) -> u64 {
    (1..=shift)
        .rev()
        .fold(block, |b, level| (b << 1) | half(b, level, seed))
}

/// The splitmix64 finaliser over a key and `seed`: unrelated outputs for neighbouring keys.
#[inline]
fn offset(key: u64, seed: u64) -> u64 {
    let mut z = (key ^ seed).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How many hits from hit number `next` on are sure to be sampled out under a factor of
/// `1 << shift`: up to the block's evaluated hit if it is still to come, else up to the next
/// block's start, or with `cross`, on to the next block's evaluated hit. 0 when every hit is
/// evaluated. Without `cross` also 0 when `next` starts a block: a thread with a new factor to
/// take up must see the start of a block to take it up there.
#[cfg(test)]
pub(crate) fn quiet(next: u64, shift: u32, seed: u64, cross: bool) -> u64 {
    if shift == 0 {
        return 0;
    }
    let mask = (1u64 << shift) - 1;
    if next & mask == 0 && !cross {
        return 0;
    }
    let block = next >> shift;
    let pick = pick_in(block, shift, seed);
    if pick >= next {
        pick - next
    } else if cross {
        pick_in(block + 1, shift, seed) - next
    } else {
        ((block + 1) << shift) - next
    }
}

/// For hit number `hit` under a factor of `1 << shift`: whether it is the one evaluated in its
/// block ([`picked`]), and how many hits after it are sure to be sampled out ([`quiet`] from
/// `hit + 1`). One placing of the block's pick answers both (the next block's too, when the run
/// may go on into it): `shift` hashes, or twice that.
#[inline]
pub(crate) fn schedule(hit: u64, shift: u32, seed: u64, cross: bool) -> (bool, u64) {
    if shift == 0 {
        return (true, 0);
    }
    let block = hit >> shift;
    let next = hit.wrapping_add(1);
    let pick = pick_in(block, shift, seed);
    let to_next_block = || {
        if cross {
            pick_in(block.wrapping_add(1), shift, seed).wrapping_sub(next)
        } else {
            block.wrapping_add(1).wrapping_shl(shift).wrapping_sub(next)
        }
    };
    // The pick is behind `next` when `next` starts the next block, too: without `cross` the
    // run then ends at once.
    let quiet = if pick >= next {
        pick - next
    } else {
        to_next_block()
    };
    (pick == hit, quiet)
}

/// A point on the calling thread's CPU clock (wall time where the platform has none): what a
/// timed evaluation is measured with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ThreadTime(ThreadClock);

#[derive(Debug, Clone, Copy)]
enum ThreadClock {
    Cpu(u64),
    Wall(Instant),
}

impl ThreadTime {
    #[inline]
    pub(crate) fn now() -> Self {
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
        {
            let mut ts = std::mem::MaybeUninit::<libc::timespec>::zeroed();
            // SAFETY: clock_gettime writes the timespec it is given.
            let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, ts.as_mut_ptr()) };
            if rc == 0 {
                // SAFETY: initialised by the successful call above.
                let ts = unsafe { ts.assume_init() };
                return Self(ThreadClock::Cpu(
                    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
                ));
            }
        }
        Self(ThreadClock::Wall(Instant::now()))
    }

    /// What the clock's reads add to a measurement: the least that timing nothing measures
    /// (over 32 tries), about one read's cost. A timed evaluation subtracts it, and its charge
    /// adds the two reads it really cost once, not once per evaluation it stands for: with
    /// reads at 0.1-0.3 µs (a system call) a cheap tracepoint would otherwise look several
    /// times dearer than it is, and sample more than it needs to.
    pub(crate) fn floor_ns() -> u64 {
        (0..32).map(|_| Self::now().elapsed_ns()).min().unwrap_or(0)
    }

    /// Nanoseconds since `self` on the same clock.
    #[inline]
    pub(crate) fn elapsed_ns(self) -> u64 {
        Self::now().since(self)
    }

    /// Nanoseconds from `earlier` to `self` (0 if the two are not on the same clock).
    #[inline]
    pub(crate) fn since(self, earlier: Self) -> u64 {
        match (earlier.0, self.0) {
            (ThreadClock::Cpu(then), ThreadClock::Cpu(now)) => now.saturating_sub(then),
            (ThreadClock::Wall(then), ThreadClock::Wall(now)) => {
                u64::try_from(now.saturating_duration_since(then).as_nanos()).unwrap_or(u64::MAX)
            }
            _ => 0,
        }
    }
}

fn load_f64(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}

fn store_f64(a: &AtomicU64, v: f64) {
    a.store(v.to_bits(), Ordering::Relaxed);
}

/// The agent's side of the CPU budget: the process's CPU rate over the last window, and the
/// scale that holds all tracepoints together to their share.
#[derive(Debug)]
pub(crate) struct AgentCpu {
    share: f64,
    window: Duration,
    /// Estimated nanoseconds all tracepoints spent in the current window.
    spent: AtomicU64,
    /// Multiplies every tracepoint's allowance (f64 bits, in (0, 1]).
    scale: AtomicU64,
    /// What timing an evaluation adds to its measurement: [`ThreadTime::floor_ns`].
    pub(crate) clock_floor: u64,
    /// The process's CPU nanoseconds per wall nanosecond over the last closed window (f64 bits;
    /// NaN until one closed, or where the platform does not say).
    rate: AtomicU64,
    state: Mutex<AgentWindow>,
}

#[derive(Debug)]
struct AgentWindow {
    start: Instant,
    cpu: Option<u64>,
}

impl AgentCpu {
    pub(crate) fn new(budgets: &Budgets) -> Self {
        Self {
            share: budgets.agent_cpu_share,
            window: budgets.cpu_window,
            spent: AtomicU64::new(0),
            scale: AtomicU64::new(1.0f64.to_bits()),
            clock_floor: ThreadTime::floor_ns(),
            rate: AtomicU64::new(f64::NAN.to_bits()),
            state: Mutex::new(AgentWindow {
                start: Instant::now(),
                cpu: process_cpu_ns(),
            }),
        }
    }

    /// Closes the agent's window if it has passed: reads the process's CPU time (the only place
    /// that does) and adjusts the scale.
    fn roll(&self, now: Instant) {
        let Ok(mut state) = self.state.try_lock() else {
            return;
        };
        let elapsed = now.saturating_duration_since(state.start);
        if elapsed < self.window {
            return;
        }
        let cpu = process_cpu_ns();
        let wall = elapsed.as_nanos() as f64;
        let rate = match (cpu, state.cpu) {
            (Some(now), Some(then)) => now.saturating_sub(then) as f64 / wall,
            _ => f64::NAN,
        };
        store_f64(&self.rate, rate);
        let total = self.spent.swap(0, Ordering::Relaxed) as f64;
        let allowed = self.share * rate * wall;
        let scale = load_f64(&self.scale);
        let scale = if rate.is_nan() {
            1.0
        } else if total > allowed && total > 0.0 {
            (scale * allowed / total).clamp(1e-4, 1.0)
        } else {
            (scale * 1.25).min(1.0)
        };
        store_f64(&self.scale, scale);
        *state = AgentWindow { start: now, cpu };
    }
}

/// What a timed evaluation cost, as charged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Cost {
    /// Nanoseconds charged for each evaluation the timed one stands for: its own time (less the
    /// clock's floor) and the cache refill it is estimated to leave the application.
    pub each: u64,
    /// Nanoseconds charged once: the clock's reads that timed it, and the rehearsal that
    /// estimated the refill.
    pub once: u64,
}

/// What a closed window decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing changed.
    Keep,
    /// `N` changed to this.
    Every(u64),
    /// Over budget with no way left to shed work: disarm.
    Disarm,
}

/// One thread's counts of one tracepoint. Only that thread writes them (a load and a store: no
/// locked instruction); anyone may read them. Aligned to a cache line so that two threads' counts
/// never share one.
#[derive(Debug)]
#[repr(align(64))]
pub(crate) struct ThreadCounts {
    /// Hits this thread counted: numbers them, for [`picked`] and for choosing which
    /// evaluations to time.
    hits: AtomicU64,
    /// The log2 of `N` this thread applies (it takes up a new one at a block boundary).
    shift: AtomicU64,
    /// Offsets this thread's picks from other threads'.
    seed: u64,
    /// Hits (by weight) on which the tracepoint fired.
    pub fires: AtomicU64,
    /// Evaluated hits (by weight) whose condition was false.
    pub condition_false: AtomicU64,
}

thread_local! {
    /// The thread's seed, shared by every tracepoint's counts on the thread, so that tracepoints
    /// at one site pick the same hits ([`picked`]); each thread's differs.
    static THREAD_SEED: u64 = fastrand::u64(..);
}

impl ThreadCounts {
    /// Counts whose next hit is number `hit`.
    fn starting_at(hit: u64) -> Self {
        Self {
            hits: AtomicU64::new(hit),
            shift: AtomicU64::new(0),
            seed: THREAD_SEED.with(|s| *s),
            fires: AtomicU64::new(0),
            condition_false: AtomicU64::new(0),
        }
    }
}

/// Adds `n` to a count only the calling thread writes.
#[inline]
pub(crate) fn add_own(count: &AtomicU64, n: u64) {
    count.store(
        count.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// One tracepoint's CPU budget: its sample factor `N` and its current window.
#[derive(Debug)]
pub(crate) struct Sampler {
    /// Each thread's counts.
    threads: ThreadLocal<ThreadCounts>,
    /// The log2 of `N` now. A thread takes it up at the next boundary of a block of the larger
    /// of it and the factor that thread applied so far, so no block is cut in two and counts stay
    /// exact to within one `N` per thread however often it changes.
    shift: AtomicU64,
    /// Estimated nanoseconds spent in the current window (each timed evaluation scaled by the
    /// evaluations it stands for).
    spent: AtomicU64,
    timed: AtomicU64,
    share: f64,
    /// Nanoseconds per second allowed whatever the process does.
    floor: f64,
    max_every: u64,
    window: Duration,
    /// False: over budget disarms instead of sampling.
    may_sample: bool,
    state: Mutex<SamplerWindow>,
}

#[derive(Debug)]
struct SamplerWindow {
    start: Instant,
    over_at_max: u32,
}

/// A hit the sampler let through.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admitted<'a> {
    /// `N`: the hits this evaluation stands for.
    pub every: u64,
    /// When this evaluation is to be timed, the number of evaluations its time stands for.
    pub timed: Option<u64>,
    /// The calling thread's counts, for what the evaluation counts.
    pub counts: &'a ThreadCounts,
    /// How many of this thread's next hits are sure to be sampled out ([`quiet`]).
    pub quiet: u64,
}

impl Sampler {
    /// A sampler with the agent's budgets; `share` is the tracepoint's own (its `cpu_percent`
    /// arg, else the agent's).
    pub(crate) fn new(budgets: &Budgets, share: f64, may_sample: bool) -> Self {
        Self {
            threads: ThreadLocal::new(),
            shift: AtomicU64::new(0),
            spent: AtomicU64::new(0),
            timed: AtomicU64::new(0),
            share,
            floor: budgets.cpu_floor.as_nanos() as f64,
            max_every: budgets.max_sample_every.max(1).next_power_of_two(),
            window: budgets.cpu_window,
            may_sample,
            state: Mutex::new(SamplerWindow {
                start: Instant::now(),
                over_at_max: 0,
            }),
        }
    }

    /// Hits counted so far, over every thread.
    pub(crate) fn hits(&self) -> u64 {
        self.sum(|c| &c.hits)
    }

    /// A count summed over every thread.
    pub(crate) fn sum(&self, count: impl Fn(&ThreadCounts) -> &AtomicU64) -> u64 {
        self.threads
            .iter()
            .map(|c| count(c).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// `N`: one hit in this many is evaluated (from each thread's next block boundary, when it
    /// just changed).
    pub(crate) fn every(&self) -> u64 {
        1 << self.shift.load(Ordering::Relaxed)
    }

    /// Counts `skipped` hits that were sure to be sampled out (the site passed them by, see
    /// [`quiet`]) and then this one, and says whether to evaluate it; `Err` with how many of the
    /// thread's next hits are sure to be sampled out when not.
    ///
    /// `align` carries a hit number from one tracepoint of a site to the next on the same hit:
    /// when it holds one and this thread has no counts yet, they start so that this hit gets that
    /// number (a tracepoint added to a busy site picks the same hits as the ones already there);
    /// when it holds none, it gets this hit's number.
    #[inline]
    pub(crate) fn admit(&self, skipped: u64, align: &mut Option<u64>) -> Result<Admitted<'_>, u64> {
        let counts = self
            .threads
            .get_or(|| ThreadCounts::starting_at(align.map_or(0, |hit| hit.wrapping_sub(skipped))));
        let hit = counts.hits.load(Ordering::Relaxed).wrapping_add(skipped);
        counts.hits.store(hit.wrapping_add(1), Ordering::Relaxed);
        align.get_or_insert(hit);
        let mut shift = counts.shift.load(Ordering::Relaxed);
        let now = self.shift.load(Ordering::Relaxed);
        if now != shift {
            // At a boundary of the larger block, both the old block and the new one start.
            let block = (1u64 << shift.max(now)) - 1;
            if hit & block == 0 {
                shift = now;
                counts.shift.store(now, Ordering::Relaxed);
            }
        }
        let every = 1u64 << shift;
        // A run may cross into the next block only while no new factor waits to be taken up at
        // its start. One that comes during the run is taken up at a later start: a block is
        // never cut in two, it just takes effect a block or two later.
        let (picked, quiet) = schedule(hit, shift as u32, counts.seed, now == shift);
        if !picked {
            return Err(quiet);
        }
        // One evaluation in `span` is timed: the one of every `span`-th block.
        let span = (TIME_EVERY >> shift).max(1);
        let timed = (hit >> shift).is_multiple_of(span);
        Ok(Admitted {
            every,
            timed: timed.then_some(span),
            counts,
            quiet,
        })
    }

    /// Makes `next` the sample factor, which each thread takes up at its next block boundary.
    fn switch_to(&self, next: u64) {
        self.shift
            .store(u64::from(next.trailing_zeros()), Ordering::Relaxed);
    }

    /// Charges a timed evaluation that stands for `span` evaluations; closes the window if it has
    /// passed.
    pub(crate) fn charge(&self, agent: &AgentCpu, cost: Cost, span: u64, now: Instant) -> Verdict {
        let ns = cost.each.saturating_mul(span).saturating_add(cost.once);
        self.spent.fetch_add(ns, Ordering::Relaxed);
        agent.spent.fetch_add(ns, Ordering::Relaxed);
        self.timed.fetch_add(1, Ordering::Relaxed);
        let Ok(mut state) = self.state.try_lock() else {
            return Verdict::Keep;
        };
        let elapsed = now.saturating_duration_since(state.start);
        if elapsed < self.window {
            return Verdict::Keep;
        }
        agent.roll(now);
        let spent = self.spent.swap(0, Ordering::Relaxed) as f64;
        let timed = self.timed.swap(0, Ordering::Relaxed);
        state.start = now;
        let wall = elapsed.as_nanos() as f64;
        let rate = load_f64(&agent.rate);
        let relative = if rate.is_nan() {
            0.0
        } else {
            self.share * rate * wall * load_f64(&agent.scale)
        };
        let allowance = relative.max(self.floor * wall / 1e9);
        let every = self.every();
        if !self.may_sample {
            return if timed >= MIN_TIMED && spent > allowance {
                Verdict::Disarm
            } else {
                Verdict::Keep
            };
        }
        let next = next_every(
            every,
            spent * every as f64,
            allowance,
            self.max_every,
            timed >= MIN_TIMED,
        );
        if next == self.max_every && spent > allowance && timed >= MIN_TIMED {
            state.over_at_max += 1;
            if state.over_at_max >= OVER_AT_MAX_WINDOWS {
                return Verdict::Disarm;
            }
        } else {
            state.over_at_max = 0;
        }
        if next == every {
            Verdict::Keep
        } else {
            self.switch_to(next);
            Verdict::Every(next)
        }
    }

    /// The share of the process's CPU this tracepoint may use, in percent (for its status).
    pub(crate) fn percent(&self) -> f64 {
        self.share * 100.0
    }
}

/// The next sample factor: `full` is what evaluating every hit would have cost over the window,
/// `allowance` what the window allowed. Raised at once to the smallest power of two that keeps
/// the cost within [`TARGET`] of the allowance (only on an estimate from enough timed
/// evaluations); lowered at once to the smallest that keeps it within [`LOWER_AT`] (so a line
/// whose traffic fell away gets its full resolution back at its next window, and the gap between
/// the two shares keeps the factor from flapping); never above `max`.
fn next_every(every: u64, full: f64, allowance: f64, max: u64, trusted: bool) -> u64 {
    let smallest = |share: f64| {
        if full <= 0.0 {
            return 1;
        }
        let need = full / (share * allowance);
        if !need.is_finite() || need >= max as f64 {
            max
        } else {
            (need.ceil().max(1.0) as u64).next_power_of_two().min(max)
        }
    };
    let raise = smallest(TARGET);
    if raise > every {
        return if trusted { raise } else { every };
    }
    smallest(LOWER_AT).min(every)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_factor_rises_and_falls_at_once_with_a_gap_between() {
        // Within budget at N = 1: stays.
        assert_eq!(next_every(1, 50.0, 100.0, 1024, true), 1);
        // Nothing spent, nothing allowed: stays at 1.
        assert_eq!(next_every(1, 0.0, 0.0, 1024, true), 1);
        // Ten times the allowance: 10 / 0.8 = 12.5 -> 16.
        assert_eq!(next_every(1, 1000.0, 100.0, 1024, true), 16);
        // An untrusted estimate (few timed evaluations) never raises it.
        assert_eq!(next_every(1, 1000.0, 100.0, 1024, false), 1);
        // Load fell away: 16 -> 4, the smallest within 40% (100 / 4 = 25; 100 / 2 = 50 > 40).
        assert_eq!(next_every(16, 100.0, 100.0, 1024, true), 4);
        // Between the two shares it stays: at 16, 1000 / 16 = 62.5 is within 80% but 40% would
        // need 32, more than it has.
        assert_eq!(next_every(16, 1000.0, 100.0, 1024, true), 16);
        // Never above the largest factor, even with nothing allowed.
        assert_eq!(next_every(1, 1e12, 1.0, 1024, true), 1024);
        assert_eq!(next_every(1, 1.0, 0.0, 1024, true), 1024);
    }

    #[test]
    fn one_hit_per_block_is_picked_and_a_periodic_workload_is_not_aliased() {
        for every in [2u64, 4, 16, 1024] {
            for block in 0..200u64 {
                let picked_in_block = (block * every..(block + 1) * every)
                    .filter(|&h| picked(h, every, 0x1234))
                    .count();
                assert_eq!(picked_in_block, 1, "every {every}, block {block}");
            }
        }
        // Round-robin over four backends, sampled 1 in 4: every backend is seen, about equally.
        let mut seen = [0u32; 4];
        for hit in 0..40_000u64 {
            if picked(hit, 4, 0) {
                seen[(hit % 4) as usize] += 1;
            }
        }
        assert_eq!(seen.iter().sum::<u32>(), 10_000);
        for n in seen {
            assert!((2_200..2_800).contains(&n), "{seen:?}");
        }
    }

    #[test]
    fn counts_stay_exact_to_one_block_however_often_the_factor_changes() {
        let b = Budgets::default();
        let s = Sampler::new(&b, 0.01, true);
        let mut weight = 0u64;
        let mut hits = 0u64;
        let mut timed = 0u64;
        for (round, next) in [16u64, 4, 1024, 2, 64, 1, 256, 8].into_iter().enumerate() {
            // An odd number of hits, so every switch is asked for in the middle of a block.
            for _ in 0..(10_007 + round as u64 * 997) {
                hits += 1;
                if let Ok(a) = s.admit(0, &mut None) {
                    weight += a.every;
                    timed += u64::from(a.timed.is_some());
                }
            }
            s.switch_to(next);
        }
        for _ in 0..5_003 {
            hits += 1;
            if let Ok(a) = s.admit(0, &mut None) {
                weight += a.every;
            }
        }
        // Only the last, unfinished block may be off, by less than its factor.
        assert!(
            weight.abs_diff(hits) < s.every(),
            "{weight} for {hits} hits"
        );
        assert_eq!(s.hits(), hits);
        assert!(timed > 0);
    }

    #[test]
    fn threads_count_on_their_own_and_together_stay_exact_to_a_block_each() {
        let b = Budgets::default();
        let s = std::sync::Arc::new(Sampler::new(&b, 0.01, true));
        s.switch_to(8);
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut weight = 0;
                    let mut firsts = Vec::new();
                    let n = 40_000 + t * 1_001;
                    for hit in 0..n {
                        if hit == n / 2 && t == 0 {
                            // Mid-run change, asked for in the middle of blocks.
                            s.switch_to(64);
                        }
                        if let Ok(a) = s.admit(0, &mut None) {
                            weight += a.every;
                            if firsts.len() < 8 {
                                firsts.push(hit);
                            }
                        }
                    }
                    (n, weight, firsts)
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let hits: u64 = results.iter().map(|r| r.0).sum();
        let weight: u64 = results.iter().map(|r| r.1).sum();
        assert_eq!(s.hits(), hits, "every thread's hits are summed");
        // Each thread's last block may be unfinished: off by less than 64 each.
        assert!(weight.abs_diff(hits) < 4 * 64, "{weight} for {hits} hits");
        // Each thread picks at offsets of its own: not all four the same.
        assert!(
            results.iter().any(|r| r.2 != results[0].2),
            "{:?}",
            results.iter().map(|r| &r.2).collect::<Vec<_>>()
        );
    }

    /// Runs `hits` hits through `samplers` as a site's program does: a hit the thread passes by
    /// is only counted; the next one credits it to every sampler; a run is at most 1,024 hits
    /// (the pipeline's `MAX_QUIET`). `switch` may change factors before a hit. Returns each
    /// sampler's evaluations (hit, weight) and the number of hits the program ran on.
    fn through_a_site(
        samplers: &[&Sampler],
        hits: u64,
        mut switch: impl FnMut(u64),
    ) -> (Vec<Vec<(u64, u64)>>, u64) {
        let mut evaluated = vec![Vec::new(); samplers.len()];
        let (mut skip, mut skipped, mut runs) = (0u64, 0u64, 0u64);
        for hit in 0..hits {
            switch(hit);
            if skip > 0 {
                skip -= 1;
                skipped += 1;
                continue;
            }
            runs += 1;
            let mut align = None;
            skip = 1024;
            for (s, out) in samplers.iter().zip(&mut evaluated) {
                let q = match s.admit(skipped, &mut align) {
                    Ok(a) => {
                        out.push((hit, a.every));
                        a.quiet
                    }
                    Err(q) => q,
                };
                skip = skip.min(q);
            }
            skipped = 0;
        }
        (evaluated, runs)
    }

    #[test]
    fn skipping_the_quiet_hits_evaluates_the_same_hits_with_the_same_weights() {
        let b = Budgets::default();
        for every in [1u64, 2, 8, 64, 1024] {
            let stepped = Sampler::new(&b, 0.01, true);
            let skipping = Sampler::new(&b, 0.01, true);
            stepped.switch_to(every);
            skipping.switch_to(every);
            let mut stepped_evaluated = Vec::new();
            for hit in 0..50_000u64 {
                if let Ok(a) = stepped.admit(0, &mut None) {
                    stepped_evaluated.push((hit, a.every));
                }
            }
            let (evaluated, runs) = through_a_site(&[&skipping], 50_000, |_| {});
            // Both take up `every` at the first hit; the thread's seed then picks the same hits.
            assert_eq!(evaluated[0], stepped_evaluated, "1 in {every}");
            assert_eq!(stepped.hits(), 50_000);
            // The hits passed by after the last one the program ran on are not counted yet.
            assert!(skipping.hits() <= 50_000 && skipping.hits() + every.max(1024) > 50_000);
            if every >= 8 {
                // The program runs on the evaluated hits, and where a run reached its cap.
                assert!(
                    runs <= stepped_evaluated.len() as u64 + 50_000 / 1024 + 1,
                    "1 in {every}: {runs} runs for {} evaluations",
                    stepped_evaluated.len()
                );
            }
        }
    }

    #[test]
    fn passing_hits_by_keeps_weights_exact_however_often_the_factor_changes() {
        let b = Budgets::default();
        let s = Sampler::new(&b, 0.01, true);
        let mut rng = fastrand::Rng::with_seed(7);
        let hits = 300_000u64;
        let (evaluated, runs) = through_a_site(&[&s], hits, |hit| {
            if hit % 7_919 == 0 {
                s.switch_to(1u64 << rng.u32(0..11));
            }
        });
        let weight: u64 = evaluated[0].iter().map(|e| e.1).sum();
        // Only the last, unfinished block may be off, by less than the largest factor.
        assert!(weight.abs_diff(hits) < 1024, "{weight} for {hits} hits");
        // Factors from 1 to 1024: about 2/11 of the hits are evaluated.
        assert!(runs < hits / 4, "most hits were passed by: {runs} runs");
    }

    #[test]
    fn tracepoints_at_one_site_evaluate_on_the_same_hits() {
        let b = Budgets::default();
        let dense = Sampler::new(&b, 0.01, true);
        let sparse = Sampler::new(&b, 0.01, true);
        let sparser = Sampler::new(&b, 0.01, true);
        // The dense one is older: it has counted hits of its own before the others came.
        dense.switch_to(8);
        let _ = through_a_site(&[&dense], 10_001, |_| {});
        sparse.switch_to(32);
        sparser.switch_to(256);
        let hits = 100_000;
        let (evaluated, runs) = through_a_site(&[&dense, &sparse, &sparser], hits, |_| {});
        let dense_hits: std::collections::HashSet<u64> = evaluated[0].iter().map(|e| e.0).collect();
        for (i, every) in [(1, 32u64), (2, 256)] {
            // Past the first blocks (1 in 1 until each takes up its factor) ...
            let late: Vec<_> = evaluated[i].iter().filter(|e| e.0 >= 512).collect();
            assert!(late.len() as u64 >= (hits - 512) / every - 1, "{late:?}");
            // ... each of its evaluations is on a hit the dense one evaluates too.
            for e in late {
                assert!(
                    dense_hits.contains(&e.0),
                    "1 in {every} evaluated {e:?} alone"
                );
            }
        }
        // So the program runs once per block of the densest, not once per tracepoint's pick
        // (about hits / 8 + hits / 32 + hits / 256 if their picks were independent), but for
        // the hits before the new ones took up their factors (each evaluates every hit until
        // the start of one of its blocks).
        assert!(
            runs <= dense_hits.len() as u64 + 256,
            "{runs} runs for {} evaluations of the densest",
            dense_hits.len()
        );
    }

    #[test]
    fn the_schedule_answers_as_picked_and_quiet_do() {
        for seed in [0u64, 99, u64::MAX] {
            for shift in 0..11u32 {
                for hit in 0..(64u64 << shift).min(40_000) {
                    for cross in [false, true] {
                        assert_eq!(
                            schedule(hit, shift, seed, cross),
                            (
                                picked(hit, 1 << shift, seed),
                                quiet(hit + 1, shift, seed, cross)
                            ),
                            "seed {seed}, shift {shift}, hit {hit}, cross {cross}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_picks_nest() {
        for seed in [0u64, 99, u64::MAX] {
            for shift in 1..12u32 {
                for hit in 0..20_000u64 {
                    if picked(hit, 1 << shift, seed) {
                        assert!(picked(hit, 1 << (shift - 1), seed), "{seed} {shift} {hit}");
                    }
                }
                for block in 0..(20_000 >> shift) {
                    let pick = pick_in(block, shift, seed);
                    assert_eq!(pick >> shift, block);
                    assert!(picked(pick, 1 << shift, seed));
                }
            }
        }
    }

    #[test]
    fn quiet_runs_up_to_the_pick_or_the_next_block() {
        for shift in 1..8u32 {
            let every = 1u64 << shift;
            for next in 0..(every * 50) {
                let q = quiet(next, shift, 99, false);
                // No hit in the quiet run is picked, and the run does not cross a block start.
                for h in next..next + q {
                    assert!(!picked(h, every, 99), "shift {shift}, next {next}, q {q}");
                }
                assert!(
                    next % every + q <= every,
                    "shift {shift}, next {next}, q {q}"
                );
                // It ends at a pick or at a block start, and a block's first hit is never in one.
                let end = next + q;
                assert!(picked(end, every, 99) || end.is_multiple_of(every));
                if next.is_multiple_of(every) {
                    assert_eq!(q, 0);
                }
                // Allowed to cross, it runs to the next pick, wherever that is.
                let q = quiet(next, shift, 99, true);
                for h in next..next + q {
                    assert!(!picked(h, every, 99), "shift {shift}, next {next}, q {q}");
                }
                assert!(
                    picked(next + q, every, 99),
                    "shift {shift}, next {next}, q {q}"
                );
            }
        }
        assert_eq!(
            quiet(5, 0, 1, true),
            0,
            "every hit is evaluated: nothing is quiet"
        );
    }

    #[test]
    fn the_process_has_a_cpu_clock_that_moves() {
        let before = process_cpu_ns().expect("unix has getrusage");
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = process_cpu_ns().expect("unix has getrusage");
        assert!(after > before, "{before} -> {after}");
    }

    fn budgets(window: Duration) -> Budgets {
        Budgets {
            cpu_window: window,
            cpu_floor: Duration::from_micros(100),
            max_sample_every: 64,
            ..Budgets::default()
        }
    }

    #[test]
    fn timing_nothing_measures_about_the_clock_floor() {
        let floor = ThreadTime::floor_ns();
        assert!(floor > 0, "reading a clock costs something");
        // Nothing timed, less the floor: the median is a small part of the floor, so an
        // evaluation's measurement is not inflated by the reads that time it.
        let mut net: Vec<u64> = (0..101)
            .map(|_| ThreadTime::now().elapsed_ns().saturating_sub(floor))
            .collect();
        net.sort_unstable();
        assert!(
            net[50] < floor,
            "median {} ns after a floor of {floor} ns",
            net[50]
        );
    }

    /// A cost of `ns` for each evaluation, nothing once.
    fn each(ns: u64) -> Cost {
        Cost { each: ns, once: 0 }
    }

    #[test]
    fn the_timing_is_charged_once_not_once_per_evaluation_stood_for() {
        let b = budgets(Duration::from_secs(3600));
        let agent = AgentCpu::new(&b);
        let s = Sampler::new(&b, 0.01, true);
        s.charge(&agent, Cost { each: 100, once: 7 }, 64, Instant::now());
        assert_eq!(s.spent.load(Ordering::Relaxed), 100 * 64 + 7);
        assert_eq!(agent.spent.load(Ordering::Relaxed), 100 * 64 + 7);
    }

    #[test]
    fn an_expensive_tracepoint_samples_and_a_cheap_one_does_not() {
        // Times are made up, from before the samplers' windows start (so those charges land in
        // the first window) to one second after (so the next one closes it).
        let mut t = Instant::now();
        let b = budgets(Duration::from_millis(1));
        let agent = AgentCpu::new(&b);
        let dear = Sampler::new(&b, 0.01, true);
        let cheap = Sampler::new(&b, 0.01, true);
        // 20 timed evaluations of 1 ms each, standing for 16 each: far over 1% of anything.
        for _ in 0..20 {
            dear.charge(&agent, each(1_000_000), 16, t);
            cheap.charge(&agent, each(10), 1, t);
        }
        t += Duration::from_secs(1);
        assert!(matches!(dear.charge(&agent, each(1_000_000), 16, t), Verdict::Every(n) if n > 1));
        assert!(dear.every() > 1);
        assert_eq!(cheap.charge(&agent, each(10), 1, t), Verdict::Keep);
        assert_eq!(cheap.every(), 1);
    }

    #[test]
    fn past_the_largest_factor_it_disarms_and_without_sampling_at_once() {
        let mut t = Instant::now();
        let b = budgets(Duration::from_millis(1));
        let agent = AgentCpu::new(&b);
        let s = Sampler::new(&b, 0.01, true);
        let hard = Sampler::new(&b, 0.01, false);
        let mut verdicts = Vec::new();
        let mut hard_verdicts = Vec::new();
        for _ in 0..6 {
            for _ in 0..10 {
                s.charge(&agent, each(10_000_000), 1, t);
                hard.charge(&agent, each(10_000_000), 1, t);
            }
            t += Duration::from_secs(1);
            verdicts.push(s.charge(&agent, each(10_000_000), 1, t));
            hard_verdicts.push(hard.charge(&agent, each(10_000_000), 1, t));
        }
        assert_eq!(verdicts[0], Verdict::Every(64), "{verdicts:?}");
        assert!(verdicts.contains(&Verdict::Disarm), "{verdicts:?}");
        assert_eq!(hard_verdicts[0], Verdict::Disarm, "{hard_verdicts:?}");
    }
}
