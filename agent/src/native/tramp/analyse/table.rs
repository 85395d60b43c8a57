//! [`targets`]: every target of every indirect jump of a function (jump tables, tail calls
//! through read-only memory), proved by a forward dataflow over its control-flow graph, and
//! [`read_only_loaded`], the memory they may be read from.
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
//!
//! [`qualifies`]: super::qualifies
//! [`qualifies_code`]: super::qualifies_code
//! [`qualifies_code_with`]: super::qualifies_code_with

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use iced_x86::{FlowControl, Instruction, InstructionInfoFactory, OpKind, Register};

use super::Why;
use super::cfg::Flow;
use super::dataflow::Val;
use super::insn::mnemonic;

/// Rounds of (dataflow, read the tables) before giving up: a round per level of tables
/// reached only through another table's targets, and one to check the result.
const ROUNDS: usize = 8;

/// Reads `buf.len()` bytes at `addr` of this process if they all lie in one segment that an
/// ELF object loaded in it (the executable or a shared library) maps read-only, or in its
/// `PT_GNU_RELRO` part (read-only once relocated): nothing writes such bytes (a jump table in
/// `.rodata`, a GOT entry) at run time.
pub(super) fn read_only_loaded(addr: u64, buf: &mut [u8]) -> bool {
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
    for k in (0..insns.len()).filter(|&k| insns[k].flow_control() == FlowControl::IndirectBranch) {
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
                let index = instruction_at(target).ok_or(Why::TableTarget { at, table, target })?;
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

#[cfg(test)]
mod tests {
    use iced_x86::{
        BlockEncoder, BlockEncoderOptions, Code, InstructionBlock, MemoryOperand, Register,
        Register::*,
    };

    use super::super::{Plan, Why, qualifies_code_with};
    use super::*;

    const START: u64 = 0x40_0000;

    // Jump tables, on functions assembled with iced: instruction `k` of a listing is the
    // branch target `at(k)`, and the tables live at `RODATA`.

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
        assert!(matches!(f.at(0, &inside), Err(Why::BranchInto { to, .. }) if to == f.addrs[1]));
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
