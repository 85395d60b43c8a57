//! [`Instruction`] properties the analysis checks: where a direct branch goes, whether an
//! instruction can run from a trampoline, and whether it touches the wide vector state.

use iced_x86::{Code, CpuidFeature, EncodingKind, FlowControl, Instruction, OpKind};

/// Where a direct branch (`jmp`, `jcc`, `call`, `loop`, `xbegin`) goes.
pub(super) fn near_target(insn: &Instruction) -> Option<u64> {
    matches!(
        insn.op0_kind(),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
    )
    .then(|| insn.near_branch_target())
}

/// Whether `insn` touches x87, MMX, AVX or AVX-512 state.
pub(super) fn uses_wide_state(insn: &Instruction) -> bool {
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
pub(super) fn unrelocatable(insn: &Instruction) -> Option<&'static str> {
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

/// An instruction's mnemonic, lowercase (`mov`, `jmp`).
pub(super) fn mnemonic(insn: &Instruction) -> String {
    format!("{:?}", insn.mnemonic()).to_lowercase()
}
