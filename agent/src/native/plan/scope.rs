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

/// An entry's address ranges (`DW_AT_ranges`, or `DW_AT_low_pc` with `DW_AT_high_pc`).
fn ranges_of<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &Unit<'a>,
    e: &Entry<'a>,
) -> Result<Vec<std::ops::Range<u64>>, DwarfError> {
    let mut ranges = Vec::new();
    let mut iter = dwarf.die_ranges(unit, e)?;
    while let Some(r) = iter.next()? {
        ranges.push(r.begin..r.end);
    }
    Ok(ranges)
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
///
/// The ranges are kept sorted by start, with the largest end so far beside each, so that the
/// scopes containing an address are found by a binary search and a short walk back rather than
/// a scan of the whole unit's scopes per address.
#[derive(Debug)]
pub(crate) struct TopScopes {
    /// (range, walk order, entry), by range start.
    ranges: Vec<(std::ops::Range<u64>, usize, UnitOffset<usize>)>,
    /// `max_end[i]`: the largest end among `ranges[..=i]`.
    max_end: Vec<u64>,
    /// The scope tree below each outermost scope an address was looked up in, read once.
    trees: std::sync::Mutex<std::collections::HashMap<usize, std::sync::Arc<ScopeTree>>>,
}

/// The scopes (subprograms, lexical blocks, inlined subroutines) below one outermost scope, as
/// [`descend`] meets them: each with its entry's offset, its ranges, its first child and next
/// sibling (`NONE` for none), in DIE order; `nodes[0]` is the outermost scope. An optimized
/// function with much inlined into it has thousands of them, and a whole file's `lines` answer
/// asks for the chain at each of its addresses: reading the DIEs once and then walking this
/// costs one pass over the function rather than one per address.
#[derive(Debug)]
struct ScopeTree {
    nodes: Vec<ScopeNode>,
}

#[derive(Debug)]
struct ScopeNode {
    offset: UnitOffset<usize>,
    ranges: Vec<std::ops::Range<u64>>,
    first_child: usize,
    next_sibling: usize,
}

const NONE: usize = usize::MAX;

impl ScopeTree {
    /// Reads the scope DIEs of the subtree at `top`: a scope's children that are scopes, and
    /// theirs (what `descend` looks at once it is inside a scope).
    fn read<'a>(
        dwarf: &gimli::Dwarf<Slice<'a>>,
        unit: &Unit<'a>,
        top: UnitOffset<usize>,
    ) -> Result<Self, DwarfError> {
        let mut cursor = unit.entries_at_offset(top)?;
        let Some(root) = cursor.next_dfs()? else {
            return Ok(Self { nodes: Vec::new() });
        };
        let mut nodes = vec![ScopeNode {
            offset: root.offset(),
            ranges: ranges_of(dwarf, unit, root)?,
            first_child: NONE,
            next_sibling: NONE,
        }];
        // The scopes open around the cursor: (depth, node, its last child so far).
        let mut open: Vec<(isize, usize, usize)> = vec![(root.depth(), 0, NONE)];
        while let Some(e) = cursor.next_dfs()? {
            let depth = e.depth();
            if depth <= open[0].0 {
                break;
            }
            while open.last().is_some_and(|(d, _, _)| *d >= depth) {
                open.pop();
            }
            let Some(parent) = open.last_mut() else {
                break;
            };
            // Only a scope's direct children are looked at (not those of a variable or type).
            if parent.0 != depth - 1
                || !matches!(
                    e.tag(),
                    constants::DW_TAG_subprogram
                        | constants::DW_TAG_lexical_block
                        | constants::DW_TAG_inlined_subroutine
                )
            {
                continue;
            }
            let at = nodes.len();
            nodes.push(ScopeNode {
                offset: e.offset(),
                ranges: ranges_of(dwarf, unit, e)?,
                first_child: NONE,
                next_sibling: NONE,
            });
            if parent.2 == NONE {
                nodes[parent.1].first_child = at;
            } else {
                nodes[parent.2].next_sibling = at;
            }
            parent.2 = at;
            open.push((depth, at, NONE));
        }
        Ok(Self { nodes })
    }

    /// The chain from the outermost scope down to the innermost containing `dpc`: at each
    /// level the first child (in DIE order) whose ranges contain it, as `descend` picks.
    fn chain<'a>(&self, unit: &Unit<'a>, dpc: u64) -> Result<Vec<Scope<'a>>, DwarfError> {
        let Some(root) = self.nodes.first() else {
            return Ok(Vec::new());
        };
        let scope = |n: &ScopeNode| -> Result<Scope<'a>, DwarfError> {
            Ok(Scope {
                entry: unit.entry(n.offset)?,
                ranges: n.ranges.clone(),
            })
        };
        let mut chain = vec![scope(root)?];
        let mut at = 0;
        loop {
            let mut child = self.nodes[at].first_child;
            while child != NONE && !self.nodes[child].ranges.iter().any(|r| r.contains(&dpc)) {
                child = self.nodes[child].next_sibling;
            }
            if child == NONE {
                return Ok(chain);
            }
            chain.push(scope(&self.nodes[child])?);
            at = child;
        }
    }
}

impl TopScopes {
    fn new(mut ranges: Vec<(std::ops::Range<u64>, usize, UnitOffset<usize>)>) -> Self {
        ranges.sort_by_key(|(r, order, _)| (r.start, *order));
        let max_end = ranges
            .iter()
            .scan(0, |end, (r, _, _)| {
                *end = r.end.max(*end);
                Some(*end)
            })
            .collect();
        Self {
            ranges,
            max_end,
            trees: std::sync::Mutex::default(),
        }
    }

    /// The scope tree below the outermost scope at `top`, read on first use and kept.
    fn tree<'a>(
        &self,
        dwarf: &gimli::Dwarf<Slice<'a>>,
        unit: &Unit<'a>,
        top: UnitOffset<usize>,
    ) -> Result<std::sync::Arc<ScopeTree>, DwarfError> {
        let kept = self
            .trees
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&top.0)
            .cloned();
        if let Some(tree) = kept {
            return Ok(tree);
        }
        let tree = std::sync::Arc::new(ScopeTree::read(dwarf, unit, top)?);
        self.trees
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(top.0, tree.clone());
        Ok(tree)
    }

    /// The scope the walk meets first among those whose ranges contain `dpc`.
    fn containing(&self, dpc: u64) -> Option<UnitOffset<usize>> {
        let below = self.ranges.partition_point(|(r, _, _)| r.start <= dpc);
        let mut best: Option<(usize, UnitOffset<usize>)> = None;
        for i in (0..below).rev() {
            if self.max_end[i] <= dpc {
                break;
            }
            let (r, order, offset) = &self.ranges[i];
            if r.contains(&dpc) && best.is_none_or(|(o, _)| *order < o) {
                best = Some((*order, *offset));
            }
        }
        best.map(|(_, offset)| offset)
    }
}

/// Walks `unit` once for its [`TopScopes`], over its raw entries: only the attributes of the
/// scopes it keeps are read (a unit's DIEs are mostly variables and types, skipped as the index
/// skips them), so a large unit costs a fraction of a walk that parses every entry.
pub(super) fn top_scopes<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &Unit<'a>,
) -> Result<TopScopes, DwarfError> {
    let mut out = Vec::new();
    let mut order = 0;
    // For each depth on the path to the current entry: whether the entry there is the unit or
    // a namespace or type reached through such entries only (whose children are looked at).
    let mut open: Vec<bool> = Vec::new();
    let mut entries = unit.entries_raw(None)?;
    while !entries.is_empty() {
        let depth = entries.next_depth();
        let offset = entries.next_offset();
        let Some(abbrev) = entries.read_abbreviation()? else {
            continue;
        };
        let Ok(depth) = usize::try_from(depth) else {
            entries.skip_attributes(abbrev.attributes())?;
            continue;
        };
        open.truncate(depth);
        let looked_at = match depth {
            0 => {
                open.push(true);
                entries.skip_attributes(abbrev.attributes())?;
                continue;
            }
            d => open.len() == d && open[d - 1],
        };
        let tag = abbrev.tag();
        let is_scope = matches!(
            tag,
            constants::DW_TAG_subprogram
                | constants::DW_TAG_lexical_block
                | constants::DW_TAG_inlined_subroutine
        );
        if !(looked_at && is_scope) {
            let container = matches!(
                tag,
                constants::DW_TAG_namespace
                    | constants::DW_TAG_structure_type
                    | constants::DW_TAG_enumeration_type
                    | constants::DW_TAG_union_type
            );
            // As the walk: into namespaces and types nested fewer than 32 deep.
            open.push(looked_at && container && depth - 1 < 32);
            entries.skip_attributes(abbrev.attributes())?;
            continue;
        }
        open.push(false);
        // The ranges as `Dwarf::die_ranges` reads them: a range list when there is one, else
        // low_pc with high_pc (an address, or a size).
        let (mut low, mut high, mut list) = (None, None, None);
        for spec in abbrev.attributes() {
            let attr = entries.read_attribute(*spec)?;
            match attr.name() {
                constants::DW_AT_low_pc => low = Some(attr),
                constants::DW_AT_high_pc => high = Some(attr),
                constants::DW_AT_ranges if list.is_none() => {
                    list = dwarf.attr_ranges(unit, attr.value())?;
                }
                _ => {}
            }
        }
        if let Some(mut list) = list {
            while let Some(r) = list.next()? {
                out.push((r.begin..r.end, order, offset));
            }
        } else if let Some(low) = low {
            let address = |attr: &gimli::Attribute<Slice<'a>>| {
                dwarf
                    .attr_address(unit, attr.value())?
                    .ok_or(gimli::Error::UnsupportedAttributeForm(attr.form()))
            };
            let begin = address(&low)?;
            let end = match &high {
                Some(h) => match h.value() {
                    AttributeValue::Udata(size) => Some(begin.wrapping_add(size)),
                    _ => Some(address(h)?),
                },
                None => None,
            };
            if let Some(end) = end {
                out.push((begin..end, order, offset));
            }
        }
        order += 1;
    }
    Ok(TopScopes::new(out))
}

/// [`top_scopes`] by walking the entries as trees: the reference it is checked against.
#[cfg(test)]
fn top_scopes_walked<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &Unit<'a>,
) -> Result<TopScopes, DwarfError> {
    let mut out = Vec::new();
    let mut tree = unit.entries_tree(None)?;
    let root = tree.root()?;
    let mut children = root.children();
    let mut order = 0;
    collect(dwarf, unit, &mut children, &mut out, &mut order, 0)?;
    Ok(TopScopes::new(out))
}

#[cfg(test)]
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
                for r in ranges_of(dwarf, unit, e)? {
                    out.push((r, *order, e.offset()));
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

/// As [`scopes_at`], starting from the unit's [`TopScopes`]: the same chain, found in the
/// [`ScopeTree`] kept for the outermost scope containing `dpc` rather than by walking the unit.
pub(super) fn scopes_at_with<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &Unit<'a>,
    top: &TopScopes,
    dpc: u64,
) -> Result<Vec<Scope<'a>>, DwarfError> {
    let Some(offset) = top.containing(dpc) else {
        return Ok(Vec::new());
    };
    top.tree(dwarf, unit, offset)?.chain(unit, dpc)
}

/// The reference walk: into the first child scope containing `dpc`, from `children` down.
#[cfg(test)]
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
                let ranges = ranges_of(dwarf, unit, e)?;
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
        // The raw walk's table is the tree walk's, entry for entry.
        let mut tables = 0;
        for offset in tops.keys() {
            let header = dwarf.debug_info.header_from_offset(*offset).unwrap();
            let unit = dwarf.unit(header).unwrap();
            let raw = top_scopes(&dwarf, &unit).unwrap();
            let walked = top_scopes_walked(&dwarf, &unit).unwrap();
            assert_eq!(raw.ranges, walked.ranges, "unit at {offset:?}");
            tables += usize::from(!raw.ranges.is_empty());
        }
        assert!(tables > 5, "tables compared: {tables}");
    }
}
