//! [`Plan`]: the proof that a 5-byte `jmp rel32` may replace the instructions at an address,
//! or [`Why`] not.
//!
//! The jump covers the *displaced* instructions: those starting at the address, up to the first
//! instruction boundary at least 5 bytes on. Control can reach a byte strictly inside that span
//! (where it would land in the middle of the jump) in five ways, and each is ruled out:
//!
//! 1. **A direct branch** (`jmp`, `jcc`, `call`, `loop`, `xbegin`) of the function targets it:
//!    the whole function is decoded and every target checked ([`Why::BranchInto`]).
//! 2. **An indirect jump** lands inside it: a `match` lowered to a jump table, or a tail call
//!    through a register or memory. Every target of every indirect jump in the function is
//!    proved (see [Jump tables](#jump-tables)) and checked like a direct branch target
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
//!
//! # Jump tables
//!
//! LLVM lowers a dense `match` in position-independent code (what rustc emits) to
//!
//! ```text
//! cmp    ecx, 7                        ; or `sub al, 7`, or `and ecx, 7`, maybe in a block before
//! ja     default                       ; or jae; or jbe/jb to the dispatch
//! lea    rdx, [rip + table]            ; or hoisted out of a loop, in a callee-saved register
//! movsxd rcx, dword ptr [rdx + rcx*4]  ; the entries: 32-bit offsets from the table
//! add    rcx, rdx
//! jmp    rcx
//! ```
//!
//! and, unoptimized, spills the index to the stack between the compare and the dispatch. For
//! each such `jmp reg` the analysis proves that the register holds `base + sext(entry[i])`
//! for some `i <= last`, where `base` and the table's address are constants and `last` a
//! proved bound, by a forward dataflow over the function's control-flow graph. The graph's
//! blocks are entered from the function's start and from every block nothing in the function
//! leads to (landing pads, point 4) with nothing known, and otherwise with what holds on every
//! edge into them: fall-through, direct branches (calls into the function too), returns from
//! calls, and the targets of the indirect jumps. Each general-purpose register and each
//! `[rsp + d]` stack slot (`d >= -128`, the red zone, which no signal handler writes) holds
//! one of:
//!
//! * a constant: `lea r, [rip + d]`, `mov r, imm`;
//! * an unsigned value with an upper bound, with a name that its copies share (`mov`,
//!   `movzx`, 32-bit `mov`, stores to and loads from stack slots), so that a bound proved on
//!   one of them holds for all: the flags of `cmp` or `sub` with an immediate (or a register
//!   holding a constant) read by `ja`, `jae`, `jb`, `jbe`, `je` or `jne` on each of its two
//!   edges, `and` with an immediate, and the width of a zero-extending write (`movzx`, any
//!   32-bit write). A bound on the low bits of a value holds for a copy of fewer bits, or of
//!   more bits when those above are known to be zero;
//! * a table entry (`movsxd r64, dword ptr [constant + bounded*4 + d]`), or a table target
//!   (an entry plus a constant, by `add` or `lea`).
//!
//! Whatever else an instruction writes (the registers and memory iced reports) becomes
//! unknown; a write to memory other than at a known offset from `rsp`, a change of `rsp`, a
//! call or a system call forgets every slot; a call forgets the caller-saved registers (System
//! V: only rbx, rbp, rsp and r12–r15 survive it) and the flags. The dataflow ends where nothing
//! changes (a bounded number of block visits, else the function is refused).
//!
//! The `last + 1` entries are then read through `read` ([`qualifies_code_with`]; [`qualifies`]
//! and [`qualifies_code`] read this process's memory, only in segments an ELF object loaded in
//! it maps read-only or in its `PT_GNU_RELRO` part, so that nothing changes them later), never
//! from the function's own bytes. Every target must be an instruction of the function. The
//! targets become edges of the graph and the dataflow runs again until they stay the same, so
//! that the proof holds with them. A tail call `jmp qword ptr [rip + d]` (through the GOT) is
//! proved the same way: its 8 bytes are read, and a target outside the function leaves it.
//!
//! Refused: a jump whose register holds anything else (a tail call through a register), one
//! through memory that cannot be read or may change, a table whose index has no proved bound
//! (or one of more than 65,536 entries), a table that cannot be read, and a target that is not
//! an instruction of the function. The most common refusal in optimized code is a `match` on
//! an enum's discriminant loaded from memory, which LLVM trusts to be in range and does not
//! check: the bound proved is only the load's width (255 for a byte), and the entries read past
//! the table's end lead elsewhere ([`Why::TableTarget`]). The proof relies
//! on the System V calling convention, on point 4's property of landing pads, and on no other
//! thread writing the function's stack slots (it could only through a pointer to one: a data
//! race on memory the compiler treats as the function's own).

use std::ops::Range;

use iced_x86::{
    Code, CpuidFeature, Decoder, DecoderOptions, EncodingKind, FlowControl, Instruction, OpKind,
};

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

/// Where a direct branch (`jmp`, `jcc`, `call`, `loop`, `xbegin`) goes.
fn near_target(insn: &Instruction) -> Option<u64> {
    matches!(
        insn.op0_kind(),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
    )
    .then(|| insn.near_branch_target())
}

/// Reads `buf.len()` bytes at `addr` of this process if they all lie in one segment that an
/// ELF object loaded in it (the executable or a shared library) maps read-only, or in its
/// `PT_GNU_RELRO` part (read-only once relocated): nothing writes such bytes (a jump table in
/// `.rodata`, a GOT entry) at run time.
fn read_only_loaded(addr: u64, buf: &mut [u8]) -> bool {
    struct Query {
        range: Range<u64>,
        found: bool,
    }
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // Safety: `dl_iterate_phdr` passes a valid `info` for the duration of the call, whose
        // `dlpi_phdr` points to `dlpi_phnum` program headers; `data` is the `&mut Query` handed
        // to it below.
        let (info, query) = unsafe { (&*info, &mut *data.cast::<Query>()) };
        if info.dlpi_phdr.is_null() {
            return 0;
        }
        // Safety: as above.
        let headers =
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        query.found = headers.iter().any(|h| {
            let start = info.dlpi_addr.wrapping_add(h.p_vaddr);
            let read_only = match h.p_type {
                libc::PT_LOAD => h.p_flags & libc::PF_W == 0 && h.p_flags & libc::PF_R != 0,
                // Made read-only by the dynamic linker once it has relocated it, before the
                // program (or a `dlopen`ed library) runs: the GOT, `.data.rel.ro`.
                libc::PT_GNU_RELRO => true,
                _ => false,
            };
            read_only
                && start <= query.range.start
                && query.range.end <= start.saturating_add(h.p_filesz)
        });
        libc::c_int::from(query.found) // stop at the object that has it
    }
    let Some(end) = addr.checked_add(buf.len() as u64) else {
        return false;
    };
    let mut query = Query {
        range: addr..end,
        found: false,
    };
    // Safety: the callback only reads the headers it is given and writes through `data`, which
    // points to `query`, alive for the whole call.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&raw mut query).cast()) };
    // A copy that fails instead of faulting, should the object be unloaded in between.
    query.found && crate::native::guard::guarded_copy(buf, addr)
}

/// Jump tables: every target of every indirect jump of a function, proved by a forward
/// dataflow over its control-flow graph (the module doc, [Jump tables](super#jump-tables)).
mod table {
    use std::collections::{BTreeMap, BTreeSet, VecDeque};
    use std::ops::Range;

    use iced_x86::{
        Code, ConditionCode, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
        OpKind, Register,
    };

    use super::{Why, mnemonic, near_target};

    /// The most entries read from one table.
    pub(super) const MAX_ENTRIES: u64 = 1 << 16;
    /// Rounds of (dataflow, read the tables) before giving up: a round per level of tables
    /// reached only through another table's targets, and one to check the result.
    const ROUNDS: usize = 8;
    /// Block visits per block before the dataflow gives up (it converges in a few).
    const VISITS: usize = 64;
    /// Stack slots tracked at once.
    const MAX_SLOTS: usize = 32;
    /// The lowest `rsp` offset a slot may have: the red zone, which no signal handler writes.
    const RED_ZONE: i64 = -128;
    /// `rsp`, in iced's numbering of the 64-bit registers (rax, rcx, rdx, rbx, rsp, rbp, rsi,
    /// rdi, r8–r15).
    const RSP: usize = 4;
    /// What a call may change (System V): rax, rcx, rdx, rsi, rdi, r8–r11.
    const CALLER_SAVED: [usize; 9] = [0, 1, 2, 6, 7, 8, 9, 10, 11];

    /// What a register or stack slot is known to hold.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Val {
        /// The low `bits` of the value named `id`, zero-extended (`id` `None`: related to no
        /// other location), and at most `hi`.
        Int { id: Option<u32>, bits: u32, hi: u64 },
        /// Exactly this.
        Const(u64),
        /// `sext(mem32[table + 4 * i])` for some `i <= last` (`None`: unbounded).
        Entry { table: u64, last: Option<u64> },
        /// `base +` an [`Val::Entry`]: where a table jump goes.
        Target {
            table: u64,
            last: Option<u64>,
            base: u64,
        },
    }

    const TOP: Val = Val::Int {
        id: None,
        bits: 64,
        hi: u64::MAX,
    };

    fn mask(bits: u32) -> u64 {
        if bits >= 64 {
            u64::MAX
        } else {
            (1 << bits) - 1
        }
    }

    impl Val {
        fn at_most(hi: u64) -> Self {
            Self::Int {
                id: None,
                bits: 64,
                hi,
            }
        }

        fn hi(self) -> u64 {
            match self {
                Self::Int { hi, .. } => hi,
                Self::Const(c) => c,
                Self::Entry { .. } | Self::Target { .. } => u64::MAX,
            }
        }

        /// The low `bits`, zero-extended (what a 32-bit `mov` or a `movzx` copies).
        fn low(self, bits: u32) -> Self {
            if bits >= 64 {
                return self;
            }
            match self {
                Self::Const(c) => Self::Const(c & mask(bits)),
                Self::Int {
                    id: Some(id),
                    bits: k,
                    hi,
                } => Self::Int {
                    id: Some(id),
                    bits: k.min(bits),
                    hi: hi.min(mask(bits)),
                },
                v => Self::at_most(v.hi().min(mask(bits))),
            }
        }

        /// What holds on either path.
        fn join(self, other: Self) -> Self {
            match (self, other) {
                _ if self == other => self,
                (
                    Self::Int {
                        id: Some(a),
                        bits: ka,
                        hi: ha,
                    },
                    Self::Int {
                        id: Some(b),
                        bits: kb,
                        hi: hb,
                    },
                ) if a == b && ka == kb => Self::Int {
                    id: Some(a),
                    bits: ka,
                    hi: ha.max(hb),
                },
                _ => Self::at_most(self.hi().max(other.hi())),
            }
        }
    }

    /// A table entry plus a constant: a table target.
    fn sum(a: Val, b: Val) -> Val {
        match (a, b) {
            (Val::Entry { table, last }, Val::Const(base))
            | (Val::Const(base), Val::Entry { table, last }) => Val::Target { table, last, base },
            _ => TOP,
        }
    }

    /// A value at `[rsp + off]`, `size` bytes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Slot {
        off: i64,
        size: u32,
        val: Val,
    }

    /// The flags hold the unsigned comparison of the low `bits` of the value named `id` with
    /// `imm`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Fact {
        id: u32,
        bits: u32,
        imm: u64,
    }

    #[derive(Debug, Clone, Copy)]
    enum Loc {
        Reg(usize),
        Slot(usize),
    }

    /// A bound a conditional jump proved: the low `bits` of the value named `id` are at most
    /// `bound`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Proved {
        id: u32,
        bits: u32,
        bound: u64,
    }

    /// The most bounds kept at once.
    const MAX_PROVED: usize = 8;

    /// What is known at a point: the 16 general-purpose registers (iced's order), stack slots,
    /// the flags, and the bounds proved on named values (applied to every copy made later too).
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct State {
        regs: [Val; 16],
        slots: Vec<Slot>,
        fact: Option<Fact>,
        proved: Vec<Proved>,
    }

    impl State {
        fn top() -> Self {
            Self {
                regs: [TOP; 16],
                slots: Vec::new(),
                fact: None,
                proved: Vec::new(),
            }
        }

        fn join(&self, other: &Self) -> Self {
            let mut regs = self.regs;
            for (r, o) in regs.iter_mut().zip(other.regs) {
                *r = r.join(o);
            }
            let slots = self
                .slots
                .iter()
                .filter_map(|s| {
                    let o = other
                        .slots
                        .iter()
                        .find(|o| o.off == s.off && o.size == s.size)?;
                    Some(Slot {
                        val: s.val.join(o.val),
                        ..*s
                    })
                })
                .collect();
            let fact = if self.fact == other.fact {
                self.fact
            } else {
                None
            };
            let proved = self
                .proved
                .iter()
                .filter_map(|p| {
                    let o = other
                        .proved
                        .iter()
                        .find(|o| o.id == p.id && o.bits == p.bits)?;
                    Some(Proved {
                        bound: p.bound.max(o.bound),
                        ..*p
                    })
                })
                .collect();
            Self {
                regs,
                slots,
                fact,
                proved,
            }
        }

        /// `v` with the bounds proved on its name applied: a location holding the low `k`
        /// bits of a value whose low `bits` are at most `bound` is at most `bound` too when
        /// `k <= bits`, or when it is already below 2^bits (its bits above are zero).
        fn tighten(&self, mut v: Val) -> Val {
            for _ in 0..2 {
                for p in &self.proved {
                    if let Val::Int {
                        id: Some(id),
                        bits,
                        hi,
                    } = v
                        && id == p.id
                        && (bits <= p.bits || hi <= mask(p.bits))
                    {
                        v = Val::Int {
                            id: Some(id),
                            bits,
                            hi: hi.min(p.bound),
                        };
                    }
                }
            }
            v
        }

        fn get(&self, loc: Loc) -> Val {
            match loc {
                Loc::Reg(r) => self.regs[r],
                Loc::Slot(s) => self.slots[s].val,
            }
        }

        fn vals(&mut self) -> impl Iterator<Item = &mut Val> {
            self.regs
                .iter_mut()
                .chain(self.slots.iter_mut().map(|s| &mut s.val))
        }

        /// Writes a register.
        fn set(&mut self, reg: usize, val: Val) {
            self.regs[reg] = self.tighten(val);
            if reg == RSP {
                self.slots.clear(); // slots are at offsets from it
            }
        }

        /// The value at `loc`, named after instruction `at` if it had no name, so that its
        /// copies share what a compare proves.
        fn name(&mut self, loc: Loc, at: u32) -> Val {
            let Val::Int { id: None, hi, .. } = self.get(loc) else {
                return self.get(loc);
            };
            // Locations still named after an earlier run of `at` hold an older value.
            for v in self.vals() {
                if let Val::Int {
                    id: Some(id), hi, ..
                } = *v
                    && id == at
                {
                    *v = Val::at_most(hi);
                }
            }
            if self.fact.is_some_and(|f| f.id == at) {
                self.fact = None;
            }
            self.proved.retain(|p| p.id != at);
            let named = Val::Int {
                id: Some(at),
                bits: 64,
                hi,
            };
            match loc {
                Loc::Reg(r) => self.regs[r] = named,
                Loc::Slot(s) => self.slots[s].val = named,
            }
            named
        }

        /// The flags after comparing the low `bits` of `loc` with `imm` (`cmp`, `sub`).
        fn compare(&mut self, loc: Loc, bits: u32, imm: u64, at: u32) {
            self.fact = match self.name(loc, at) {
                Val::Int {
                    id: Some(id),
                    bits: k,
                    ..
                } => Some(Fact {
                    id,
                    bits: k.min(bits),
                    imm: imm & mask(bits),
                }),
                _ => None,
            };
        }

        /// What the flags prove on the edge of a conditional jump (`taken` or not).
        fn refine(&mut self, cc: ConditionCode, taken: bool) {
            let Some(f) = self.fact else {
                return;
            };
            let bound = match (cc, taken) {
                (ConditionCode::a | ConditionCode::ne, false)
                | (ConditionCode::be | ConditionCode::e, true) => Some(f.imm),
                (ConditionCode::ae, false) | (ConditionCode::b, true) => f.imm.checked_sub(1),
                _ => None,
            };
            let Some(bound) = bound else {
                return;
            };
            match self
                .proved
                .iter_mut()
                .find(|p| p.id == f.id && p.bits == f.bits)
            {
                Some(p) => p.bound = p.bound.min(bound),
                None => {
                    if self.proved.len() == MAX_PROVED {
                        self.proved.remove(0);
                    }
                    self.proved.push(Proved {
                        id: f.id,
                        bits: f.bits,
                        bound,
                    });
                }
            }
            let mut regs = self.regs;
            for v in &mut regs {
                *v = self.tighten(*v);
            }
            self.regs = regs;
            let mut slots = std::mem::take(&mut self.slots);
            for s in &mut slots {
                s.val = self.tighten(s.val);
            }
            self.slots = slots;
        }

        fn slot(&self, off: i64, size: u32) -> Option<usize> {
            self.slots
                .iter()
                .position(|s| s.off == off && s.size >= size)
        }

        /// A load of `size` bytes at `[rsp + off]`, if the slot is known.
        fn load(&mut self, off: i64, size: u32, at: u32) -> Option<Val> {
            let s = self.slot(off, size)?;
            Some(self.name(Loc::Slot(s), at).low(size * 8))
        }

        /// Forgets the slots that a write of `size` bytes at `[rsp + off]` overlaps.
        fn clobber(&mut self, off: i64, size: u32) {
            self.slots.retain(|s| {
                s.off.saturating_add(i64::from(s.size)) <= off
                    || off.saturating_add(i64::from(size)) <= s.off
            });
        }

        fn store(&mut self, off: i64, size: u32, val: Val) {
            self.clobber(off, size);
            if off >= RED_ZONE {
                if self.slots.len() == MAX_SLOTS {
                    self.slots.remove(0);
                }
                let val = self.tighten(val);
                self.slots.push(Slot { off, size, val });
            }
        }

        /// After a call returns: the callee-saved registers survive.
        fn after_call(&mut self) {
            for r in CALLER_SAVED {
                self.regs[r] = TOP;
            }
            self.slots.clear();
            self.fact = None;
        }
    }

    /// A general-purpose register's number (0 rax … 15 r15) and width in bits; `None` for
    /// ah, bh, ch and dh (not the low bits of theirs) and for any other register.
    fn gpr(reg: Register) -> Option<(usize, u32)> {
        if !reg.is_gpr()
            || matches!(
                reg,
                Register::AH | Register::BH | Register::CH | Register::DH
            )
        {
            return None;
        }
        Some((reg.full_register().number(), reg.size() as u32 * 8))
    }

    /// The offset of `insn`'s memory operand from `rsp`, if it is `[rsp + d]`.
    fn rsp_slot(insn: &Instruction) -> Option<i64> {
        (insn.memory_base() == Register::RSP
            && insn.memory_index() == Register::None
            && !matches!(insn.segment_prefix(), Register::FS | Register::GS))
        .then(|| insn.memory_displacement64() as i64)
    }

    fn is_immediate(kind: OpKind) -> bool {
        matches!(
            kind,
            OpKind::Immediate8
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate64
                | OpKind::Immediate8to16
                | OpKind::Immediate8to32
                | OpKind::Immediate8to64
                | OpKind::Immediate32to64
        )
    }

    /// The register of a `jmp reg`.
    fn jump_register(insn: &Instruction) -> Option<usize> {
        match (insn.op0_kind(), gpr(insn.op0_register())) {
            (OpKind::Register, Some((r, 64))) => Some(r),
            _ => None,
        }
    }

    /// One instruction's effect (not a call's: see [`State::after_call`]).
    fn step(s: &mut State, insn: &Instruction, at: u32, info: &mut InstructionInfoFactory) {
        if matches!(insn.code(), Code::Syscall | Code::Sysenter)
            || insn.flow_control() == FlowControl::Interrupt
        {
            // The kernel (or a handler) may write memory and the caller-saved registers.
            s.after_call();
            return;
        }
        if !modelled(s, insn, at) {
            generic(s, insn, info);
        }
    }

    /// The instructions of a jump-table dispatch, followed exactly; false for any other.
    fn modelled(s: &mut State, insn: &Instruction, at: u32) -> bool {
        let op = |i| insn.op_kind(i);
        let reg = |i| match op(i) {
            OpKind::Register => gpr(insn.op_register(i)),
            _ => None,
        };
        match insn.mnemonic() {
            Mnemonic::Lea => {
                let Some((d, 64)) = reg(0) else {
                    return false;
                };
                let val = if insn.is_ip_rel_memory_operand() {
                    Val::Const(insn.ip_rel_memory_address())
                } else if let (Some((b, 64)), Some((i, 64)), 1, 0) = (
                    gpr(insn.memory_base()),
                    gpr(insn.memory_index()),
                    insn.memory_index_scale(),
                    insn.memory_displacement64(),
                ) {
                    sum(s.regs[b], s.regs[i])
                } else {
                    return false;
                };
                s.set(d, val);
            }
            Mnemonic::Mov => match (op(0), op(1)) {
                (OpKind::Register, OpKind::Register) => {
                    let (Some((d, w)), Some((src, _))) = (reg(0), reg(1)) else {
                        return false;
                    };
                    if w < 32 {
                        return false; // a partial write
                    }
                    let val = s.name(Loc::Reg(src), at).low(w);
                    s.set(d, val);
                }
                (OpKind::Register, k) if is_immediate(k) => {
                    let Some((d, w)) = reg(0).filter(|&(_, w)| w >= 32) else {
                        return false;
                    };
                    s.set(d, Val::Const(insn.immediate(1) & mask(w)));
                }
                (OpKind::Register, OpKind::Memory) => {
                    let Some((d, w)) = reg(0).filter(|&(_, w)| w >= 32) else {
                        return false;
                    };
                    let val = rsp_slot(insn)
                        .and_then(|off| s.load(off, w / 8, at))
                        .unwrap_or(Val::at_most(mask(w)));
                    s.set(d, val);
                }
                (OpKind::Memory, k) => {
                    let Some(off) = rsp_slot(insn) else {
                        return false;
                    };
                    let size = insn.memory_size().size() as u32;
                    if size == 0 || size > 8 {
                        return false;
                    }
                    let val = match (k, reg(1)) {
                        (OpKind::Register, Some((src, _))) => s.name(Loc::Reg(src), at),
                        (k, _) if is_immediate(k) => Val::Const(insn.immediate(1)),
                        _ => TOP,
                    };
                    s.store(off, size, val.low(size * 8));
                }
                _ => return false,
            },
            Mnemonic::Movzx => {
                let Some((d, _)) = reg(0).filter(|&(_, w)| w >= 32) else {
                    return false;
                };
                let val = match op(1) {
                    OpKind::Register => {
                        let bits = insn.op_register(1).size() as u32 * 8;
                        match reg(1) {
                            Some((src, _)) => s.name(Loc::Reg(src), at).low(bits),
                            None => Val::at_most(mask(bits)),
                        }
                    }
                    _ => {
                        let size = insn.memory_size().size() as u32;
                        rsp_slot(insn)
                            .and_then(|off| s.load(off, size, at))
                            .unwrap_or(Val::at_most(mask(size * 8)))
                    }
                };
                s.set(d, val);
            }
            Mnemonic::Movsxd => {
                let Some((d, 64)) = reg(0) else {
                    return false;
                };
                let val = entry(s, insn).unwrap_or(TOP);
                s.set(d, val);
            }
            Mnemonic::Add => {
                let (Some((d, 64)), Some((src, 64))) = (reg(0), reg(1)) else {
                    return false;
                };
                let val = sum(s.regs[d], s.regs[src]);
                s.set(d, val);
                s.fact = None;
            }
            Mnemonic::Cmp => {
                let bits = match op(0) {
                    OpKind::Register => insn.op_register(0).size() as u32 * 8,
                    _ => insn.memory_size().size() as u32 * 8,
                };
                let imm = match (op(1), reg(1)) {
                    (k, _) if is_immediate(k) => Some(insn.immediate(1)),
                    (OpKind::Register, Some((r, _))) => match s.regs[r] {
                        Val::Const(c) => Some(c),
                        _ => None,
                    },
                    _ => None,
                };
                let loc = match op(0) {
                    OpKind::Register => reg(0).map(|(r, _)| Loc::Reg(r)),
                    OpKind::Memory => rsp_slot(insn)
                        .and_then(|off| s.slot(off, bits / 8))
                        .map(Loc::Slot),
                    _ => None,
                };
                match (loc, imm) {
                    (Some(loc), Some(imm)) => s.compare(loc, bits, imm, at),
                    _ => s.fact = None,
                }
            }
            Mnemonic::Sub if is_immediate(op(1)) => {
                let Some((d, w)) = reg(0) else {
                    return false;
                };
                // The flags are those of `cmp` on the old value, which is then replaced.
                s.compare(Loc::Reg(d), w, insn.immediate(1), at);
                s.set(d, if w == 32 { Val::at_most(mask(32)) } else { TOP });
            }
            Mnemonic::And if is_immediate(op(1)) => {
                let Some((d, w)) = reg(0).filter(|&(_, w)| w >= 32) else {
                    return false;
                };
                let hi = s.regs[d].low(w).hi().min(insn.immediate(1) & mask(w));
                s.set(d, Val::at_most(hi));
                s.fact = None;
            }
            _ => return false,
        }
        true
    }

    /// `movsxd r64, dword ptr [base + index*4 + disp]` with a constant base: a table entry,
    /// bounded by what is known of the index.
    fn entry(s: &State, insn: &Instruction) -> Option<Val> {
        if insn.op_kind(1) != OpKind::Memory
            || insn.memory_index_scale() != 4
            || matches!(insn.segment_prefix(), Register::FS | Register::GS)
        {
            return None;
        }
        let (Some((b, 64)), Some((i, 64))) = (gpr(insn.memory_base()), gpr(insn.memory_index()))
        else {
            return None;
        };
        let Val::Const(base) = s.regs[b] else {
            return None;
        };
        let hi = s.regs[i].hi();
        Some(Val::Entry {
            table: base.wrapping_add(insn.memory_displacement64()),
            last: (hi < MAX_ENTRIES).then_some(hi),
        })
    }

    /// Any other instruction: what it writes (as iced reports it) becomes unknown.
    fn generic(s: &mut State, insn: &Instruction, info: &mut InstructionInfoFactory) {
        let writes = |a: OpAccess| {
            matches!(
                a,
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            )
        };
        let info = info.info(insn);
        // iced reports a write of a 32-bit register as one of the 64-bit register, since it
        // zero-extends (a conditional one too, in 64-bit mode): the explicit operand tells.
        let zero_extended = (insn.op_count() > 0
            && insn.op0_kind() == OpKind::Register
            && insn.op0_register().is_gpr32()
            && writes(info.op0_access()))
        .then(|| insn.op0_register().full_register());
        for r in info.used_registers() {
            let reg = r.register();
            if writes(r.access()) && reg.is_gpr() {
                let val = if reg.is_gpr32() || Some(reg) == zero_extended {
                    Val::at_most(mask(32))
                } else {
                    TOP
                };
                s.set(reg.full_register().number(), val);
            }
        }
        for m in info.used_memory() {
            if !writes(m.access()) {
                continue;
            }
            let size = m.memory_size().size() as u32;
            if m.base() == Register::RSP
                && m.index() == Register::None
                && !matches!(m.segment(), Register::FS | Register::GS)
                && size > 0
            {
                s.clobber(m.displacement() as i64, size);
            } else {
                s.slots.clear();
            }
        }
        if insn.rflags_modified() != 0 {
            s.fact = None;
        }
    }

    /// How control leaves a block's last instruction for another block.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Edge {
        /// To the next instruction.
        Fall,
        /// A direct branch.
        Taken,
        /// After a call returns.
        Return,
        /// An `xbegin`'s abort handler.
        Abort,
        /// A jump-table target.
        Table,
    }

    /// The dataflow's worklist: each block's input state (`None`: not reached yet).
    struct Work {
        input: Vec<Option<State>>,
        queued: Vec<bool>,
        queue: VecDeque<usize>,
    }

    impl Work {
        /// Joins `s` into block `b`'s input, and queues `b` if that changed it.
        fn merge(&mut self, b: usize, s: &State) {
            let joined = match &self.input[b] {
                None => s.clone(),
                Some(old) => old.join(s),
            };
            if self.input[b].as_ref() != Some(&joined) {
                self.input[b] = Some(joined);
                if !self.queued[b] {
                    self.queued[b] = true;
                    self.queue.push_back(b);
                }
            }
        }
    }

    /// The function's blocks and the value each indirect jump's register holds there.
    struct Flow<'a> {
        insns: &'a [Instruction],
        function: &'a Range<u64>,
        tables: &'a BTreeMap<usize, BTreeSet<usize>>,
    }

    impl Flow<'_> {
        fn index_of(&self, ip: u64) -> Option<usize> {
            self.insns.binary_search_by_key(&ip, Instruction::ip).ok()
        }

        /// Where control goes from instruction `k` when it ends a block.
        fn successors(&self, k: usize) -> Vec<(usize, Edge)> {
            let insn = &self.insns[k];
            let next = (k + 1 < self.insns.len()).then_some(k + 1);
            let target = near_target(insn)
                .filter(|t| self.function.contains(t))
                .and_then(|t| self.index_of(t));
            let mut out = Vec::new();
            match insn.flow_control() {
                FlowControl::Next | FlowControl::Interrupt => {
                    out.extend(next.map(|n| (n, Edge::Fall)));
                }
                FlowControl::Call | FlowControl::IndirectCall => {
                    // A call into the function itself enters there with what holds after the
                    // call (which forgets more than the call could change).
                    out.extend(target.map(|t| (t, Edge::Taken)));
                    out.extend(next.map(|n| (n, Edge::Return)));
                }
                FlowControl::ConditionalBranch => {
                    out.extend(target.map(|t| (t, Edge::Taken)));
                    out.extend(next.map(|n| (n, Edge::Fall)));
                }
                FlowControl::XbeginXabortXend => {
                    out.extend(target.map(|t| (t, Edge::Abort)));
                    out.extend(next.map(|n| (n, Edge::Fall)));
                }
                FlowControl::UnconditionalBranch => out.extend(target.map(|t| (t, Edge::Taken))),
                FlowControl::IndirectBranch => {
                    if let Some(ts) = self.tables.get(&k) {
                        out.extend(ts.iter().map(|&t| (t, Edge::Table)));
                    }
                }
                FlowControl::Return | FlowControl::Exception => {}
            }
            out
        }

        /// Runs the dataflow to its fixpoint: for each indirect jump, what its register holds
        /// (`None`: never reached; `Some(None)`: not a register). `None` when it gives up.
        /// `orphans`: whether blocks without predecessors are entered too (with nothing known),
        /// as a proof needs; without, the targets of tables not found yet stay unreached
        /// instead of spoiling what flows from them.
        fn run(
            &self,
            info: &mut InstructionInfoFactory,
            orphans: bool,
        ) -> Option<BTreeMap<usize, Option<Option<Val>>>> {
            let insns = self.insns;
            let n = insns.len();
            let mut leader = vec![false; n];
            leader[0] = true;
            for (k, insn) in insns.iter().enumerate() {
                if insn.flow_control() != FlowControl::Next && k + 1 < n {
                    leader[k + 1] = true;
                }
                if let Some(t) = near_target(insn).filter(|t| self.function.contains(t)) {
                    // A branch into the middle of an instruction: not followed.
                    leader[self.index_of(t)?] = true;
                }
            }
            for &t in self.tables.values().flatten() {
                leader[t] = true;
            }
            let starts: Vec<usize> = (0..n).filter(|&k| leader[k]).collect();
            let mut block_of = vec![0usize; n];
            for (b, w) in starts.iter().enumerate() {
                let end = starts.get(b + 1).copied().unwrap_or(n);
                block_of[*w..end].fill(b);
            }
            let blocks = starts.len();
            let last_of = |b: usize| starts.get(b + 1).copied().unwrap_or(n) - 1;
            let successors: Vec<Vec<(usize, Edge)>> = (0..blocks)
                .map(|b| {
                    let mut out = self.successors(last_of(b));
                    for (t, _) in &mut out {
                        *t = block_of[*t];
                    }
                    out
                })
                .collect();
            let mut has_pred = vec![false; blocks];
            for &(t, _) in successors.iter().flatten() {
                has_pred[t] = true;
            }
            let mut work = Work {
                input: vec![None; blocks],
                queued: vec![false; blocks],
                queue: VecDeque::new(),
            };
            // The function's entry, and blocks nothing in it leads to: landing pads (entered by
            // the unwinder, which no branch or fall-through reaches) and anything else entered
            // from outside, with nothing known.
            let top = State::top();
            for (b, has_pred) in has_pred.iter().enumerate() {
                if b == 0 || (orphans && !has_pred) {
                    work.merge(b, &top);
                }
            }
            let mut jumps: BTreeMap<usize, Option<Option<Val>>> = insns
                .iter()
                .enumerate()
                .filter(|(_, i)| i.flow_control() == FlowControl::IndirectBranch)
                .map(|(k, _)| (k, None))
                .collect();
            let mut budget = blocks.saturating_mul(VISITS).saturating_add(1024);
            while let Some(b) = work.queue.pop_front() {
                work.queued[b] = false;
                budget = budget.checked_sub(1)?;
                let mut s = work.input[b].clone()?;
                let last = last_of(b);
                for (k, insn) in insns.iter().enumerate().take(last).skip(starts[b]) {
                    step(&mut s, insn, k as u32, info);
                }
                let insn = &insns[last];
                match insn.flow_control() {
                    FlowControl::Call | FlowControl::IndirectCall => s.after_call(),
                    FlowControl::IndirectBranch => {
                        jumps.insert(last, Some(jump_register(insn).map(|r| s.regs[r])));
                    }
                    _ => step(&mut s, insn, last as u32, info),
                }
                let cc = insn.condition_code();
                for &(t, edge) in &successors[b] {
                    let mut out = s.clone();
                    match edge {
                        Edge::Taken => out.refine(cc, true),
                        Edge::Fall => out.refine(cc, false),
                        Edge::Abort => out.regs[0] = TOP, // registers as at `xbegin`, but eax
                        Edge::Return | Edge::Table => {}
                    }
                    work.merge(t, &out);
                }
            }
            Some(jumps)
        }
    }

    /// The address of the 8 bytes a `jmp qword ptr [rip + d]` (a tail call through the GOT)
    /// reads its target from.
    fn jump_slot(insn: &Instruction) -> Option<u64> {
        (insn.op0_kind() == OpKind::Memory
            && insn.is_ip_rel_memory_operand()
            && insn.memory_size().size() == 8
            && !matches!(insn.segment_prefix(), Register::FS | Register::GS))
        .then(|| insn.ip_rel_memory_address())
    }

    /// Every target inside the function of every indirect jump of the function (`insns`,
    /// decoded over `function`), by the jump's index in `insns`; or why not all are proved.
    pub(super) fn targets(
        insns: &[Instruction],
        function: Range<u64>,
        read: &dyn Fn(u64, &mut [u8]) -> bool,
    ) -> Result<Vec<(usize, Vec<u64>)>, Why> {
        let unproved = |k: usize| Why::IndirectJump {
            at: insns[k].ip(),
            mnemonic: mnemonic(&insns[k]),
        };
        let instruction_at = |t: u64| {
            Some(t)
                .filter(|t| function.contains(t))
                .and_then(|t| insns.binary_search_by_key(&t, Instruction::ip).ok())
        };
        let mut out = Vec::new();
        // Edges of the graph from indirect jumps, by the jump's index.
        let mut edges: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        let mut through_tables = Vec::new();
        for k in
            (0..insns.len()).filter(|&k| insns[k].flow_control() == FlowControl::IndirectBranch)
        {
            let Some(slot) = jump_slot(&insns[k]) else {
                through_tables.push(k);
                continue;
            };
            // Through read-only memory: one target, almost always another function. Never
            // read from the function's own bytes (which a patch may change).
            let mut bytes = [0u8; 8];
            if (slot < function.end && function.start < slot.saturating_add(8))
                || !read(slot, &mut bytes)
            {
                return Err(unproved(k));
            }
            let target = u64::from_le_bytes(bytes);
            if function.contains(&target) {
                let index = instruction_at(target).ok_or(Why::TableTarget {
                    at: insns[k].ip(),
                    table: slot,
                    target,
                })?;
                edges.entry(k).or_default().insert(index);
                out.push((k, vec![target]));
            }
        }
        let Some(&first) = through_tables.first() else {
            return Ok(out);
        };
        let mut info = InstructionInfoFactory::new();
        // Rounds that find tables (from the function's entry, and from the targets of tables
        // found so far), then ones that prove them (every block entered).
        let mut proving = false;
        for _ in 0..ROUNDS {
            let flow = Flow {
                insns,
                function: &function,
                tables: &edges,
            };
            let values = flow
                .run(&mut info, proving)
                .ok_or_else(|| unproved(first))?;
            let mut found_all = Vec::with_capacity(through_tables.len());
            let mut grew = false;
            for &k in &through_tables {
                let at = insns[k].ip();
                let (table, last, base) = match values.get(&k).copied().flatten() {
                    Some(Some(Val::Target {
                        table,
                        last: Some(last),
                        base,
                    })) => (table, last, base),
                    Some(Some(Val::Target {
                        table, last: None, ..
                    })) => {
                        return Err(Why::TableUnbounded { at, table });
                    }
                    // Reached only through a table not found yet.
                    None if !proving => continue,
                    _ => return Err(unproved(k)),
                };
                let entries = last + 1;
                let mut bytes = vec![0u8; entries as usize * 4];
                let end = table.checked_add(entries * 4);
                // Never from the function's own bytes (which a patch may change).
                if end.is_none_or(|end| table < function.end && function.start < end)
                    || !read(table, &mut bytes)
                {
                    return Err(Why::TableUnreadable { at, table, entries });
                }
                let mut found = BTreeSet::new();
                for e in bytes.chunks_exact(4) {
                    let offset = i32::from_le_bytes([e[0], e[1], e[2], e[3]]);
                    let target = base.wrapping_add(i64::from(offset) as u64);
                    let index =
                        instruction_at(target).ok_or(Why::TableTarget { at, table, target })?;
                    found.insert((target, index));
                }
                let known = edges.entry(k).or_default();
                for &(_, index) in &found {
                    grew |= known.insert(index);
                }
                found_all.push((k, found.into_iter().map(|(t, _)| t).collect()));
            }
            if !grew && proving {
                out.extend(found_all);
                return Ok(out);
            }
            proving |= !grew;
        }
        Err(unproved(first))
    }
}

/// Whether `insn` touches x87, MMX, AVX or AVX-512 state.
fn uses_wide_state(insn: &Instruction) -> bool {
    insn.encoding() != EncodingKind::Legacy
        || insn.cpuid_features().iter().any(|f| {
            matches!(
                f,
                CpuidFeature::FPU
                    | CpuidFeature::FPU287
                    | CpuidFeature::FPU287XL_ONLY
                    | CpuidFeature::FPU387
                    | CpuidFeature::FPU387SL_ONLY
                    | CpuidFeature::MMX
                    | CpuidFeature::D3NOW
                    | CpuidFeature::D3NOWEXT
            )
        })
}

/// Why `insn` cannot run from a trampoline, if it cannot.
fn unrelocatable(insn: &Instruction) -> Option<&'static str> {
    if matches!(insn.code(), Code::Syscall | Code::Sysenter) {
        return Some("system call");
    }
    Some(match insn.flow_control() {
        FlowControl::Next if insn.code() == Code::Hlt => "halt",
        FlowControl::Next => return None,
        FlowControl::UnconditionalBranch => "jump",
        FlowControl::ConditionalBranch => "conditional jump",
        FlowControl::IndirectBranch => "indirect jump",
        FlowControl::Call => "call",
        FlowControl::IndirectCall => "indirect call",
        FlowControl::Return => "return",
        FlowControl::Interrupt => "interrupt or system call",
        FlowControl::XbeginXabortXend => "transactional-memory instruction",
        FlowControl::Exception => "trapping instruction (ud2, int3)",
    })
}

fn mnemonic(insn: &Instruction) -> String {
    format!("{:?}", insn.mnemonic()).to_lowercase()
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

    /// Jump tables, on functions assembled with iced: instruction `k` of a listing is the
    /// branch target `at(k)`, and the tables live at `RODATA`.
    mod tables {
        use iced_x86::{
            BlockEncoder, BlockEncoderOptions, Code, InstructionBlock, MemoryOperand, Register,
            Register::*,
        };

        use super::*;

        const RODATA: u64 = START + 0x1_0000;
        const LABELS: u64 = 0x7000_0000;

        fn at(k: usize) -> u64 {
            LABELS + k as u64
        }

        fn i0(code: Code) -> Instruction {
            Instruction::with(code)
        }
        fn i1(code: Code, a: Register) -> Instruction {
            Instruction::with1(code, a).expect("valid")
        }
        fn rr(code: Code, a: Register, b: Register) -> Instruction {
            Instruction::with2(code, a, b).expect("valid")
        }
        fn ri(code: Code, a: Register, imm: i32) -> Instruction {
            Instruction::with2(code, a, imm).expect("valid")
        }
        fn rm(code: Code, a: Register, m: MemoryOperand) -> Instruction {
            Instruction::with2(code, a, m).expect("valid")
        }
        fn mr(code: Code, m: MemoryOperand, a: Register) -> Instruction {
            Instruction::with2(code, m, a).expect("valid")
        }
        fn br(code: Code, k: usize) -> Instruction {
            Instruction::with_branch(code, at(k)).expect("valid")
        }
        /// `lea reg, [rip + RODATA]`
        fn lea_table(reg: Register) -> Instruction {
            rm(
                Code::Lea_r64_m,
                reg,
                MemoryOperand::with_base_displ(RIP, RODATA as i64),
            )
        }
        /// `movsxd dst, dword ptr [base + index*4]`
        fn entry(dst: Register, base: Register, index: Register) -> Instruction {
            rm(
                Code::Movsxd_r64_rm32,
                dst,
                MemoryOperand::with_base_index_scale(base, index, 4),
            )
        }
        fn rsp(off: i64) -> MemoryOperand {
            MemoryOperand::with_base_displ(RSP, off)
        }

        /// An assembled function: its bytes and each listed instruction's address.
        struct Function {
            code: Vec<u8>,
            addrs: Vec<u64>,
        }

        fn assemble(mut listing: Vec<Instruction>) -> Function {
            for (k, insn) in listing.iter_mut().enumerate() {
                insn.set_ip(at(k));
            }
            let block = InstructionBlock::new(&listing, START);
            let done = BlockEncoder::encode(
                64,
                block,
                BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
            )
            .expect("encodes");
            let addrs = done
                .new_instruction_offsets
                .iter()
                .map(|&o| START + u64::from(o))
                .collect();
            Function {
                code: done.code_buffer,
                addrs,
            }
        }

        impl Function {
            /// A table of offsets from `RODATA` to the listing's instructions `targets`.
            fn table(&self, targets: &[usize]) -> Vec<u8> {
                targets
                    .iter()
                    .flat_map(|&k| (self.addrs[k].wrapping_sub(RODATA) as i32).to_le_bytes())
                    .collect()
            }

            /// The analysis at listing instruction `k`, with `rodata` at `RODATA`.
            fn at(&self, k: usize, rodata: &[u8]) -> Result<Plan, Why> {
                let read = |addr: u64, buf: &mut [u8]| {
                    let Some(bytes) = addr
                        .checked_sub(RODATA)
                        .and_then(|o| rodata.get(o as usize..o as usize + buf.len()))
                    else {
                        return false;
                    };
                    buf.copy_from_slice(bytes);
                    true
                };
                qualifies_code_with(&self.code, START, self.addrs[k], &read)
            }
        }

        /// `match op as u32 { .. }` as LLVM lowers it, with a bound check `check` (two
        /// instructions) before `mov ecx, edi`.
        fn dispatch(check: [Instruction; 2]) -> Function {
            let [c0, c1] = check;
            assemble(vec![
                rr(Code::Mov_r64_rm64, RAX, RSI),           // 0
                c0,                                         // 1
                c1,                                         // 2
                rr(Code::Mov_r32_rm32, ECX, EDI),           // 3
                lea_table(RDX),                             // 4
                entry(RCX, RDX, RCX),                       // 5
                rr(Code::Add_r64_rm64, RCX, RDX),           // 6
                i1(Code::Jmp_rm64, RCX),                    // 7
                ri(Code::Add_rm64_imm8, RAX, 1),            // 8: arm A (4 bytes)
                ri(Code::Add_rm64_imm32, RAX, 0x1111_1111), // 9 (7 bytes)
                i0(Code::Retnq),                            // 10
                ri(Code::Xor_rm64_imm32, RAX, 0x3333_3333), // 11: arm B
                i0(Code::Retnq),                            // 12
                i1(Code::Not_rm64, RAX),                    // 13: default (3 bytes)
                i0(Code::Retnq),                            // 14
            ])
        }

        /// `cmp edi, 7` ; `ja default`
        fn above_7() -> [Instruction; 2] {
            [ri(Code::Cmp_rm32_imm8, EDI, 7), br(Code::Ja_rel32_64, 13)]
        }

        const ARMS: [usize; 8] = [8, 11, 8, 11, 8, 11, 13, 13];

        #[test]
        fn a_bounded_table_qualifies_at_every_line() {
            let f = dispatch(above_7());
            let table = f.table(&ARMS);
            for k in [0, 8, 9, 11] {
                let plan = f.at(k, &table).unwrap_or_else(|w| panic!("{k}: {w}"));
                assert_eq!(plan.addr(), f.addrs[k]);
            }
            // Only the 8 entries the bound allows are read: what follows does not matter.
            let mut longer = table.clone();
            longer.extend(0x7FFF_FFFFi32.to_le_bytes());
            assert!(f.at(8, &longer).is_ok());
        }

        #[test]
        fn a_table_entry_into_the_patched_bytes_is_refused_like_a_branch() {
            let f = dispatch(above_7());
            // Patching at 8 (4 bytes) covers 9 too.
            let table = f.table(&[8, 11, 8, 9, 8, 11, 13, 13]);
            assert_eq!(
                f.at(8, &table).unwrap_err(),
                Why::BranchInto {
                    from: f.addrs[7],
                    to: f.addrs[9],
                    mnemonic: "jmp".into()
                }
            );
            // Elsewhere, that entry is harmless (a target at a patch's first byte too).
            assert!(f.at(9, &table).is_ok());
            assert!(f.at(11, &table).is_ok());
        }

        #[test]
        fn tables_that_cannot_be_read_or_lead_elsewhere_are_refused() {
            let f = dispatch(above_7());
            let (jump, rodata) = (f.addrs[7], RODATA);
            assert_eq!(
                f.at(8, &f.table(&ARMS)[..28]).unwrap_err(),
                Why::TableUnreadable {
                    at: jump,
                    table: rodata,
                    entries: 8
                }
            );
            // An entry outside the function, and one inside an instruction.
            let mut outside = f.table(&ARMS);
            outside[12..16].copy_from_slice(&0x100_0000i32.to_le_bytes());
            let mut middle = f.table(&ARMS);
            middle[12..16]
                .copy_from_slice(&((f.addrs[8] + 1).wrapping_sub(RODATA) as i32).to_le_bytes());
            for (table, target) in [(outside, rodata + 0x100_0000), (middle, f.addrs[8] + 1)] {
                assert_eq!(
                    f.at(8, &table).unwrap_err(),
                    Why::TableTarget {
                        at: jump,
                        table: rodata,
                        target
                    }
                );
            }
        }

        #[test]
        fn every_unsigned_bound_check_counts_and_an_unbounded_index_is_refused() {
            let table = |f: &Function| f.table(&ARMS);
            // jae default: index < 8.
            let f = dispatch([ri(Code::Cmp_rm32_imm8, EDI, 8), br(Code::Jae_rel32_64, 13)]);
            assert!(f.at(8, &table(&f)).is_ok());
            // jb / jbe to the dispatch (on the taken edge), default on the fall-through.
            for (jump, bound) in [(Code::Jb_rel32_64, 8), (Code::Jbe_rel32_64, 7)] {
                let f = assemble(vec![
                    ri(Code::Cmp_rm32_imm8, EDI, bound),        // 0
                    br(jump, 4),                                // 1
                    i1(Code::Not_rm64, RAX),                    // 2
                    i0(Code::Retnq),                            // 3
                    rr(Code::Mov_r32_rm32, ECX, EDI),           // 4
                    lea_table(RDX),                             // 5
                    entry(RCX, RDX, RCX),                       // 6
                    rr(Code::Add_r64_rm64, RCX, RDX),           // 7
                    i1(Code::Jmp_rm64, RCX),                    // 8
                    ri(Code::Add_rm64_imm32, RAX, 0x1111_1111), // 9
                    i0(Code::Retnq),                            // 10
                ]);
                assert!(f.at(9, &f.table(&[9, 10, 9, 10, 9, 10, 9, 10])).is_ok());
            }
            // `and edi, 7`: a mask (and a nop for the second instruction).
            let f = dispatch([ri(Code::And_rm32_imm8, EDI, 7), i0(Code::Nopd)]);
            assert!(f.at(8, &table(&f)).is_ok());
            // A bound of 8 allows 9 entries: the ninth is read too.
            let f = dispatch([ri(Code::Cmp_rm32_imm8, EDI, 8), br(Code::Ja_rel32_64, 13)]);
            assert!(matches!(
                f.at(8, &table(&f)),
                Err(Why::TableUnreadable { entries: 9, .. })
            ));
            // Signed, or no check at all: `mov ecx, edi` leaves any u32.
            for check in [
                [ri(Code::Cmp_rm32_imm8, EDI, 7), br(Code::Jg_rel32_64, 13)],
                [i0(Code::Nopd), i0(Code::Nopd)],
            ] {
                let f = dispatch(check);
                assert_eq!(
                    f.at(8, &table(&f)).unwrap_err(),
                    Why::TableUnbounded {
                        at: f.addrs[7],
                        table: RODATA
                    }
                );
            }
        }

        #[test]
        fn a_compare_of_the_low_half_bounds_a_copy_not_the_whole_register() {
            // cmp edi, 7 ; ja ; then rdi itself as the index: its upper half is unknown.
            let listing = |index_copy: Instruction| {
                vec![
                    ri(Code::Cmp_rm32_imm8, EDI, 7),            // 0
                    br(Code::Ja_rel32_64, 8),                   // 1
                    index_copy,                                 // 2
                    lea_table(RDX),                             // 3
                    entry(RCX, RDX, RDI),                       // 4
                    rr(Code::Add_r64_rm64, RCX, RDX),           // 5
                    i1(Code::Jmp_rm64, RCX),                    // 6
                    i0(Code::Retnq),                            // 7
                    ri(Code::Add_rm64_imm32, RAX, 0x1111_1111), // 8
                    i0(Code::Retnq),                            // 9
                ]
            };
            let f = assemble(listing(i0(Code::Nopd)));
            let table = f.table(&[7; 8]);
            assert!(
                matches!(f.at(8, &table), Err(Why::TableUnbounded { .. })),
                "{:?}",
                f.at(8, &table)
            );
            // `mov edi, edi` after the check zero-extends it: the bound holds for all of rdi.
            let f = assemble(listing(rr(Code::Mov_r32_rm32, EDI, EDI)));
            let table = f.table(&[7; 8]);
            assert!(f.at(8, &table).is_ok());
        }

        /// Unoptimized code: the index spilled, the flags of `sub al, 7` checked, the index
        /// reloaded; `between` runs after the check.
        fn spilled(between: Instruction) -> Function {
            assemble(vec![
                rr(Code::Movzx_r32_rm8, ECX, AL),           // 0
                mr(Code::Mov_rm64_r64, rsp(0x20), RCX),     // 1
                ri(Code::Sub_rm8_imm8, AL, 7),              // 2
                br(Code::Ja_rel32_64, 11),                  // 3
                between,                                    // 4
                rm(Code::Mov_r64_rm64, RCX, rsp(0x20)),     // 5
                lea_table(RAX),                             // 6
                entry(RCX, RAX, RCX),                       // 7
                rr(Code::Add_r64_rm64, RAX, RCX),           // 8
                i1(Code::Jmp_rm64, RAX),                    // 9
                i0(Code::Retnq),                            // 10
                ri(Code::Add_rm64_imm32, RAX, 0x1111_1111), // 11
                i0(Code::Retnq),                            // 12
            ])
        }

        #[test]
        fn a_bound_survives_a_spill_to_the_stack_but_not_a_write_that_may_alias_it() {
            let f = spilled(i0(Code::Nopd));
            assert!(
                f.at(11, &f.table(&[10, 11, 10, 11, 10, 11, 10, 11]))
                    .is_ok()
            );
            // A store elsewhere on the stack leaves the slot alone.
            let f = spilled(mr(Code::Mov_rm64_r64, rsp(0x28), RDX));
            assert!(
                f.at(11, &f.table(&[10, 11, 10, 11, 10, 11, 10, 11]))
                    .is_ok()
            );
            // A store through another register, over the slot, or a call: forgotten.
            for between in [
                mr(Code::Mov_rm64_r64, MemoryOperand::with_base(RDI), RDX),
                mr(Code::Mov_rm32_r32, rsp(0x24), EDX),
                br(Code::Call_rel32_64, 11),
            ] {
                let f = spilled(between);
                let table = f.table(&[10, 11, 10, 11, 10, 11, 10, 11]);
                assert!(
                    matches!(f.at(11, &table), Err(Why::TableUnbounded { .. })),
                    "{between:?}: {:?}",
                    f.at(11, &table)
                );
            }
        }

        /// A loop calling a function and dispatching through a table whose base `base` was
        /// loaded once before it.
        fn looping(base: Register) -> Function {
            assemble(vec![
                lea_table(base),                                                               // 0
                Instruction::with_branch(Code::Call_rel32_64, START - 0x1000).expect("valid"), // 1
                ri(Code::And_rm32_imm8, EAX, 3),                                               // 2
                entry(RAX, base, RAX),                                                         // 3
                rr(Code::Add_r64_rm64, RAX, base),                                             // 4
                i1(Code::Jmp_rm64, RAX),                                                       // 5
                ri(Code::Add_rm64_imm32, RDI, 0x1111_1111),                                    // 6
                br(Code::Jmp_rel32_64, 1),                                                     // 7
                i0(Code::Retnq),                                                               // 8
            ])
        }

        #[test]
        fn a_table_base_in_a_callee_saved_register_survives_calls_in_a_loop() {
            let f = looping(RBX);
            assert!(f.at(6, &f.table(&[6, 8, 6, 8])).is_ok());
            // In a caller-saved register, the call may have changed it.
            let f = looping(RCX);
            assert!(matches!(
                f.at(6, &f.table(&[6, 8, 6, 8])),
                Err(Why::IndirectJump { .. })
            ));
        }

        #[test]
        fn a_tail_call_through_read_only_memory_is_followed() {
            let f = assemble(vec![
                ri(Code::Xor_rm64_imm8, RDX, 0x55), // 0 (4 bytes)
                ri(Code::Add_rm64_imm32, RDX, 1),   // 1 (7 bytes)
                Instruction::with1(
                    Code::Jmp_rm64,
                    MemoryOperand::with_base_displ(RIP, RODATA as i64),
                )
                .expect("valid"), // 2
            ]);
            // Another function: it leaves.
            assert!(f.at(0, &0x1234_5678u64.to_le_bytes()).is_ok());
            // Into the bytes a patch at 0 would cover: like a branch there.
            let inside = f.addrs[1].to_le_bytes();
            assert!(
                matches!(f.at(0, &inside), Err(Why::BranchInto { to, .. }) if to == f.addrs[1])
            );
            assert!(f.at(1, &inside).is_ok());
            // Memory that may change (or is not there): refused.
            assert!(matches!(f.at(0, &[]), Err(Why::IndirectJump { .. })));
        }

        #[test]
        fn read_only_memory_of_this_process_reads_and_writable_memory_does_not() {
            static CONSTANT: [u8; 4] = [1, 2, 3, 4];
            static WRITABLE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(5);
            let mut buf = [0u8; 4];
            assert!(read_only_loaded(CONSTANT.as_ptr() as u64, &mut buf));
            assert_eq!(buf, CONSTANT);
            assert!(!read_only_loaded(WRITABLE.as_ptr() as u64, &mut buf));
            assert!(!read_only_loaded(16, &mut buf));
            let on_stack = [0u8; 4];
            assert!(!read_only_loaded(on_stack.as_ptr() as u64, &mut buf));
        }
    }
}
