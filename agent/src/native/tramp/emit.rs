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
}
