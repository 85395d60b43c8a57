//! Native breakpoints (Linux x86_64, feature `native`): tracepoints on lines with no probe site,
//! armed from the running binary's DWARF ([`Native`], switched on with
//! `AgentBuilder::native_breakpoints`; see docs/native.md). The parts: [`DebugIndex`] (below),
//! `patch` (what replaces the displaced instruction; out-of-line slots; writing code), `trap`
//! (the async-signal-safe SIGTRAP handler and its table), `ring` (handler → decoder records),
//! [`TypeShape`] (what to copy and how to decode it), and `arm` (arming, disarming, decoding,
//! budgets).
//!
//! [`DebugIndex`] is an index over the running binary's DWARF.
//! Built once at start-up on the agent's own thread ([`DebugIndex::for_current_exe`]), it
//! answers the questions arming needs, each in microseconds after that:
//!
//! * `file:line` → every address of the line ([`DebugIndex::lookup`]): the line program's
//!   `is_stmt` rows where the line starts, else the call sites of functions inlined on that line;
//!   for a line with no code, the nearest lines that have some;
//! * address → the variables in scope and a [`CapturePlan`] for each
//!   ([`DebugIndex::variables_at`]), with the lines nearby where an optimized-out one can be read;
//! * the load bias (from `dl_iterate_phdr`) that turns DWARF addresses into runtime ones.
//!
//! Where the binary has no debug info (its own or a separate file found by build-id or
//! `.gnu_debuglink`), building fails once with [`LoadError::NoDebugInfo`] and probe sites keep
//! working. Split DWARF is read from the binary's DWARF package (`.dwp`) or its `.dwo` files;
//! without them, [`LoadError::SplitDwarf`].
//!
//! The files, bottom up: `load` (mapping the binary and its debug file), `cfa` (unwind rules),
//! `index` (the `DebugIndex`), `shape` and `plan` (types and variable locations), `guard`
//! (fault-free reads), `patch`, `tramp` (jump trampolines: `analyse`, `emit`, `stop`), `ring`,
//! `trap`, `arm` on top, and `lines` (what the catalog answers about native lines). May use: `tracepoint` (a native hit runs the same pipeline as a
//! probe site), `site::path_matches`, and `metrics` (its self metrics).

mod arm;
mod cfa;
mod guard;
mod index;
mod lines;
mod load;
mod patch;
mod plan;
mod ring;
mod shape;
mod tramp;
mod trap;

pub(crate) use arm::{ArmError, NativeHandle};
pub use arm::{Native, NativeBudget, NativeStats};
pub use cfa::CfaRule;
pub use index::{AddressSource, DebugIndex, FileId, LineAddress, LineLookup, NearestLines};
pub use lines::{
    CodeLine, LineVariable, MAX_LINES, files as catalog_files, lines as catalog_lines,
};
pub use load::LoadError;
pub use plan::{CapturePlan, DwarfError, Function, Unavailable, Variable};
pub use shape::{DecodeError, Deref, DerefLen, MAX_DEREF_BYTES, MAX_DEREFS, MAX_INLINE, TypeShape};
pub use tramp::{
    Plan, StopError, Trampoline, TrampolineError, TrampolineFn, TrampolineRegs, Why, qualifies,
    qualifies_code, qualifies_code_with,
};
