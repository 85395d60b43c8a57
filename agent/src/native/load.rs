//! [`DebugFile`]: the mapped file that holds a binary's DWARF, found next to the binary or by
//! build-id / `.gnu_debuglink`, and the load bias of the running executable.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use gimli::{EndianSlice, LittleEndian, SectionId};
use memmap2::Mmap;
use object::{CompressionFormat, Object, ObjectSection};

/// Why the debug info of a binary could not be loaded. Reported once, in the agent's status;
/// probe sites keep working without it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Neither the binary nor a separate debug file (by build-id or `.gnu_debuglink`) has DWARF.
    #[error(
        "no debug info in {binary}: add `debug = 2` (lines and variables; `debug = 1` or \
         \"line-tables-only\": lines only) to the Cargo profile it is built with \
         ([profile.release]), or keep its split debuginfo (objcopy --only-keep-debug) where the \
         agent looks: {searched}"
    )]
    NoDebugInfo {
        /// The binary that was searched.
        binary: PathBuf,
        /// Where a separate debug file was looked for, for the message.
        searched: String,
    },
    /// The binary's units are split DWARF skeletons (`split-debuginfo = "packed"` or
    /// `"unpacked"`), and neither the DWARF package (`.dwp`) nor the `.dwo` file of a unit
    /// was found (or the package is of another build and does not hold every unit).
    #[error(
        "the debug info of {path} is split DWARF (split-debuginfo = \"packed\" or \
         \"unpacked\") and {problem}: keep the `.dwp` file the build wrote beside the binary \
         (or in .debug/ beside it, or in the directory SONDE_AGENT_DEBUG_DIR names), or the \
         `.dwo` files where the build left them, or build with split-debuginfo = \"off\" \
         (Linux's default); looked for {searched}"
    )]
    SplitDwarf {
        /// The file with the skeleton units.
        path: PathBuf,
        /// What is wrong: the package is missing, or lacks a unit.
        problem: String,
        /// Where the package was looked for, for the message.
        searched: String,
    },
    /// The debug sections are compressed (`SHF_COMPRESSED`), which this build does not read.
    #[error("debug sections of {path} are compressed ({format:?}); ship them uncompressed")]
    Compressed {
        /// The file with the compressed sections.
        path: PathBuf,
        /// Its compression format.
        format: CompressionFormat,
    },
    /// The file could not be opened or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is not an ELF object, or its DWARF is malformed.
    #[error("cannot parse the debug info of {path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
}

/// The DWARF sections gimli reads, in [`SectionId`] order of this list.
const SECTIONS: [SectionId; 12] = [
    SectionId::DebugAbbrev,
    SectionId::DebugAddr,
    SectionId::DebugInfo,
    SectionId::DebugLine,
    SectionId::DebugLineStr,
    SectionId::DebugLoc,
    SectionId::DebugLocLists,
    SectionId::DebugRanges,
    SectionId::DebugRngLists,
    SectionId::DebugStr,
    SectionId::DebugStrOffsets,
    SectionId::DebugTypes,
];

/// The sections of a DWARF package (`.dwp`) gimli reads, by their names there.
const PACKAGE_SECTIONS: [SectionId; 13] = [
    SectionId::DebugCuIndex,
    SectionId::DebugTuIndex,
    SectionId::DebugAbbrev,
    SectionId::DebugInfo,
    SectionId::DebugLine,
    SectionId::DebugMacinfo,
    SectionId::DebugMacro,
    SectionId::DebugStr,
    SectionId::DebugStrOffsets,
    SectionId::DebugLoc,
    SectionId::DebugLocLists,
    SectionId::DebugRngLists,
    SectionId::DebugTypes,
];

/// A mapped ELF file with DWARF: where each debug section lies in the mapping.
#[derive(Debug)]
pub(crate) struct DebugFile {
    map: Mmap,
    sections: [Range<usize>; SECTIONS.len()],
    /// The file that was mapped (the binary itself or its separate debug file).
    pub(crate) path: PathBuf,
    /// The DWARF package holding the split units, when the units are skeletons
    /// ([`DebugFile::find_package`]).
    pub(crate) package: Option<Package>,
    /// Split units the package does not hold, each in its own `.dwo` file
    /// (`split-debuginfo = "unpacked"`), by DWO id.
    pub(crate) dwos: std::collections::HashMap<u64, Package>,
}

/// A mapped DWARF package (`.dwp`): the split units of a binary built with
/// `split-debuginfo = "packed"`, which its skeleton units name by DWO id; or one split unit's
/// `.dwo` file (`"unpacked"`), which has the same sections without the unit index.
#[derive(Debug)]
pub(crate) struct Package {
    map: Mmap,
    sections: [Range<usize>; PACKAGE_SECTIONS.len()],
    /// The package file.
    pub(crate) path: PathBuf,
}

impl Package {
    /// The sections of a `.dwo` file, completed with the binary's (`parent`) as a split unit's
    /// are.
    pub(crate) fn dwo_dwarf<'a>(
        &'a self,
        parent: &gimli::Dwarf<EndianSlice<'a, LittleEndian>>,
    ) -> gimli::Dwarf<EndianSlice<'a, LittleEndian>> {
        let load = |id: SectionId| -> Result<_, std::convert::Infallible> {
            let bytes = PACKAGE_SECTIONS
                .iter()
                .position(|s| *s == id)
                .map_or(&[][..], |i| &self.map[self.sections[i].clone()]);
            Ok(EndianSlice::new(bytes, LittleEndian))
        };
        let mut dwarf = match gimli::Dwarf::load(load) {
            Ok(dwarf) => dwarf,
            Err(never) => match never {},
        };
        dwarf.make_dwo(parent);
        dwarf
    }

    /// The package's sections with its unit index parsed (cheap: slices and the index header).
    pub(crate) fn dwarf(
        &self,
    ) -> gimli::Result<gimli::DwarfPackage<EndianSlice<'_, LittleEndian>>> {
        let empty = EndianSlice::new(&[][..], LittleEndian);
        gimli::DwarfPackage::load(
            |id: SectionId| -> gimli::Result<_> {
                let bytes = PACKAGE_SECTIONS
                    .iter()
                    .position(|s| *s == id)
                    .map_or(&[][..], |i| &self.map[self.sections[i].clone()]);
                Ok(EndianSlice::new(bytes, LittleEndian))
            },
            empty,
        )
    }
}

impl DebugFile {
    /// Finds and maps the DWARF for `binary`: the binary itself if it has `.debug_info`, else
    /// `/usr/lib/debug/.build-id/xx/yyyy.debug`, else the `.gnu_debuglink` file (next to the
    /// binary, in its `.debug/`, or under `/usr/lib/debug/<its directory>/`).
    pub(crate) fn open(binary: &Path) -> Result<Self, LoadError> {
        let map = map(binary)?;
        let (build_id, debuglink) = {
            let obj = parse(&map, binary)?;
            if obj
                .section_by_name(".debug_info")
                .is_some_and(|s| s.size() > 0)
            {
                return Self::from_map(map, binary.to_owned());
            }
            let build_id = obj.build_id().ok().flatten().map(<[u8]>::to_vec);
            let link = obj
                .gnu_debuglink()
                .ok()
                .flatten()
                .map(|(name, _crc)| name.to_vec());
            (build_id, link)
        };
        let debug_dir = std::env::var_os(DEBUG_DIR_VAR)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        let candidates = candidates(
            binary,
            build_id.as_deref(),
            debuglink.as_deref(),
            debug_dir.as_deref(),
        );
        for candidate in candidates.iter().cloned() {
            let Ok(map) = map_file(&candidate) else {
                continue;
            };
            let Ok(obj) = parse(&map, &candidate) else {
                continue;
            };
            if build_id.is_some() && obj.build_id().ok().flatten() != build_id.as_deref() {
                continue; // a stale debug file of another build
            }
            if obj
                .section_by_name(".debug_info")
                .is_some_and(|s| s.size() > 0)
            {
                drop(obj);
                return Self::from_map(map, candidate);
            }
        }
        let mut searched: Vec<String> =
            candidates.iter().map(|c| c.display().to_string()).collect();
        if debug_dir.is_none() {
            searched.push(format!("or a directory named by {DEBUG_DIR_VAR}"));
        }
        Err(LoadError::NoDebugInfo {
            binary: binary.to_owned(),
            searched: searched.join(", "),
        })
    }

    fn from_map(map: Mmap, path: PathBuf) -> Result<Self, LoadError> {
        let obj = parse(&map, &path)?;
        if !obj.is_little_endian() {
            return Err(LoadError::Malformed {
                path,
                reason: "big-endian object".into(),
            });
        }
        let mut sections: [Range<usize>; SECTIONS.len()] = Default::default();
        for (slot, id) in sections.iter_mut().zip(SECTIONS) {
            let Some(section) = obj.section_by_name(id.name()) else {
                continue;
            };
            *slot = section_range(&section, map.len(), &path, id)?;
        }
        drop(obj);
        Ok(Self {
            map,
            sections,
            path,
            package: None,
            dwos: std::collections::HashMap::new(),
        })
    }

    /// Finds and maps the DWARF package of `binary`, whose DWARF has split units: `<name>.dwp`
    /// beside it (where rustc and cargo write it), in its `.debug/`, in `SONDE_AGENT_DEBUG_DIR`,
    /// under `/usr/lib/debug` at the binary's own directory, and by build-id
    /// (`.build-id/xx/yyyy.dwp`) under `SONDE_AGENT_DEBUG_DIR` and `/usr/lib/debug`. `Err`
    /// lists where it looked.
    pub(crate) fn find_package(binary: &Path) -> Result<Package, String> {
        let build_id = map_file(binary).ok().and_then(|map| {
            let obj = object::File::parse(&map[..]).ok()?;
            obj.build_id().ok().flatten().map(<[u8]>::to_vec)
        });
        let debug_dir = std::env::var_os(DEBUG_DIR_VAR)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        let candidates = package_candidates(binary, build_id.as_deref(), debug_dir.as_deref());
        for candidate in &candidates {
            if let Ok(package) = Package::open(candidate, true) {
                return Ok(package);
            }
        }
        let mut searched: Vec<String> =
            candidates.iter().map(|c| c.display().to_string()).collect();
        if debug_dir.is_none() {
            searched.push(format!("or a directory named by {DEBUG_DIR_VAR}"));
        }
        Err(searched.join(", "))
    }

    /// The DWARF sections, borrowed from the mapping (cheap: only slices).
    pub(crate) fn dwarf(&self) -> gimli::Dwarf<EndianSlice<'_, LittleEndian>> {
        let load = |id: SectionId| -> Result<_, std::convert::Infallible> {
            let bytes = SECTIONS
                .iter()
                .position(|s| *s == id)
                .map_or(&[][..], |i| &self.map[self.sections[i].clone()]);
            Ok(EndianSlice::new(bytes, LittleEndian))
        };
        match gimli::Dwarf::load(load) {
            Ok(dwarf) => dwarf,
            Err(never) => match never {},
        }
    }
}

impl Package {
    /// Maps the package at `path`: an ELF file with a `.debug_cu_index` section, or without
    /// one for a `.dwo` file (not `indexed`).
    pub(crate) fn open(path: &Path, indexed: bool) -> Result<Self, LoadError> {
        let map = map(path)?;
        let obj = parse(&map, path)?;
        if indexed && obj.section_by_name(".debug_cu_index").is_none() {
            return Err(LoadError::Malformed {
                path: path.to_owned(),
                reason: "not a DWARF package (no .debug_cu_index)".into(),
            });
        }
        let mut sections: [Range<usize>; PACKAGE_SECTIONS.len()] = Default::default();
        for (slot, id) in sections.iter_mut().zip(PACKAGE_SECTIONS) {
            let Some(section) = id.dwo_name().and_then(|n| obj.section_by_name(n)) else {
                continue;
            };
            *slot = section_range(&section, map.len(), path, id)?;
        }
        drop(obj);
        Ok(Self {
            map,
            sections,
            path: path.to_owned(),
        })
    }
}

/// Where a section lies in the mapping of `path`: refused when it is compressed or lies outside
/// the file.
fn section_range(
    section: &object::Section<'_, '_>,
    len: usize,
    path: &Path,
    id: SectionId,
) -> Result<Range<usize>, LoadError> {
    let range = section
        .compressed_file_range()
        .map_err(|e| LoadError::Malformed {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if range.format != CompressionFormat::None {
        return Err(LoadError::Compressed {
            path: path.to_owned(),
            format: range.format,
        });
    }
    let start = usize::try_from(range.offset).unwrap_or(usize::MAX);
    let end = start.saturating_add(usize::try_from(range.uncompressed_size).unwrap_or(0));
    if end > len {
        return Err(LoadError::Malformed {
            path: path.to_owned(),
            reason: format!("section {} lies outside the file", id.name()),
        });
    }
    Ok(start..end)
}

fn map(path: &Path) -> Result<Mmap, LoadError> {
    map_file(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })
}

pub(super) fn map_file(path: &Path) -> io::Result<Mmap> {
    let file = File::open(path)?;
    // Safety: the mapping is read-only and private; binaries and debug files are replaced, not
    // rewritten in place, by installers (a truncation under us would raise SIGBUS, as it would
    // for the running executable's own text).
    unsafe { Mmap::map(&file) }
}

fn parse<'a>(map: &'a Mmap, path: &Path) -> Result<object::File<'a>, LoadError> {
    object::File::parse(&map[..]).map_err(|e| LoadError::Malformed {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// The environment variable naming one more debug directory, searched first.
pub(crate) const DEBUG_DIR_VAR: &str = "SONDE_AGENT_DEBUG_DIR";

/// Where a separate debug file may be, in the order GDB looks, with `debug_dir`
/// (`SONDE_AGENT_DEBUG_DIR`) searched before `/usr/lib/debug`: under each debug directory the
/// build-id path `.build-id/xx/yyyy.debug`, then the `.gnu_debuglink` name next to the binary, in
/// its `.debug/`, in the debug directory itself and under it at the binary's own directory; then
/// `<binary>.debug` next to the binary and in its `.debug/` (a debug file kept without a link).
/// Every candidate is checked against the binary's build-id before it is used.
fn candidates(
    binary: &Path,
    build_id: Option<&[u8]>,
    debuglink: Option<&[u8]>,
    debug_dir: Option<&Path>,
) -> Vec<PathBuf> {
    let system = Path::new("/usr/lib/debug");
    let roots: Vec<&Path> = debug_dir.into_iter().chain([system]).collect();
    let mut out = Vec::new();
    if let Some(id) = build_id.filter(|id| id.len() >= 2) {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        for root in &roots {
            out.push(
                root.join(".build-id")
                    .join(&hex[..2])
                    .join(format!("{}.debug", &hex[2..])),
            );
        }
    }
    let binary = binary.canonicalize().unwrap_or_else(|_| binary.to_owned());
    let Some(dir) = binary.parent() else {
        return out;
    };
    let relative = dir.strip_prefix("/").unwrap_or(dir);
    if let Some(name) = debuglink.filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        let same = dir.join(name);
        if same != binary {
            out.push(same);
        }
        out.push(dir.join(".debug").join(name));
        if let Some(root) = debug_dir {
            out.push(root.join(name));
        }
        for root in &roots {
            out.push(root.join(relative).join(name));
        }
    }
    if let Some(file_name) = binary.file_name() {
        let mut name = file_name.to_owned();
        name.push(".debug");
        for candidate in [dir.join(&name), dir.join(".debug").join(&name)] {
            if !out.contains(&candidate) {
                out.push(candidate);
            }
        }
    }
    out
}

/// Where a binary's DWARF package may be (see [`DebugFile::find_package`]).
fn package_candidates(
    binary: &Path,
    build_id: Option<&[u8]>,
    debug_dir: Option<&Path>,
) -> Vec<PathBuf> {
    let system = Path::new("/usr/lib/debug");
    let roots: Vec<&Path> = debug_dir.into_iter().chain([system]).collect();
    let binary = binary.canonicalize().unwrap_or_else(|_| binary.to_owned());
    let mut out = Vec::new();
    if let (Some(dir), Some(file_name)) = (binary.parent(), binary.file_name()) {
        let mut name = file_name.to_owned();
        name.push(".dwp");
        out.push(dir.join(&name));
        out.push(dir.join(".debug").join(&name));
        if let Some(root) = debug_dir {
            out.push(root.join(&name));
        }
        let relative = dir.strip_prefix("/").unwrap_or(dir);
        out.push(system.join(relative).join(&name));
    }
    if let Some(id) = build_id.filter(|id| id.len() >= 2) {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        for root in &roots {
            out.push(
                root.join(".build-id")
                    .join(&hex[..2])
                    .join(format!("{}.dwp", &hex[2..])),
            );
        }
    }
    out
}

/// The load bias of the running executable: what to add to a DWARF address to get the address
/// in memory. Taken from the first object `dl_iterate_phdr` reports, which is the main program
/// (its `dlpi_addr`; 0 for a non-PIE executable).
pub(crate) fn executable_bias() -> u64 {
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // Safety: `dl_iterate_phdr` passes a valid `info` for the duration of the call, and
        // `data` is the `&mut u64` handed to it below.
        unsafe {
            *data.cast::<u64>() = (*info).dlpi_addr;
        }
        1 // stop after the main program
    }
    let mut bias = 0u64;
    // Safety: the callback only writes through `data`, which points to `bias`, alive for the
    // whole call.
    unsafe {
        libc::dl_iterate_phdr(Some(first), (&raw mut bias).cast());
    }
    bias
}
