//! [`Site`]: a probe site, the static record `probe!` leaves at a line of code.
//!
//! # Interest
//! Every site is a `static` with an `armed` flag. The code at the line reads it with one relaxed
//! atomic load; while no tracepoint is bound to the site that is the whole cost, and nothing is
//! allocated or captured. When the agent installs a tracepoint list it computes, once, which sites
//! each tracepoint binds to, publishes each site's program (the tracepoints to run there) through
//! an `ArcSwapOption`, and only then sets the flag. Removing a tracepoint clears the flag first and
//! the program after, so a hit never sees a flag without a program for long, and when it does it
//! finds nothing to run.
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

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicU8, AtomicU64, Ordering},
};

use arc_swap::ArcSwapOption;

pub(crate) mod capture;
pub(crate) mod redact;
#[cfg(feature = "serde")]
pub(crate) mod serde_capture;

use capture::Capture;

/// What an armed site runs on a hit: the tracepoints bound to it.
pub(crate) trait Program: Send + Sync {
    /// Runs over the values the site captured.
    fn hit(&self, site: &'static Site, values: &[&dyn Capture]);
}

/// A published program (boxed, since `ArcSwapOption` holds a sized type).
pub(crate) type SiteProgram = Box<dyn Program>;

/// A probe site: where it is, what it captures, and whether a tracepoint is bound to it.
pub struct Site {
    file: &'static str,
    line: u32,
    module: &'static str,
    names: &'static [&'static str],
    /// [`ARMED`] and [`UNSEEN`]: the line takes the cold path while either is set.
    state: AtomicU8,
    program: ArcSwapOption<SiteProgram>,
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
            program: ArcSwapOption::const_empty(),
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

    /// Runs the bound tracepoints over the captured values. Called by `probe!` when
    /// [`wants_hit`](Self::wants_hit).
    #[doc(hidden)]
    #[cold]
    #[inline(never)]
    pub fn hit(&'static self, values: &[&dyn Capture]) {
        if self.state.load(Ordering::Relaxed) & UNSEEN != 0 {
            self.first_run(values);
        }
        if let Some(program) = self.program.load().as_ref() {
            program.hit(self, values);
        }
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

    pub(crate) fn arm(&self, program: Arc<SiteProgram>) {
        self.program.store(Some(program));
        self.state.fetch_or(ARMED, Ordering::Release);
    }

    pub(crate) fn disarm(&self) {
        self.state.fetch_and(!ARMED, Ordering::Release);
        self.program.store(None);
    }

    /// `file:line`.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file, self.line)
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
