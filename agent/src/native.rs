//! Native breakpoints' debug-info side: [`DebugIndex`], an index over the running binary's DWARF
//! (Linux x86_64, feature `native`).
//!
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
//! working. Arming, the trap handler and patching build on this and are not here yet.

mod index;
mod load;
mod plan;

pub use index::{AddressSource, DebugIndex, FileId, LineAddress, LineLookup, NearestLines};
pub use load::LoadError;
pub use plan::{CapturePlan, DwarfError, Function, Unavailable, Variable};
