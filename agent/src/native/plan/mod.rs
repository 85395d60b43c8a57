//! [`CapturePlan`]: where a variable's value is at one address, compiled from its DWARF location
//! (`DW_AT_location` expression or location-list entry, or `DW_AT_const_value`), and
//! [`DebugIndex::variables_at`], which walks the scopes around an address to list them.
//!
//! The files: this one holds the answers ([`CapturePlan`], [`Unavailable`], [`DwarfError`]);
//! `variables` the queries on [`DebugIndex`] ([`Variable`], [`Function`]); `location` compiles a
//! DWARF location into a plan; `coroutine` finds an `async fn`'s locals in its state and its
//! `.await`s; `scope` walks the DWARF scopes around an address and reads their entries. May use:
//! `index` (the `DebugIndex` and its line rows), `cfa` (frame-base rules) and `shape` (each
//! variable's [`TypeShape`]).
//!
//! Plans cover the shapes rustc emits for readable values: a register, memory at a register (or
//! the frame base) plus an offset, memory behind a pointer stored there (an `async fn`'s state,
//! below), a static address, and a constant. A frame base of
//! `DW_OP_call_frame_cfa` is resolved at the address through the unwind info
//! ([`DebugIndex::cfa_at`]): with a `register + offset` CFA rule the variable becomes memory at
//! that register plus an offset, so the trap handler never computes a CFA. Anything else is
//! [`Unavailable`] with the reason, naming the DWARF operation that is not supported (for example
//! `DW_OP_entry_value`, which would need the caller's frame).
//!
//! # `async fn`s
//!
//! A line of an `async fn` (or `async` block) runs in its poll function (`{async_fn#0}`), and
//! its locals live in one of two places. Those not held across an `.await` are stack slots of
//! the poll function, as in any function. Those held across one are fields of the coroutine's
//! state (`{async_fn_env#0}`, an enum whose `SuspendN` variants hold them), which rustc
//! describes, at opt-level 0, through the state pointer the poll function keeps in its frame:
//! `DW_OP_fbreg N, DW_OP_deref, DW_OP_plus_uconst M`. That is [`CapturePlan::Indirect`]: the
//! handler copies the pointer, and the variable's shape starts with a heap read `M` bytes past
//! it ([`shape::build_behind`]), so the value decodes exactly as the same value in place.
//!
//! Two things the DWARF does not say are worked out from the `.await`s, which rustc declares as
//! variables `__awaitee` on their lines:
//!
//! - A stack-slot local declared before an `.await` and in scope after it was not held across
//!   it; after it, the slot belongs to a later call of the poll function, so the local is
//!   [`Unavailable::NotKeptAcrossAwait`] there (by source lines: an `.await` between the
//!   declaration and the address's line; `_task_context` excepted, which each resumption
//!   stores again).
//! - Optimized builds describe the held locals without any location. In an out-of-line poll
//!   function whose state pointer (its first parameter, `self`) is in a register or in memory
//!   at the address, a local of that name at one offset of the `SuspendN` variants (their own
//!   fields, not the arguments every variant ends with) is read from the state, on lines after
//!   an `.await` that follows its declaration (before it, the value may not be stored there
//!   yet: [`Unavailable::InStateAfterAwait`]). The state is sure to hold the value the local
//!   had when the task last suspended (the poll function returned, its stores done); a change
//!   made since may not be stored yet (the optimized code can keep the new value in a
//!   register, and a fixture test sees a `let mut` local read on the line after its change
//!   with its older value). DWARF does not say which locals are `mut`, so every such read is
//!   marked ([`Variable::in_state_since`], the line of the last `.await` before the address)
//!   and the tracepoint's status says so for each local read this way.
//!
//! Each variable also gets its [`TypeShape`] (how to copy and decode its bytes), built from its
//! DWARF type: the whole value with [`DebugIndex::variables_at`], or only the parts a
//! tracepoint's expressions read with [`DebugIndex::variables_at_reading`] (fewer heap reads in
//! the trap handler, and the [`MAX_DEREFS`](super::shape::MAX_DEREFS) budget spent on what is
//! read).
//!
//! [`DebugIndex`]: crate::native::DebugIndex
//! [`DebugIndex::cfa_at`]: crate::native::DebugIndex::cfa_at
//! [`DebugIndex::variables_at`]: crate::native::DebugIndex::variables_at
//! [`DebugIndex::variables_at_reading`]: crate::native::DebugIndex::variables_at_reading
//! [`TypeShape`]: crate::native::TypeShape
//! [`shape::build_behind`]: crate::native::shape::build_behind

mod coroutine;
mod location;
mod scope;
mod variables;

use std::fmt;

pub(crate) use variables::Reader;
pub use variables::{Function, Variable};

use crate::native::index::Slice;

/// Where to read a variable at one address. DWARF register numbers (x86_64: 0 = RAX, 7 = RSP,
/// 6 = RBP, 16 = RIP, 17–32 = XMM0–15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapturePlan {
    /// The value is in a register.
    Reg(u16),
    /// The value is in memory at `register + offset` (including frame-base–relative locations
    /// whose frame base is a register, or the CFA when its rule at the address is
    /// `register + offset`).
    Mem {
        /// DWARF register number.
        reg: u16,
        /// Byte offset from the register's value.
        offset: i64,
    },
    /// The value is in memory `add` bytes past the address stored at `register + offset`: a
    /// local of an `async fn` kept in its coroutine state, which the poll function reaches
    /// through the state pointer in its frame (`DW_OP_fbreg N, DW_OP_deref, DW_OP_plus_uconst
    /// M`). The variable's [`TypeShape`](super::TypeShape) then starts with that heap read: its
    /// inline bytes are the pointer, and its first [`Deref`](super::shape::Deref) copies the
    /// value.
    Indirect {
        /// DWARF register number.
        reg: u16,
        /// Byte offset from the register's value to where the pointer is stored.
        offset: i64,
        /// Byte offset from the pointer to the value.
        add: u32,
    },
    /// The value is in memory at a fixed runtime address (a static).
    Static(u64),
    /// The value is a constant (little-endian bytes).
    Const(Vec<u8>),
    /// The value cannot be read at this address.
    Unavailable(Unavailable),
}

impl CapturePlan {
    /// Whether the value can be read.
    pub fn is_available(&self) -> bool {
        !matches!(self, Self::Unavailable(_))
    }
}

/// Why a variable cannot be read at an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// No location at all (`DW_AT_location` absent): optimized out everywhere.
    OptimizedOut,
    /// The location list has no entry for this address: optimized out here.
    NotLiveHere,
    /// The location needs a DWARF operation the plans do not support (its name, such as
    /// `DW_OP_entry_value`, `DW_OP_piece` or `DW_OP_stack_value`).
    UnsupportedOp(&'static str),
    /// Frame-base–relative, but the function's frame base is missing or unsupported.
    NoFrameBase,
    /// The frame base is the CFA (`DW_OP_call_frame_cfa`), and the unwind info computes the CFA
    /// at this address with a DWARF expression rather than `register + offset`.
    CfaExpression,
    /// The frame base is the CFA, and no unwind info (`.eh_frame`) covers this address.
    NoUnwindInfo,
    /// A local of an `async fn` (or `async` block) declared before an `.await` that the
    /// coroutine does not keep across it (the code after it does not use it): after the
    /// `.await`, its stack slot belongs to a later call of the poll function.
    NotKeptAcrossAwait {
        /// The line of the `.await`.
        line: u32,
    },
    /// A local of an `async fn` held in its coroutine state, which an optimized build
    /// describes without a location: the state is read for it only after the `.await` on this
    /// line, where the value is surely stored there.
    InStateAfterAwait {
        /// The line of the first `.await` after its declaration.
        line: u32,
    },
    /// The location could not be parsed.
    Malformed,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OptimizedOut => f.write_str("optimized out"),
            Self::NotLiveHere => f.write_str("optimized out at this address (location list gap)"),
            Self::UnsupportedOp(op) => write!(f, "location uses {op}, which is not supported"),
            Self::NoFrameBase => f.write_str("the function's frame base is not supported"),
            Self::CfaExpression => f.write_str(
                "the frame address (CFA) at this address is a DWARF expression in the unwind \
                 info, which is not supported",
            ),
            Self::NoUnwindInfo => f.write_str(
                "the frame address (CFA) is needed, but no unwind info (.eh_frame) covers this \
                 address",
            ),
            Self::NotKeptAcrossAwait { line } => write!(
                f,
                "its value is gone after the `.await` on line {line}: the async fn keeps only \
                 the locals used after an `.await`"
            ),
            Self::InStateAfterAwait { line } => write!(
                f,
                "optimized out; the async fn's state holds it, read only after the `.await` on \
                 line {line}"
            ),
            Self::Malformed => f.write_str("malformed location"),
        }
    }
}

/// An error reading DWARF while answering a query.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("malformed debug info: {0}")]
pub struct DwarfError(gimli::Error);

impl From<gimli::Error> for DwarfError {
    fn from(e: gimli::Error) -> Self {
        Self(e)
    }
}

type Unit<'a> = gimli::Unit<Slice<'a>>;
type Entry<'a> = gimli::DebuggingInformationEntry<Slice<'a>>;
