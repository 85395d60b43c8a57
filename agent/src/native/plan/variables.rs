//! [`CapturePlan`]: where a variable's value is at one address, compiled from its DWARF location
//! (`DW_AT_location` expression or location-list entry, or `DW_AT_const_value`), and
//! [`DebugIndex::variables_at`], which walks the scopes around an address to list them.
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

use std::{fmt, slice};

use gimli::{AttributeValue, DwOp, Operation, Reader, UnitOffset, constants};
use sonde_expr::Path;

use super::cfa::CfaRule;
use super::index::{DebugIndex, Slice};
use super::shape::{self, Reads, TypeShape};

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
    /// M`). The variable's [`TypeShape`] then starts with that heap read: its inline bytes are
    /// the pointer, and its first [`Deref`](super::shape::Deref) copies the value.
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

/// A variable or parameter in scope at an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// Its name in the source.
    pub name: String,
    /// Whether it is a function parameter.
    pub is_parameter: bool,
    /// The function (or inlined function) it belongs to.
    pub function: Option<String>,
    /// Whether that function is inlined at this address.
    pub inlined: bool,
    /// Its type's name (`u64`, `&str`, `alloc::string::String`, …).
    pub type_name: Option<String>,
    /// Its type's size in bytes.
    pub byte_size: Option<u64>,
    /// Where to read it at this address.
    pub plan: CapturePlan,
    /// How to copy and decode its value, from its type; `Err` names what is not supported.
    /// From [`DebugIndex::variables_at_reading`], pruned to the paths read below it.
    pub shape: Result<TypeShape, String>,
    /// When the plan is unavailable: lines of the same file in the same function where the
    /// variable can be read, nearest first (at most 5).
    pub available_at: Vec<u32>,
    /// Set for a local of an optimized `async fn` that the build gives no location, read from
    /// the coroutine's state (see the module header): the line of the last `.await` before
    /// the address. The state is sure to hold the value the local had when the task last
    /// suspended (at that `.await` or an earlier one); a change made since may not be seen,
    /// as the optimized code can keep the new value in a register and store it later, and
    /// DWARF does not say which locals are changed.
    pub in_state_since: Option<u32>,
}

/// A function whose code contains an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// Its name (`DW_AT_name`, not the linkage name).
    pub name: Option<String>,
    /// Its mangled name (`DW_AT_linkage_name`), which names the impl a method belongs to.
    pub linkage_name: Option<String>,
    /// Runtime address range of the part of it that contains the address.
    pub range: std::ops::Range<u64>,
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
/// DWARF address ranges where a location-list variable has an available plan.
type LiveRanges = Vec<std::ops::Range<u64>>;
type Entry<'a> = gimli::DebuggingInformationEntry<Slice<'a>>;

#[derive(Debug, Clone, Copy)]
enum FrameBase {
    /// `register + offset`.
    Reg(u16, i64),
    /// `DW_OP_call_frame_cfa` plus an offset (LLVM's frame base for frames with stack
    /// probes, larger than a page), not yet resolved at an address.
    Cfa(i64),
    /// `DW_OP_call_frame_cfa` whose rule at the address is not `register + offset`.
    Unresolved(Unavailable),
    Unknown,
}

impl FrameBase {
    /// Resolves a CFA frame base with the CFA rule at the address.
    fn at(self, cfa: impl FnOnce() -> Option<CfaRule>) -> Self {
        match self {
            Self::Cfa(plus) => match cfa() {
                Some(CfaRule::RegisterOffset { reg, offset }) => Self::Reg(reg, offset + plus),
                Some(CfaRule::Expression) => Self::Unresolved(Unavailable::CfaExpression),
                None => Self::Unresolved(Unavailable::NoUnwindInfo),
            },
            other => other,
        }
    }
}

/// Whether a location-list entry's plan counts as "the variable is live there": readable, or
/// unreadable only because of the frame at the queried address.
fn is_live(plan: &CapturePlan) -> bool {
    matches!(
        plan,
        CapturePlan::Unavailable(Unavailable::CfaExpression | Unavailable::NoUnwindInfo)
    ) || plan.is_available()
}

/// A scope on the path from the unit to the address.
struct Scope<'a> {
    entry: Entry<'a>,
    ranges: Vec<std::ops::Range<u64>>,
}

impl DebugIndex {
    /// The innermost non-inlined function whose code contains `pc` (a runtime address).
    pub fn function_at(&self, pc: u64) -> Result<Option<Function>, DwarfError> {
        let dwarf = self.file.dwarf();
        let dpc = pc.wrapping_sub(self.bias);
        let Some(unit) = self.unit_for(&dwarf, dpc)? else {
            return Ok(None);
        };
        let chain = scopes_at(&dwarf, &unit, dpc)?;
        let Some(sub) = chain
            .iter()
            .rev()
            .find(|s| s.entry.tag() == constants::DW_TAG_subprogram)
        else {
            return Ok(None);
        };
        let range = sub
            .ranges
            .iter()
            .find(|r| r.contains(&dpc))
            .cloned()
            .unwrap_or(dpc..dpc);
        let linkage_name = attr_with_origin(&unit, &sub.entry, constants::DW_AT_linkage_name)
            .and_then(|v| dwarf.attr_string(&unit, v).ok())
            .map(|s| s.to_string_lossy().into_owned());
        Ok(Some(Function {
            name: name_of(&dwarf, &unit, &sub.entry),
            linkage_name,
            range: range.start.wrapping_add(self.bias)..range.end.wrapping_add(self.bias),
        }))
    }

    /// The variables and parameters in scope at `pc` (a runtime address), innermost scope
    /// last, each with its capture plan there and the shape of its whole value. Empty without
    /// `debug = 2`.
    pub fn variables_at(&self, pc: u64) -> Result<Vec<Variable>, DwarfError> {
        self.variables(pc, None)
    }

    /// As [`DebugIndex::variables_at`], with each variable's shape pruned to what `paths` read
    /// below it (the paths of a tracepoint's expressions, [`sonde_expr::Expr::paths`]): a path
    /// `order.user.tier` (root `order`) keeps, of `order`, the field `user` and of it `tier`,
    /// through references, `Box`, `Rc`, `Arc` and `Option`; `items[0].sku` keeps every element
    /// of `items`, each with only `sku`. Every path resolves on the decoded value as on the full
    /// shape's (a field no path reads is simply absent from its record), while the heap reads
    /// and the [`MAX_DEREFS`](super::shape::MAX_DEREFS) budget go to what is read: a field the
    /// full shape left out for lack of budget is captured when a path reads it. (Heap reads
    /// saved can also capture more elements of a `Vec<String>`-like sequence; see the `shape`
    /// module header.)
    ///
    /// A path without segments (`order`, `{order}` in a template, `len(order)`) keeps the
    /// variable's full shape, and a step its type does not have keeps the full shape of the
    /// value it applies to. A variable that no path is rooted at keeps its full shape.
    pub fn variables_at_reading(
        &self,
        pc: u64,
        paths: &[Path],
    ) -> Result<Vec<Variable>, DwarfError> {
        self.variables(pc, Some(paths))
    }

    /// The variables at `pc`, with shapes pruned to `paths` when given.
    fn variables(&self, pc: u64, paths: Option<&[Path]>) -> Result<Vec<Variable>, DwarfError> {
        let dwarf = self.file.dwarf();
        let dpc = pc.wrapping_sub(self.bias);
        let Some(unit) = self.unit_for(&dwarf, dpc)? else {
            return Ok(Vec::new());
        };
        let chain = scopes_at(&dwarf, &unit, dpc)?;
        let Some(first_sub) = chain
            .iter()
            .position(|s| s.entry.tag() == constants::DW_TAG_subprogram)
        else {
            return Ok(Vec::new());
        };
        let sub = &chain[first_sub];
        let frame_base = match sub.entry.attr_value(constants::DW_AT_frame_base) {
            Some(AttributeValue::Exprloc(e)) => frame_base(e, unit.encoding()),
            _ => FrameBase::Unknown,
        }
        .at(|| self.cfa_at(pc));
        let sub_range = sub
            .ranges
            .iter()
            .find(|r| r.contains(&dpc))
            .cloned()
            .unwrap_or(dpc..dpc);
        let here = self.row_before(dpc).filter(|r| sub_range.contains(&r.addr));

        // The state of the coroutine whose poll function this is (found when needed).
        let mut state: Option<Option<CoroutineState>> = None;
        let mut out = Vec::new();
        for (depth, scope) in chain.iter().enumerate().skip(first_sub) {
            let inlined = scope.entry.tag() == constants::DW_TAG_inlined_subroutine;
            // The function a lexical block belongs to is the nearest enclosing (inlined) function.
            let function_at = (first_sub..=depth).rev().find(|&i| {
                matches!(
                    chain[i].entry.tag(),
                    constants::DW_TAG_subprogram | constants::DW_TAG_inlined_subroutine
                )
            });
            let function = function_at
                .map(|i| &chain[i])
                .map(|s| (name_of(&dwarf, &unit, &s.entry), s.entry.tag()));
            // The line of that function's source the address is on: the call site of the
            // first function inlined into it there, or the address's own line.
            let line_here = function_at.and_then(|i| {
                match chain[i + 1..]
                    .iter()
                    .find(|s| s.entry.tag() == constants::DW_TAG_inlined_subroutine)
                {
                    Some(call) => Some(Await {
                        line: call
                            .entry
                            .attr_value(constants::DW_AT_call_line)
                            .and_then(|v| v.udata_value())
                            .and_then(|l| u32::try_from(l).ok())?,
                        file: match call.entry.attr_value(constants::DW_AT_call_file) {
                            Some(AttributeValue::FileIndex(f)) => Some(f),
                            v => v.and_then(|v| v.udata_value()),
                        },
                    }),
                    None => here.map(|h| Await {
                        line: h.line,
                        file: None,
                    }),
                }
            });
            // The row the lines of that function where a variable can be read are found
            // from: the address's own, or within a function inlined into the (not inlined)
            // function, the line it is called on, in the file of the function's entry (its
            // first row).
            let own = match line_here {
                Some(l) if l.file.is_none() => here,
                Some(l) if function_at == Some(first_sub) => sub
                    .ranges
                    .iter()
                    .min_by_key(|r| r.start)
                    .and_then(|entry| self.rows_in(entry.clone()).next())
                    .map(|entry| super::index::Row {
                        line: l.line,
                        addr: dpc,
                        ..entry
                    }),
                _ => None,
            };
            // The `.await`s in this scope (found when one of its variables needs them).
            let mut awaits: Option<Vec<Await>> = None;
            let mut tree = unit.entries_tree(Some(scope.entry.offset()))?;
            let mut children = tree.root()?.children();
            while let Some(child) = children.next()? {
                let e = child.entry();
                let is_parameter = e.tag() == constants::DW_TAG_formal_parameter;
                if !is_parameter && e.tag() != constants::DW_TAG_variable {
                    continue;
                }
                let Some(name) = name_of(&dwarf, &unit, e) else {
                    continue;
                };
                let ty = attr_with_origin(&unit, e, constants::DW_AT_type);
                let (type_name, byte_size) = match ty {
                    Some(AttributeValue::UnitRef(off)) => describe_type(&dwarf, &unit, off),
                    _ => (None, None),
                };
                let (mut plan, live) = self.locate(&dwarf, &unit, e, dpc, frame_base, byte_size)?;
                let coroutine = matches!(&function, Some((Some(f), _)) if is_coroutine(f));
                // An optimized build describes the locals a coroutine holds in its state
                // without a location; after an `.await`, read them from the state.
                let mut in_state = None;
                let mut held_after = None;
                if coroutine
                    && plan == CapturePlan::Unavailable(Unavailable::OptimizedOut)
                    && function
                        .as_ref()
                        .is_some_and(|f| f.1 == constants::DW_TAG_subprogram)
                    && let Some(at) = line_here
                {
                    let awaits = awaits.get_or_insert_with(|| {
                        await_lines(&dwarf, &unit, scope.entry.offset()).unwrap_or_default()
                    });
                    let state = state.get_or_insert_with(|| {
                        self.coroutine_state(&dwarf, &unit, &sub.entry, dpc, frame_base)
                    });
                    if let Some(found) = state.as_ref().and_then(|s| s.plan_of(&name)) {
                        if let Some(since) = awaits_since(&unit, e, awaits, at) {
                            plan = found;
                            in_state = Some(since.last);
                        } else {
                            // Not stored yet: readable after the first `.await` after it.
                            let anywhere = Await {
                                line: u32::MAX,
                                file: None,
                            };
                            held_after = awaits_since(&unit, e, awaits, anywhere).map(|s| s.first);
                            if let Some(line) = held_after {
                                plan = CapturePlan::Unavailable(Unavailable::InStateAfterAwait {
                                    line,
                                });
                            }
                        }
                    }
                }
                let reads = paths.and_then(|p| Reads::of(p, &name));
                let reads = reads.as_ref().unwrap_or_else(|| Reads::all());
                let shape = match ty {
                    Some(AttributeValue::UnitRef(off)) => match plan {
                        CapturePlan::Indirect { add, .. } => {
                            shape::build_behind(&dwarf, &unit, off, reads, add)
                        }
                        _ => shape::build(&dwarf, &unit, off, reads),
                    }
                    .map_err(|why| match &type_name {
                        Some(name) if !why.contains(name.as_str()) => {
                            format!("type `{name}`: {why}")
                        }
                        _ => why,
                    }),
                    Some(_) => Err("the type is described in another unit".to_owned()),
                    None => Err("no type in the debug info".to_owned()),
                };
                // A local of a coroutine that its state does not hold: a stack slot, stale
                // after an `.await` between its declaration and here (the poll function
                // returned and was called again). `_task_context`, the poll's `Context`, is
                // stored again on each resumption.
                let stale = match (&plan, &live, line_here) {
                    (CapturePlan::Mem { .. } | CapturePlan::Reg(_), None, Some(at))
                        if coroutine && in_state.is_none() && name != "_task_context" =>
                    {
                        let awaits = awaits.get_or_insert_with(|| {
                            await_lines(&dwarf, &unit, scope.entry.offset()).unwrap_or_default()
                        });
                        awaits_since(&unit, e, awaits, at).map(|s| (s.decl, s.first))
                    }
                    _ => None,
                };
                let (plan, available_at) = match (stale, &plan, here, live, held_after) {
                    (Some((decl, line)), _, _, _, _) => (
                        CapturePlan::Unavailable(Unavailable::NotKeptAcrossAwait { line }),
                        own.map(|own| {
                            self.lines_between(own, slice::from_ref(&sub_range), decl, line)
                        })
                        .unwrap_or_default(),
                    ),
                    (_, CapturePlan::Unavailable(_), _, _, Some(after)) => {
                        let lines = own
                            .map(|own| self.lines_between(own, &scope.ranges, after, u32::MAX))
                            .unwrap_or_default();
                        (plan, lines)
                    }
                    (_, CapturePlan::Unavailable(_), Some(here), Some(live), _) => {
                        let lines = self.lines_where_live(here, &sub_range, &live);
                        (plan, lines)
                    }
                    _ => (plan, Vec::new()),
                };
                out.push(Variable {
                    name,
                    is_parameter,
                    function: function.as_ref().and_then(|f| f.0.clone()),
                    inlined: inlined
                        || function
                            .as_ref()
                            .is_some_and(|f| f.1 == constants::DW_TAG_inlined_subroutine),
                    type_name,
                    byte_size,
                    plan,
                    shape,
                    available_at,
                    in_state_since: in_state,
                });
            }
        }
        Ok(out)
    }

    fn unit_for<'a>(
        &self,
        dwarf: &gimli::Dwarf<Slice<'a>>,
        dpc: u64,
    ) -> Result<Option<Unit<'a>>, DwarfError> {
        let Some(offset) = self.unit_at(dpc) else {
            return Ok(None);
        };
        let header = dwarf.debug_info.header_from_offset(offset)?;
        Ok(Some(dwarf.unit(header)?))
    }

    /// The plan at `dpc`, and for a location list the DWARF ranges where the plan is available.
    fn locate<'a>(
        &self,
        dwarf: &gimli::Dwarf<Slice<'a>>,
        unit: &Unit<'a>,
        e: &Entry<'a>,
        dpc: u64,
        fb: FrameBase,
        size: Option<u64>,
    ) -> Result<(CapturePlan, Option<LiveRanges>), DwarfError> {
        let enc = unit.encoding();
        match e.attr_value(constants::DW_AT_location) {
            Some(AttributeValue::Exprloc(expr)) => Ok((self.compile(expr, enc, fb), None)),
            Some(value) => {
                let Some(offset) = dwarf.attr_locations_offset(unit, value)? else {
                    return Ok((CapturePlan::Unavailable(Unavailable::Malformed), None));
                };
                let mut plan = CapturePlan::Unavailable(Unavailable::NotLiveHere);
                let mut live = Vec::new();
                let mut iter = dwarf.locations(unit, offset)?;
                while let Some(entry) = iter.next()? {
                    let p = self.compile(entry.data, enc, fb);
                    if entry.range.begin <= dpc && dpc < entry.range.end {
                        plan = p.clone();
                    }
                    if is_live(&p) {
                        live.push(entry.range.begin..entry.range.end);
                    }
                }
                Ok((plan, Some(live)))
            }
            None => Ok((
                match e.attr_value(constants::DW_AT_const_value) {
                    Some(v) => const_plan(v, size),
                    None => CapturePlan::Unavailable(Unavailable::OptimizedOut),
                },
                None,
            )),
        }
    }

    fn compile(
        &self,
        expr: gimli::Expression<Slice<'_>>,
        enc: gimli::Encoding,
        fb: FrameBase,
    ) -> CapturePlan {
        compile(expr, enc, fb, self.bias)
    }

    /// The state of the coroutine whose poll function is `sub`, at `dpc`: where the state pointer
    /// (the poll's first parameter, `self: Pin<&mut {async_fn_env#0}>`) is, and the offsets of
    /// the locals its suspended variants hold. `None` when either is not found.
    fn coroutine_state<'a>(
        &self,
        dwarf: &gimli::Dwarf<Slice<'a>>,
        unit: &Unit<'a>,
        sub: &Entry<'a>,
        dpc: u64,
        fb: FrameBase,
    ) -> Option<CoroutineState> {
        let mut tree = unit.entries_tree(Some(sub.offset())).ok()?;
        let root = tree.root().ok()?;
        let mut children = root.children();
        let mut param = None;
        while let Some(child) = children.next().ok()? {
            if child.entry().tag() == constants::DW_TAG_formal_parameter {
                param = Some(child.entry().clone());
                break;
            }
        }
        let param = param?;
        let env = same_unit(unit, attr_with_origin(unit, &param, constants::DW_AT_type)?)
            .and_then(|ty| pointee(unit, ty))?;
        let fields = suspended_fields(dwarf, unit, env);
        if fields.is_empty() {
            return None;
        }
        let (pointer, _) = self.locate(dwarf, unit, &param, dpc, fb, Some(8)).ok()?;
        matches!(pointer, CapturePlan::Reg(0..=15) | CapturePlan::Mem { .. })
            .then_some(CoroutineState { pointer, fields })
    }

    /// Lines of `here`'s file after `after` and before `before`, with statement rows in
    /// `ranges`, nearest first (at most 5).
    fn lines_between(
        &self,
        here: super::index::Row,
        ranges: &[std::ops::Range<u64>],
        after: u32,
        before: u32,
    ) -> Vec<u32> {
        let mut lines: Vec<u32> = ranges
            .iter()
            .flat_map(|r| self.rows_in(r.clone()))
            .filter(|r| r.file == here.file && r.line != here.line)
            .filter(|r| r.line > after && r.line < before)
            .map(|r| r.line)
            .collect();
        lines.sort_unstable_by_key(|&l| (l.abs_diff(here.line), l));
        lines.dedup();
        lines.truncate(5);
        lines
    }

    /// Lines of `here`'s file, with statement rows in `function` inside `live`, nearest first.
    fn lines_where_live(
        &self,
        here: super::index::Row,
        function: &std::ops::Range<u64>,
        live: &[std::ops::Range<u64>],
    ) -> Vec<u32> {
        let mut lines: Vec<u32> = self
            .rows_in(function.clone())
            .filter(|r| r.file == here.file && r.line != here.line)
            .filter(|r| live.iter().any(|l| l.contains(&r.addr)))
            .map(|r| r.line)
            .collect();
        lines.sort_unstable_by_key(|&l| (l.abs_diff(here.line), l));
        lines.dedup();
        lines.truncate(5);
        lines
    }
}

/// Compiles one location expression into a plan (`bias` turns static addresses into runtime ones).
fn compile(
    expr: gimli::Expression<Slice<'_>>,
    enc: gimli::Encoding,
    fb: FrameBase,
    bias: u64,
) -> CapturePlan {
    let ops = match operations(expr, enc) {
        Ok(ops) => ops,
        Err(()) => return CapturePlan::Unavailable(Unavailable::Malformed),
    };
    let unsupported = |code: DwOp| {
        CapturePlan::Unavailable(Unavailable::UnsupportedOp(
            code.static_string().unwrap_or("an unknown DW_OP"),
        ))
    };
    match ops.as_slice() {
        [(_, Operation::Register { register })] => CapturePlan::Reg(register.0),
        [
            (
                _,
                Operation::RegisterOffset {
                    register,
                    offset: 0,
                    base_type,
                },
            ),
            (_, Operation::StackValue),
        ] if base_type.0 == 0 => CapturePlan::Reg(register.0),
        [
            (code, first @ (Operation::RegisterOffset { .. } | Operation::FrameOffset { .. })),
            rest @ ..,
        ] => match address(*code, first, fb) {
            Ok(at) => at_address(at, rest, enc),
            Err(why) => CapturePlan::Unavailable(why),
        },
        [(_, Operation::Address { address })] => CapturePlan::Static(address.wrapping_add(bias)),
        [(_, Operation::ImplicitValue { data })] => CapturePlan::Const(data.to_vec()),
        [
            (_, Operation::UnsignedConstant { value }),
            (_, Operation::StackValue),
        ] => CapturePlan::Const(value.to_le_bytes().to_vec()),
        [
            (_, Operation::SignedConstant { value }),
            (_, Operation::StackValue),
        ] => CapturePlan::Const(value.to_le_bytes().to_vec()),
        [] => CapturePlan::Unavailable(Unavailable::OptimizedOut),
        ops => {
            // Name the first operation that makes it unsupported: the one after a simple
            // location (a piece, a stack value, arithmetic), or the first one.
            let at = match ops[0].1 {
                Operation::Register { .. }
                | Operation::Address { .. }
                | Operation::UnsignedConstant { .. }
                | Operation::SignedConstant { .. } => 1,
                _ => 0,
            };
            unsupported(ops[at.min(ops.len() - 1)].0)
        }
    }
}

/// The plan for a location that starts with the address `at` (`register + offset`) and goes on
/// with `rest`: memory there, memory there plus a constant, or the forms rustc emits for an
/// `async fn`'s locals kept in its coroutine state, reached through the state pointer the poll
/// function keeps in its frame: the pointer stored there (`DW_OP_deref`) plus a constant.
fn at_address(
    at: (u16, i64),
    rest: &[(DwOp, Operation<Slice<'_>>)],
    enc: gimli::Encoding,
) -> CapturePlan {
    let (reg, offset) = at;
    let unsupported = |code: DwOp| {
        CapturePlan::Unavailable(Unavailable::UnsupportedOp(
            code.static_string().unwrap_or("an unknown DW_OP"),
        ))
    };
    match rest {
        [] => CapturePlan::Mem { reg, offset },
        [(code, Operation::PlusConstant { value })] => match i64::try_from(*value) {
            Ok(plus) => CapturePlan::Mem {
                reg,
                offset: offset.wrapping_add(plus),
            },
            Err(_) => unsupported(*code),
        },
        [(_, deref)] if is_deref(deref, enc) => CapturePlan::Indirect {
            reg,
            offset,
            add: 0,
        },
        [(_, deref), (code, Operation::PlusConstant { value })] if is_deref(deref, enc) => {
            match u32::try_from(*value) {
                Ok(add) => CapturePlan::Indirect { reg, offset, add },
                Err(_) => unsupported(*code),
            }
        }
        // Name the operation that makes it unsupported: the one after the address, or the one
        // after a dereference (and its offset).
        [
            (_, deref),
            (_, Operation::PlusConstant { .. }),
            (code, _),
            ..,
        ] if is_deref(deref, enc) => unsupported(*code),
        [(_, deref), (code, _), ..] if is_deref(deref, enc) => unsupported(*code),
        [(code, _), ..] => unsupported(*code),
    }
}

/// The memory address `DW_OP_bregN` or `DW_OP_fbreg` (through the frame base) pushes, as
/// `register + offset`; `Err` when the frame base cannot be used here, or for a typed register
/// (`DW_OP_regval_type`).
fn address(
    code: DwOp,
    op: &Operation<Slice<'_>>,
    fb: FrameBase,
) -> Result<(u16, i64), Unavailable> {
    match *op {
        Operation::RegisterOffset {
            register,
            offset,
            base_type,
        } if base_type.0 == 0 => Ok((register.0, offset)),
        Operation::FrameOffset { offset } => match fb {
            FrameBase::Reg(reg, base) => Ok((reg, base.wrapping_add(offset))),
            // Resolved by `FrameBase::at` before compiling; unresolved means no unwind info.
            FrameBase::Cfa(_) => Err(Unavailable::NoUnwindInfo),
            FrameBase::Unresolved(why) => Err(why),
            FrameBase::Unknown => Err(Unavailable::NoFrameBase),
        },
        _ => Err(Unavailable::UnsupportedOp(
            code.static_string().unwrap_or("an unknown DW_OP"),
        )),
    }
}

/// Whether an operation is a plain `DW_OP_deref` of a whole address.
fn is_deref(op: &Operation<Slice<'_>>, enc: gimli::Encoding) -> bool {
    matches!(
        *op,
        Operation::Deref { base_type, size, space: false }
            if base_type.0 == 0 && size == enc.address_size
    )
}

fn operations<'a>(
    expr: gimli::Expression<Slice<'a>>,
    enc: gimli::Encoding,
) -> Result<Vec<(DwOp, Operation<Slice<'a>>)>, ()> {
    let mut input = expr.0;
    let mut ops = Vec::new();
    while !input.is_empty() && ops.len() < 16 {
        let code = DwOp(input.clone().read_u8().map_err(|_| ())?);
        let op = Operation::parse(&mut input, enc).map_err(|_| ())?;
        ops.push((code, op));
    }
    Ok(ops)
}

fn frame_base(expr: gimli::Expression<Slice<'_>>, enc: gimli::Encoding) -> FrameBase {
    match operations(expr, enc).as_deref() {
        Ok([(_, Operation::Register { register })]) => FrameBase::Reg(register.0, 0),
        Ok(
            [
                (
                    _,
                    Operation::RegisterOffset {
                        register, offset, ..
                    },
                ),
            ],
        ) => FrameBase::Reg(register.0, *offset),
        Ok([(_, Operation::CallFrameCFA)]) => FrameBase::Cfa(0),
        // CFA plus a constant: `DW_OP_call_frame_cfa, DW_OP_consts -4976, DW_OP_plus`.
        Ok(
            [
                (_, Operation::CallFrameCFA),
                (_, Operation::SignedConstant { value }),
                (_, Operation::Plus),
            ],
        ) => FrameBase::Cfa(*value),
        Ok(
            [
                (_, Operation::CallFrameCFA),
                (_, Operation::UnsignedConstant { value }),
                (_, Operation::Plus),
            ],
        )
        | Ok(
            [
                (_, Operation::CallFrameCFA),
                (_, Operation::PlusConstant { value }),
            ],
        ) => i64::try_from(*value).map_or(FrameBase::Unknown, FrameBase::Cfa),
        _ => FrameBase::Unknown,
    }
}

/// Whether a function is the poll function of an `async fn` or `async` block (rustc names them
/// `{async_fn#0}`, `{async_block#0}`, `{async_closure#0}`).
fn is_coroutine(name: &str) -> bool {
    name.starts_with("{async_")
}

/// Where a coroutine's poll function finds its state at an address, and what the state holds.
#[derive(Debug)]
struct CoroutineState {
    /// Where the state pointer is: a register, or memory.
    pointer: CapturePlan,
    /// The locals the suspended variants (`Suspend0`, `Suspend1`, …) hold, with their offsets.
    fields: Vec<(String, u64)>,
}

impl CoroutineState {
    /// The plan of the local `name` held in the state: one offset in every suspended variant
    /// that holds it (two locals of that name at different offsets are ambiguous).
    fn plan_of(&self, name: &str) -> Option<CapturePlan> {
        let mut offsets = self.fields.iter().filter(|(n, _)| n == name).map(|f| f.1);
        let offset = offsets.next()?;
        if offsets.any(|o| o != offset) {
            return None;
        }
        match self.pointer {
            CapturePlan::Reg(reg) => Some(CapturePlan::Mem {
                reg,
                offset: i64::try_from(offset).ok()?,
            }),
            CapturePlan::Mem { reg, offset: at } => Some(CapturePlan::Indirect {
                reg,
                offset: at,
                add: u32::try_from(offset).ok()?,
            }),
            _ => None,
        }
    }
}

/// What a pointer type, or a struct wrapping one (`Pin<&mut T>`), points to.
fn pointee(unit: &Unit<'_>, ty: UnitOffset<usize>) -> Option<UnitOffset<usize>> {
    let e = unit.entry(ty).ok()?;
    let target = |e: &Entry<'_>| {
        e.attr_value(constants::DW_AT_type)
            .and_then(|v| same_unit(unit, v))
    };
    match e.tag() {
        constants::DW_TAG_pointer_type | constants::DW_TAG_reference_type => target(&e),
        constants::DW_TAG_structure_type => {
            let mut tree = unit.entries_tree(Some(ty)).ok()?;
            let root = tree.root().ok()?;
            let mut children = root.children();
            while let Some(child) = children.next().ok()? {
                let m = child.entry();
                if m.tag() == constants::DW_TAG_member
                    && let Some(mty) = target(m)
                    && let Ok(p) = unit.entry(mty)
                    && p.tag() == constants::DW_TAG_pointer_type
                {
                    return target(&p);
                }
            }
            None
        }
        _ => None,
    }
}

/// The locals the suspended variants (`SuspendN`) of a coroutine state type hold
/// (`{async_fn_env#0}`: a `DW_TAG_variant_part` whose variants each hold one struct), with
/// their offsets.
///
/// rustc (1.95) lists in each variant its own fields, then the fields common to every
/// variant: the captured arguments as the `Unresumed` variant names them, in the same order,
/// at the offset the argument has in that variant (in `Unresumed`, where the caller put it;
/// where the coroutine holds its own copy of the argument, at that local's offset). Those are
/// left out: an argument's own field keeps the value as passed, not the local of the same
/// name, which the coroutine may have changed or moved out, or (when the local is not held)
/// no longer hold at all.
fn suspended_fields<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &Unit<'a>,
    env: UnitOffset<usize>,
) -> Vec<(String, u64)> {
    let children = |at: UnitOffset<usize>, tag: gimli::DwTag| -> Vec<Entry<'a>> {
        let mut out = Vec::new();
        let Ok(mut tree) = unit.entries_tree(Some(at)) else {
            return out;
        };
        let Ok(root) = tree.root() else { return out };
        let mut iter = root.children();
        while let Ok(Some(child)) = iter.next() {
            if child.entry().tag() == tag {
                out.push(child.entry().clone());
            }
        }
        out
    };
    let mut unresumed: Vec<String> = Vec::new();
    let mut suspended: Vec<Vec<(String, Option<u64>)>> = Vec::new();
    for part in children(env, constants::DW_TAG_variant_part) {
        for variant in children(part.offset(), constants::DW_TAG_variant) {
            for arm in children(variant.offset(), constants::DW_TAG_member) {
                let Some(ty) = arm
                    .attr_value(constants::DW_AT_type)
                    .and_then(|v| same_unit(unit, v))
                else {
                    continue;
                };
                let Ok(arm_ty) = unit.entry(ty) else { continue };
                let members = children(ty, constants::DW_TAG_member).into_iter().map(|m| {
                    let offset = m
                        .attr_value(constants::DW_AT_data_member_location)
                        .and_then(|v| v.udata_value());
                    (name_of(dwarf, unit, &m).unwrap_or_default(), offset)
                });
                match name_of(dwarf, unit, &arm_ty) {
                    Some(n) if n == "Unresumed" => unresumed = members.map(|m| m.0).collect(),
                    Some(n) if n.starts_with("Suspend") => suspended.push(members.collect()),
                    _ => {}
                }
            }
        }
    }
    own_fields(suspended, &unresumed)
}

/// The named fields of the suspended variants with an offset, each variant without its
/// trailing fields common to every variant (the captured arguments, `upvars`, when its last
/// members are named as they are, in order).
fn own_fields(suspended: Vec<Vec<(String, Option<u64>)>>, upvars: &[String]) -> Vec<(String, u64)> {
    let mut fields = Vec::new();
    for mut members in suspended {
        let tail = members.len().saturating_sub(upvars.len());
        if !upvars.is_empty()
            && members.len() >= upvars.len()
            && members[tail..].iter().map(|m| &m.0).eq(upvars.iter())
        {
            members.truncate(tail);
        }
        fields.extend(
            members
                .into_iter()
                .filter(|m| !m.0.is_empty())
                .filter_map(|(name, offset)| Some((name, offset?))),
        );
    }
    fields
}

/// An `.await` of a coroutine (rustc declares the awaited future as a variable `__awaitee` on
/// the line of the `.await`), or a line of the coroutine's source.
#[derive(Debug, Clone, Copy)]
struct Await {
    line: u32,
    file: Option<u64>,
}

/// The `.await`s declared in the lexical blocks below `scope` (not in inlined functions, whose
/// `.await`s are their own).
fn await_lines<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &Unit<'a>,
    scope: UnitOffset<usize>,
) -> Result<Vec<Await>, DwarfError> {
    fn walk<'a>(
        dwarf: &gimli::Dwarf<Slice<'a>>,
        unit: &Unit<'a>,
        node: gimli::EntriesTreeNode<'_, '_, Slice<'a>>,
        out: &mut Vec<Await>,
        depth: usize,
    ) -> Result<(), DwarfError> {
        let mut children = node.children();
        while let Some(child) = children.next()? {
            let e = child.entry();
            match e.tag() {
                constants::DW_TAG_variable
                    if name_of(dwarf, unit, e).as_deref() == Some("__awaitee") =>
                {
                    if let Some(line) = decl_line(unit, e) {
                        out.push(Await {
                            line,
                            file: decl_file(unit, e),
                        });
                    }
                }
                constants::DW_TAG_lexical_block if depth < 64 => {
                    walk(dwarf, unit, child, out, depth + 1)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    let mut tree = unit.entries_tree(Some(scope))?;
    walk(dwarf, unit, tree.root()?, &mut out, 0)?;
    Ok(out)
}

/// The `.await`s between a coroutine's local's declaration and a line of the coroutine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AwaitsSince {
    /// The local's declaration line.
    decl: u32,
    /// The first `.await` after it: a local in a stack slot is stale from there on, and one
    /// held in the state was stored there at it.
    first: u32,
    /// The last `.await` before the line, which a read from the state names: the state holds
    /// the value the local had when the task last suspended, at it or an earlier one.
    last: u32,
}

/// The `.await`s after a coroutine's local's declaration and before `here` (the line of the
/// address, in the coroutine's source), if any.
fn awaits_since<'a>(
    unit: &Unit<'a>,
    e: &Entry<'a>,
    awaits: &[Await],
    here: Await,
) -> Option<AwaitsSince> {
    awaits_between(decl_line(unit, e)?, decl_file(unit, e), awaits, here)
}

fn awaits_between(
    decl: u32,
    file: Option<u64>,
    awaits: &[Await],
    here: Await,
) -> Option<AwaitsSince> {
    let same = |a: Option<u64>, b: Option<u64>| a.is_none() || b.is_none() || a == b;
    if !same(here.file, file) {
        return None;
    }
    let lines = awaits
        .iter()
        .filter(|a| a.line > decl && a.line < here.line)
        .filter(|a| same(a.file, file))
        .map(|a| a.line);
    let first = lines.clone().min()?;
    let last = lines.max()?;
    Some(AwaitsSince { decl, first, last })
}

fn decl_line<'a>(unit: &Unit<'a>, e: &Entry<'a>) -> Option<u32> {
    attr_with_origin(unit, e, constants::DW_AT_decl_line)?
        .udata_value()
        .and_then(|l| u32::try_from(l).ok())
}

fn decl_file<'a>(unit: &Unit<'a>, e: &Entry<'a>) -> Option<u64> {
    match attr_with_origin(unit, e, constants::DW_AT_decl_file)? {
        AttributeValue::FileIndex(f) => Some(f),
        v => v.udata_value(),
    }
}

fn const_plan(value: AttributeValue<Slice<'_>>, size: Option<u64>) -> CapturePlan {
    let mut bytes = match value {
        AttributeValue::Block(b) => return CapturePlan::Const(b.to_vec()),
        AttributeValue::Sdata(v) => v.to_le_bytes().to_vec(),
        v => match v.udata_value() {
            Some(v) => v.to_le_bytes().to_vec(),
            None => return CapturePlan::Unavailable(Unavailable::Malformed),
        },
    };
    if let Some(size) = size
        .and_then(|s| usize::try_from(s).ok())
        .filter(|&s| s < bytes.len())
    {
        bytes.truncate(size);
    }
    CapturePlan::Const(bytes)
}

/// The scopes (subprograms, lexical blocks, inlined subroutines, and the namespaces around
/// them) whose ranges contain `dpc`, outermost first.
fn scopes_at<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &Unit<'a>,
    dpc: u64,
) -> Result<Vec<Scope<'a>>, DwarfError> {
    let mut chain = Vec::new();
    let mut tree = unit.entries_tree(None)?;
    let root = tree.root()?;
    let mut children = root.children();
    // Depth-first: descend into the one child containing dpc (or into namespaces and types,
    // which hold methods); the DWARF tree is walked once, skipping non-matching subtrees.
    descend(dwarf, unit, &mut children, dpc, &mut chain, 0)?;
    Ok(chain)
}

fn descend<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &Unit<'a>,
    children: &mut gimli::EntriesTreeIter<'_, '_, Slice<'a>>,
    dpc: u64,
    chain: &mut Vec<Scope<'a>>,
    depth: usize,
) -> Result<bool, DwarfError> {
    while let Some(child) = children.next()? {
        let e = child.entry();
        match e.tag() {
            constants::DW_TAG_subprogram
            | constants::DW_TAG_lexical_block
            | constants::DW_TAG_inlined_subroutine => {
                let mut ranges = Vec::new();
                let mut iter = dwarf.die_ranges(unit, e)?;
                while let Some(r) = iter.next()? {
                    ranges.push(r.begin..r.end);
                }
                if !ranges.iter().any(|r| r.contains(&dpc)) {
                    continue;
                }
                chain.push(Scope {
                    entry: e.clone(),
                    ranges,
                });
                let mut inner = child.children();
                descend(dwarf, unit, &mut inner, dpc, chain, depth + 1)?;
                return Ok(true);
            }
            constants::DW_TAG_namespace
            | constants::DW_TAG_structure_type
            | constants::DW_TAG_enumeration_type
            | constants::DW_TAG_union_type
                if depth < 32 && chain.is_empty() =>
            {
                let mut inner = child.children();
                if descend(dwarf, unit, &mut inner, dpc, chain, depth + 1)? {
                    return Ok(true);
                }
            }
            _ => {}
        }
    }
    Ok(false)
}

/// An attribute of an entry, or of its abstract origin (inlined and out-of-line instances keep
/// names and types there).
fn attr_with_origin<'a>(
    unit: &Unit<'a>,
    e: &Entry<'a>,
    name: gimli::DwAt,
) -> Option<AttributeValue<Slice<'a>>> {
    let mut current = e.clone();
    for _ in 0..4 {
        if let Some(v) = current.attr_value(name) {
            return Some(v);
        }
        let origin = current
            .attr_value(constants::DW_AT_abstract_origin)
            .or_else(|| current.attr_value(constants::DW_AT_specification))?;
        current = unit.entry(same_unit(unit, origin)?).ok()?;
    }
    None
}

fn same_unit(unit: &Unit<'_>, value: AttributeValue<Slice<'_>>) -> Option<UnitOffset<usize>> {
    match value {
        AttributeValue::UnitRef(off) => Some(off),
        AttributeValue::DebugInfoRef(off) => off.to_unit_offset(&unit.header),
        _ => None,
    }
}

fn name_of<'a>(dwarf: &gimli::Dwarf<Slice<'a>>, unit: &Unit<'a>, e: &Entry<'a>) -> Option<String> {
    let value = attr_with_origin(unit, e, constants::DW_AT_name)?;
    let name = dwarf.attr_string(unit, value).ok()?;
    Some(name.to_string_lossy().into_owned())
}

/// A type's name and size, through typedefs and qualifiers; unnamed pointers as `*T`.
fn describe_type<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &Unit<'a>,
    offset: UnitOffset<usize>,
) -> (Option<String>, Option<u64>) {
    let mut offset = offset;
    let mut name = None;
    let mut prefix = String::new();
    for _ in 0..8 {
        let Ok(e) = unit.entry(offset) else { break };
        let size = e
            .attr_value(constants::DW_AT_byte_size)
            .and_then(|v| v.udata_value());
        if name.is_none() {
            name = name_of(dwarf, unit, &e).map(|n| format!("{prefix}{n}"));
        }
        let pointer = e.tag() == constants::DW_TAG_pointer_type;
        let next = e
            .attr_value(constants::DW_AT_type)
            .and_then(|v| same_unit(unit, v));
        match (size, next) {
            (Some(size), _) => return (name, Some(size)),
            (None, _) if pointer => {
                if name.is_none() {
                    let (inner, _) = next.map_or((None, None), |n| describe_type(dwarf, unit, n));
                    name = inner.map(|n| format!("*{n}"));
                }
                return (name, Some(u64::from(unit.encoding().address_size)));
            }
            (None, Some(next)) => {
                if name.is_none() && e.tag() == constants::DW_TAG_const_type {
                    prefix.push_str("const ");
                }
                offset = next;
            }
            (None, None) => break,
        }
    }
    (name, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(bytes: &[u8], fb: FrameBase) -> CapturePlan {
        let enc = gimli::Encoding {
            format: gimli::Format::Dwarf32,
            version: 5,
            address_size: 8,
        };
        let expr = gimli::Expression(gimli::EndianSlice::new(bytes, gimli::LittleEndian));
        compile(expr, enc, fb, 0x1000)
    }

    #[test]
    fn simple_locations_compile_to_plans() {
        assert_eq!(plan(&[0x55], FrameBase::Unknown), CapturePlan::Reg(5)); // DW_OP_reg5
        let breg7 = CapturePlan::Mem { reg: 7, offset: 16 };
        assert_eq!(plan(&[0x77, 0x10], FrameBase::Unknown), breg7); // DW_OP_breg7 16
        let fbreg = [0x91, 0x08]; // DW_OP_fbreg 8
        let rsp = CapturePlan::Mem { reg: 7, offset: 8 };
        assert_eq!(plan(&fbreg, FrameBase::Reg(7, 0)), rsp);
        let none = CapturePlan::Unavailable(Unavailable::NoFrameBase);
        assert_eq!(plan(&fbreg, FrameBase::Unknown), none);
        let constu = plan(&[0x10, 0x2a, 0x9f], FrameBase::Unknown); // constu 42, stack_value
        assert_eq!(constu, CapturePlan::Const(42u64.to_le_bytes().to_vec()));
        let addr = plan(&[0x03, 0x20, 0, 0, 0, 0, 0, 0, 0], FrameBase::Unknown); // DW_OP_addr
        assert_eq!(addr, CapturePlan::Static(0x1020));
    }

    #[test]
    fn a_cfa_frame_base_becomes_register_relative_or_says_why_not() {
        let fbreg = [0x91, 0x78]; // DW_OP_fbreg -8
        let at = |rule| FrameBase::Cfa(0).at(|| rule);
        // CFA = RSP + 48 here: the variable is at RSP + 40.
        let rsp48 = at(Some(CfaRule::RegisterOffset { reg: 7, offset: 48 }));
        assert_eq!(plan(&fbreg, rsp48), CapturePlan::Mem { reg: 7, offset: 40 });
        let rbp16 = at(Some(CfaRule::RegisterOffset { reg: 6, offset: 16 }));
        assert_eq!(plan(&fbreg, rbp16), CapturePlan::Mem { reg: 6, offset: 8 });
        let expression = plan(&fbreg, at(Some(CfaRule::Expression)));
        assert_eq!(
            expression,
            CapturePlan::Unavailable(Unavailable::CfaExpression)
        );
        assert!(
            is_live(&expression),
            "the variable is live, the frame is the problem"
        );
        let none = plan(&fbreg, at(None));
        assert_eq!(none, CapturePlan::Unavailable(Unavailable::NoUnwindInfo));
        assert!(
            Unavailable::CfaExpression
                .to_string()
                .contains("DWARF expression")
        );
        // A register frame base needs no unwind info.
        let reg = FrameBase::Reg(7, 0).at(|| panic!("not asked"));
        assert_eq!(plan(&fbreg, reg), CapturePlan::Mem { reg: 7, offset: -8 });
        // The CFA operation itself is parsed as a frame base.
        let enc = gimli::Encoding {
            format: gimli::Format::Dwarf32,
            version: 5,
            address_size: 8,
        };
        let expr = |bytes: &'static [u8]| {
            frame_base(
                gimli::Expression(gimli::EndianSlice::new(bytes, gimli::LittleEndian)),
                enc,
            )
        };
        assert!(matches!(expr(&[0x9c]), FrameBase::Cfa(0)));
        // DW_OP_call_frame_cfa, DW_OP_consts -4976, DW_OP_plus: LLVM's frame base for frames
        // larger than a page.
        let big = expr(&[0x9c, 0x11, 0x90, 0x59, 0x22]);
        assert!(matches!(big, FrameBase::Cfa(-4976)), "{big:?}");
        let rsp = big.at(|| {
            Some(CfaRule::RegisterOffset {
                reg: 7,
                offset: 4984,
            })
        });
        assert_eq!(
            plan(&[0x91, 0x10], rsp),
            CapturePlan::Mem { reg: 7, offset: 24 }
        );
        // DW_OP_call_frame_cfa, DW_OP_plus_uconst 16
        assert!(matches!(expr(&[0x9c, 0x23, 0x10]), FrameBase::Cfa(16)));
    }

    #[test]
    fn async_fn_state_locations_compile_to_indirect_plans() {
        let rsp = FrameBase::Reg(7, 0);
        // DW_OP_fbreg 200, DW_OP_deref, DW_OP_plus_uconst 64: what rustc emits at opt-level 0
        // for a local of an `async fn` held across an `.await`.
        let held = plan(&[0x91, 0xc8, 0x01, 0x06, 0x23, 0x40], rsp);
        let want = CapturePlan::Indirect {
            reg: 7,
            offset: 200,
            add: 64,
        };
        assert_eq!(held, want);
        // DW_OP_fbreg 200, DW_OP_deref: a field at offset 0 of the state.
        let first = plan(&[0x91, 0xc8, 0x01, 0x06], rsp);
        let want = CapturePlan::Indirect {
            reg: 7,
            offset: 200,
            add: 0,
        };
        assert_eq!(first, want);
        // DW_OP_breg3 8, DW_OP_deref, DW_OP_plus_uconst 144
        let breg = plan(&[0x73, 0x08, 0x06, 0x23, 0x90, 0x01], FrameBase::Unknown);
        let want = CapturePlan::Indirect {
            reg: 3,
            offset: 8,
            add: 144,
        };
        assert_eq!(breg, want);
        // DW_OP_breg3 8, DW_OP_plus_uconst 144: memory at rbx + 152.
        let plus = plan(&[0x73, 0x08, 0x23, 0x90, 0x01], FrameBase::Unknown);
        assert_eq!(
            plus,
            CapturePlan::Mem {
                reg: 3,
                offset: 152
            }
        );
        // Through a CFA frame base: DW_OP_fbreg -8, DW_OP_deref, DW_OP_plus_uconst 16.
        let cfa = FrameBase::Cfa(0).at(|| Some(CfaRule::RegisterOffset { reg: 7, offset: 48 }));
        let want = CapturePlan::Indirect {
            reg: 7,
            offset: 40,
            add: 16,
        };
        assert_eq!(plan(&[0x91, 0x78, 0x06, 0x23, 0x10], cfa), want);
        // Without a frame base it says so.
        let none = plan(&[0x91, 0xc8, 0x01, 0x06, 0x23, 0x40], FrameBase::Unknown);
        assert_eq!(none, CapturePlan::Unavailable(Unavailable::NoFrameBase));
        // Computed values and other dereferences are named.
        let unsupported = |op| CapturePlan::Unavailable(Unavailable::UnsupportedOp(op));
        // ..., DW_OP_stack_value: the address itself, not the value there.
        let value = plan(&[0x91, 0x10, 0x06, 0x23, 0x08, 0x9f], rsp);
        assert_eq!(value, unsupported("DW_OP_stack_value"));
        // DW_OP_fbreg 16, DW_OP_deref_size 4
        let narrow = plan(&[0x91, 0x10, 0x94, 0x04], rsp);
        assert_eq!(narrow, unsupported("DW_OP_deref_size"));
        // DW_OP_fbreg 16, DW_OP_deref, DW_OP_deref: two pointers to follow.
        let twice = plan(&[0x91, 0x10, 0x06, 0x06], rsp);
        assert_eq!(twice, unsupported("DW_OP_deref"));
    }

    #[test]
    fn optimized_locals_are_found_in_the_state_by_name_and_offset() {
        let fields = vec![
            ("qty".to_owned(), 72),
            ("order".to_owned(), 80),
            ("qty".to_owned(), 72),
            ("n".to_owned(), 64),
            ("n".to_owned(), 96),
        ];
        let in_rbx = CoroutineState {
            pointer: CapturePlan::Reg(3),
            fields: fields.clone(),
        };
        assert_eq!(
            in_rbx.plan_of("qty"),
            Some(CapturePlan::Mem { reg: 3, offset: 72 })
        );
        assert_eq!(in_rbx.plan_of("missing"), None);
        // Two locals of one name at different offsets: not guessed.
        assert_eq!(in_rbx.plan_of("n"), None);
        let spilled = CoroutineState {
            pointer: CapturePlan::Mem { reg: 7, offset: 24 },
            fields,
        };
        let want = CapturePlan::Indirect {
            reg: 7,
            offset: 24,
            add: 80,
        };
        assert_eq!(spilled.plan_of("order"), Some(want));
        assert!(is_coroutine("{async_fn#0}") && is_coroutine("{async_block#1}"));
        assert!(!is_coroutine("{closure#0}") && !is_coroutine("checkout"));
        let text = Unavailable::NotKeptAcrossAwait { line: 66 }.to_string();
        assert!(text.contains("`.await` on line 66"), "{text}");
        let text = Unavailable::InStateAfterAwait { line: 15 }.to_string();
        assert!(text.contains("after the `.await` on line 15"), "{text}");
    }

    #[test]
    fn the_arguments_every_suspended_variant_ends_with_are_not_locals() {
        let field = |n: &str, o: u64| (n.to_owned(), Some(o));
        let upvars = ["req".to_owned(), "rate".to_owned()];
        // What rustc 1.95 emits at opt-level 2 for `checkout_handler(req, rate)` with two
        // `.await`s, `rate` used only between them: each variant's own fields, then the
        // arguments at their offsets in that variant (the local's where it holds a copy, the
        // caller's where it does not).
        let suspend0 = vec![
            field("req", 0x68),
            field("rate", 0xc8),
            field("subtotal", 0xd0),
            field("__awaitee", 0xe8),
            field("req", 0x68),
            field("rate", 0xc8),
        ];
        let suspend1 = vec![
            field("req", 0x68),
            field("subtotal", 0xd0),
            field("__awaitee", 0xe8),
            field("req", 0x68),
            field("rate", 0x60),
        ];
        let fields = own_fields(vec![suspend0.clone(), suspend1], &upvars);
        let state = CoroutineState {
            pointer: CapturePlan::Reg(3),
            fields,
        };
        // The local `rate` is at one offset: the argument's own field is not it.
        let at = |offset| Some(CapturePlan::Mem { reg: 3, offset });
        assert_eq!(state.plan_of("rate"), at(0xc8));
        assert_eq!(state.plan_of("req"), at(0x68));
        // A variant whose last members are not the arguments keeps them all.
        let other = vec![field("rate", 0xc8), field("req", 0x68)];
        assert_eq!(own_fields(vec![other], &upvars).len(), 2);
        // Without arguments, every field is the variant's own.
        assert_eq!(own_fields(vec![suspend0], &[]).len(), 6);
    }

    #[test]
    fn the_awaits_since_a_declaration_are_the_first_and_last_before_the_line() {
        let awaits: Vec<Await> = [10, 20, 30]
            .into_iter()
            .map(|line| Await { line, file: None })
            .collect();
        let here = |line| Await { line, file: None };
        let since = |decl, line| awaits_between(decl, None, &awaits, here(line));
        let want = |decl, first, last| Some(AwaitsSince { decl, first, last });
        assert_eq!(since(5, 25), want(5, 10, 20));
        assert_eq!(since(5, 35), want(5, 10, 30));
        assert_eq!(since(15, 35), want(15, 20, 30));
        // On the `.await`'s own line or before it: none yet.
        assert_eq!(since(5, 10), None);
        assert_eq!(since(12, 18), None);
        // A line of another file (a function inlined there) is not compared.
        let elsewhere = Await {
            line: 25,
            file: Some(2),
        };
        assert_eq!(awaits_between(5, Some(1), &awaits, elsewhere), None);
    }

    #[test]
    fn unsupported_locations_name_the_operation() {
        let unsupported = |op| CapturePlan::Unavailable(Unavailable::UnsupportedOp(op));
        // DW_OP_entry_value(DW_OP_reg5), DW_OP_stack_value
        let entry = plan(&[0xa3, 0x01, 0x55, 0x9f], FrameBase::Unknown);
        assert_eq!(entry, unsupported("DW_OP_entry_value"));
        // DW_OP_reg0, DW_OP_piece 8, DW_OP_reg1, DW_OP_piece 8
        let pieces = plan(&[0x50, 0x93, 0x08, 0x51, 0x93, 0x08], FrameBase::Unknown);
        assert_eq!(pieces, unsupported("DW_OP_piece"));
        // DW_OP_breg3 4, DW_OP_stack_value: a computed value
        let computed = plan(&[0x73, 0x04, 0x9f], FrameBase::Unknown);
        assert_eq!(computed, unsupported("DW_OP_stack_value"));
        let text = Unavailable::UnsupportedOp("DW_OP_entry_value").to_string();
        assert!(text.contains("DW_OP_entry_value"), "{text}");
    }
}
