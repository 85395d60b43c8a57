//! [`Variable`]: a variable in scope at an address, as
//! [`DebugIndex::variables_at`] lists them, and the [`Function`] around an address
//! ([`DebugIndex::function_at`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::slice;

use gimli::{AttributeValue, UnitOffset, constants};
use sonde_expr::Path;

use super::coroutine::{
    Await, CoroutineState, await_lines, awaits_since, is_coroutine, pointee, suspended_fields,
};
use super::location::{FrameBase, compile, const_plan, frame_base, is_live};
use super::scope::{
    Scope, TopScopes, attr_with_origin, describe_type, name_of, same_unit, scopes_at_with,
    top_scopes,
};
use super::{CapturePlan, DwarfError, Entry, Unavailable, Unit};
use crate::native::index::{DebugIndex, Row, Slice, split_unit};
use crate::native::shape::{self, Reads, TypeShape};

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
    /// the coroutine's state (see the `plan` module header): the line of the last `.await` before
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

/// Units whose [`TopScopes`](super::scope::TopScopes) are kept.
const TOP_SCOPES_KEPT: usize = 64;
/// Types whose full shape is kept.
const SHAPES_KEPT: usize = 4096;

/// DWARF address ranges where a location-list variable has an available plan.
type LiveRanges = Vec<std::ops::Range<u64>>;

impl DebugIndex {
    /// The innermost non-inlined function whose code contains `pc` (a runtime address).
    pub fn function_at(&self, pc: u64) -> Result<Option<Function>, DwarfError> {
        self.reader().function_at(pc)
    }

    /// The variables and parameters in scope at `pc` (a runtime address), innermost scope
    /// last, each with its capture plan there and the shape of its whole value. Empty without
    /// `debug = 2`.
    pub fn variables_at(&self, pc: u64) -> Result<Vec<Variable>, DwarfError> {
        self.reader().variables(pc, None)
    }

    /// As [`DebugIndex::variables_at`], with each variable's shape pruned to what `paths` read
    /// below it (the paths of a tracepoint's expressions, [`sonde_expr::Expr::paths`]): a path
    /// `order.user.tier` (root `order`) keeps, of `order`, the field `user` and of it `tier`,
    /// through references, `Box`, `Rc`, `Arc` and `Option`; `items[0].sku` keeps every element
    /// of `items`, each with only `sku`. Every path resolves on the decoded value as on the full
    /// shape's (a field no path reads is simply absent from its record), while the heap reads
    /// and the [`MAX_DEREFS`](crate::native::MAX_DEREFS) budget go to what is read: a field the
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
        self.reader().variables(pc, Some(paths))
    }

    /// A [`Reader`] for queries at many addresses in a row (one request).
    pub(crate) fn reader(&self) -> Reader<'_> {
        Reader {
            index: self,
            dwarf: self.file.dwarf(),
            package: self.file.package.as_ref().and_then(|p| p.dwarf().ok()),
            units: RefCell::default(),
            chains: RefCell::default(),
            awaits: RefCell::default(),
            declared: RefCell::default(),
            behind: RefCell::default(),
            coroutines: RefCell::default(),
        }
    }
}

/// The DWARF queries of one request at many addresses (a whole file's `lines` answer, the
/// addresses of one line when it is armed), sharing what they read: each unit parsed once (its
/// abbreviations and line program header), the scopes around each address found once (the
/// function and the variables there both need them), each scope's `.await`s and each
/// `async fn`'s state fields read once per function rather than once per address. Kept for the
/// request only (the index keeps what outlives it: [`TopScopes`] and full type shapes); the
/// answers are those of [`DebugIndex::variables_at`] and [`DebugIndex::function_at`], which
/// use a reader of their own for one address.
pub(crate) struct Reader<'i> {
    index: &'i DebugIndex,
    dwarf: gimli::Dwarf<Slice<'i>>,
    /// The DWARF package with the split units, for a binary with split DWARF.
    package: Option<gimli::DwarfPackage<Slice<'i>>>,
    /// Parsed units by `.debug_info` offset.
    units: RefCell<HashMap<usize, Rc<Parsed<'i>>>>,
    /// The scopes around a DWARF address, by (unit, address).
    chains: RefCell<Kept<u64, Vec<Scope<'i>>>>,
    /// The `.await`s below a scope, by (unit, scope).
    awaits: RefCell<Kept<usize, Vec<Await>>>,
    /// The variables declared directly in a scope, by (unit, scope).
    declared: RefCell<Kept<usize, Vec<Declared<'i>>>>,
    /// Full shapes behind a pointer (at offset 0), by (unit, type).
    behind: RefCell<Kept<usize, Result<TypeShape, String>>>,
    /// An `async fn` poll function's state parameter and the fields of its suspended variants,
    /// by (unit, subprogram); `None` when it has no such state.
    coroutines: RefCell<HashMap<(usize, usize), StateFields>>,
}

/// A unit as the queries read it: for a skeleton unit (split DWARF), its split unit with the
/// sections of the DWARF package.
struct Parsed<'i> {
    /// The unit's `.debug_info` offset (the skeleton's): what the caches are keyed by, as split
    /// units' own offsets repeat from one to the next.
    key: usize,
    /// The split unit's sections, or `None` for the binary's own.
    dwo: Option<gimli::Dwarf<Slice<'i>>>,
    unit: Unit<'i>,
}

/// A variable or parameter declared directly in a scope, with what its entry (or its abstract
/// origin) says of it.
struct Declared<'i> {
    entry: Entry<'i>,
    is_parameter: bool,
    name: String,
    ty: Option<AttributeValue<Slice<'i>>>,
    type_name: Option<String>,
    byte_size: Option<u64>,
}

/// What a [`Reader`] keeps, by unit and a key within it.
type Kept<K, V> = HashMap<(usize, K), Rc<V>>;

/// See [`Reader::coroutines`].
type StateFields = Option<(UnitOffset<usize>, Rc<Vec<(String, u64)>>)>;

/// Units a [`Reader`] keeps parsed (a file's functions are in a few; generic ones in more).
const UNITS_KEPT: usize = 64;
/// Addresses whose scopes (and scopes whose declarations) a [`Reader`] keeps.
const CHAINS_KEPT: usize = 1024;

impl<'i> Reader<'i> {
    /// The index read.
    pub(crate) fn index(&self) -> &'i DebugIndex {
        self.index
    }

    /// As [`DebugIndex::function_at`].
    pub(crate) fn function_at(&self, pc: u64) -> Result<Option<Function>, DwarfError> {
        let ix = self.index;
        let dpc = pc.wrapping_sub(ix.bias);
        let Some(parsed) = self.unit_at(dpc)? else {
            return Ok(None);
        };
        let (dwarf, unit) = (parsed.dwo.as_ref().unwrap_or(&self.dwarf), &parsed.unit);
        let chain = self.scopes(&parsed, dpc)?;
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
        let linkage_name = attr_with_origin(unit, &sub.entry, constants::DW_AT_linkage_name)
            .and_then(|v| dwarf.attr_string(unit, v).ok())
            .map(|s| s.to_string_lossy().into_owned());
        Ok(Some(Function {
            name: name_of(dwarf, unit, &sub.entry),
            linkage_name,
            range: range.start.wrapping_add(ix.bias)..range.end.wrapping_add(ix.bias),
        }))
    }

    /// As [`DebugIndex::variables_at`].
    pub(crate) fn variables_at(&self, pc: u64) -> Result<Vec<Variable>, DwarfError> {
        self.variables(pc, None)
    }

    /// As [`DebugIndex::variables_at_reading`].
    pub(crate) fn variables_at_reading(
        &self,
        pc: u64,
        paths: &[Path],
    ) -> Result<Vec<Variable>, DwarfError> {
        self.variables(pc, Some(paths))
    }

    /// The variables at `pc`, with shapes pruned to `paths` when given.
    fn variables(&self, pc: u64, paths: Option<&[Path]>) -> Result<Vec<Variable>, DwarfError> {
        let ix = self.index;
        let dpc = pc.wrapping_sub(ix.bias);
        let Some(parsed) = self.unit_at(dpc)? else {
            return Ok(Vec::new());
        };
        let (dwarf, unit) = (parsed.dwo.as_ref().unwrap_or(&self.dwarf), &parsed.unit);
        let chain = self.scopes(&parsed, dpc)?;
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
        .at(|| ix.cfa_at(pc));
        let sub_range = sub
            .ranges
            .iter()
            .find(|r| r.contains(&dpc))
            .cloned()
            .unwrap_or(dpc..dpc);
        let here = ix.row_before(dpc).filter(|r| sub_range.contains(&r.addr));

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
                .map(|s| (name_of(dwarf, unit, &s.entry), s.entry.tag()));
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
                    .and_then(|entry| ix.rows_in(entry.clone()).next())
                    .map(|entry| Row {
                        line: l.line,
                        addr: dpc,
                        ..entry
                    }),
                _ => None,
            };
            // The `.await`s in this scope (found when one of its variables needs them).
            let mut awaits: Option<Rc<Vec<Await>>> = None;
            let declared = self.declared(&parsed, scope.entry.offset())?;
            for d in declared.iter() {
                let (e, is_parameter, ty) = (&d.entry, d.is_parameter, d.ty);
                let (name, type_name, byte_size) =
                    (d.name.clone(), d.type_name.clone(), d.byte_size);
                let (mut plan, live) = ix.locate(dwarf, unit, e, dpc, frame_base, byte_size)?;
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
                    let awaits =
                        awaits.get_or_insert_with(|| self.awaits(&parsed, scope.entry.offset()));
                    let state = state.get_or_insert_with(|| {
                        self.coroutine_state(&parsed, &sub.entry, dpc, frame_base)
                    });
                    if let Some(found) = state.as_ref().and_then(|s| s.plan_of(&name)) {
                        if let Some(since) = awaits_since(unit, e, awaits, at) {
                            plan = found;
                            in_state = Some(since.last);
                        } else {
                            // Not stored yet: readable after the first `.await` after it.
                            let anywhere = Await {
                                line: u32::MAX,
                                file: None,
                            };
                            held_after = awaits_since(unit, e, awaits, anywhere).map(|s| s.first);
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
                        // Behind an `async fn`'s state pointer, whole: kept for the request
                        // (an `async fn`'s locals are at every address of its lines).
                        CapturePlan::Indirect { add, .. } if paths.is_none() => {
                            self.behind(&parsed, off, add)
                        }
                        CapturePlan::Indirect { add, .. } => {
                            shape::build_behind(dwarf, unit, off, reads, add)
                        }
                        // A type's full shape depends on the type alone: kept, so listing a
                        // file's lines builds each type once.
                        _ if paths.is_none() => ix.full_shape(dwarf, unit, parsed.key, off),
                        _ => shape::build(dwarf, unit, off, reads),
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
                        let awaits = awaits
                            .get_or_insert_with(|| self.awaits(&parsed, scope.entry.offset()));
                        awaits_since(unit, e, awaits, at).map(|s| (s.decl, s.first))
                    }
                    _ => None,
                };
                let (plan, available_at) = match (stale, &plan, here, live, held_after) {
                    (Some((decl, line)), _, _, _, _) => (
                        CapturePlan::Unavailable(Unavailable::NotKeptAcrossAwait { line }),
                        own.map(|own| {
                            ix.lines_between(own, slice::from_ref(&sub_range), decl, line)
                        })
                        .unwrap_or_default(),
                    ),
                    (_, CapturePlan::Unavailable(_), _, _, Some(after)) => {
                        let lines = own
                            .map(|own| ix.lines_between(own, &scope.ranges, after, u32::MAX))
                            .unwrap_or_default();
                        (plan, lines)
                    }
                    (_, CapturePlan::Unavailable(_), Some(here), Some(live), _) => {
                        let lines = ix.lines_where_live(here, &sub_range, &live);
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

    /// The unit whose ranges contain `dpc`, parsed once per reader.
    fn unit_at(&self, dpc: u64) -> Result<Option<Rc<Parsed<'i>>>, DwarfError> {
        let Some(offset) = self.index.unit_at(dpc) else {
            return Ok(None);
        };
        if let Some(unit) = self.units.borrow().get(&offset.0) {
            return Ok(Some(unit.clone()));
        }
        let header = self.dwarf.debug_info.header_from_offset(offset)?;
        let unit = self.dwarf.unit(header)?;
        let dwos = &self.index.file.dwos;
        let unit = Rc::new(match (&self.package, unit.dwo_id) {
            (package, Some(_)) if package.is_some() || !dwos.is_empty() => {
                let (dwo, split) = split_unit(&self.dwarf, package.as_ref(), dwos, &unit)?
                    .ok_or(gimli::Error::MissingSplitUnit)?;
                Parsed {
                    key: offset.0,
                    dwo: Some(dwo),
                    unit: split,
                }
            }
            _ => Parsed {
                key: offset.0,
                dwo: None,
                unit,
            },
        });
        let mut units = self.units.borrow_mut();
        if units.len() >= UNITS_KEPT {
            units.clear();
        }
        units.insert(offset.0, unit.clone());
        Ok(Some(unit))
    }

    /// The scopes around `dpc` in `unit`, found once per reader.
    fn scopes(&self, unit: &Parsed<'i>, dpc: u64) -> Result<Rc<Vec<Scope<'i>>>, DwarfError> {
        let key = (unit.key, dpc);
        if let Some(chain) = self.chains.borrow().get(&key) {
            return Ok(chain.clone());
        }
        let dwarf = unit.dwo.as_ref().unwrap_or(&self.dwarf);
        let chain = Rc::new(self.index.scopes(dwarf, &unit.unit, unit.key, dpc)?);
        let mut chains = self.chains.borrow_mut();
        if chains.len() >= CHAINS_KEPT {
            chains.clear();
        }
        chains.insert(key, chain.clone());
        Ok(chain)
    }

    /// The variables and parameters declared directly in `scope`, read once per reader (the
    /// children of a large function's scope are many entries, walked once rather than at each
    /// of its addresses).
    fn declared(
        &self,
        unit: &Parsed<'i>,
        scope: UnitOffset<usize>,
    ) -> Result<Rc<Vec<Declared<'i>>>, DwarfError> {
        let key = (unit.key, scope.0);
        if let Some(declared) = self.declared.borrow().get(&key) {
            return Ok(declared.clone());
        }
        let (dwarf, u) = (unit.dwo.as_ref().unwrap_or(&self.dwarf), &unit.unit);
        let mut out = Vec::new();
        let mut tree = u.entries_tree(Some(scope))?;
        let mut children = tree.root()?.children();
        while let Some(child) = children.next()? {
            let e = child.entry();
            let is_parameter = e.tag() == constants::DW_TAG_formal_parameter;
            if !is_parameter && e.tag() != constants::DW_TAG_variable {
                continue;
            }
            let Some(name) = name_of(dwarf, u, e) else {
                continue;
            };
            let ty = attr_with_origin(u, e, constants::DW_AT_type);
            let (type_name, byte_size) = match ty {
                Some(AttributeValue::UnitRef(off)) => describe_type(dwarf, u, off),
                _ => (None, None),
            };
            out.push(Declared {
                entry: e.clone(),
                is_parameter,
                name,
                ty,
                type_name,
                byte_size,
            });
        }
        let out = Rc::new(out);
        let mut declared = self.declared.borrow_mut();
        if declared.len() >= CHAINS_KEPT {
            declared.clear();
        }
        declared.insert(key, out.clone());
        Ok(out)
    }

    /// The full shape of the type at `ty` read `add` bytes behind a pointer
    /// ([`shape::build_behind`]), built once per type and reader (and moved to each offset).
    fn behind(
        &self,
        unit: &Parsed<'i>,
        ty: UnitOffset<usize>,
        add: u32,
    ) -> Result<TypeShape, String> {
        let key = (unit.key, ty.0);
        let kept = self.behind.borrow().get(&key).cloned();
        let shape = match kept {
            Some(shape) => Rc::unwrap_or_clone(shape),
            None => {
                let dwarf = unit.dwo.as_ref().unwrap_or(&self.dwarf);
                let shape = shape::build_behind(dwarf, &unit.unit, ty, Reads::all(), 0);
                let mut behind = self.behind.borrow_mut();
                if behind.len() >= CHAINS_KEPT {
                    behind.clear();
                }
                behind.insert(key, Rc::new(shape.clone()));
                shape
            }
        };
        shape.map(|s| shape::moved_behind(s, add))
    }

    /// The `.await`s below `scope` ([`await_lines`]), read once per reader.
    fn awaits(&self, unit: &Parsed<'i>, scope: UnitOffset<usize>) -> Rc<Vec<Await>> {
        let key = (unit.key, scope.0);
        if let Some(awaits) = self.awaits.borrow().get(&key) {
            return awaits.clone();
        }
        let dwarf = unit.dwo.as_ref().unwrap_or(&self.dwarf);
        let awaits = Rc::new(await_lines(dwarf, &unit.unit, scope).unwrap_or_default());
        self.awaits.borrow_mut().insert(key, awaits.clone());
        awaits
    }

    /// The state of the coroutine whose poll function is `sub`, at `dpc`: where the state pointer
    /// (the poll's first parameter, `self: Pin<&mut {async_fn_env#0}>`) is, and the offsets of
    /// the locals its suspended variants hold (read once per function). `None` when either is
    /// not found.
    fn coroutine_state(
        &self,
        parsed: &Parsed<'i>,
        sub: &Entry<'i>,
        dpc: u64,
        fb: FrameBase,
    ) -> Option<CoroutineState> {
        let (dwarf, unit) = (parsed.dwo.as_ref().unwrap_or(&self.dwarf), &parsed.unit);
        let key = (parsed.key, sub.offset().0);
        let kept = self.coroutines.borrow().get(&key).cloned();
        let (param, fields) = match kept {
            Some(kept) => kept?,
            None => {
                let found = state_fields(dwarf, unit, sub);
                self.coroutines.borrow_mut().insert(key, found.clone());
                found?
            }
        };
        let param = unit.entry(param).ok()?;
        let (pointer, _) = self
            .index
            .locate(dwarf, unit, &param, dpc, fb, Some(8))
            .ok()?;
        matches!(pointer, CapturePlan::Reg(0..=15) | CapturePlan::Mem { .. }).then(|| {
            CoroutineState {
                pointer,
                fields: Vec::clone(&fields),
            }
        })
    }
}

/// The first parameter of the poll function `sub` (the state pointer) and the fields of the
/// suspended variants of the state it points to; `None` when either is not found.
fn state_fields<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &Unit<'a>,
    sub: &Entry<'a>,
) -> StateFields {
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
    (!fields.is_empty()).then(|| (param.offset(), Rc::new(fields)))
}

impl DebugIndex {
    /// The full shape of the type at `ty` in `unit`, built once and kept (for a bounded number
    /// of types).
    fn full_shape<'a>(
        &self,
        dwarf: &gimli::Dwarf<Slice<'a>>,
        unit: &Unit<'a>,
        unit_key: usize,
        ty: gimli::UnitOffset<usize>,
    ) -> Result<TypeShape, String> {
        type Kept = Result<TypeShape, String>;
        let key = (unit_key, ty.0);
        let kept = self
            .shapes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some(shape) = kept.as_deref().and_then(|k| k.downcast_ref::<Kept>()) {
            return shape.clone();
        }
        let shape: Kept = shape::build(dwarf, unit, ty, Reads::all());
        let mut shapes = self.shapes.lock().unwrap_or_else(|p| p.into_inner());
        if shapes.len() >= SHAPES_KEPT {
            shapes.clear();
        }
        shapes.insert(key, std::sync::Arc::new(shape.clone()));
        shape
    }

    /// The scopes around `dpc` in `unit` (as `scopes_at` finds them), through the unit's `TopScopes`,
    /// built on first use and kept (for the most recently used units).
    fn scopes<'a>(
        &self,
        dwarf: &gimli::Dwarf<Slice<'a>>,
        unit: &Unit<'a>,
        unit_key: usize,
        dpc: u64,
    ) -> Result<Vec<super::scope::Scope<'a>>, DwarfError> {
        let key = (unit_key, 0);
        let cached = self
            .top_scopes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let top: std::sync::Arc<dyn std::any::Any + Send + Sync> = match cached {
            Some(top) if top.is::<TopScopes>() => top,
            _ => {
                let top: std::sync::Arc<dyn std::any::Any + Send + Sync> =
                    std::sync::Arc::new(top_scopes(dwarf, unit)?);
                let mut cache = self.top_scopes.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= TOP_SCOPES_KEPT {
                    cache.clear();
                }
                cache.insert(key, top.clone());
                top
            }
        };
        let top = top
            .downcast_ref::<TopScopes>()
            .expect("checked or built as TopScopes");
        scopes_at_with(dwarf, unit, top, dpc)
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

    /// Lines of `here`'s file after `after` and before `before`, with statement rows in
    /// `ranges`, nearest first (at most 5).
    fn lines_between(
        &self,
        here: Row,
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
        here: Row,
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
