//! [`Plan`]: the proof that a 5-byte `jmp rel32` may replace the instructions at an address,
//! or [`Why`] not.
//!
//! The files: this one holds the verdicts ([`Plan`], [`Why`]) and the entry points
//! ([`qualifies`], [`qualifies_code`], [`qualifies_code_with`]), which decode the function and
//! check the displaced instructions and every direct branch; `insn` classifies instructions
//! (branch targets, what cannot run from a trampoline, wide vector state); `table` proves the
//! targets of the indirect jumps (its header holds the design), by a dataflow (`dataflow`: what
//! each register and stack slot holds) over the function's control-flow graph (`cfg`). May use:
//! `index` (the function around an address), `patch` (`INT3`) and `guard` (fault-free reads).
//!
//! The jump covers the *displaced* instructions: those starting at the address, up to the first
//! instruction boundary at least 5 bytes on. Control can reach a byte strictly inside that span
//! (where it would land in the middle of the jump) in five ways, and each is ruled out:
//!
//! 1. **A direct branch** (`jmp`, `jcc`, `call`, `loop`, `xbegin`) of the function targets it:
//!    the whole function is decoded and every target checked ([`Why::BranchInto`]).
//! 2. **An indirect jump** lands inside it: a `match` lowered to a jump table, or a tail call
//!    through a register or memory. Every target of every indirect jump in the function is
//!    proved (see `table`) and checked like a direct branch target
//!    ([`Why::BranchInto`]); a function with an indirect jump whose targets are not all proved
//!    is refused: [`Why::IndirectJump`] when the jump is not traced to a table or to read-only
//!    memory (a tail call through a register: its target could be anywhere), else
//!    [`Why::TableUnbounded`], [`Why::TableUnreadable`] or [`Why::TableTarget`]. Indirect
//!    *calls* return after themselves (point 3).
//! 3. **A return address**: a call's return address is the byte after the call. No displaced
//!    instruction may be a call ([`Why::Displaced`]), so no return address lies strictly inside
//!    the span (one equal to the address itself, after a call just before it, is fine: it runs
//!    the jump).
//! 4. **A landing pad** (entered by the unwinder, not by a branch): LLVM keeps a landing pad
//!    the destination of unwinding only, with no branch to it and no fall-through into it, so
//!    the instruction laid out before it ends its block with a `jmp`, `ret`, `ud2` (rustc's
//!    `unreachable`) or a call that does not return, all of which are refused as displaced
//!    instructions. A landing pad can therefore only be the first displaced instruction, which
//!    is the jump's own start.
//! 5. **A thread already there** (preempted, or interrupted by a signal whose handler will
//!    return there): not a property of the code; checked at installation with every other
//!    thread stopped (see `stop`).
//!
//! The displaced instructions then run from the trampoline, so each must be relocatable: no
//! branch, call or return, no interrupt, system call, `ud2`, `hlt` or transactional-memory
//! instruction. RIP-relative memory operands are fine (iced's block encoder re-encodes them
//! for the trampoline's address, which is within ±2 GiB). What this cannot see: branches into
//! the function from *another* of its address ranges (a hot/cold split, which rustc does not do
//! by default; the jump-table proof below also assumes no such entry), and code that computes
//! jump targets without an indirect `jmp` in the function.

mod cfg;
mod dataflow;
mod insn;
mod table;

use std::ops::Range;

use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction};

use self::insn::{mnemonic, near_target, unrelocatable, uses_wide_state};
use self::table::read_only_loaded;
use crate::native::DebugIndex;
use crate::native::patch::INT3;

/// Bytes of a `jmp rel32`.
pub(crate) const JMP_LEN: usize = 5;

/// The largest function [`qualifies`] decodes (larger ones are refused as [`Why::TooLarge`]).
const MAX_FUNCTION: u64 = 1 << 20;

/// The instructions at an address that a `jmp rel32` into a trampoline may replace, as
/// [`qualifies`] proved.
#[derive(Debug, Clone)]
pub struct Plan {
    pub(super) addr: u64,
    /// The displaced bytes, as they were analysed.
    pub(super) original: Vec<u8>,
    /// The displaced instructions (decoded at their own addresses).
    pub(super) displaced: Vec<Instruction>,
    pub(super) function: Range<u64>,
    /// Whether the function has x87, MMX or VEX/EVEX (AVX, AVX-512) instructions. Without
    /// any, only xmm0–15 and MXCSR of the vector state can be live in it (the upper halves
    /// and the mask registers are caller-saved, so nothing of a caller's lives across a call
    /// into it), and the trampoline saves just those.
    pub(super) wide: bool,
}

impl Plan {
    /// Where the jump goes.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Bytes of the displaced instructions (at least 5).
    pub fn len(&self) -> usize {
        self.original.len()
    }

    /// Never true (a plan displaces at least one instruction); for clippy's `len` rule.
    pub fn is_empty(&self) -> bool {
        self.original.is_empty()
    }

    /// The displaced bytes.
    pub fn original(&self) -> &[u8] {
        &self.original
    }

    /// The displaced instructions' mnemonics (`mov`, `lea`, …), in order.
    pub fn mnemonics(&self) -> Vec<String> {
        self.displaced.iter().map(mnemonic).collect()
    }

    /// The analysed function's code range.
    pub fn function(&self) -> Range<u64> {
        self.function.clone()
    }

    /// Whether the function uses vector or x87 state beyond xmm0–15 (so the trampoline saves
    /// the whole extended state with `xsave`, which costs more).
    pub fn uses_wide_vector_state(&self) -> bool {
        self.wide
    }
}

/// Why a `jmp rel32` may not replace the code at an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Why {
    /// The debug info knows no function containing the address.
    #[error("{0:#x} is in no function the debug info describes")]
    NoFunction(u64),
    /// Reading the debug info failed.
    #[error("{0}")]
    Dwarf(String),
    /// The function is larger than the analysis decodes.
    #[error("the function at {start:#x} is {len} bytes long, more than the analysis decodes")]
    TooLarge {
        /// Its start.
        start: u64,
        /// Its length.
        len: u64,
    },
    /// An `int3` is already at the address (a breakpoint is armed there).
    #[error("an int3 is already at {0:#x} (a breakpoint is armed there)")]
    AlreadyTrapped(u64),
    /// An `int3` elsewhere in the function: its bytes are not the original code, so the
    /// analysis cannot trust them.
    #[error(
        "the function has an int3 at {0:#x} (a breakpoint is armed there); analyse before arming"
    )]
    TrappedFunction(u64),
    /// Decoding the function from its start does not reach the address on an instruction
    /// boundary.
    #[error("{0:#x} is not an instruction boundary of its function")]
    NotABoundary(u64),
    /// Some bytes of the function do not decode.
    #[error("the code at {0:#x} does not decode")]
    Undecodable(u64),
    /// The displaced bytes would run past the function's end.
    #[error(
        "the instructions from {addr:#x} reach the function's end at {end:#x} before the 5 bytes a jump needs"
    )]
    PastEnd {
        /// The address.
        addr: u64,
        /// The function's end.
        end: u64,
    },
    /// A displaced instruction cannot run from a trampoline.
    #[error(
        "displaced instruction `{mnemonic}` at {at:#x} is a {shape}, which cannot run from a trampoline"
    )]
    Displaced {
        /// Where it is.
        at: u64,
        /// Its mnemonic.
        mnemonic: String,
        /// What kind of instruction it is (`call`, `conditional jump`, …).
        shape: &'static str,
    },
    /// A direct branch of the function lands strictly inside the displaced bytes.
    #[error("`{mnemonic}` at {from:#x} branches to {to:#x}, inside the bytes the jump would cover")]
    BranchInto {
        /// The branch.
        from: u64,
        /// Its target.
        to: u64,
        /// Its mnemonic.
        mnemonic: String,
    },
    /// The function has an indirect jump the analysis does not trace to a jump table or to
    /// read-only memory (a tail call through a register, or code it does not follow), which
    /// could land anywhere, inside the displaced bytes too.
    #[error(
        "the function has an indirect jump (`{mnemonic}` at {at:#x}) not traced to a jump table: it could land inside the patch"
    )]
    IndirectJump {
        /// Where it is.
        at: u64,
        /// Its mnemonic.
        mnemonic: String,
    },
    /// An indirect jump goes through a jump table whose index no compare or mask bounds (to at
    /// most 65,536 entries), so it could read past the table.
    #[error(
        "the jump at {at:#x} goes through a jump table at {table:#x} whose index nothing bounds"
    )]
    TableUnbounded {
        /// The jump.
        at: u64,
        /// The table (its entry 0).
        table: u64,
    },
    /// A jump table cannot be read, or lies in memory that may change (not in a read-only
    /// segment).
    #[error(
        "the jump table at {table:#x} ({entries} entries, for the jump at {at:#x}) is not in read-only memory the analysis can read"
    )]
    TableUnreadable {
        /// The jump.
        at: u64,
        /// The table.
        table: u64,
        /// How many entries the bound allows.
        entries: u64,
    },
    /// An entry of a jump table leads outside the function, or not to one of its instructions
    /// (or the 8 bytes a `jmp qword ptr [rip + d]` reads lead into the function, but not to
    /// one of its instructions: then `table` is their address).
    #[error(
        "the jump table at {table:#x} (for the jump at {at:#x}) leads to {target:#x}, which is no instruction of the function"
    )]
    TableTarget {
        /// The jump.
        at: u64,
        /// The table.
        table: u64,
        /// Where the entry leads.
        target: u64,
    },
}

impl Why {
    /// A short name of the reason, for tallies (`"displaced call"`, `"indirect jump"`, …).
    pub fn kind(&self) -> String {
        match self {
            Self::NoFunction(_) => "no function".into(),
            Self::Dwarf(_) => "debug info error".into(),
            Self::TooLarge { .. } => "function too large".into(),
            Self::AlreadyTrapped(_) => "int3 already there".into(),
            Self::TrappedFunction(_) => "int3 in the function".into(),
            Self::NotABoundary(_) => "not an instruction boundary".into(),
            Self::Undecodable(_) => "undecodable".into(),
            Self::PastEnd { .. } => "runs past the function's end".into(),
            Self::Displaced { shape, .. } => format!("displaced {shape}"),
            Self::BranchInto { .. } => "branch target inside".into(),
            Self::IndirectJump { .. } => "indirect jump in the function".into(),
            Self::TableUnbounded { .. } => "jump table with an unbounded index".into(),
            Self::TableUnreadable { .. } => "jump table not readable".into(),
            Self::TableTarget { .. } => "jump table leading elsewhere".into(),
        }
    }
}

/// Whether a `jmp rel32` into a trampoline may replace the code at `addr` (a runtime address
/// in this process's executable), decoding the whole function the debug info says contains it.
pub fn qualifies(index: &DebugIndex, addr: u64) -> Result<Plan, Why> {
    let function = index
        .function_at(addr)
        .map_err(|e| Why::Dwarf(e.to_string()))?
        .ok_or(Why::NoFunction(addr))?;
    let range = function.range;
    if !range.contains(&addr) {
        return Err(Why::NoFunction(addr));
    }
    let len = range.end - range.start;
    if len > MAX_FUNCTION {
        return Err(Why::TooLarge {
            start: range.start,
            len,
        });
    }
    let mut code = vec![0u8; len as usize];
    // Safety: the range is a function of the running executable (from its debug info and load
    // bias), mapped readable for the life of the process; it is copied byte by byte into a
    // buffer of the same length.
    unsafe {
        std::ptr::copy_nonoverlapping(range.start as *const u8, code.as_mut_ptr(), code.len())
    };
    qualifies_code(&code, range.start, addr)
}

/// [`qualifies`] on given bytes: `code` is the whole function, which runs at `start` in this
/// process. For code the debug info does not describe, or whose original bytes the caller has
/// (an address where a breakpoint is armed). Jump tables are read from this process's memory,
/// and only from a segment that an ELF object loaded in it maps read-only.
pub fn qualifies_code(code: &[u8], start: u64, addr: u64) -> Result<Plan, Why> {
    qualifies_code_with(code, start, addr, &read_only_loaded)
}

/// [`qualifies_code`] for code in any address space (a binary on disk, bytes in a test):
/// `read(at, buf)` fills `buf` with the bytes at `at` and returns true, or returns false when
/// they are not all there or may change while the code runs (a jump table read from writable
/// memory proves nothing). The function's jump tables are read through it.
pub fn qualifies_code_with(
    code: &[u8],
    start: u64,
    addr: u64,
    read: &dyn Fn(u64, &mut [u8]) -> bool,
) -> Result<Plan, Why> {
    let end = start + code.len() as u64;
    if !(start..end).contains(&addr) {
        return Err(Why::NoFunction(addr));
    }
    if code[(addr - start) as usize] == INT3 {
        return Err(Why::AlreadyTrapped(addr));
    }
    let mut insns = Vec::with_capacity(code.len() / 4);
    for insn in Decoder::with_ip(64, code, start, DecoderOptions::NONE).iter() {
        if insn.is_invalid() {
            return Err(Why::Undecodable(insn.ip()));
        }
        insns.push(insn);
    }
    let first = insns
        .binary_search_by_key(&addr, Instruction::ip)
        .map_err(|_| Why::NotABoundary(addr))?;

    let mut displaced = Vec::new();
    let mut len = 0usize;
    for insn in &insns[first..] {
        if len >= JMP_LEN {
            break;
        }
        if let Some(shape) = unrelocatable(insn) {
            return Err(Why::Displaced {
                at: insn.ip(),
                mnemonic: mnemonic(insn),
                shape,
            });
        }
        len += insn.len();
        displaced.push(*insn);
    }
    if len < JMP_LEN {
        return Err(Why::PastEnd { addr, end });
    }
    let inside = addr + 1..addr + len as u64;
    let mut wide = false;
    let mut indirect = false;
    for insn in &insns {
        wide |= uses_wide_state(insn);
        indirect |= insn.flow_control() == FlowControl::IndirectBranch;
        if insn.code() == Code::Int3 {
            return Err(Why::TrappedFunction(insn.ip()));
        }
        if let Some(to) = near_target(insn).filter(|t| inside.contains(t)) {
            return Err(Why::BranchInto {
                from: insn.ip(),
                to,
                mnemonic: mnemonic(insn),
            });
        }
    }
    if indirect {
        for (jump, targets) in table::targets(&insns, start..end, read)? {
            if let Some(&to) = targets.iter().find(|t| inside.contains(t)) {
                return Err(Why::BranchInto {
                    from: insns[jump].ip(),
                    to,
                    mnemonic: mnemonic(&insns[jump]),
                });
            }
        }
    }
    let at = (addr - start) as usize;
    Ok(Plan {
        addr,
        original: code[at..at + len].to_vec(),
        displaced,
        function: start..end,
        wide,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: u64 = 0x40_0000;

    /// The analysis of the function `code` (at `START`) at offset `at`, with nothing readable
    /// outside the code.
    fn check(code: &[u8], at: usize) -> Result<Plan, Why> {
        qualifies_code_with(code, START, START + at as u64, &|_, _| false)
    }

    // mov rax, [rsp+8] (5 bytes) ; add rax, 1 (4) ; ret
    const MOV5: &[u8] = &[0x48, 0x8B, 0x44, 0x24, 0x08];
    const ADD4: &[u8] = &[0x48, 0x83, 0xC0, 0x01];
    const RET: &[u8] = &[0xC3];

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn plain_instructions_qualify_and_cover_whole_instructions() {
        let code = cat(&[ADD4, ADD4, MOV5, RET]);
        let plan = check(&code, 0).expect("qualifies");
        assert_eq!(
            plan.len(),
            8,
            "two 4-byte adds: the first boundary at or past 5"
        );
        assert_eq!(plan.mnemonics(), ["add", "add"]);
        assert_eq!(plan.original(), &code[..8]);
        let plan = check(&code, 8).expect("one 5-byte mov is enough");
        assert_eq!(plan.len(), 5);
    }

    #[test]
    fn functions_with_avx_or_x87_need_the_whole_vector_state() {
        let code = cat(&[MOV5, RET]);
        assert!(!check(&code, 0).expect("qualifies").uses_wide_vector_state());
        // vzeroupper ; fld st(0)
        for wide in [&[0xC5, 0xF8, 0x77][..], &[0xD9, 0xC0]] {
            let code = cat(&[MOV5, wide, RET]);
            assert!(check(&code, 0).expect("qualifies").uses_wide_vector_state());
        }
        // movaps xmm0, xmm1 (SSE only)
        let code = cat(&[MOV5, &[0x0F, 0x28, 0xC1], RET]);
        assert!(!check(&code, 0).expect("qualifies").uses_wide_vector_state());
    }

    #[test]
    fn rip_relative_operands_qualify() {
        // lea rax, [rip+0x100] (7 bytes) ; ret
        let code = cat(&[&[0x48, 0x8D, 0x05, 0x00, 0x01, 0x00, 0x00], RET]);
        assert_eq!(check(&code, 0).expect("qualifies").mnemonics(), ["lea"]);
    }

    #[test]
    fn control_flow_in_the_displaced_bytes_is_refused_by_shape() {
        let call: &[u8] = &[0xE8, 0, 0, 0, 0];
        let jcc: &[u8] = &[0x74, 0x00];
        let call_reg: &[u8] = &[0xFF, 0xD0];
        let syscall: &[u8] = &[0x0F, 0x05];
        let ud2: &[u8] = &[0x0F, 0x0B];
        for (insn, shape) in [
            (call, "call"),
            (jcc, "conditional jump"),
            (call_reg, "indirect call"),
            (RET, "return"),
            (syscall, "system call"),
            (ud2, "trapping instruction (ud2, int3)"),
        ] {
            let code = cat(&[ADD4, insn, MOV5, RET]);
            match check(&code, 0) {
                Err(Why::Displaced { at, shape: s, .. }) => {
                    assert_eq!((at, s), (START + 4, shape));
                }
                other => panic!("{shape}: {other:?}"),
            }
        }
        // The same instruction just past the displaced bytes is fine.
        let code = cat(&[MOV5, &[0xE8, 0, 0, 0, 0], RET]);
        assert!(check(&code, 0).is_ok());
    }

    #[test]
    fn a_branch_into_the_span_is_refused_but_to_its_start_is_fine() {
        // 0: add ; 4: add ; 8: mov ; 13: jne -> 4 (rel8 = 4 - 15 = -11) ; 15: ret
        let code = cat(&[ADD4, ADD4, MOV5, &[0x75, 0xF5], RET]);
        match check(&code, 0) {
            Err(Why::BranchInto { from, to, .. }) => {
                assert_eq!((from, to), (START + 13, START + 4))
            }
            other => panic!("{other:?}"),
        }
        // Patching at 4 instead: the branch lands on the jump's first byte.
        assert!(check(&code, 4).is_ok());
    }

    #[test]
    fn a_jump_through_a_register_not_traced_to_a_table_is_refused() {
        // ... ; jmp rax (a tail call through a register: it could go anywhere)
        let code = cat(&[MOV5, ADD4, &[0xFF, 0xE0], RET]);
        assert!(matches!(check(&code, 0), Err(Why::IndirectJump { at, .. }) if at == START + 9));
    }

    #[test]
    fn boundaries_ends_and_existing_breakpoints() {
        let code = cat(&[MOV5, ADD4, RET]);
        assert_eq!(check(&code, 1).unwrap_err(), Why::NotABoundary(START + 1));
        // A function that ends (a tail jump elsewhere would be refused as a jump anyway).
        let short = cat(&[MOV5, ADD4]);
        assert_eq!(
            check(&short, 5).unwrap_err(),
            Why::PastEnd {
                addr: START + 5,
                end: START + 9
            }
        );
        let mut trapped = code.clone();
        trapped[0] = INT3;
        assert_eq!(check(&trapped, 0).unwrap_err(), Why::AlreadyTrapped(START));
        let elsewhere = cat(&[MOV5, ADD4, &[INT3], RET]);
        assert_eq!(
            check(&elsewhere, 0).unwrap_err(),
            Why::TrappedFunction(START + 9)
        );
        assert_eq!(
            qualifies_code(&code, START, START + 100).unwrap_err(),
            Why::NoFunction(START + 100)
        );
    }
}
