//! [`CoroutineState`]: where an `async fn`'s poll function finds the locals its state holds, and
//! the `.await`s ([`Await`]) that say when a local is stored there or stale (see the `plan`
//! module header).

use gimli::{UnitOffset, constants};

use super::scope::{decl_file, decl_line, name_of, same_unit};
use super::{CapturePlan, DwarfError, Entry, Unit};
use crate::native::index::Slice;

/// Whether a function is the poll function of an `async fn` or `async` block (rustc names them
/// `{async_fn#0}`, `{async_block#0}`, `{async_closure#0}`).
pub(super) fn is_coroutine(name: &str) -> bool {
    name.starts_with("{async_")
}

/// Where a coroutine's poll function finds its state at an address, and what the state holds.
#[derive(Debug)]
pub(super) struct CoroutineState {
    /// Where the state pointer is: a register, or memory.
    pub(super) pointer: CapturePlan,
    /// The locals the suspended variants (`Suspend0`, `Suspend1`, …) hold, with their offsets.
    pub(super) fields: Vec<(String, u64)>,
}

impl CoroutineState {
    /// The plan of the local `name` held in the state: one offset in every suspended variant
    /// that holds it (two locals of that name at different offsets are ambiguous).
    pub(super) fn plan_of(&self, name: &str) -> Option<CapturePlan> {
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
pub(super) fn pointee(unit: &Unit<'_>, ty: UnitOffset<usize>) -> Option<UnitOffset<usize>> {
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
pub(super) fn suspended_fields<'a>(
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
pub(super) struct Await {
    pub(super) line: u32,
    pub(super) file: Option<u64>,
}

/// The `.await`s declared in the lexical blocks below `scope` (not in inlined functions, whose
/// `.await`s are their own).
pub(super) fn await_lines<'a>(
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
pub(super) struct AwaitsSince {
    /// The local's declaration line.
    pub(super) decl: u32,
    /// The first `.await` after it: a local in a stack slot is stale from there on, and one
    /// held in the state was stored there at it.
    pub(super) first: u32,
    /// The last `.await` before the line, which a read from the state names: the state holds
    /// the value the local had when the task last suspended, at it or an earlier one.
    pub(super) last: u32,
}

/// The `.await`s after a coroutine's local's declaration and before `here` (the line of the
/// address, in the coroutine's source), if any.
pub(super) fn awaits_since<'a>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::Unavailable;

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
}
