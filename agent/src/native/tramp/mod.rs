//! [`Trampoline`]: a line patched with a `jmp rel32` into generated code that calls a Rust
//! function with the registers of the patch point, with no signal (tens of nanoseconds per hit
//! where an `int3` costs microseconds). Standalone for now: arming still uses `int3`.
//!
//! # Design
//!
//! An `int3` replaces one byte, which is always safe to swap under running threads. A
//! `jmp rel32` replaces 5, over one or more instruction boundaries, so two things must hold:
//!
//! * **No control flow lands strictly inside the 5 bytes.** [`qualifies`] proves it from the
//!   code of the whole function (no branch target inside, those of its indirect jumps
//!   included, which must all be proved: jump tables, tail calls through the GOT; no call
//!   among the displaced instructions so no return address inside; the reasoning is in
//!   `analyse`), and refuses with the instruction's shape otherwise ([`Why`]).
//! * **No thread is inside them when they change.** [`Trampoline::install`] stops every other
//!   thread (`stop`: a real-time signal to each, whose handler reports where the thread was and
//!   sleeps until released), checks that no thread's `rip` lies strictly inside the span, and
//!   that no word of the top of its stack does either (a signal frame saved there: a thread
//!   interrupted inside the span whose handler has not returned yet; return addresses cannot
//!   point inside, since no displaced instruction is a call). Only then it writes, while they
//!   are stopped: `int3` at the address, then bytes 1–4 (the jump's offset), then byte 0 (the
//!   `jmp` opcode), each followed by `membarrier(SYNC_CORE)`; then releases them. The bytes
//!   thus go from the original instruction to `int3` + tail to the `jmp`, never to a partial
//!   jump. If a thread is inside, it releases and retries for up to 3 s, then refuses.
//!
//! The trampoline lives in its own read-execute mapping within ±2 GiB of the code, written
//! through `write_code` (never writable and executable at once). It saves flags and all
//! general-purpose registers as [`TrampolineRegs`] (with `rsp` and `rip` as at the patch point,
//! so DWARF capture plans work unchanged), and the vector state: xmm0–15 and MXCSR where the
//! function has no x87, MMX or AVX code (nothing else of it can be live there: the rest is
//! caller-saved), else the x87/SSE/AVX/AVX-512 state with `xsavec`/`xsave` (`fxsave` where
//! the OS does not enable XSAVE). It calls the callback on a 16-byte-aligned stack,
//! (native breakpoints' callback reads xmm registers from the save area: `saved_xmm`),
//! restores all of it, runs the displaced instructions (re-encoded for the trampoline's address
//! by iced's block encoder) and jumps back after them. The code is in `emit`.
//!
//! **Removal** ([`Trampoline::remove`]) stops the world again, checks that no thread has
//! jumped in without being counted yet (its `rip` in the trampoline before the in-flight
//! increment), writes `int3`, the original bytes 1–4 and the original byte 0, and releases.
//! Threads already inside carry on: the trampoline's code is **kept forever** (never reused, a
//! few hundred bytes each), so one still running it after removal jumps back to an instruction
//! boundary of the restored code. `remove` then waits until no callback is running (an
//! in-flight counter the trampoline increments before the call and decrements after), so the
//! callback's data can be freed when it returns `Ok`.
//!
//! Limits: the callback runs on the application's thread at the patch point, with up to ~3 KiB
//! of the thread's stack taken by the saved state; it must not unwind (it is `extern "C"`), and
//! must not reach the patched line itself (it would recurse). A backtrace taken inside the
//! callback stops at the trampoline (it has no unwind info).

mod analyse;
mod emit;
mod stop;

use std::{
    ops::Range,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

pub use analyse::{Plan, Why, qualifies, qualifies_code, qualifies_code_with};
pub use stop::StopError;

use self::{
    analyse::JMP_LEN,
    emit::{Embed, VectorSave},
    stop::Stopped,
};
use super::patch::{INT3, read_code, write_code};

/// Bytes reserved per trampoline (the code is about 330 bytes).
const TRAMPOLINE_SIZE: usize = 512;
/// The size of one trampoline arena.
const ARENA_SIZE: usize = 1 << 20;
/// How long installation or removal keeps retrying while a thread is inside the span. On a
/// loaded machine a thread stopped inside may not run again for tens of milliseconds after it
/// is released (it is woken, but other runnable threads get the cores first), so the next stop
/// finds it at the same instruction: the budget is time, not a count of tries.
const BUSY_BUDGET: Duration = Duration::from_secs(3);
/// The longest pause between two tries. The pauses double from 200 µs: a thread found inside
/// again at the same instruction did not run in the pause, so the next pause gives the
/// scheduler longer to run it (with 5 ms at most, a thread behind a dozen busy ones on two
/// cores could stay stopped at the same place for the whole budget).
const MAX_BACKOFF: Duration = Duration::from_millis(50);
/// How far above a stopped thread's `rsp` its stack is scanned for saved `rip`s.
const STACK_SCAN: u64 = 256 << 10;
/// How long `remove` waits for callbacks in flight to return.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The registers at the patch point, as the callback sees them. `rsp` and `rip` are as they
/// were at the patched address (`rip` is that address); the others can be changed by the
/// callback, and the patched code continues with the changed values.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct TrampolineRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

const _: () = assert!(std::mem::size_of::<TrampolineRegs>() as i64 == emit::REGS_SIZE);

impl TrampolineRegs {
    /// A register by its DWARF number (x86_64: 0 RAX, 1 RDX, 2 RCX, 3 RBX, 4 RSI, 5 RDI,
    /// 6 RBP, 7 RSP, 8–15 R8–R15, 16 RIP), as capture plans name them.
    pub fn dwarf(&self, reg: u16) -> Option<u64> {
        Some(match reg {
            0 => self.rax,
            1 => self.rdx,
            2 => self.rcx,
            3 => self.rbx,
            4 => self.rsi,
            5 => self.rdi,
            6 => self.rbp,
            7 => self.rsp,
            8 => self.r8,
            9 => self.r9,
            10 => self.r10,
            11 => self.r11,
            12 => self.r12,
            13 => self.r13,
            14 => self.r14,
            15 => self.r15,
            16 => self.rip,
            _ => return None,
        })
    }
}

/// What the trampoline calls on every hit: the registers at the patch point and the `user`
/// pointer given to [`Trampoline::install`].
pub type TrampolineFn = extern "C" fn(regs: *mut TrampolineRegs, user: *const ());

/// Why installing or removing a trampoline failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrampolineError {
    /// The code at the address is no longer what was analysed (someone patched it since).
    #[error("the code at {0:#x} changed since it was analysed")]
    CodeChanged(u64),
    /// No room for a trampoline within ±2 GiB of the address.
    #[error("no room for a trampoline within 2 GiB of {0:#x}")]
    NoRoom(u64),
    /// Generating the trampoline failed (a RIP-relative operand out of reach, …).
    #[error("generating the trampoline for {addr:#x} failed: {reason}")]
    Codegen {
        /// The address.
        addr: u64,
        /// The encoder's message.
        reason: String,
    },
    /// Writing code failed.
    #[error("writing code at {addr:#x} failed: {reason}")]
    Write {
        /// Where.
        addr: u64,
        /// The OS error.
        reason: String,
    },
    /// The other threads could not be stopped.
    #[error(transparent)]
    Stop(#[from] StopError),
    /// A thread stayed inside the bytes being replaced through every attempt.
    #[error("thread {tid} was inside the patched bytes at {at:#x} on every attempt")]
    Busy {
        /// The thread.
        tid: i32,
        /// Its `rip`, or the stack word that pointed inside.
        at: u64,
    },
    /// Removal restored the code, but a callback was still running after the timeout; its
    /// data must stay valid.
    #[error("a callback at {0:#x} was still running 5 s after removal")]
    StillRunning(u64),
}

/// What the trampoline's code points at: kept at a fixed address for as long as a callback may
/// run.
#[derive(Debug, Default)]
struct Shared {
    inflight: AtomicU64,
}

/// A `jmp rel32` into a trampoline, installed at one address. Dropping it removes it (and, if
/// that fails, leaves it installed for good).
#[derive(Debug)]
pub struct Trampoline {
    addr: u64,
    original: Vec<u8>,
    slot: u64,
    entered: usize,
    /// `None` once removed; leaked (never freed) if a callback might still run.
    shared: Option<Box<Shared>>,
}

impl Trampoline {
    /// Generates a trampoline for `plan` calling `callback(regs, user)` and patches the jump in
    /// with every other thread stopped.
    ///
    /// # Safety
    ///
    /// `callback` runs on whichever thread reaches the address, at that point of the code: it
    /// must not unwind, must not reach the patched address itself, and must be safe to run
    /// wherever the patched code runs (while the thread holds whatever locks it holds there).
    /// `user` must stay valid for it until [`Self::remove`] returns `Ok`, and forever if it
    /// never does (or the trampoline is dropped without removal succeeding).
    pub unsafe fn install(
        plan: &Plan,
        callback: TrampolineFn,
        user: *const (),
    ) -> Result<Self, TrampolineError> {
        // SAFETY: the caller's contract.
        unsafe { Self::install_inner(plan, callback, user, false, &[]) }
    }

    /// Like [`Self::install`], over an address where an `int3` of Sonde's own already replaces
    /// the first byte (the line was armed with a breakpoint first): the bytes go from `int3` +
    /// tail to the jump. `busy` adds ranges no thread may be in while they change (the
    /// breakpoint's out-of-line slot, whose jump back lands inside the span).
    ///
    /// # Safety
    ///
    /// As [`Self::install`]; and the trap handler must keep handling that `int3` until this
    /// returns.
    pub(crate) unsafe fn install_over_int3(
        plan: &Plan,
        callback: TrampolineFn,
        user: *const (),
        busy: &[Range<u64>],
    ) -> Result<Self, TrampolineError> {
        // SAFETY: the caller's contract.
        unsafe { Self::install_inner(plan, callback, user, true, busy) }
    }

    unsafe fn install_inner(
        plan: &Plan,
        callback: TrampolineFn,
        user: *const (),
        over_int3: bool,
        busy: &[Range<u64>],
    ) -> Result<Self, TrampolineError> {
        let addr = plan.addr;
        let current: Vec<u8> = (0..plan.len() as u64)
            .map(|k| read_code::<1>(addr + k)[0])
            .collect();
        let mut expected = plan.original.clone();
        if over_int3 {
            expected[0] = INT3;
        }
        if current != expected {
            return Err(TrampolineError::CodeChanged(addr));
        }
        let slot = alloc_slot(addr).ok_or(TrampolineError::NoRoom(addr))?;
        let shared = Box::new(Shared::default());
        let embed = Embed {
            callback: callback as usize as u64,
            user: user as u64,
            inflight: &shared.inflight as *const AtomicU64 as u64,
        };
        let vector = vector_save_for(plan.wide);
        let emitted = emit::emit(slot, plan, embed, vector)
            .map_err(|reason| TrampolineError::Codegen { addr, reason })?;
        if emitted.code.len() > TRAMPOLINE_SIZE {
            return Err(TrampolineError::Codegen {
                addr,
                reason: format!("{} bytes of code", emitted.code.len()),
            });
        }
        write_code(slot, &emitted.code).map_err(|e| TrampolineError::Write {
            addr: slot,
            reason: e.to_string(),
        })?;
        let rel = slot.wrapping_sub(addr + JMP_LEN as u64) as i64;
        let rel = i32::try_from(rel).map_err(|_| TrampolineError::NoRoom(addr))?;
        let mut jmp = [0xE9u8; JMP_LEN];
        jmp[1..].copy_from_slice(&rel.to_le_bytes());

        let mut forbidden = if over_int3 {
            // A thread can only be at an instruction boundary. Inside the span, over Sonde's
            // int3, `addr + 1` is also where a thread that trapped and has not been resumed
            // yet appears to be; the trap handler (whose table keeps the address) sends it to
            // the out-of-line slot, never to `addr + 1`. So only the interior boundaries are
            // forbidden (none when one instruction is displaced).
            let mut at = addr;
            let mut ranges = Vec::new();
            for insn in &plan.displaced[..plan.displaced.len().saturating_sub(1)] {
                at += insn.len() as u64;
                ranges.push(at..at + 1);
            }
            ranges
        } else {
            std::iter::once(addr + 1..addr + plan.len() as u64).collect()
        };
        forbidden.extend(busy.iter().cloned());
        let writes = [
            (addr, &[INT3][..]),
            (addr + 1, &jmp[1..]),
            (addr, &jmp[..1]),
        ];
        // Over our own int3, the first write is already done.
        let writes = if over_int3 { &writes[1..] } else { &writes[..] };
        patch_stopped(addr, &expected, &forbidden, writes)?;
        Ok(Self {
            addr,
            original: plan.original.clone(),
            slot,
            entered: emitted.entered,
            shared: Some(shared),
        })
    }

    /// The patched address.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// The trampoline's code (it stays mapped, and is never reused, after removal).
    pub fn code(&self) -> Range<u64> {
        self.slot..self.slot + TRAMPOLINE_SIZE as u64
    }

    /// Whether the jump is still installed.
    pub fn is_installed(&self) -> bool {
        self.shared.is_some()
    }

    /// Restores the original bytes with every other thread stopped, then waits until no
    /// callback is running. After `Ok`, the callback is never called again and its data may be
    /// freed; after an error other than [`TrampolineError::StillRunning`], the trampoline is
    /// still installed (try again).
    pub fn remove(&mut self) -> Result<(), TrampolineError> {
        let Some(shared) = self.shared.as_ref() else {
            return Ok(());
        };
        let addr = self.addr;
        let mut jmp = [0u8; JMP_LEN];
        jmp.copy_from_slice(&read_code::<JMP_LEN>(addr));
        // A thread in the trampoline before its in-flight increment (even at its first byte)
        // would call the callback after this returns: retry until none is there.
        let uncounted = self.slot..self.slot + self.entered as u64;
        let writes = [
            (addr, &[INT3][..]),
            (addr + 1, &self.original[1..JMP_LEN]),
            (addr, &self.original[..1]),
        ];
        patch_stopped(addr, &jmp, &[uncounted], &writes)?;
        // Threads past the increment may still be in the callback: wait for them.
        let started = Instant::now();
        while shared.inflight.load(Ordering::Acquire) != 0 {
            if started.elapsed() > DRAIN_TIMEOUT {
                // Leak the counter: a thread still uses it.
                std::mem::forget(self.shared.take());
                return Err(TrampolineError::StillRunning(addr));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        self.shared = None;
        Ok(())
    }
}

impl Drop for Trampoline {
    fn drop(&mut self) {
        for _ in 0..3 {
            match self.remove() {
                Ok(()) | Err(TrampolineError::StillRunning(_)) => return,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        tracing::error!(
            addr = self.addr,
            "removing a trampoline failed; it stays installed"
        );
        std::mem::forget(self.shared.take());
    }
}

/// Writes `writes` in order with every other thread stopped, once no thread's `rip` and no
/// word near the top of its stack lies in `forbidden`, and the bytes at `addr` are still
/// `expected`. Retries for up to [`BUSY_BUDGET`] while a thread is inside.
fn patch_stopped(
    addr: u64,
    expected: &[u8],
    forbidden: &[Range<u64>],
    writes: &[(u64, &[u8])],
) -> Result<(), TrampolineError> {
    // Open /proc/self/mem and register membarrier now: nothing may allocate while the world
    // is stopped. Rewriting a byte with its own value changes nothing.
    let first = read_code::<1>(addr);
    write_code(addr, &first).map_err(|e| TrampolineError::Write {
        addr,
        reason: e.to_string(),
    })?;
    let mut last_busy = None;
    let started = Instant::now();
    let mut mappings = Vec::new();
    for attempt in 0u32.. {
        if attempt > 0 {
            if started.elapsed() >= BUSY_BUDGET {
                break;
            }
            std::thread::sleep(MAX_BACKOFF.min(Duration::from_micros(200 << attempt.min(8))));
        }
        // Read before the stop (it allocates): where each thread's stack ends.
        read_mappings(&mut mappings);
        let outcome = stop::with_world_stopped(|threads| {
            if !code_is(addr, expected) {
                return Outcome::Changed;
            }
            if let Some(busy) = busy(threads, forbidden, &mappings) {
                return Outcome::Busy(busy);
            }
            for &(at, bytes) in writes {
                if let Err(e) = write_code(at, bytes) {
                    return Outcome::WriteFailed(at, e.raw_os_error().unwrap_or(0));
                }
            }
            Outcome::Done
        })?;
        match outcome {
            Outcome::Done => return Ok(()),
            Outcome::Changed => return Err(TrampolineError::CodeChanged(addr)),
            Outcome::WriteFailed(at, errno) => {
                return Err(TrampolineError::Write {
                    addr: at,
                    reason: std::io::Error::from_raw_os_error(errno).to_string(),
                });
            }
            Outcome::Busy(b) => last_busy = Some(b),
        }
    }
    let (tid, at) = last_busy.unwrap_or((0, addr));
    Err(TrampolineError::Busy { tid, at })
}

enum Outcome {
    Done,
    Changed,
    Busy((i32, u64)),
    WriteFailed(u64, i32),
}

fn code_is(addr: u64, expected: &[u8]) -> bool {
    expected
        .iter()
        .enumerate()
        .all(|(k, b)| read_code::<1>(addr + k as u64)[0] == *b)
}

/// The process's memory mappings (`start..end`, sorted), from `/proc/self/maps`, into `out`;
/// left empty if it cannot be read.
fn read_mappings(out: &mut Vec<Range<u64>>) {
    out.clear();
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    out.extend(maps.lines().filter_map(|line| {
        let (start, end) = line.split_whitespace().next()?.split_once('-')?;
        Some(u64::from_str_radix(start, 16).ok()?..u64::from_str_radix(end, 16).ok()?)
    }));
}

/// Where the scan of a stack from `rsp` stops: [`STACK_SCAN`] above it, or the end of the
/// mapping that holds it if that comes first. Past the end lies other memory (a malloc arena,
/// another thread's signal stack) whose stale words are no return addresses: one equal to an
/// address inside the span (a plan's own instruction boundaries are on the heap) would keep a
/// thread that is nowhere near the span "inside" on every attempt.
fn scan_end(rsp: u64, mappings: &[Range<u64>]) -> u64 {
    let limit = rsp.saturating_add(STACK_SCAN);
    let i = mappings.partition_point(|m| m.start <= rsp);
    match i.checked_sub(1).map(|i| &mappings[i]) {
        Some(m) if m.contains(&rsp) => limit.min(m.end),
        // A thread started after the mappings were read: its stack is not listed.
        _ => limit,
    }
}

/// The first stopped thread whose `rip`, or a word of whose stack (from its `rsp` up to
/// [`scan_end`]), lies in one of `ranges`. Allocates nothing.
fn busy(threads: &[Stopped], ranges: &[Range<u64>], mappings: &[Range<u64>]) -> Option<(i32, u64)> {
    let hit = |v: u64| ranges.iter().any(|r| r.contains(&v));
    let mut buf = [0u8; 4096];
    for t in threads {
        if hit(t.rip) {
            return Some((t.tid, t.rip));
        }
        let mut at = t.rsp & !7;
        let end = scan_end(at, mappings);
        while at < end {
            let n = (4096 - (at & 4095)).min(end - at) as usize;
            if !super::guard::guarded_copy(&mut buf[..n], at) {
                break;
            }
            for w in buf[..n].chunks_exact(8) {
                let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
                if hit(v) {
                    return Some((t.tid, v));
                }
            }
            at += n as u64;
        }
    }
    None
}

/// How a trampoline saves the vector state: all of it (as the CPU and kernel allow) for a
/// function with x87, MMX or VEX/EVEX code, else only xmm0–15 and MXCSR.
fn vector_save_for(wide: bool) -> VectorSave {
    static DETECTED: OnceLock<VectorSave> = OnceLock::new();
    if wide {
        *DETECTED.get_or_init(VectorSave::detect)
    } else {
        VectorSave::Xmm
    }
}

/// xmm`k` at the patch point, from inside the callback of a trampoline installed for a plan
/// whose [`Plan::uses_wide_vector_state`] is `wide`.
///
/// # Safety
///
/// `regs` is the pointer that trampoline passed to the callback, which is still running.
pub(crate) unsafe fn saved_xmm(
    regs: *const TrampolineRegs,
    wide: bool,
    k: usize,
) -> Option<[u8; 16]> {
    // SAFETY: the caller's contract; a trampoline for such a plan was installed, so the
    // detection already ran (no initialisation happens here).
    unsafe { vector_save_for(wide).saved_xmm(regs as u64, k) }
}

/// Trampoline arenas: read-execute mappings near the code, filled front to back and never
/// reused (a retired trampoline may still be running on some thread).
static ARENAS: Mutex<Vec<(u64, usize)>> = Mutex::new(Vec::new());

/// A fresh trampoline slot within reach of a `jmp rel32` at `near`.
fn alloc_slot(near: u64) -> Option<u64> {
    const REACH: u64 = (1 << 31) - 2 * ARENA_SIZE as u64;
    let mut arenas = ARENAS.lock().unwrap_or_else(|p| p.into_inner());
    for (base, used) in arenas.iter_mut() {
        if *used + TRAMPOLINE_SIZE <= ARENA_SIZE && base.abs_diff(near) < REACH {
            let slot = *base + *used as u64;
            *used += TRAMPOLINE_SIZE;
            return Some(slot);
        }
    }
    let base = super::patch::map_exec_near(near, ARENA_SIZE, REACH)?;
    arenas.push((base, TRAMPOLINE_SIZE));
    Some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_scan_stops_at_the_end_of_the_stack_s_mapping() {
        let maps = [0x1000..0x9000, 0x9000..0x20_0000, 0x40_0000..0x80_0000];
        // Within its mapping: up to the mapping's end, not into the next one.
        assert_eq!(scan_end(0x8000, &maps), 0x9000);
        // A deep stack: STACK_SCAN first.
        assert_eq!(scan_end(0x40_0000, &maps), 0x40_0000 + STACK_SCAN);
        // Not in any listed mapping (a thread started after they were read): STACK_SCAN.
        assert_eq!(scan_end(0x30_0000, &maps), 0x30_0000 + STACK_SCAN);
        assert_eq!(scan_end(0x10, &[]), 0x10 + STACK_SCAN);
    }

    #[test]
    fn the_mappings_hold_this_thread_s_stack() {
        let mut maps = Vec::new();
        read_mappings(&mut maps);
        let local = 0u64;
        let rsp = std::ptr::addr_of!(local) as u64;
        assert!(maps.windows(2).all(|w| w[0].start < w[1].start), "sorted");
        assert!(
            maps.iter().any(|m| m.contains(&rsp)),
            "a mapping holds {rsp:#x}"
        );
        assert!(scan_end(rsp, &maps) <= rsp + STACK_SCAN);
    }
}
