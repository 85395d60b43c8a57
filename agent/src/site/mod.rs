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
//! What a site runs is a [`Program`], a trait this module defines and the hit pipeline
//! (`tracepoint::pipeline`) implements: sites know nothing of tracepoints, so the dependency
//! points one way (the pipeline uses sites, never the reverse).
//!
//! May use: nothing else in the crate (sites and captures are the bottom of the tracepoint path).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
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
    armed: AtomicBool,
    program: ArcSwapOption<SiteProgram>,
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
    ) -> Self {
        Self {
            file,
            line,
            module,
            names,
            armed: AtomicBool::new(false),
            program: ArcSwapOption::const_empty(),
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

    /// Whether a tracepoint is bound here: one relaxed load.
    #[inline(always)]
    pub fn is_armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    /// Runs the bound tracepoints over the captured values. Called by `probe!` when armed.
    #[doc(hidden)]
    #[cold]
    #[inline(never)]
    pub fn hit(&'static self, values: &[&dyn Capture]) {
        if let Some(program) = self.program.load().as_ref() {
            program.hit(self, values);
        }
    }

    pub(crate) fn arm(&self, program: Arc<SiteProgram>) {
        self.program.store(Some(program));
        self.armed.store(true, Ordering::Release);
    }

    pub(crate) fn disarm(&self) {
        self.armed.store(false, Ordering::Release);
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
