//! [`Scope`]: the DWARF scopes around an address ([`scopes_at`]), and reading their entries'
//! attributes through abstract origins (names, types, declaration lines).

use gimli::{AttributeValue, UnitOffset, constants};

use super::{DwarfError, Entry, Unit};
use crate::native::index::Slice;

/// A scope on the path from the unit to the address.
pub(super) struct Scope<'a> {
    pub(super) entry: Entry<'a>,
    pub(super) ranges: Vec<std::ops::Range<u64>>,
}

/// The scopes (subprograms, lexical blocks, inlined subroutines, and the namespaces around
/// them) whose ranges contain `dpc`, outermost first.
pub(super) fn scopes_at<'a>(
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
pub(super) fn attr_with_origin<'a>(
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

/// The offset in `unit` of the entry a reference attribute names, if it is in `unit`.
pub(super) fn same_unit(
    unit: &Unit<'_>,
    value: AttributeValue<Slice<'_>>,
) -> Option<UnitOffset<usize>> {
    match value {
        AttributeValue::UnitRef(off) => Some(off),
        AttributeValue::DebugInfoRef(off) => off.to_unit_offset(&unit.header),
        _ => None,
    }
}

/// An entry's `DW_AT_name` (or its abstract origin's).
pub(super) fn name_of<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &Unit<'a>,
    e: &Entry<'a>,
) -> Option<String> {
    let value = attr_with_origin(unit, e, constants::DW_AT_name)?;
    let name = dwarf.attr_string(unit, value).ok()?;
    Some(name.to_string_lossy().into_owned())
}

/// A type's name and size, through typedefs and qualifiers; unnamed pointers as `*T`.
pub(super) fn describe_type<'a>(
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

/// The line an entry is declared on.
pub(super) fn decl_line<'a>(unit: &Unit<'a>, e: &Entry<'a>) -> Option<u32> {
    attr_with_origin(unit, e, constants::DW_AT_decl_line)?
        .udata_value()
        .and_then(|l| u32::try_from(l).ok())
}

/// The file (an index into the line program's files) an entry is declared in.
pub(super) fn decl_file<'a>(unit: &Unit<'a>, e: &Entry<'a>) -> Option<u64> {
    match attr_with_origin(unit, e, constants::DW_AT_decl_file)? {
        AttributeValue::FileIndex(f) => Some(f),
        v => v.udata_value(),
    }
}
