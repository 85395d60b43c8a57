//! [`gnu_build_id`]: the running executable's GNU build-id, read from its ELF notes.
//!
//! The linker writes a `NT_GNU_BUILD_ID` note (a hash of the linked output) into a `PT_NOTE`
//! segment; two builds of the same code with the same toolchain and flags have the same one, so
//! a tracepoint can target one deployed build (`process.executable.build_id.gnu`, the
//! OpenTelemetry name). Only the ELF header, the program headers and the note segments are read,
//! without the `native` feature's ELF library.

use std::path::Path;

/// `PT_NOTE`: a program header naming a notes segment.
const PT_NOTE: u32 = 4;
/// `NT_GNU_BUILD_ID`: the note type of a build-id (with owner name `GNU`).
const NT_GNU_BUILD_ID: u32 = 3;
/// More than any real notes segment holds; a larger one is not read.
const MAX_NOTES: u64 = 1 << 16;

/// The GNU build-id of the running executable as lowercase hex, if it has one (Linux only).
pub(crate) fn gnu_build_id() -> Option<String> {
    if cfg!(target_os = "linux") {
        build_id_of(Path::new("/proc/self/exe"))
    } else {
        None
    }
}

/// The GNU build-id of the ELF file at `path` as lowercase hex.
fn build_id_of(path: &Path) -> Option<String> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let mut ident = [0u8; 64];
    file.read_exact(&mut ident).ok()?;
    if ident[..4] != *b"\x7fELF" {
        return None;
    }
    let wide = match ident[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let big = match ident[5] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let e = Endian { big };
    let (phoff, phentsize, phnum) = if wide {
        (
            e.u64(&ident[0x20..]),
            e.u16(&ident[0x36..]),
            e.u16(&ident[0x38..]),
        )
    } else {
        (
            u64::from(e.u32(&ident[0x1c..])),
            e.u16(&ident[0x2a..]),
            e.u16(&ident[0x2c..]),
        )
    };
    let (phentsize, phnum) = (usize::from(phentsize), usize::from(phnum));
    if phentsize < if wide { 0x38 } else { 0x20 } || phnum == 0 {
        return None;
    }
    let mut headers = vec![0u8; phentsize * phnum];
    file.seek(SeekFrom::Start(phoff)).ok()?;
    file.read_exact(&mut headers).ok()?;
    for header in headers.chunks_exact(phentsize) {
        if e.u32(header) != PT_NOTE {
            continue;
        }
        let (offset, size) = if wide {
            (e.u64(&header[0x08..]), e.u64(&header[0x20..]))
        } else {
            (
                u64::from(e.u32(&header[0x04..])),
                u64::from(e.u32(&header[0x10..])),
            )
        };
        if size > MAX_NOTES {
            continue;
        }
        let mut notes = vec![0u8; usize::try_from(size).ok()?];
        file.seek(SeekFrom::Start(offset)).ok()?;
        if file.read_exact(&mut notes).is_err() {
            continue;
        }
        if let Some(id) = find_build_id(&notes, e) {
            return Some(id.iter().map(|b| format!("{b:02x}")).collect());
        }
    }
    None
}

/// The descriptor of the `GNU` build-id note among `notes` (4-byte aligned entries).
fn find_build_id(mut notes: &[u8], e: Endian) -> Option<&[u8]> {
    let align = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let namesz = usize::try_from(e.u32(notes)).ok()?;
        let descsz = usize::try_from(e.u32(&notes[4..])).ok()?;
        let kind = e.u32(&notes[8..]);
        let name_end = 12usize.checked_add(namesz)?;
        let desc_start = align(name_end)?;
        let desc_end = desc_start.checked_add(descsz)?;
        if desc_end > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && &notes[12..name_end] == b"GNU\0" && descsz > 0 {
            return Some(&notes[desc_start..desc_end]);
        }
        notes = &notes[align(desc_end)?.min(notes.len())..];
    }
    None
}

/// Byte order of the file.
#[derive(Clone, Copy)]
struct Endian {
    big: bool,
}

impl Endian {
    fn u16(self, b: &[u8]) -> u16 {
        let b = [b[0], b[1]];
        if self.big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }
    fn u32(self, b: &[u8]) -> u32 {
        let b = [b[0], b[1], b[2], b[3]];
        if self.big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }
    fn u64(self, b: &[u8]) -> u64 {
        let b = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
        if self.big {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_id_matches_readelf() {
        // readelf is binutils', which .ci/run installs.
        let out = std::process::Command::new("readelf")
            .arg("-n")
            // Not /proc/self/exe: in readelf's own process that is readelf.
            .arg(std::env::current_exe().expect("the test binary"))
            .output()
            .expect("readelf (binutils) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let want = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Build ID: "))
            .map(str::to_owned);
        assert_eq!(gnu_build_id(), want);
    }

    #[test]
    fn notes_are_walked_past_other_owners() {
        let mut notes = Vec::new();
        // An ABI tag note first (owner "GNU", type 1), then a build-id of 4 bytes.
        for (name, kind, desc) in [
            (&b"GNU\0"[..], 1u32, &[0u8, 0, 0, 0, 3, 0, 0, 0][..]),
            (b"GNU\0", 3, &[0xab, 0xcd, 0x01, 0x02]),
        ] {
            notes.extend_from_slice(&(name.len() as u32).to_le_bytes());
            notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            notes.extend_from_slice(&kind.to_le_bytes());
            notes.extend_from_slice(name);
            notes.extend_from_slice(desc);
        }
        let found = find_build_id(&notes, Endian { big: false });
        assert_eq!(found, Some(&[0xab, 0xcd, 0x01, 0x02][..]));
        assert_eq!(find_build_id(&notes[..30], Endian { big: false }), None);
    }
}
