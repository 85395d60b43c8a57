//! [`CfaRule`]: how to compute the canonical frame address (CFA) at an address, read from the
//! running executable's `.eh_frame` unwind info (read through `DebugIndex::cfa_at`).
//!
//! The CFA is the value the stack pointer had in the caller just before the call: on x86_64 it is
//! `RSP + 8` at a function's first instruction, and after the prologue whatever the unwind rows
//! say (`RSP + frame size`, or `RBP + 16` with a frame pointer). Variables whose frame base is
//! `DW_OP_call_frame_cfa` are located from it.
//!
//! The unwind sections always come from the executable itself (`/proc/self/exe`), never from the
//! file holding the DWARF: in a separate debug file (`objcopy --only-keep-debug`) `.eh_frame` is
//! `NOBITS`, an empty placeholder. The FDE is found through `.eh_frame_hdr`'s binary-search table
//! when the binary has one (it always does when linked with `--eh-frame-hdr`, the default), else
//! by a linear scan of `.eh_frame`.

use std::ops::Range;
use std::path::Path;

use gimli::{
    BaseAddresses, CfaRule as GimliCfaRule, EhFrame, EhFrameHdr, LittleEndian, UnwindContext,
    UnwindSection,
};
use memmap2::Mmap;
use object::{Object, ObjectSection};

/// How to compute the canonical frame address at one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CfaRule {
    /// `CFA = register + offset`: what a trap handler can compute from the saved registers.
    RegisterOffset {
        /// DWARF register number (x86_64: 7 = RSP, 6 = RBP).
        reg: u16,
        /// Byte offset added to the register's value.
        offset: i64,
    },
    /// The CFA is computed by a DWARF expression (`DW_CFA_def_cfa_expression`), as in signal
    /// trampolines and some hand-written assembly; not supported by capture plans.
    Expression,
}

/// The executable's unwind sections, mapped.
#[derive(Debug)]
pub(crate) struct Unwind {
    map: Mmap,
    eh_frame: Range<usize>,
    eh_frame_hdr: Option<Range<usize>>,
    bases: BaseAddresses,
}

impl Unwind {
    /// Maps `binary` and finds its `.eh_frame` (and `.eh_frame_hdr`); `None` if it has no
    /// `.eh_frame` with contents (or cannot be read: the index works without it, and
    /// frame-relative variables then say so).
    pub(crate) fn open(binary: &Path) -> Option<Self> {
        let map = super::load::map_file(binary).ok()?;
        let obj = object::File::parse(&map[..]).ok()?;
        if !obj.is_little_endian() || !obj.is_64() {
            return None;
        }
        // A section with contents: its file range (None for NOBITS) and link-time address.
        let section = |name: &str| {
            let s = obj.section_by_name(name)?;
            let (offset, size) = s.file_range()?;
            let start = usize::try_from(offset).ok()?;
            let end = start.checked_add(usize::try_from(size).ok()?)?;
            (end <= map.len() && end > start).then_some((start..end, s.address()))
        };
        let (eh_frame, eh_frame_addr) = section(".eh_frame")?;
        let hdr = section(".eh_frame_hdr");
        let address = |name: &str| obj.section_by_name(name).map_or(0, |s| s.address());
        let mut bases = BaseAddresses::default()
            .set_eh_frame(eh_frame_addr)
            .set_text(address(".text"))
            .set_got(address(".got"));
        if let Some((_, addr)) = &hdr {
            bases = bases.set_eh_frame_hdr(*addr);
        }
        drop(obj);
        Some(Self {
            map,
            eh_frame,
            eh_frame_hdr: hdr.map(|(range, _)| range),
            bases,
        })
    }

    /// The CFA rule at a link-time (DWARF) address: through the `.eh_frame_hdr` table if there
    /// is one, else by a scan of `.eh_frame`.
    pub(crate) fn rule_at(&self, dpc: u64) -> Option<CfaRule> {
        self.lookup(dpc, true)
    }

    fn lookup(&self, dpc: u64, use_table: bool) -> Option<CfaRule> {
        let mut eh_frame = EhFrame::new(&self.map[self.eh_frame.clone()], LittleEndian);
        eh_frame.set_address_size(8);
        let mut ctx = UnwindContext::new();
        let rule = |row: &gimli::UnwindTableRow<usize>| match row.cfa() {
            GimliCfaRule::RegisterAndOffset { register, offset } => CfaRule::RegisterOffset {
                reg: register.0,
                offset: *offset,
            },
            GimliCfaRule::Expression(_) => CfaRule::Expression,
        };
        match (&self.eh_frame_hdr, use_table) {
            (Some(hdr), true) => {
                let parsed = EhFrameHdr::new(&self.map[hdr.clone()], LittleEndian)
                    .parse(&self.bases, 8)
                    .ok()?;
                parsed
                    .table()?
                    .unwind_info_for_address(
                        &eh_frame,
                        &self.bases,
                        &mut ctx,
                        dpc,
                        EhFrame::cie_from_offset,
                    )
                    .ok()
                    .map(rule)
            }
            _ => eh_frame
                .unwind_info_for_address(&self.bases, &mut ctx, dpc, EhFrame::cie_from_offset)
                .ok()
                .map(rule),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::DebugIndex;

    #[inline(never)]
    fn some_function(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(3)
    }

    #[test]
    fn the_table_and_the_scan_agree_and_entries_are_rsp_plus_8() {
        let index = DebugIndex::for_current_exe().expect("test binaries have debug info");
        let unwind = index
            .unwind
            .as_ref()
            .expect("this executable has .eh_frame");
        assert!(unwind.eh_frame_hdr.is_some(), "linked with --eh-frame-hdr");
        assert_eq!(some_function(2), 6);
        let entries = [
            some_function as fn(u64) -> u64 as usize as u64,
            the_table_and_the_scan_agree_and_entries_are_rsp_plus_8 as fn() as usize as u64,
            DebugIndex::for_current_exe as fn() -> _ as usize as u64,
        ];
        for entry in entries {
            let rsp8 = CfaRule::RegisterOffset { reg: 7, offset: 8 };
            assert_eq!(index.cfa_at(entry), Some(rsp8), "{entry:#x}");
            for pc in entry..entry + 64 {
                let dpc = pc - index.bias();
                assert_eq!(
                    unwind.lookup(dpc, true),
                    unwind.lookup(dpc, false),
                    "{pc:#x}"
                );
            }
        }
        assert_eq!(index.cfa_at(0), None);
    }
}
