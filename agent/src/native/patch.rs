//! Patching: what the trap handler does in place of the instruction an `int3` displaced
//! ([`Action`]), the out-of-line slots those instructions run from ([`SlotArena`]), and writing
//! code bytes without ever mapping a page writable and executable at once ([`write_code`]).
//!
//! Calls are emulated in the handler (it pushes the *original* return address and jumps), so
//! return addresses, and with them unwinding and backtraces, stay exactly as without the patch.
//! Every other instruction is re-encoded by iced-x86's block encoder into a slot near the code
//! (RIP-relative operands and branches relocated), followed by a jump back to the next
//! instruction. Instructions that cannot run out of line (interrupts, transactional memory,
//! `ud2`, one already replaced by someone's breakpoint) are refused with the reason.

use std::{
    fs::File,
    io,
    os::unix::fs::FileExt,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, Decoder, DecoderOptions, FlowControl, Instruction,
    InstructionBlock, OpKind, Register,
};

/// The `int3` opcode.
pub(crate) const INT3: u8 = 0xCC;

/// Bytes per out-of-line slot: the relocated instruction (at most 15 bytes, more once a short
/// branch becomes a near one or a RIP-relative operand moves) and a `jmp rel32` back.
const SLOT_SIZE: usize = 64;
/// The arena's size: 16,384 slots.
const ARENA_SIZE: usize = 1 << 20;
/// How long a retired slot stays untouched before it is reused: a thread the handler sent into
/// a slot has long left it by then (unless it was stopped right there, e.g. by SIGSTOP).
const SLOT_GRACE: Duration = Duration::from_secs(30);

/// What the handler does instead of the displaced instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Continue at `slot`, which holds the relocated instruction and a jump back.
    Xol {
        /// Runtime address of the slot.
        slot: u64,
    },
    /// A call: push `next` (the real return address) and continue at the target.
    Call {
        /// Where the call goes.
        target: CallTarget,
        /// The address after the call instruction.
        next: u64,
    },
}

/// The target of an emulated call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallTarget {
    /// `call rel32`.
    Direct(u64),
    /// `call reg`: the register's value (an index into `mcontext_t::gregs`).
    Reg(usize),
    /// `call [base + index * scale + disp]` (RIP-relative operands have `disp` absolute).
    Mem {
        /// Base register (`gregs` index), if any.
        base: Option<usize>,
        /// Index register (`gregs` index), if any.
        index: Option<usize>,
        /// Index scale.
        scale: u8,
        /// Displacement (absolute address when there is no base and no index).
        disp: u64,
    },
}

/// Why an address cannot be patched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// The bytes there do not decode.
    #[error("the code at {0:#x} does not decode as an x86_64 instruction")]
    Invalid(u64),
    /// A breakpoint (someone else's) is already there.
    #[error("the instruction at {0:#x} is already a breakpoint (a debugger's?)")]
    AlreadyTrapped(u64),
    /// The instruction cannot run out of line or be emulated.
    #[error("the instruction at {addr:#x} ({text}) cannot run out of line")]
    Unsupported {
        /// Where.
        addr: u64,
        /// The instruction, disassembled.
        text: String,
    },
    /// No slot space near the code.
    #[error("no room for out-of-line slots near {0:#x}")]
    NoSlot(u64),
    /// Writing the code failed.
    #[error("patching {addr:#x} failed: {error}")]
    Write {
        /// Where.
        addr: u64,
        /// The OS error.
        error: String,
    },
}

/// `mcontext_t::gregs` index of a 64-bit general-purpose register.
fn greg(r: Register) -> Option<usize> {
    Some(match r {
        Register::R8 => libc::REG_R8,
        Register::R9 => libc::REG_R9,
        Register::R10 => libc::REG_R10,
        Register::R11 => libc::REG_R11,
        Register::R12 => libc::REG_R12,
        Register::R13 => libc::REG_R13,
        Register::R14 => libc::REG_R14,
        Register::R15 => libc::REG_R15,
        Register::RDI => libc::REG_RDI,
        Register::RSI => libc::REG_RSI,
        Register::RBP => libc::REG_RBP,
        Register::RBX => libc::REG_RBX,
        Register::RDX => libc::REG_RDX,
        Register::RAX => libc::REG_RAX,
        Register::RCX => libc::REG_RCX,
        Register::RSP => libc::REG_RSP,
        _ => return None,
    } as usize)
}

/// Decodes the instruction at `addr` (whose first bytes are `code`).
pub(crate) fn decode(addr: u64, code: &[u8]) -> Result<Instruction, Refusal> {
    if code.first() == Some(&INT3) {
        return Err(Refusal::AlreadyTrapped(addr));
    }
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return Err(Refusal::Invalid(addr));
    }
    Ok(insn)
}

/// Chooses what the handler does for `insn`, allocating and filling a slot when it runs out of
/// line.
pub(crate) fn plan(insn: &Instruction, arena: &SlotArena) -> Result<Action, Refusal> {
    let addr = insn.ip();
    let unsupported = || Refusal::Unsupported {
        addr,
        text: format!("{:?}", insn.mnemonic()).to_lowercase(),
    };
    match insn.flow_control() {
        FlowControl::Call => Ok(Action::Call {
            target: CallTarget::Direct(insn.near_branch_target()),
            next: insn.next_ip(),
        }),
        FlowControl::IndirectCall => {
            let target = match insn.op0_kind() {
                OpKind::Register => {
                    CallTarget::Reg(greg(insn.op0_register()).ok_or_else(unsupported)?)
                }
                OpKind::Memory if insn.segment_prefix() == Register::None => {
                    if insn.is_ip_rel_memory_operand() {
                        CallTarget::Mem {
                            base: None,
                            index: None,
                            scale: 1,
                            disp: insn.ip_rel_memory_address(),
                        }
                    } else {
                        let reg = |r: Register| -> Result<Option<usize>, Refusal> {
                            if r == Register::None {
                                Ok(None)
                            } else {
                                greg(r).map(Some).ok_or_else(unsupported)
                            }
                        };
                        CallTarget::Mem {
                            base: reg(insn.memory_base())?,
                            index: reg(insn.memory_index())?,
                            scale: u8::try_from(insn.memory_index_scale()).unwrap_or(1),
                            disp: insn.memory_displacement64(),
                        }
                    }
                }
                _ => return Err(unsupported()),
            };
            Ok(Action::Call {
                target,
                next: insn.next_ip(),
            })
        }
        FlowControl::Interrupt | FlowControl::XbeginXabortXend | FlowControl::Exception => {
            Err(unsupported())
        }
        FlowControl::Next
        | FlowControl::UnconditionalBranch
        | FlowControl::IndirectBranch
        | FlowControl::ConditionalBranch
        | FlowControl::Return => {
            if matches!(insn.code(), Code::Ud2 | Code::Hlt) {
                return Err(unsupported());
            }
            let slot = arena.alloc(addr)?;
            let back = Instruction::with_branch(Code::Jmp_rel32_64, insn.next_ip())
                .map_err(|_| unsupported())?;
            let insns = [*insn, back];
            let block = InstructionBlock::new(&insns, slot);
            let encoded = BlockEncoder::encode(64, block, BlockEncoderOptions::NONE)
                .map_err(|_| Refusal::NoSlot(addr))?;
            if encoded.code_buffer.len() > SLOT_SIZE {
                arena.free(slot);
                return Err(unsupported());
            }
            if let Err(e) = write_code(slot, &encoded.code_buffer) {
                arena.free(slot);
                return Err(Refusal::Write {
                    addr: slot,
                    error: e.to_string(),
                });
            }
            Ok(Action::Xol { slot })
        }
    }
}

/// Maps `size` bytes of read-only executable memory within `reach` of `near`: below it if
/// possible, else above (code patched at `near` reaches it with a rel32). Written later only
/// through [`write_code`].
pub(crate) fn map_exec_near(near: u64, size: usize, reach: u64) -> Option<u64> {
    const STEP: u64 = 64 << 20;
    let below = (1..24).map(|k| (near & !0xfff).saturating_sub(STEP * k));
    let above = (1..24).map(|k| (near & !0xfff).saturating_add(STEP * k));
    for hint in below.chain(above) {
        // SAFETY: a fresh anonymous mapping at a hint; MAP_FIXED_NOREPLACE never replaces an
        // existing mapping.
        let p = unsafe {
            libc::mmap(
                hint as *mut libc::c_void,
                size,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            continue;
        }
        if (p as u64).abs_diff(near) < reach {
            return Some(p as u64);
        }
        // SAFETY: unmapping the mapping just made.
        unsafe { libc::munmap(p, size) };
    }
    None
}

/// Out-of-line slots in one read-and-execute mapping near the executable's code (within the
/// ±2 GiB a `rel32` reaches), written through [`write_code`]. Freed slots are reused only after
/// [`SLOT_GRACE`].
pub(crate) struct SlotArena {
    base: u64,
    state: Mutex<ArenaState>,
}

struct ArenaState {
    next: usize,
    free: Vec<(u64, Instant)>,
}

impl SlotArena {
    /// Maps the arena near `near` (an address in the executable's code).
    pub fn new(near: u64) -> Result<Self, Refusal> {
        let base = map_exec_near(near, ARENA_SIZE, (1 << 31) - 2 * ARENA_SIZE as u64)
            .ok_or(Refusal::NoSlot(near))?;
        Ok(Self {
            base,
            state: Mutex::new(ArenaState {
                next: 0,
                free: Vec::new(),
            }),
        })
    }

    fn alloc(&self, near: u64) -> Result<u64, Refusal> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let slot = if let Some(i) = s.free.iter().position(|(_, t)| t.elapsed() >= SLOT_GRACE) {
            s.free.swap_remove(i).0
        } else if s.next + SLOT_SIZE <= ARENA_SIZE {
            s.next += SLOT_SIZE;
            self.base + (s.next - SLOT_SIZE) as u64
        } else {
            return Err(Refusal::NoSlot(near));
        };
        if slot.abs_diff(near) >= (1 << 31) - SLOT_SIZE as u64 {
            s.free.push((slot, Instant::now()));
            return Err(Refusal::NoSlot(near));
        }
        Ok(slot)
    }

    /// Gives a slot back; it is reused after the grace period.
    pub fn free(&self, slot: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.free.push((slot, Instant::now()));
    }

    /// Slots handed out and not freed.
    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.next / SLOT_SIZE - s.free.len()
    }
}

/// `/proc/self/mem`, opened once: writing through it changes read-only (code) pages without
/// making them writable, so no page is ever writable and executable at once.
fn proc_mem() -> Option<&'static File> {
    static MEM: OnceLock<Option<File>> = OnceLock::new();
    MEM.get_or_init(|| {
        File::options()
            .read(true)
            .write(true)
            .open("/proc/self/mem")
            .ok()
    })
    .as_ref()
}

/// Writes `bytes` over code at `addr`: through `/proc/self/mem`, or where that is refused by
/// briefly making the page(s) writable (read-write-execute) and back.
pub(crate) fn write_code(addr: u64, bytes: &[u8]) -> io::Result<()> {
    if let Some(mem) = proc_mem()
        && mem.write_at(bytes, addr).is_ok_and(|n| n == bytes.len())
    {
        sync_cores();
        return Ok(());
    }
    let page = 4096u64;
    let start = addr & !(page - 1);
    let end = (addr + bytes.len() as u64).div_ceil(page) * page;
    let len = (end - start) as usize;
    // SAFETY: the range is mapped code of this process; it is made writable only while the
    // bytes are copied, and back to read-execute after.
    unsafe {
        if libc::mprotect(
            start as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len());
        libc::mprotect(
            start as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_EXEC,
        );
    }
    sync_cores();
    Ok(())
}

/// Makes every core of the process see freshly written code before its next instruction
/// (`membarrier(PRIVATE_EXPEDITED_SYNC_CORE)`), where the kernel offers it. A single-byte
/// `int3` write is safe without it on x86; this narrows the window in which another core still
/// runs the old byte.
fn sync_cores() {
    const REGISTER_SYNC_CORE: libc::c_int = 1 << 6;
    const SYNC_CORE: libc::c_int = 1 << 5;
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        // SAFETY: plain syscall with integer arguments.
        unsafe { libc::syscall(libc::SYS_membarrier, REGISTER_SYNC_CORE, 0, 0) == 0 }
    });
    if ok {
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_membarrier, SYNC_CORE, 0, 0) };
    }
}

/// Reads `N` bytes of this process's code at `addr`.
pub(crate) fn read_code<const N: usize>(addr: u64) -> [u8; N] {
    let mut out = [0u8; N];
    // SAFETY: callers pass addresses of the executable's mapped code (from its debug info and
    // load bias), which stays mapped for the life of the process.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), N) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(bytes: &[u8], ip: u64) -> Instruction {
        decode(ip, bytes).expect("decodes")
    }

    #[test]
    fn calls_are_emulated_and_others_refused_or_relocated() {
        // call rel32 at 0x1000 to 0x1000 + 5 + 0x10
        let call = insn(&[0xE8, 0x10, 0, 0, 0], 0x1000);
        let arena = SlotArena::new(plan as fn(&Instruction, &SlotArena) -> _ as usize as u64)
            .expect("arena near the code");
        assert_eq!(
            plan(&call, &arena),
            Ok(Action::Call {
                target: CallTarget::Direct(0x1015),
                next: 0x1005
            })
        );
        // call rax
        let call_reg = insn(&[0xFF, 0xD0], 0x2000);
        assert_eq!(
            plan(&call_reg, &arena),
            Ok(Action::Call {
                target: CallTarget::Reg(libc::REG_RAX as usize),
                next: 0x2002
            })
        );
        // call [rbx + rcx*8 + 0x10]
        let call_mem = insn(&[0xFF, 0x54, 0xCB, 0x10], 0x3000);
        assert_eq!(
            plan(&call_mem, &arena),
            Ok(Action::Call {
                target: CallTarget::Mem {
                    base: Some(libc::REG_RBX as usize),
                    index: Some(libc::REG_RCX as usize),
                    scale: 8,
                    disp: 0x10
                },
                next: 0x3004
            })
        );
        assert!(matches!(
            decode(0x10, &[0xCC]),
            Err(Refusal::AlreadyTrapped(0x10))
        ));
        let ud2 = insn(&[0x0F, 0x0B], 0x4000);
        assert!(matches!(
            plan(&ud2, &arena),
            Err(Refusal::Unsupported { .. })
        ));
        assert_eq!(arena.in_use(), 0, "refusals take no slot");
    }
}
