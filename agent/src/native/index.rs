//! [`DebugIndex`]: `file:line` → addresses and the address → unit map, built once from the
//! line programs and the call sites of inlined functions, so that lookups are binary searches.
//!
//! A line's addresses are the `is_stmt` rows where that line *starts* (a run of rows for the same
//! file and line counts once, at its first statement row). In optimized code some lines have no
//! row of their own, because all their instructions are credited to inlined callees; those lines
//! are found through `DW_TAG_inlined_subroutine`'s `DW_AT_call_file`/`DW_AT_call_line`, used only
//! when the line has no row. All addresses are kept as DWARF addresses and turned into runtime
//! addresses (plus the load bias) at the API.

use std::collections::HashMap;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use gimli::{AttributeValue, EndianSlice, LittleEndian, constants};

use super::cfa::{CfaRule, Unwind};
use super::load::{DebugFile, LoadError, Package, executable_bias};
use crate::site::path_matches;

pub(crate) type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// A source file known to a [`DebugIndex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(u32);

/// Where an address of a line comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSource {
    /// An `is_stmt` row of the line program where the line starts.
    LineRow,
    /// The entry of an inlined call made on that line (the line has no row of its own).
    InlinedCallSite,
}

/// One address of a source line, in the running process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineAddress {
    /// Runtime address (DWARF address plus the load bias).
    pub address: u64,
    /// The matching file it belongs to.
    pub file: FileId,
    /// Whether it comes from a line-table row or an inlined call site.
    pub source: AddressSource,
}

/// What [`DebugIndex::lookup`] found for a `file:line`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineLookup {
    /// The indexed files the tracepoint path matches (by whole trailing components).
    pub files: Vec<FileId>,
    /// Every address of the line, sorted; empty if the line has no code.
    pub addresses: Vec<LineAddress>,
    /// When `addresses` is empty but a file matched: the nearest line before and after that has
    /// code (for a status such as "line 12 has no code; try 11 or 14").
    pub nearest: NearestLines,
}

impl LineLookup {
    /// Whether the line has no code (or no file matched).
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }
}

/// The closest lines with code around a line without any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NearestLines {
    /// The nearest line before it with code.
    pub before: Option<u32>,
    /// The nearest line after it with code.
    pub after: Option<u32>,
}

/// An address of a line, as indexed (DWARF address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Row {
    pub(crate) file: u32,
    pub(crate) line: u32,
    pub(crate) addr: u64,
}

/// A compilation unit's address ranges (DWARF addresses), for address → unit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnitRange {
    pub(crate) begin: u64,
    pub(crate) end: u64,
    pub(crate) unit: gimli::DebugInfoOffset<usize>,
}

/// The index over a binary's debug info: built once (on the agent's thread, never on the
/// application's), then queried cheaply from any thread (`Send + Sync`).
#[derive(Debug)]
pub struct DebugIndex {
    pub(crate) file: DebugFile,
    pub(crate) bias: u64,
    files: Vec<Box<str>>,
    /// Per file: where its path relative to its unit's compilation directory starts (0: the
    /// path is not under it).
    relative: Vec<u32>,
    /// Last path component → files with that name.
    by_name: HashMap<Box<str>, Vec<u32>>,
    /// Statement rows sorted by (file, line, addr); `file_rows[f]` is file f's slice.
    pub(crate) rows: Vec<Row>,
    file_rows: Vec<Range<u32>>,
    /// Inlined call sites, sorted the same way.
    calls: Vec<Row>,
    file_calls: Vec<Range<u32>>,
    /// Indices into `rows`, sorted by address.
    pub(crate) by_addr: Vec<u32>,
    pub(crate) units: Vec<UnitRange>,
    variables: bool,
    /// The executable's own `.eh_frame` (not the debug file's, which may be `NOBITS`).
    pub(crate) unwind: Option<Unwind>,
    /// What the modules above keep per unit (by `.debug_info` offset), built on first use:
    /// each unit's outermost scopes (`plan`).
    pub(crate) top_scopes: Memo,
    /// Full type shapes by (unit, type) offset (`plan`).
    pub(crate) shapes: Memo,
}

/// A cache the modules above the index keep in it, by (unit, entry) offsets; the values are
/// theirs (type-erased, so that the index depends on none of them).
pub(crate) type Memo =
    std::sync::Mutex<HashMap<(usize, usize), std::sync::Arc<dyn std::any::Any + Send + Sync>>>;

impl DebugIndex {
    /// Indexes the running executable (`/proc/self/exe`, or its separate debug file), with the
    /// load bias from `dl_iterate_phdr`. Takes a while on a large binary: call it on the agent's
    /// own thread.
    pub fn for_current_exe() -> Result<Self, LoadError> {
        Self::build(Path::new("/proc/self/exe"), executable_bias())
    }

    /// Indexes the binary at `path` (or its separate debug file), as if loaded at `bias`. The
    /// unwind info for [`Self::cfa_at`] is read from `path` itself.
    pub fn build(path: &Path, bias: u64) -> Result<Self, LoadError> {
        let mut file = DebugFile::open(path)?;
        let malformed = |path: &Path, e: gimli::Error| LoadError::Malformed {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let mut b = Builder::default();
        // Split DWARF (`split-debuginfo = "packed"`): skeleton units, whose entries are in the
        // DWARF package. Indexed after the others, once the package is found.
        let mut skeletons = Vec::new();
        {
            let dwarf = file.dwarf();
            let mut headers = dwarf.units();
            while let Some(header) = headers.next().map_err(|e| malformed(&file.path, e))? {
                let offset = gimli::DebugInfoOffset(header.offset().0); // `units()` walks .debug_info
                let unit = dwarf.unit(header).map_err(|e| malformed(&file.path, e))?;
                if unit.dwo_id.is_some() {
                    skeletons.push(offset);
                    continue;
                }
                b.unit(&dwarf, &unit, None, offset)
                    .map_err(|e| malformed(&file.path, e))?;
            }
        }
        if !skeletons.is_empty() {
            let split = |problem: String, searched: String| LoadError::SplitDwarf {
                path: file.path.clone(),
                problem,
                searched,
            };
            let (package, searched) = match DebugFile::find_package(path) {
                Ok(package) => (Some(package), String::new()),
                Err(searched) => (None, searched),
            };
            // Units the package does not hold (or all, without one): their `.dwo` files, by
            // the name the skeleton gives (relative to its compilation directory).
            let mut dwos = HashMap::new();
            {
                let dwarf = file.dwarf();
                let dwp = match &package {
                    Some(p) => Some(p.dwarf().map_err(|e| malformed(&p.path, e))?),
                    None => None,
                };
                for &offset in &skeletons {
                    let header = dwarf
                        .debug_info
                        .header_from_offset(offset)
                        .map_err(|e| malformed(&file.path, e))?;
                    let skeleton = dwarf.unit(header).map_err(|e| malformed(&file.path, e))?;
                    let Some(id) = skeleton.dwo_id else { continue };
                    let held = match &dwp {
                        Some(dwp) => dwp
                            .find_cu(id, &dwarf)
                            .map_err(|e| malformed(&file.path, e))?
                            .is_some(),
                        None => false,
                    };
                    if held {
                        continue;
                    }
                    let dwo_path = dwo_path(&dwarf, &skeleton);
                    let opened = dwo_path
                        .as_deref()
                        .and_then(|p| Package::open(p, false).ok())
                        .filter(|dwo| {
                            let d = dwo.dwo_dwarf(&dwarf);
                            let unit = d.units().next().ok().flatten();
                            unit.and_then(|h| d.unit(h).ok()).and_then(|u| u.dwo_id) == Some(id)
                        });
                    let Some(dwo) = opened else {
                        let name = dwo_path.map_or_else(
                            || "its .dwo file (the skeleton names none)".to_owned(),
                            |p| format!("its .dwo file {}", p.display()),
                        );
                        let problem = match &package {
                            Some(p) => format!(
                                "the package {} does not hold its unit {:#x} (a package of \
                                 another build?), nor was {name} found",
                                p.path.display(),
                                id.0
                            ),
                            None => format!("no DWARF package (.dwp) was found, nor {name}"),
                        };
                        let searched = match &package {
                            Some(p) => p.path.display().to_string(),
                            None => searched,
                        };
                        return Err(split(problem, searched));
                    };
                    dwos.insert(id.0, dwo);
                }
            }
            file.package = package;
            file.dwos = dwos;
            {
                let dwarf = file.dwarf();
                let dwp = match &file.package {
                    Some(p) => Some(p.dwarf().map_err(|e| malformed(&p.path, e))?),
                    None => None,
                };
                for offset in skeletons {
                    let header = dwarf
                        .debug_info
                        .header_from_offset(offset)
                        .map_err(|e| malformed(&file.path, e))?;
                    let skeleton = dwarf.unit(header).map_err(|e| malformed(&file.path, e))?;
                    let (dwo, unit) = split_unit(&dwarf, dwp.as_ref(), &file.dwos, &skeleton)
                        .map_err(|e| malformed(&file.path, e))?
                        .ok_or_else(|| malformed(&file.path, gimli::Error::MissingSplitUnit))?;
                    b.unit(&dwarf, &skeleton, Some((&dwo, &unit)), offset)
                        .map_err(|e| malformed(&file.path, e))?;
                }
            }
        }
        Ok(b.finish(file, bias, Unwind::open(path)))
    }

    /// The load bias: runtime address minus DWARF address.
    pub fn bias(&self) -> u64 {
        self.bias
    }

    /// The file the DWARF was read from (the binary or its separate debug file).
    pub fn debug_file(&self) -> &Path {
        &self.file.path
    }

    /// Whether the debug info describes variables (`debug = 2`); with `debug = 1` or
    /// `line-tables-only` there are lines but no locals.
    pub fn has_variables(&self) -> bool {
        self.variables
    }

    /// A file's path as recorded in the debug info.
    pub fn file_path(&self, file: FileId) -> &str {
        &self.files[file.0 as usize]
    }

    /// Every file of the debug info with code: its id, its path as recorded, and that path
    /// relative to the directory its unit was compiled in (the same as recorded when it is not
    /// under it), which is how a tracepoint's `path` would name it.
    pub fn files(&self) -> impl Iterator<Item = (FileId, &str, &str)> + '_ {
        self.files.iter().enumerate().filter_map(|(i, path)| {
            let has_code = !self.file_rows.get(i).is_none_or(|r| r.is_empty())
                || !self.file_calls.get(i).is_none_or(|r| r.is_empty());
            let relative = self.relative.get(i).map_or(0, |&r| r as usize);
            has_code.then(|| (FileId(i as u32), &**path, &path[relative..]))
        })
    }

    /// The lines of the files matching `tracepoint_path` where a statement starts or a
    /// function is inlined: the lines [`Self::lookup`] finds addresses for, ascending.
    pub fn code_lines(&self, tracepoint_path: &str) -> Vec<u32> {
        let mut lines: Vec<u32> = self
            .matching_files(tracepoint_path)
            .iter()
            .flat_map(|f| {
                slice(&self.rows, &self.file_rows, f.0)
                    .iter()
                    .chain(slice(&self.calls, &self.file_calls, f.0))
                    .map(|r| r.line)
            })
            .filter(|&l| l != 0)
            .collect();
        lines.sort_unstable();
        lines.dedup();
        lines
    }

    /// Every distinct runtime address where a statement line starts, ascending.
    pub fn statement_addresses(&self) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .by_addr
            .iter()
            .map(|&i| self.rows[i as usize].addr + self.bias)
            .collect();
        out.dedup();
        out
    }

    /// Number of indexed files and statement addresses (for the agent's status).
    pub fn stats(&self) -> (usize, usize) {
        (self.files.len(), self.rows.len())
    }

    /// The files a tracepoint path matches, by whole trailing components
    /// ([`path_matches`](crate::site::path_matches)).
    pub fn matching_files(&self, tracepoint_path: &str) -> Vec<FileId> {
        let Some(name) = tracepoint_path
            .rsplit(['/', '\\'])
            .find(|c| !c.is_empty() && *c != ".")
        else {
            return Vec::new();
        };
        let mut out: Vec<FileId> = self
            .by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter(|&&f| path_matches(tracepoint_path, &self.files[f as usize]))
            .map(|&f| FileId(f))
            .collect();
        out.sort_unstable();
        out
    }

    /// Every runtime address of `tracepoint_path:line`: the statement rows where the line
    /// starts, or else the inlined call sites made on it; if there are none, the nearest lines
    /// with code.
    pub fn lookup(&self, tracepoint_path: &str, line: u32) -> LineLookup {
        let files = self.matching_files(tracepoint_path);
        let mut out = LineLookup {
            files,
            ..LineLookup::default()
        };
        for &f in &out.files {
            let rows = slice(&self.rows, &self.file_rows, f.0);
            out.addresses
                .extend(on_line(rows, line).iter().map(|r| LineAddress {
                    address: r.addr.wrapping_add(self.bias),
                    file: f,
                    source: AddressSource::LineRow,
                }));
        }
        if out.addresses.is_empty() {
            for &f in &out.files {
                let calls = slice(&self.calls, &self.file_calls, f.0);
                out.addresses
                    .extend(on_line(calls, line).iter().map(|r| LineAddress {
                        address: r.addr.wrapping_add(self.bias),
                        file: f,
                        source: AddressSource::InlinedCallSite,
                    }));
            }
        }
        if out.addresses.is_empty() {
            for &f in &out.files {
                for table in [
                    slice(&self.rows, &self.file_rows, f.0),
                    slice(&self.calls, &self.file_calls, f.0),
                ] {
                    let at = table.partition_point(|r| r.line < line);
                    if let Some(r) = at.checked_sub(1).map(|i| table[i]) {
                        out.nearest.before = out.nearest.before.max(Some(r.line));
                    }
                    if let Some(r) = table.get(at) {
                        let after = out.nearest.after.map_or(r.line, |a| a.min(r.line));
                        out.nearest.after = Some(after);
                    }
                }
            }
        }
        out.addresses.sort_unstable_by_key(|a| a.address);
        out.addresses.dedup_by_key(|a| a.address);
        out
    }

    /// The statement row at or before a DWARF address (its file and line).
    pub(crate) fn row_before(&self, dwarf_pc: u64) -> Option<Row> {
        let at = self
            .by_addr
            .partition_point(|&i| self.rows[i as usize].addr <= dwarf_pc);
        at.checked_sub(1)
            .map(|i| self.rows[self.by_addr[i] as usize])
    }

    /// Statement rows with DWARF addresses in `range`, in address order.
    pub(crate) fn rows_in(&self, range: Range<u64>) -> impl Iterator<Item = Row> + '_ {
        let start = self
            .by_addr
            .partition_point(|&i| self.rows[i as usize].addr < range.start);
        self.by_addr[start..]
            .iter()
            .map(|&i| self.rows[i as usize])
            .take_while(move |r| r.addr < range.end)
    }

    /// The unit whose ranges contain a DWARF address.
    pub(crate) fn unit_at(&self, dwarf_pc: u64) -> Option<gimli::DebugInfoOffset<usize>> {
        let at = self.units.partition_point(|u| u.begin <= dwarf_pc);
        self.units[..at]
            .iter()
            .rev()
            .take(8) // ranges do not overlap in practice; tolerate a few that do
            .find(|u| dwarf_pc < u.end)
            .map(|u| u.unit)
    }
}

fn slice<'a>(rows: &'a [Row], ranges: &[Range<u32>], file: u32) -> &'a [Row] {
    ranges
        .get(file as usize)
        .map_or(&[], |r| &rows[r.start as usize..r.end as usize])
}

fn on_line(rows: &[Row], line: u32) -> &[Row] {
    let start = rows.partition_point(|r| r.line < line);
    let end = start + rows[start..].partition_point(|r| r.line == line);
    &rows[start..end]
}

/// The split unit of a skeleton unit, from the DWARF package or else its `.dwo` file: its
/// sections (with the binary's `.debug_addr` and `.debug_ranges`), and the unit with the
/// skeleton's base addresses. `None` when neither holds it.
pub(crate) fn split_unit<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    package: Option<&gimli::DwarfPackage<Slice<'a>>>,
    dwos: &'a HashMap<u64, Package>,
    skeleton: &gimli::Unit<Slice<'a>>,
) -> gimli::Result<Option<(gimli::Dwarf<Slice<'a>>, gimli::Unit<Slice<'a>>)>> {
    let Some(id) = skeleton.dwo_id else {
        return Ok(None);
    };
    let dwo = match package {
        Some(package) => package.find_cu(id, dwarf)?,
        None => None,
    };
    let Some(dwo) = dwo.or_else(|| dwos.get(&id.0).map(|f| f.dwo_dwarf(dwarf))) else {
        return Ok(None);
    };
    let Some(header) = dwo.units().next()? else {
        return Ok(None);
    };
    let mut unit = dwo.unit(header)?;
    unit.copy_relocated_attributes(skeleton);
    Ok(Some((dwo, unit)))
}

/// Where a skeleton unit's `.dwo` file is: its `DW_AT_dwo_name` (`DW_AT_GNU_dwo_name` before
/// DWARF 5), under its compilation directory when relative.
fn dwo_path<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    skeleton: &gimli::Unit<Slice<'a>>,
) -> Option<PathBuf> {
    let name = skeleton.dwo_name().ok()??;
    let name = dwarf.attr_string(skeleton, name).ok()?;
    let name = Path::new(std::ffi::OsStr::from_bytes(name.slice()));
    Some(match &skeleton.comp_dir {
        Some(dir) => Path::new(std::ffi::OsStr::from_bytes(dir.slice())).join(name),
        None => name.to_owned(),
    })
}

#[derive(Default)]
struct Builder {
    files: Vec<Box<str>>,
    relative: Vec<u32>,
    ids: HashMap<Box<str>, u32>,
    rows: Vec<Row>,
    calls: Vec<Row>,
    units: Vec<UnitRange>,
    variables: bool,
}

impl Builder {
    /// Indexes `unit`'s ranges and line program, and the inlined call sites among its entries,
    /// or for a skeleton unit among those of its `split` unit.
    fn unit<'a>(
        &mut self,
        dwarf: &gimli::Dwarf<Slice<'a>>,
        unit: &gimli::Unit<Slice<'a>>,
        split: Option<(&gimli::Dwarf<Slice<'a>>, &gimli::Unit<Slice<'a>>)>,
        offset: gimli::DebugInfoOffset<usize>,
    ) -> gimli::Result<()> {
        let unit_ref = unit.unit_ref(dwarf);
        let mut ranges = unit_ref.unit_ranges()?;
        while let Some(r) = ranges.next()? {
            if r.begin < r.end && r.begin != 0 {
                self.units.push(UnitRange {
                    begin: r.begin,
                    end: r.end,
                    unit: offset,
                });
            }
        }
        let Some(program) = &unit.line_program else {
            return Ok(());
        };
        // Per-unit file index → FileId, resolved on first use.
        let mut file_cache: Vec<Option<u32>> = Vec::new();
        let comp_dir = unit.comp_dir.map(|d| d.to_string_lossy().into_owned());

        let mut rows = program.clone().rows();
        let mut prev: Option<(u64, u64)> = None; // (file index, line) of the previous row
        let mut started = false;
        // Whether the current sequence is of code the linker left out: its addresses start
        // at 0 (the tombstone), and rows at small offsets from it would name addresses of the
        // ELF header.
        let mut dead: Option<bool> = None;
        while let Some((header, row)) = rows.next_row()? {
            if row.end_sequence() {
                prev = None;
                dead = None;
                continue;
            }
            if *dead.get_or_insert(row.address() == 0) {
                continue;
            }
            let line = row.line().map_or(0, |l| l.get());
            let key = (row.file_index(), line);
            if prev != Some(key) {
                prev = Some(key);
                started = false;
            }
            if started || !row.is_stmt() || line == 0 || row.address() == 0 {
                continue;
            }
            started = true;
            let Some(file) = self.file_id(
                &mut file_cache,
                &unit_ref,
                header,
                row.file_index(),
                &comp_dir,
            ) else {
                continue;
            };
            self.rows.push(Row {
                file,
                line: u32::try_from(line).unwrap_or(u32::MAX),
                addr: row.address(),
            });
        }

        // Inlined call sites (and whether there are variables at all): one pass over the DIEs,
        // reading attributes only of the entries that matter.
        // The entries are the split unit's, read with its sections; their file indices refer
        // to its own line program when it has one (a header naming the files), else to the
        // skeleton's.
        let (entries_unit, entries_ref) = match split {
            Some((dwo, split)) => (split, split.unit_ref(dwo)),
            None => (unit, unit_ref),
        };
        let (header, names, mut call_files) = match &entries_unit.line_program {
            Some(own) if split.is_some() => (own.header(), entries_ref, Vec::new()),
            _ => (program.header(), unit_ref, file_cache),
        };
        let mut entries = entries_unit.entries_raw(None)?;
        while !entries.is_empty() {
            let Some(abbrev) = entries.read_abbreviation()? else {
                continue;
            };
            match abbrev.tag() {
                constants::DW_TAG_inlined_subroutine => {
                    let (mut file, mut line, mut entry, mut low, mut ranges) =
                        (None, 0, None, None, None);
                    for spec in abbrev.attributes() {
                        let attr = entries.read_attribute(*spec)?;
                        match attr.name() {
                            constants::DW_AT_call_file => match attr.value() {
                                AttributeValue::FileIndex(i) => file = Some(i),
                                v => file = v.udata_value(),
                            },
                            constants::DW_AT_call_line => line = attr.udata_value().unwrap_or(0),
                            constants::DW_AT_entry_pc => {
                                entry = entries_ref.attr_address(attr.value())?
                            }
                            constants::DW_AT_low_pc => {
                                low = entries_ref.attr_address(attr.value())?
                            }
                            constants::DW_AT_ranges => {
                                ranges = entries_ref.attr_ranges_offset(attr.value())?
                            }
                            _ => {}
                        }
                    }
                    let (Some(file), true) = (file, line > 0) else {
                        continue;
                    };
                    let mut addr = entry.or(low);
                    if addr.is_none()
                        && let Some(offset) = ranges
                    {
                        let mut iter = entries_ref.ranges(offset)?;
                        while let Some(r) = iter.next()? {
                            if r.begin < r.end {
                                addr = Some(addr.map_or(r.begin, |a: u64| a.min(r.begin)));
                            }
                        }
                    }
                    let Some(addr) = addr.filter(|&a| a != 0) else {
                        continue;
                    };
                    let Some(file) = self.file_id(&mut call_files, &names, header, file, &comp_dir)
                    else {
                        continue;
                    };
                    self.calls.push(Row {
                        file,
                        line: u32::try_from(line).unwrap_or(u32::MAX),
                        addr,
                    });
                }
                constants::DW_TAG_variable | constants::DW_TAG_formal_parameter => {
                    self.variables = true;
                    entries.skip_attributes(abbrev.attributes())?;
                }
                _ => entries.skip_attributes(abbrev.attributes())?,
            }
        }
        Ok(())
    }

    fn file_id<'a>(
        &mut self,
        cache: &mut Vec<Option<u32>>,
        unit: &gimli::UnitRef<'_, Slice<'a>>,
        header: &gimli::LineProgramHeader<Slice<'a>>,
        index: u64,
        comp_dir: &Option<String>,
    ) -> Option<u32> {
        let i = usize::try_from(index).ok()?;
        if let Some(Some(id)) = cache.get(i) {
            return Some(*id);
        }
        let entry = header.file(index)?;
        let name = unit.attr_string(entry.path_name()).ok()?;
        let mut path = PathBuf::new();
        if let Some(dir) = comp_dir {
            path.push(dir);
        }
        if let Some(dir) = entry.directory(header)
            && let Ok(dir) = unit.attr_string(dir)
        {
            path.push(&*dir.to_string_lossy());
        }
        path.push(&*name.to_string_lossy());
        let path: Box<str> = path.to_string_lossy().into();
        let id = match self.ids.get(&path) {
            Some(&id) => id,
            None => {
                let id = u32::try_from(self.files.len()).ok()?;
                let relative = comp_dir
                    .as_deref()
                    .filter(|dir| {
                        path.len() > dir.len() + 1
                            && path.starts_with(dir)
                            && path.as_bytes()[dir.len()] == b'/'
                    })
                    .map_or(0, |dir| dir.len() + 1);
                self.relative.push(u32::try_from(relative).unwrap_or(0));
                self.files.push(path.clone());
                self.ids.insert(path, id);
                id
            }
        };
        if cache.len() <= i {
            cache.resize(i + 1, None);
        }
        cache[i] = Some(id);
        Some(id)
    }

    fn finish(mut self, file: DebugFile, bias: u64, unwind: Option<Unwind>) -> DebugIndex {
        let group = |rows: &mut Vec<Row>, files: usize| {
            rows.sort_unstable();
            rows.dedup();
            let mut ranges = vec![0..0; files];
            let mut start = 0;
            while start < rows.len() {
                let f = rows[start].file;
                let end = start + rows[start..].partition_point(|r| r.file == f);
                ranges[f as usize] = start as u32..end as u32;
                start = end;
            }
            ranges
        };
        self.units.sort_unstable_by_key(|u| u.begin);
        // Inlined calls in functions the linker left out have addresses near 0, in no unit's
        // ranges (those starting at 0 are not kept).
        let units = &self.units;
        self.calls.retain(|c| {
            let at = units.partition_point(|u| u.begin <= c.addr);
            units[..at].iter().rev().take(8).any(|u| c.addr < u.end)
        });
        let file_rows = group(&mut self.rows, self.files.len());
        let file_calls = group(&mut self.calls, self.files.len());
        let mut by_addr: Vec<u32> = (0..self.rows.len() as u32).collect();
        by_addr.sort_unstable_by_key(|&i| self.rows[i as usize].addr);
        let mut by_name: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        for (i, path) in self.files.iter().enumerate() {
            let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
            by_name.entry(name.into()).or_default().push(i as u32);
        }
        DebugIndex {
            file,
            bias,
            files: self.files,
            relative: self.relative,
            by_name,
            rows: self.rows,
            file_rows,
            calls: self.calls,
            file_calls,
            by_addr,
            units: self.units,
            variables: self.variables,
            unwind,
            top_scopes: std::sync::Mutex::new(HashMap::new()),
            shapes: std::sync::Mutex::new(HashMap::new()),
        }
    }
}

impl DebugIndex {
    /// The rule for the canonical frame address at `pc` (a runtime address), from the
    /// executable's `.eh_frame`: `RSP + 8` at a function's entry, the frame's own rule after its
    /// prologue. `None` when no unwind info covers `pc` (or the executable has none).
    ///
    /// The rule describes the registers *before* the instruction at `pc` runs, which is the
    /// state a trap on that instruction sees.
    pub fn cfa_at(&self, pc: u64) -> Option<CfaRule> {
        self.unwind.as_ref()?.rule_at(pc.wrapping_sub(self.bias))
    }

    /// Whether the executable's unwind info (`.eh_frame`) was found, so that [`Self::cfa_at`]
    /// can answer.
    pub fn has_unwind_info(&self) -> bool {
        self.unwind.is_some()
    }
}
