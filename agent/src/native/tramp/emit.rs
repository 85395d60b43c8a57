//! The trampoline's machine code ([`emit`]): save everything, call the callback, restore
//! everything, run the displaced instructions, jump back.
//!
//! ```text
//! lea  rsp, [rsp-128]            ; step over the red zone the patched function may use
//! pushfq                         ; TrampolineRegs, from the top: rflags, rip, r15..r8, rsp,
//! lea  rsp, [rsp-8]              ;   rbp, rdi, rsi, rdx, rcx, rbx, rax
//! push r15 … push r8
//! lea  rsp, [rsp-8]
//! push rbp … push rax            ; rsp = &TrampolineRegs
//! mov  rax, addr          ; mov [rsp+RIP], rax
//! lea  rax, [rsp+144+128] ; mov [rsp+RSP], rax   ; rsp as it was at the patch point
//! cld                            ; the ABI's direction flag for the callee
//! mov  rax, &inflight     ; lock inc qword [rax]  ; callbacks in flight (for removal)
//! mov  rbx, rsp                  ; callee-saved: the struct across the call
//! sub  rsp, AREA          ; and rsp, -64
//! movaps [rsp+16k], xmmk ; stmxcsr   ; functions without x87/MMX/AVX code; else
//! xsavec64 or xsave64 [rsp] (header zeroed first; mask x87|SSE|AVX|AVX-512), or fxsave64
//! mov  rdi, rbx ; mov rsi, user ; mov rax, callback ; call rax
//! ldmxcsr ; movaps xmmk, [rsp+16k]  (or xrstor64 [rsp], or fxrstor64)
//! mov  rax, &inflight     ; lock dec qword [rax]
//! mov  rsp, rbx ; pop rax … pop rbp ; lea rsp,[rsp+8] ; pop r8 … pop r15 ; lea rsp,[rsp+8]
//! popfq ; lea rsp, [rsp+128]
//! <displaced instructions, relocated>   ; exactly the registers, flags and rsp of the patch point
//! jmp  addr + len
//! ```
//!
//! The callback may change the saved general-purpose registers and flags (they are popped
//! back), not `rsp` or `rip` (their slots are skipped).

use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, Encoder, IcedError, Instruction, InstructionBlock,
    MemoryOperand, Register,
};

use super::analyse::Plan;

/// Bytes of the saved general-purpose registers and flags (`TrampolineRegs`).
pub(super) const REGS_SIZE: i64 = 18 * 8;
/// The red zone below `rsp` (System V ABI) that leaf code may use without moving `rsp`.
pub(super) const RED_ZONE: i64 = 128;
/// Offset of `rsp` in `TrampolineRegs`.
const RSP_AT: i64 = 7 * 8;
/// Offset of `rip` in `TrampolineRegs`.
const RIP_AT: i64 = 16 * 8;
/// The XSAVE components saved: x87, SSE, AVX, and AVX-512's opmask and upper halves.
const XSAVE_MASK: u32 = 0b1110_0111;

/// How the vector and x87 state is saved around the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum VectorSave {
    /// `movaps` of xmm0–15 and `stmxcsr`: for functions without x87, MMX or VEX/EVEX code.
    Xmm,
    /// `xsavec64`/`xrstor64` (compacted, skipping components in their initial state, as
    /// AVX-512's usually are), into an area of this many bytes.
    Xsavec(u32),
    /// `xsave64`/`xrstor64`, into an area of this many bytes (the standard format's size for
    /// the components the OS enabled).
    Xsave(u32),
    /// `fxsave64`/`fxrstor64` (x87 and SSE only), where the OS does not enable XSAVE.
    Fxsave,
}

impl VectorSave {
    /// What this CPU and kernel support.
    pub(super) fn detect() -> Self {
        use std::arch::x86_64::__cpuid_count;
        #[allow(unused_unsafe)] // `__cpuid_count` is safe on newer toolchains
        // Safety: CPUID exists on every x86_64 processor.
        let (leaf1, leafd, leafd1) = unsafe {
            (
                __cpuid_count(1, 0),
                __cpuid_count(0xD, 0),
                __cpuid_count(0xD, 1),
            )
        };
        let osxsave = leaf1.ecx & (1 << 27) != 0;
        if !osxsave || leafd.ebx < 576 {
            Self::Fxsave
        } else if leafd1.eax & (1 << 1) != 0 {
            // The compacted size never exceeds the standard one for the same components.
            Self::Xsavec(leafd.ebx)
        } else {
            Self::Xsave(leafd.ebx)
        }
    }

    fn area(self) -> i64 {
        match self {
            Self::Xmm => 16 * 16 + 64,
            Self::Xsave(size) | Self::Xsavec(size) => (i64::from(size) + 63) & !63,
            Self::Fxsave => 512,
        }
    }

    /// xmm`k` of the patch point, as a trampoline saving this way stored it: the save area lies
    /// just below the `TrampolineRegs` at `regs`, 64-byte aligned (`sub rsp, area; and rsp,
    /// -64` with `rsp` = `regs`). `movaps` puts xmm`k` at 16·k; `fxsave`/`xsave` in the legacy
    /// region at 160 + 16·k, where `xsave` leaves it unwritten when SSE is in its initial state
    /// (bit 1 of XSTATE_BV, at 512, clear): then every xmm is zero.
    ///
    /// # Safety
    ///
    /// `regs` is the pointer a trampoline saving this way passed to its callback, which is
    /// still running.
    pub(super) unsafe fn saved_xmm(self, regs: u64, k: usize) -> Option<[u8; 16]> {
        if k >= 16 {
            return None;
        }
        let base = regs.wrapping_sub(self.area() as u64) & !63;
        let at = match self {
            Self::Xmm => base + 16 * k as u64,
            Self::Fxsave => base + 160 + 16 * k as u64,
            Self::Xsave(_) | Self::Xsavec(_) => {
                // SAFETY: the XSAVE header of the area, on the callback's own stack.
                let xstate_bv = unsafe { std::ptr::read((base + 512) as *const u64) };
                if xstate_bv & 0b10 == 0 {
                    return Some([0; 16]);
                }
                base + 160 + 16 * k as u64
            }
        };
        // SAFETY: inside the save area, on the callback's own stack.
        Some(unsafe { std::ptr::read_unaligned(at as *const [u8; 16]) })
    }
}

/// Addresses the trampoline embeds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Embed {
    /// `extern "C" fn(*mut TrampolineRegs, *const ())`.
    pub callback: u64,
    /// Its second argument.
    pub user: u64,
    /// An `AtomicU64` counting threads between the increment before the callback and the
    /// decrement after it.
    pub inflight: u64,
}

/// A trampoline's code, for one address.
#[derive(Debug)]
pub(super) struct Emitted {
    pub code: Vec<u8>,
    /// Offset of the first byte after the in-flight increment: a thread whose `rip` is in
    /// `[slot, slot + entered)` jumped in but is not counted yet.
    pub entered: usize,
}

fn mem(base: Register, displacement: i64) -> MemoryOperand {
    MemoryOperand::with_base_displ_size_bcst_seg(base, displacement, 1, false, Register::None)
}

/// `xmm0` + `k`.
fn xmm(k: i64) -> Register {
    const XMM: [Register; 16] = [
        Register::XMM0,
        Register::XMM1,
        Register::XMM2,
        Register::XMM3,
        Register::XMM4,
        Register::XMM5,
        Register::XMM6,
        Register::XMM7,
        Register::XMM8,
        Register::XMM9,
        Register::XMM10,
        Register::XMM11,
        Register::XMM12,
        Register::XMM13,
        Register::XMM14,
        Register::XMM15,
    ];
    XMM[k as usize]
}

/// Generates the trampoline for `plan` to run at `slot`.
pub(super) fn emit(
    slot: u64,
    plan: &Plan,
    embed: Embed,
    vector: VectorSave,
) -> Result<Emitted, String> {
    let e = |e: IcedError| e.to_string();
    use Register::*;
    let gprs_low = [RAX, RBX, RCX, RDX, RSI, RDI, RBP];
    let gprs_high = [R8, R9, R10, R11, R12, R13, R14, R15];

    let mut head = vec![
        Instruction::with2(Code::Lea_r64_m, RSP, mem(RSP, -RED_ZONE)).map_err(e)?,
        Instruction::with(Code::Pushfq),
        Instruction::with2(Code::Lea_r64_m, RSP, mem(RSP, -8)).map_err(e)?,
    ];
    for r in gprs_high.iter().rev() {
        head.push(Instruction::with1(Code::Push_r64, *r).map_err(e)?);
    }
    head.push(Instruction::with2(Code::Lea_r64_m, RSP, mem(RSP, -8)).map_err(e)?);
    for r in gprs_low.iter().rev() {
        head.push(Instruction::with1(Code::Push_r64, *r).map_err(e)?);
    }
    head.extend([
        Instruction::with2(Code::Mov_r64_imm64, RAX, plan.addr).map_err(e)?,
        Instruction::with2(Code::Mov_rm64_r64, mem(RSP, RIP_AT), RAX).map_err(e)?,
        Instruction::with2(Code::Lea_r64_m, RAX, mem(RSP, REGS_SIZE + RED_ZONE)).map_err(e)?,
        Instruction::with2(Code::Mov_rm64_r64, mem(RSP, RSP_AT), RAX).map_err(e)?,
        Instruction::with(Code::Cld),
        Instruction::with2(Code::Mov_r64_imm64, RAX, embed.inflight).map_err(e)?,
    ]);
    let mut inc = Instruction::with1(Code::Inc_rm64, mem(RAX, 0)).map_err(e)?;
    inc.set_has_lock_prefix(true);
    head.push(inc);
    let entered_after = head.len();
    let area = vector.area();
    head.extend([
        Instruction::with2(Code::Mov_r64_rm64, RBX, RSP).map_err(e)?,
        Instruction::with2(Code::Sub_rm64_imm32, RSP, area as i32).map_err(e)?,
        Instruction::with2(Code::And_rm64_imm8, RSP, -64i32).map_err(e)?,
    ]);
    let mask = |out: &mut Vec<Instruction>| -> Result<(), String> {
        out.push(Instruction::with2(Code::Mov_r32_imm32, EAX, XSAVE_MASK).map_err(e)?);
        out.push(Instruction::with2(Code::Mov_r32_imm32, EDX, 0u32).map_err(e)?);
        Ok(())
    };
    match vector {
        VectorSave::Xmm => {
            for k in 0..16 {
                head.push(
                    Instruction::with2(Code::Movaps_xmmm128_xmm, mem(RSP, 16 * k), xmm(k))
                        .map_err(e)?,
                );
            }
            head.push(Instruction::with1(Code::Stmxcsr_m32, mem(RSP, 256)).map_err(e)?);
        }
        VectorSave::Xsave(_) | VectorSave::Xsavec(_) => {
            // XRSTOR faults unless the XSAVE header's reserved bytes are zero; XSAVE writes
            // only its first field, so the (stack garbage) header is cleared first.
            head.push(Instruction::with2(Code::Xor_r32_rm32, EAX, EAX).map_err(e)?);
            for k in 0..8 {
                head.push(
                    Instruction::with2(Code::Mov_rm64_r64, mem(RSP, 512 + 8 * k), RAX)
                        .map_err(e)?,
                );
            }
            mask(&mut head)?;
            let save = if matches!(vector, VectorSave::Xsavec(_)) {
                Code::Xsavec64_mem
            } else {
                Code::Xsave64_mem
            };
            head.push(Instruction::with1(save, mem(RSP, 0)).map_err(e)?);
        }
        VectorSave::Fxsave => {
            head.push(Instruction::with1(Code::Fxsave64_m512byte, mem(RSP, 0)).map_err(e)?);
        }
    }
    head.extend([
        Instruction::with2(Code::Mov_r64_rm64, RDI, RBX).map_err(e)?,
        Instruction::with2(Code::Mov_r64_imm64, RSI, embed.user).map_err(e)?,
        Instruction::with2(Code::Mov_r64_imm64, RAX, embed.callback).map_err(e)?,
        Instruction::with1(Code::Call_rm64, RAX).map_err(e)?,
    ]);
    match vector {
        VectorSave::Xmm => {
            head.push(Instruction::with1(Code::Ldmxcsr_m32, mem(RSP, 256)).map_err(e)?);
            for k in 0..16 {
                head.push(
                    Instruction::with2(Code::Movaps_xmm_xmmm128, xmm(k), mem(RSP, 16 * k))
                        .map_err(e)?,
                );
            }
        }
        VectorSave::Xsave(_) | VectorSave::Xsavec(_) => {
            mask(&mut head)?;
            head.push(Instruction::with1(Code::Xrstor64_mem, mem(RSP, 0)).map_err(e)?);
        }
        VectorSave::Fxsave => {
            head.push(Instruction::with1(Code::Fxrstor64_m512byte, mem(RSP, 0)).map_err(e)?);
        }
    }
    head.push(Instruction::with2(Code::Mov_r64_imm64, RAX, embed.inflight).map_err(e)?);
    let mut dec = Instruction::with1(Code::Dec_rm64, mem(RAX, 0)).map_err(e)?;
    dec.set_has_lock_prefix(true);
    head.push(dec);
    head.push(Instruction::with2(Code::Mov_r64_rm64, RSP, RBX).map_err(e)?);
    for r in gprs_low {
        head.push(Instruction::with1(Code::Pop_r64, r).map_err(e)?);
    }
    head.push(Instruction::with2(Code::Lea_r64_m, RSP, mem(RSP, 8)).map_err(e)?);
    for r in gprs_high {
        head.push(Instruction::with1(Code::Pop_r64, r).map_err(e)?);
    }
    head.extend([
        Instruction::with2(Code::Lea_r64_m, RSP, mem(RSP, 8)).map_err(e)?,
        Instruction::with(Code::Popfq),
        Instruction::with2(Code::Lea_r64_m, RSP, mem(RSP, RED_ZONE)).map_err(e)?,
    ]);

    let mut encoder = Encoder::new(64);
    let mut ip = slot;
    let mut entered = 0;
    for (k, insn) in head.iter().enumerate() {
        ip += encoder.encode(insn, ip).map_err(e)? as u64;
        if k + 1 == entered_after {
            entered = (ip - slot) as usize;
        }
    }
    let mut code = encoder.take_buffer();

    // The displaced instructions at their original addresses, then the jump back: the block
    // encoder re-encodes RIP-relative operands for their new address.
    let mut tail = plan.displaced.clone();
    tail.push(
        Instruction::with_branch(Code::Jmp_rel32_64, plan.addr + plan.len() as u64).map_err(e)?,
    );
    let block = InstructionBlock::new(&tail, ip);
    let encoded = BlockEncoder::encode(64, block, BlockEncoderOptions::NONE).map_err(e)?;
    code.extend_from_slice(&encoded.code_buffer);
    Ok(Emitted { code, entered })
}

#[cfg(test)]
mod tests {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    use super::super::analyse::qualifies_code;
    use super::*;

    #[test]
    fn the_tail_relocates_rip_relative_operands_and_jumps_back() {
        // lea rax, [rip+0x100] at 0x40_0000 (7 bytes): refers to 0x40_0107.
        let code = [0x48, 0x8D, 0x05, 0x00, 0x01, 0x00, 0x00, 0xC3];
        let plan = qualifies_code(&code, 0x40_0000, 0x40_0000).expect("qualifies");
        let slot = 0x50_0000;
        let embed = Embed {
            callback: 0x1111,
            user: 0x2222,
            inflight: 0x3333,
        };
        for vector in [
            VectorSave::Xmm,
            VectorSave::Xsavec(2696),
            VectorSave::Xsave(2696),
            VectorSave::Fxsave,
        ] {
            let out = emit(slot, &plan, embed, vector).expect("emits");
            let insns: Vec<Instruction> =
                Decoder::with_ip(64, &out.code, slot, DecoderOptions::NONE)
                    .iter()
                    .collect();
            let lea = insns[insns.len() - 2];
            assert_eq!(lea.mnemonic(), Mnemonic::Lea);
            assert_eq!(lea.ip_rel_memory_address(), 0x40_0107, "relocated");
            let back = insns[insns.len() - 1];
            assert_eq!(back.near_branch_target(), 0x40_0007, "jumps back after it");
            assert_eq!(insns[0].mnemonic(), Mnemonic::Lea, "red zone first");
            let inc = Decoder::with_ip(64, &out.code[..out.entered], slot, DecoderOptions::NONE)
                .iter()
                .last()
                .expect("instructions before `entered`");
            assert_eq!(inc.mnemonic(), Mnemonic::Inc);
            assert!(inc.has_lock_prefix());
            assert!(
                out.code.len() < super::super::TRAMPOLINE_SIZE,
                "{}",
                out.code.len()
            );
        }
    }

    /// Saves xmm0–15 holding known values the way each mode this CPU supports does, into an
    /// area placed below a `regs` pointer as the trampoline places it, and reads them back.
    #[test]
    fn saved_xmm_finds_each_register_in_each_save_format() {
        let detected = VectorSave::detect();
        let mut modes = vec![VectorSave::Xmm, VectorSave::Fxsave];
        if !matches!(detected, VectorSave::Fxsave) {
            modes.push(detected);
        }
        let values: Vec<[u8; 16]> = (0..16u8)
            .map(|k| std::array::from_fn(|b| k.wrapping_mul(17) ^ b as u8 ^ 0xA5))
            .collect();
        for mode in modes {
            // Room for the area below `regs` plus the 64-byte alignment.
            let mut stack = vec![0u8; mode.area() as usize + 256];
            let regs = stack.as_mut_ptr() as u64 + stack.len() as u64 - 64;
            let base = (regs - mode.area() as u64) & !63;
            assert!(base >= stack.as_ptr() as u64);
            let vals = values.as_ptr();
            // SAFETY: loads xmm0–15 from `values` and saves them into `stack` at `base`
            // (64-byte aligned, inside the buffer), as the trampoline does.
            unsafe {
                macro_rules! with_xmms {
                    ($save:literal) => {
                        core::arch::asm!(
                            "movdqu xmm0, [{v}]", "movdqu xmm1, [{v}+16]",
                            "movdqu xmm2, [{v}+32]", "movdqu xmm3, [{v}+48]",
                            "movdqu xmm4, [{v}+64]", "movdqu xmm5, [{v}+80]",
                            "movdqu xmm6, [{v}+96]", "movdqu xmm7, [{v}+112]",
                            "movdqu xmm8, [{v}+128]", "movdqu xmm9, [{v}+144]",
                            "movdqu xmm10, [{v}+160]", "movdqu xmm11, [{v}+176]",
                            "movdqu xmm12, [{v}+192]", "movdqu xmm13, [{v}+208]",
                            "movdqu xmm14, [{v}+224]", "movdqu xmm15, [{v}+240]",
                            $save,
                            v = in(reg) vals, a = in(reg) base,
                            in("eax") XSAVE_MASK, in("edx") 0u32,
                            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
                            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
                            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
                            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
                        )
                    };
                }
                match mode {
                    VectorSave::Xmm => with_xmms!(
                        "movaps [{a}], xmm0\nmovaps [{a}+16], xmm1\nmovaps [{a}+32], xmm2\n\
                         movaps [{a}+48], xmm3\nmovaps [{a}+64], xmm4\nmovaps [{a}+80], xmm5\n\
                         movaps [{a}+96], xmm6\nmovaps [{a}+112], xmm7\nmovaps [{a}+128], xmm8\n\
                         movaps [{a}+144], xmm9\nmovaps [{a}+160], xmm10\n\
                         movaps [{a}+176], xmm11\nmovaps [{a}+192], xmm12\n\
                         movaps [{a}+208], xmm13\nmovaps [{a}+224], xmm14\n\
                         movaps [{a}+240], xmm15"
                    ),
                    VectorSave::Fxsave => with_xmms!("fxsave64 [{a}]"),
                    VectorSave::Xsave(_) => with_xmms!("xsave64 [{a}]"),
                    VectorSave::Xsavec(_) => with_xmms!("xsavec64 [{a}]"),
                }
            }
            for (k, want) in values.iter().enumerate() {
                // SAFETY: `regs` and the area below it as a trampoline of `mode` lays them out.
                let got = unsafe { mode.saved_xmm(regs, k) };
                assert_eq!(got.as_ref(), Some(want), "{mode:?} xmm{k}");
            }
            // SAFETY: as above.
            assert_eq!(unsafe { mode.saved_xmm(regs, 16) }, None);
            if let VectorSave::Xsave(_) | VectorSave::Xsavec(_) = mode {
                // SSE marked as in its initial state: every register reads as zero.
                let at = (base + 512 - stack.as_ptr() as u64) as usize;
                stack[at] &= !0b10;
                // SAFETY: as above.
                assert_eq!(
                    unsafe { mode.saved_xmm(regs, 3) },
                    Some([0; 16]),
                    "{mode:?}"
                );
            }
        }
    }
}
