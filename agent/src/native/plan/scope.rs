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
/// them) whose ranges contain `dpc`, outermost first, by walking the unit from its start: the
/// reference [`scopes_at_with`] is checked against.
#[cfg(test)]
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

/// The outermost scopes of a unit (subprograms, and any lexical block or inlined subroutine at
/// that level), found at its top level or inside namespaces and types as [`scopes_at`] looks for
/// them, with their DWARF ranges and the order the walk meets them. Built by one walk over the
/// unit, it lets [`scopes_at_with`] start at the scope containing an address instead of walking
/// the unit from its start for every address (which made a whole file's `lines` answer cost a
/// unit walk per address).
#[derive(Debug)]
pub(crate) struct TopScopes(Vec<(std::ops::Range<u64>, usize, UnitOffset<usize>)>);

/// Walks `unit` once for its [`TopScopes`].
pub(super) fn top_scopes<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &Unit<'a>,
) -> Result<TopScopes, DwarfError> {
    let mut out = Vec::new();
    let mut tree = unit.entries_tree(None)?;
    let root = tree.root()?;
    let mut children = root.children();
    let mut order = 0;
    collect(dwarf, unit, &mut children, &mut out, &mut order, 0)?;
    Ok(TopScopes(out))
}

fn collect<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &Unit<'a>,
    children: &mut gimli::EntriesTreeIter<'_, '_, Slice<'a>>,
    out: &mut Vec<(std::ops::Range<u64>, usize, UnitOffset<usize>)>,
    order: &mut usize,
    depth: usize,
) -> Result<(), DwarfError> {
    while let Some(child) = children.next()? {
        let e = child.entry();
        match e.tag() {
            constants::DW_TAG_subprogram
            | constants::DW_TAG_lexical_block
            | constants::DW_TAG_inlined_subroutine => {
                let mut iter = dwarf.die_ranges(unit, e)?;
                while let Some(r) = iter.next()? {
                    out.push((r.begin..r.end, *order, e.offset()));
                }
                *order += 1;
            }
            constants::DW_TAG_namespace
            | constants::DW_TAG_structure_type
            | constants::DW_TAG_enumeration_type
            | constants::DW_TAG_union_type
                if depth < 32 =>
            {
                let mut inner = child.children();
                collect(dwarf, unit, &mut inner, out, order, depth + 1)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// As [`scopes_at`], starting from the unit's [`TopScopes`]: the same chain, without walking
/// the scopes before the one containing `dpc`.
pub(super) fn scopes_at_with<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &Unit<'a>,
    top: &TopScopes,
    dpc: u64,
) -> Result<Vec<Scope<'a>>, DwarfError> {
    let Some(&(_, _, offset)) = top
        .0
        .iter()
        .filter(|(r, _, _)| r.contains(&dpc))
        .min_by_key(|(_, order, _)| *order)
    else {
        return Ok(Vec::new());
    };
    let mut tree = unit.entries_tree(Some(offset))?;
    let root = tree.root()?;
    let entry = root.entry().clone();
    let mut ranges = Vec::new();
    let mut iter = dwarf.die_ranges(unit, &entry)?;
    while let Some(r) = iter.next()? {
        ranges.push(r.begin..r.end);
    }
    let mut chain = vec![Scope { entry, ranges }];
    let mut inner = root.children();
    descend(dwarf, unit, &mut inner, dpc, &mut chain, 1)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::DebugIndex;

    /// Starting from the unit's outermost scopes finds the same chain as walking the unit, at
    /// statement addresses spread over this test binary.
    #[test]
    fn scopes_from_the_top_table_equal_the_walk() {
        let index = DebugIndex::for_current_exe().expect("the test binary has debug info");
        let dwarf = index.file.dwarf();
        let addresses = index.statement_addresses();
        assert!(addresses.len() > 1000, "{} addresses", addresses.len());
        let mut compared = 0;
        let mut tops = std::collections::HashMap::new();
        for &pc in addresses.iter().step_by(401) {
            let dpc = pc.wrapping_sub(index.bias());
            let Some(offset) = index.unit_at(dpc) else {
                continue;
            };
            let header = dwarf.debug_info.header_from_offset(offset).unwrap();
            let unit = dwarf.unit(header).unwrap();
            let walked: Vec<_> = scopes_at(&dwarf, &unit, dpc)
                .unwrap()
                .iter()
                .map(|s| (s.entry.offset(), s.ranges.clone()))
                .collect();
            let top = tops
                .entry(offset)
                .or_insert_with(|| top_scopes(&dwarf, &unit).unwrap());
            let fast: Vec<_> = scopes_at_with(&dwarf, &unit, top, dpc)
                .unwrap()
                .iter()
                .map(|s| (s.entry.offset(), s.ranges.clone()))
                .collect();
            assert_eq!(walked, fast, "at {pc:#x}");
            compared += usize::from(!walked.is_empty());
        }
        assert!(compared > 10, "chains compared: {compared}");
    }
}
