//! [`Site`]: a probe site, the static record `probe!` leaves at a line of code.
//!
//! # Interest
//! Every site is a `static` with an `armed` flag. The code at the line reads it with one relaxed
//! atomic load; while no tracepoint is bound to the site that is the whole cost, and nothing is
//! allocated or captured. When the agent installs a tracepoint list it computes, once, which sites
//! each tracepoint binds to, publishes each site's program (the tracepoints to run there) through
//! an atomic pointer, and only then sets the flag. Removing a tracepoint clears the flag first and
//! the program after, so a hit never sees a flag without a program for long, and when it does it
//! finds nothing to run. A hit reads the pointer inside a [`grace`] section (plain stores to a
//! counter of its own thread, no locked instruction); a program swapped out is [`Retired`] and
//! dropped once every hit that may still run it has ended. Before that, a hit the program said it
//! has no use for (a sampled-out one) is passed by from the thread's own table ([`pass`]), in code
//! inlined at the line: it touches the site's first cache line and one line of the table, and
//! neither the program, the grace counter nor any of the agent's code.
//!
//! Sites are collected at link time into one distributed slice ([`linkme`]), so the agent can
//! enumerate every site of the binary at start-up without any registration call at run time.
//!
//! # Field names
//! What a site captures is typed only where `probe!` expands, so the static cannot name the
//! fields of a `#[derive(Capture)]` value. A site therefore starts *unseen*: the word the line
//! loads is non-zero, so its first run takes the cold path, which records each plain captured
//! variable's [`Capture::field_names`] (a static answer of its type: no value is read, nothing
//! computed or allocated) and clears the bit. The catalog lists them from then on
//! ([`fields_seen`] tells the agent's client to report it again). The disarmed cost stays one
//! load: the word holds both bits.
//!
//! What a site runs is a [`Program`], a trait this module defines and the hit pipeline
//! (`tracepoint::pipeline`) implements: sites know nothing of tracepoints, so the dependency
//! points one way (the pipeline uses sites, never the reverse).
//!
//! May use: nothing else in the crate (sites and captures are the bottom of the tracepoint path).

use std::{
    ptr,
    sync::{
        OnceLock,
        atomic::{AtomicPtr, AtomicU8, AtomicU64, Ordering},
    },
};

pub(crate) mod capture;
pub(crate) mod grace;
mod pass;
pub(crate) mod redact;
#[cfg(feature = "serde")]
pub(crate) mod serde_capture;

use capture::Capture;

/// What an armed site runs on a hit: the tracepoints bound to it.
pub(crate) trait Program: Send + Sync {
    /// Runs over the values the site captured, after `passed` hits this thread passed by since
    /// the last one the program saw. Returns how many of the thread's next hits the program has
    /// no use for: the site passes them by ([`pass`]) and owes them to the next call.
    fn hit(&self, site: &'static Site, values: &[&dyn Capture], passed: u64) -> u64;
}

/// A published program (boxed twice over: an atomic pointer is thin).
pub(crate) type SiteProgram = Box<dyn Program>;

/// A probe site: where it is, what it captures, and whether a tracepoint is bound to it.
///
/// Laid out by hand and aligned to a cache line: what a hit reads (the state, the generation,
/// the program) comes first, so a hit passed by touches one line of the site, the one the line of
/// code already loaded its state from.
#[repr(C, align(64))]
pub struct Site {
    /// [`ARMED`] and [`UNSEEN`]: the line takes the cold path while either is set.
    state: AtomicU8,
    /// Bumped each time `program` is replaced: a thread's run of hits to pass by is for one.
    generation: AtomicU64,
    /// Owned: made by `Box::into_raw`, freed through [`Retired`] after a grace period.
    program: AtomicPtr<SiteProgram>,
    file: &'static str,
    line: u32,
    module: &'static str,
    names: &'static [&'static str],
    /// Per captured name, the field names its value offered on the site's first run (a static
    /// beside the site's, one slot per name: recording them allocates nothing).
    fields: &'static [FieldSlot],
}

/// Where a site keeps the field names one captured value offered on its first run. `probe!`
/// leaves one per captured name in a static; not meant to be used by hand.
#[doc(hidden)]
#[derive(Debug)]
pub struct FieldSlot(OnceLock<&'static [&'static str]>);

impl FieldSlot {
    /// An empty slot.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Self(OnceLock::new())
    }
}

/// A tracepoint is bound to the site.
const ARMED: u8 = 1;
/// The site has not run yet: its first run records the captured values' field names.
const UNSEEN: u8 = 2;

/// Bumped whenever a site recorded field names on its first run.
static FIELDS_SEEN: AtomicU64 = AtomicU64::new(0);

/// How many sites have recorded field names so far: the probe-site catalog changed when this
/// did.
pub(crate) fn fields_seen() -> u64 {
    FIELDS_SEEN.load(Ordering::Relaxed)
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("file", &self.file)
            .field("line", &self.line)
            .field("module", &self.module)
            .field("names", &self.names)
            .field("armed", &self.is_armed())
            .finish()
    }
}

impl Site {
    /// A disarmed site. Used by `probe!`; not meant to be called by hand.
    #[doc(hidden)]
    pub const fn new(
        file: &'static str,
        line: u32,
        module: &'static str,
        names: &'static [&'static str],
        fields: &'static [FieldSlot],
    ) -> Self {
        Self {
            file,
            line,
            module,
            names,
            state: AtomicU8::new(UNSEEN),
            program: AtomicPtr::new(ptr::null_mut()),
            generation: AtomicU64::new(0),
            fields,
        }
    }

    /// The source file, as `file!()` gave it.
    pub fn file(&self) -> &'static str {
        self.file
    }

    /// The line.
    pub fn line(&self) -> u32 {
        self.line
    }

    /// The module path.
    pub fn module(&self) -> &'static str {
        self.module
    }

    /// The names of the captured variables, in order.
    pub fn names(&self) -> &'static [&'static str] {
        self.names
    }

    /// Whether a tracepoint is bound here.
    #[inline]
    pub fn is_armed(&self) -> bool {
        self.state.load(Ordering::Relaxed) & ARMED != 0
    }

    /// Whether the line must call [`hit`](Self::hit): armed, or not run yet. One relaxed load;
    /// used by `probe!`, not meant to be called by hand.
    #[doc(hidden)]
    #[inline(always)]
    pub fn wants_hit(&self) -> bool {
        self.state.load(Ordering::Relaxed) != 0
    }

    /// The field names each captured value offered (in the order of [`names`](Self::names);
    /// empty for a value that offered none), once the site has run; `None` before.
    pub fn field_names(&self) -> Option<Vec<&'static [&'static str]>> {
        if self.state.load(Ordering::Acquire) & UNSEEN != 0 {
            return None;
        }
        Some(
            self.fields
                .iter()
                .map(|slot| slot.0.get().copied().unwrap_or_default())
                .collect(),
        )
    }

    /// Runs the bound tracepoints over the captured values. Called by `probe!` when the site is
    /// armed.
    ///
    /// Inlined where the line is: a hit the program has no use for (this thread's run of
    /// sampled-out hits, [`pass`]) is passed by right there, reading the site's line and one line
    /// of the thread's table, and no code of the agent's; the rest go to [`run`](Self::run).
    #[doc(hidden)]
    #[inline(always)]
    pub fn hit(&'static self, values: &[&dyn Capture]) {
        // Relaxed: a generation older than the program's only makes this thread pass a hit by on
        // behalf of the program before, whose hits the next `run` drops as stale.
        let generation = self.generation.load(Ordering::Relaxed);
        if !pass::pass(self as *const Site as usize, generation) {
            self.run(values);
        }
    }

    /// A hit not passed by: runs the site's program, if any, and starts the thread's next run of
    /// hits to pass by.
    #[cold]
    #[inline(never)]
    fn run(&'static self, values: &[&dyn Capture]) {
        if self.state.load(Ordering::Relaxed) & UNSEEN != 0 {
            self.first_run(values);
        }
        // A hit inside another (a probed function called while a program runs) is dropped: a
        // program never runs inside itself. Passing such a hit by above is harmless: it only
        // counts on the thread's own table.
        if grace::inside() {
            return;
        }
        let key = self as *const Site as usize;
        // Acquire, and before the program: a generation seen here was bumped after its program
        // was published.
        let generation = self.generation.load(Ordering::Acquire);
        grace::read(|| {
            // Acquire: the program's contents were written before it was published.
            let program = self.program.load(Ordering::Acquire);
            // SAFETY: a non-null pointer here came from `Box::into_raw` in `arm`, and whoever
            // swaps it out frees it only after a grace period (`Retired`), which waits for this
            // section to end.
            if let Some(program) = unsafe { program.as_ref() } {
                let quiet = program.hit(self, values, pass::take(key, generation));
                pass::start(key, generation, quiet);
            }
        });
    }

    /// Records the captured values' field names, once; allocates nothing and reads no value.
    /// Called by `probe!` on a site's first run when no tracepoint is bound (with `()` in place
    /// of what it would have to compute), and by [`hit`](Self::hit) when one is.
    #[doc(hidden)]
    #[cold]
    #[inline(never)]
    pub fn first_run(&self, values: &[&dyn Capture]) {
        let mut any = false;
        for (slot, v) in self.fields.iter().zip(values) {
            let names = v.field_names();
            if !names.is_empty() && slot.0.set(names).is_ok() {
                any = true;
            }
        }
        self.state.fetch_and(!UNSEEN, Ordering::Release);
        if any {
            FIELDS_SEEN.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publishes `program` as the site's, then arms it; returns the program it replaced.
    pub(crate) fn arm(&self, program: SiteProgram) -> Retired {
        let new = Box::into_raw(Box::new(program));
        let old = self.program.swap(new, Ordering::AcqRel);
        self.generation.fetch_add(1, Ordering::Release);
        self.state.fetch_or(ARMED, Ordering::Release);
        Retired::new(old)
    }

    /// Disarms the site, then unpublishes its program; returns it.
    pub(crate) fn disarm(&self) -> Retired {
        self.state.fetch_and(!ARMED, Ordering::Release);
        let old = self.program.swap(ptr::null_mut(), Ordering::AcqRel);
        self.generation.fetch_add(1, Ordering::Release);
        Retired::new(old)
    }

    /// `file:line`.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// A program a site no longer publishes, which hits that began before may still be running.
/// Dropping it waits for them (a grace period) and then drops the program; [`Retired::drop_all`]
/// waits once for many.
#[must_use = "dropping a retired program waits for the hits that may still run it"]
pub(crate) struct Retired(*mut SiteProgram);

// SAFETY: it owns a `Box<SiteProgram>`, and `Program: Send + Sync`.
unsafe impl Send for Retired {}

impl Retired {
    fn new(program: *mut SiteProgram) -> Self {
        Self(program)
    }

    /// Waits for one grace period, then drops every program in `list`.
    pub(crate) fn drop_all(list: Vec<Retired>) {
        if list.iter().all(|r| r.0.is_null()) {
            return;
        }
        let waited = grace::synchronize();
        for mut r in list {
            let program = std::mem::replace(&mut r.0, ptr::null_mut());
            r.free(program, waited);
        }
    }

    fn free(&self, program: *mut SiteProgram, waited: bool) {
        if program.is_null() {
            return;
        }
        if !waited {
            // Called inside a hit (by code a tracepoint evaluation ran): the program may be the
            // one running. Keeping it is safe; freeing it is not.
            tracing::warn!(
                "sonde agent: a site's tracepoints were replaced from inside a hit; the old ones \
                 are kept"
            );
            return;
        }
        // SAFETY: made by `Box::into_raw` in `Site::arm`, swapped out of its site (no hit that
        // begins from now on can load it), and a grace period has passed (none that began before
        // is still running); `Retired` owns it alone.
        drop(unsafe { Box::from_raw(program) });
    }
}

impl Drop for Retired {
    fn drop(&mut self) {
        let program = std::mem::replace(&mut self.0, ptr::null_mut());
        if !program.is_null() {
            self.free(program, grace::synchronize());
        }
    }
}

/// Every probe site linked into the binary.
#[linkme::distributed_slice]
pub static SITES: [&'static Site];

/// Every probe site linked into the binary.
pub fn sites() -> impl Iterator<Item = &'static Site> {
    SITES.iter().copied()
}

/// Whether a tracepoint's `path` names a site's `file` (the rule is `sonde_proto`'s, shared with
/// the server so the two cannot drift).
pub use sonde_proto::path_matches;

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    };

    use super::*;

    static SITE: Site = Site::new("grace_test.rs", 1, "tests", &[], &[]);

    const ALIVE: u64 = 0x5a5a_5a5a;

    /// A program that counts the hits running it and, when dropped, records whether any still
    /// was.
    struct Watched {
        alive: AtomicU64,
        running: AtomicU64,
        hits: Arc<AtomicU64>,
        dropped_while_running: Arc<AtomicBool>,
    }

    impl Program for Watched {
        fn hit(&self, _site: &'static Site, _values: &[&dyn Capture], _passed: u64) -> u64 {
            self.running.fetch_add(1, Ordering::SeqCst);
            assert_eq!(self.alive.load(Ordering::SeqCst), ALIVE);
            for _ in 0..50 {
                std::hint::spin_loop();
            }
            assert_eq!(self.alive.load(Ordering::SeqCst), ALIVE);
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.running.fetch_sub(1, Ordering::SeqCst);
            0
        }
    }

    impl Drop for Watched {
        fn drop(&mut self) {
            if self.running.load(Ordering::SeqCst) != 0 {
                self.dropped_while_running.store(true, Ordering::SeqCst);
            }
            self.alive.store(0, Ordering::SeqCst);
        }
    }

    static QUIET_SITE: Site = Site::new("pass_test.rs", 1, "tests", &[], &[]);

    #[test]
    fn what_a_hit_reads_of_a_site_is_on_one_cache_line() {
        assert_eq!(std::mem::align_of::<Site>(), 64);
        let end = |offset: usize, size: usize| offset + size;
        assert!(end(std::mem::offset_of!(Site, state), 1) <= 64);
        assert!(end(std::mem::offset_of!(Site, generation), 8) <= 64);
        assert!(end(std::mem::offset_of!(Site, program), 8) <= 64);
        assert_eq!(&QUIET_SITE as *const Site as usize % 64, 0);
    }

    /// A program that asks for every fourth hit and tallies what it is given.
    struct EveryFourth {
        seen: Arc<AtomicU64>,
        passed: Arc<AtomicU64>,
    }

    impl Program for EveryFourth {
        fn hit(&self, _site: &'static Site, _values: &[&dyn Capture], passed: u64) -> u64 {
            self.seen.fetch_add(1, Ordering::Relaxed);
            self.passed.fetch_add(passed, Ordering::Relaxed);
            3
        }
    }

    #[test]
    fn the_hits_a_program_has_no_use_for_are_passed_by_and_owed_to_it() {
        let (seen, passed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let program = || -> SiteProgram {
            Box::new(EveryFourth {
                seen: seen.clone(),
                passed: passed.clone(),
            })
        };
        drop(QUIET_SITE.arm(program()));
        for _ in 0..101 {
            QUIET_SITE.hit(&[]);
        }
        // Hits 0, 4, 8, ..., 100 reach the program; each after the first carries the 3 before.
        assert_eq!(seen.load(Ordering::Relaxed), 26);
        assert_eq!(passed.load(Ordering::Relaxed), 75);
        // Three more are passed by and owed; arming again drops them with the old program.
        for _ in 0..3 {
            QUIET_SITE.hit(&[]);
        }
        assert_eq!(seen.load(Ordering::Relaxed), 26);
        drop(QUIET_SITE.arm(program()));
        QUIET_SITE.hit(&[]);
        assert_eq!(
            seen.load(Ordering::Relaxed),
            27,
            "the new program sees the next hit"
        );
        assert_eq!(
            passed.load(Ordering::Relaxed),
            75,
            "nothing owed to the old one is paid"
        );
        drop(QUIET_SITE.disarm());
    }

    #[test]
    fn a_program_is_never_dropped_while_a_hit_runs_it() {
        let hits = Arc::new(AtomicU64::new(0));
        let bad = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let program = || -> SiteProgram {
            Box::new(Watched {
                alive: AtomicU64::new(ALIVE),
                running: AtomicU64::new(0),
                hits: hits.clone(),
                dropped_while_running: bad.clone(),
            })
        };
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if SITE.wants_hit() {
                            SITE.hit(&[]);
                        }
                    }
                })
            })
            .collect();
        let mut swaps = 0;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(1500) {
            drop(SITE.arm(program()));
            drop(SITE.arm(program()));
            Retired::drop_all(vec![SITE.disarm(), SITE.arm(program())]);
            swaps += 3;
        }
        drop(SITE.disarm());
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().expect("no hit panicked on a dropped program");
        }
        assert!(
            !bad.load(Ordering::SeqCst),
            "a program was dropped while a hit ran it"
        );
        assert!(swaps > 100, "{swaps} swaps");
        assert!(hits.load(Ordering::Relaxed) > 1000, "the hits ran programs");
        assert!(!SITE.is_armed());
    }
}
