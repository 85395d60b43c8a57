//! The SIGTRAP handler and the breakpoint table it reads.
//!
//! The handler is async-signal-safe: it allocates nothing and takes no lock. It finds the
//! breakpoint in an immutable [`Table`] (published by pointer, retired only after a grace
//! period: [`synchronize`]), lets each tracepoint's [`Gate`] (a token bucket) decide whether to
//! capture, copies registers and memory into a ring record ([`super::ring`]; memory only through
//! `process_vm_readv`, which fails with `EFAULT` instead of faulting), and then resumes: an
//! out-of-line slot or an emulated call ([`super::patch::Action`]).
//!
//! A trap that is not Sonde's (not an `int3`, or at an address Sonde never patched) goes to the
//! handler that was installed before Sonde's, or gets the default action. A trap at an address
//! disarmed a moment ago (the byte restored after the thread trapped) re-executes the restored
//! instruction.
//!
//! The handler runs with `SA_NODEFER`: a patched line reached from inside another signal
//! handler that interrupted this one traps again instead of killing the process (the kernel
//! kills a process whose forced SIGTRAP is blocked).

use std::{
    mem::MaybeUninit,
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    guard::guarded_copy,
    patch::{Action, CallTarget, INT3},
    ring::Rings,
    shape::{Deref, DerefLen, MAX_DEREF_BYTES, MAX_DEREFS},
};

/// `si_code` of a trap raised by an `int3` instruction.
const SI_KERNEL: libc::c_int = 0x80;

/// Where one variable is at one address, in the handler's terms.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Loc {
    /// A general-purpose register (`mcontext_t::gregs` index).
    Greg(usize),
    /// An XMM register (0–15).
    Xmm(usize),
    /// Memory at a general-purpose register plus an offset.
    Mem {
        /// `gregs` index.
        greg: usize,
        /// Byte offset.
        offset: i64,
    },
    /// Memory at a fixed address.
    Static(u64),
    /// A constant.
    Const(Box<[u8]>),
    /// Not readable here (the record says so; the decoder reports why).
    Missing,
}

/// What the handler copies for one variable.
#[derive(Debug, Clone)]
pub(crate) struct VarCapture {
    pub loc: Loc,
    /// Bytes to copy from the location.
    pub inline: usize,
    pub derefs: Box<[Deref]>,
}

impl VarCapture {
    /// The most bytes its part of a record can take.
    fn max_bytes(&self) -> usize {
        1 + 2 + self.inline + 1 + self.derefs.len() * (4 + MAX_DEREF_BYTES)
    }
}

/// Record status of a variable.
pub(crate) const VAR_OK: u8 = 0;
/// The variable has no location here.
pub(crate) const VAR_MISSING: u8 = 1;
/// Reading its memory failed.
pub(crate) const VAR_UNREADABLE: u8 = 2;
/// A heap read that did not happen (bad pointer, or its source was missing).
pub(crate) const DEREF_MISSING: u32 = u32::MAX;
/// Bytes of a record's header: line ID (u64), address index (u16), variable count (u16).
pub(crate) const HEADER: usize = 12;

/// The admission control of one armed line: a token bucket (GCRA: one atomic "theoretical
/// arrival time") and counters, all touched from the handler.
#[derive(Debug)]
pub(crate) struct Gate {
    tat: AtomicU64,
    interval_ns: u64,
    burst_ns: u64,
    /// Cleared when the line is being disarmed or its budget ran out: the handler then only
    /// resumes.
    pub open: AtomicBool,
    /// Traps taken.
    pub hits: AtomicU64,
    /// Traps that captured a record.
    pub captured: AtomicU64,
    /// Traps the token bucket turned away.
    pub throttled: AtomicU64,
    /// Records lost for want of ring space.
    pub lost: AtomicU64,
}

impl Gate {
    /// A gate admitting `rate` captures per second on average, `burst` at once.
    pub fn new(rate: u32, burst: u32) -> Self {
        let interval_ns = 1_000_000_000 / u64::from(rate.max(1));
        Self {
            tat: AtomicU64::new(0),
            interval_ns,
            burst_ns: interval_ns * u64::from(burst.max(1)),
            open: AtomicBool::new(true),
            hits: AtomicU64::new(0),
            captured: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }

    fn admit(&self, now: u64) -> bool {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            if start - now >= self.burst_ns {
                self.throttled.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            match self.tat.compare_exchange_weak(
                tat,
                start + self.interval_ns,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
    }
}

/// One armed line's use of one address.
#[derive(Debug)]
pub(crate) struct User {
    /// The armed line (the decoder finds it by this ID).
    pub line: u64,
    /// Which of the line's addresses this is.
    pub addr_index: u16,
    pub gate: std::sync::Arc<Gate>,
    pub captures: Box<[VarCapture]>,
    /// The most bytes a record of these captures takes (reserved in a ring per hit).
    max_record: usize,
}

impl User {
    pub fn new(
        line: u64,
        addr_index: u16,
        gate: std::sync::Arc<Gate>,
        captures: Box<[VarCapture]>,
    ) -> Self {
        let max_record = HEADER + captures.iter().map(VarCapture::max_bytes).sum::<usize>();
        Self {
            line,
            addr_index,
            gate,
            captures,
            max_record,
        }
    }
}

/// A patched address.
#[derive(Debug)]
pub(crate) struct Bp {
    pub addr: u64,
    pub action: Action,
    pub users: Box<[User]>,
}

/// What the handler consults: the patched addresses, sorted, and the recently disarmed ones.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub bps: Vec<Bp>,
    /// Addresses disarmed within the grace period, sorted.
    pub tombstones: Vec<u64>,
}

impl Table {
    fn find(&self, addr: u64) -> Option<&Bp> {
        self.bps
            .binary_search_by_key(&addr, |b| b.addr)
            .ok()
            .map(|i| &self.bps[i])
    }
}

static TABLE: AtomicPtr<Table> = AtomicPtr::new(std::ptr::null_mut());
static RINGS: AtomicPtr<Rings> = AtomicPtr::new(std::ptr::null_mut());
static EPOCH: AtomicUsize = AtomicUsize::new(0);
static ACTIVE: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Traps that were not Sonde's (passed on to the previous handler or the default action).
pub(crate) static FOREIGN: AtomicU64 = AtomicU64::new(0);

/// The rings the handler writes to (created once, never freed).
pub(crate) fn rings() -> &'static Rings {
    let p = RINGS.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: set once below from a leaked Box, never freed.
        return unsafe { &*p };
    }
    let fresh = Box::into_raw(Box::new(Rings::new()));
    match RINGS.compare_exchange(
        std::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: just published, never freed.
        Ok(_) => unsafe { &*fresh },
        Err(existing) => {
            // SAFETY: `fresh` was never shared.
            drop(unsafe { Box::from_raw(fresh) });
            // SAFETY: as above.
            unsafe { &*existing }
        }
    }
}

/// Installs the SIGTRAP handler once, keeping the previous one to chain to.
pub(crate) fn install_handler() -> Result<(), String> {
    if PREVIOUS.get().is_some() {
        return if handler_is_ours() {
            Ok(())
        } else {
            Err("another SIGTRAP handler replaced Sonde's; native breakpoints are off".into())
        };
    }
    rings();
    // SAFETY: sigaction with a zeroed, then filled, struct; the handler is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigtrap as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        let mut old = MaybeUninit::<libc::sigaction>::zeroed();
        if libc::sigaction(libc::SIGTRAP, &sa, old.as_mut_ptr()) != 0 {
            return Err(format!(
                "installing the SIGTRAP handler failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        let _ = PREVIOUS.set(old.assume_init());
    }
    Ok(())
}

fn handler_is_ours() -> bool {
    // SAFETY: querying the current action only.
    unsafe {
        let mut cur = MaybeUninit::<libc::sigaction>::zeroed();
        libc::sigaction(libc::SIGTRAP, std::ptr::null(), cur.as_mut_ptr()) == 0
            && cur.assume_init().sa_sigaction == on_sigtrap as *const () as usize
    }
}

/// Publishes `table` for the handler and returns the previous one, which handlers may still be
/// reading until [`synchronize`] returns.
pub(crate) fn publish(table: Table) -> Option<Box<Table>> {
    let old = TABLE.swap(Box::into_raw(Box::new(table)), Ordering::AcqRel);
    // SAFETY: every table pointer comes from Box::into_raw here.
    (!old.is_null()).then(|| unsafe { Box::from_raw(old) })
}

/// Waits until every handler that might have seen a table published before this call has
/// left (a grace period). Returns false on timeout: the caller must then keep (leak) what
/// it was going to free.
pub(crate) fn synchronize(timeout: Duration) -> bool {
    let e = EPOCH.fetch_add(1, Ordering::SeqCst);
    let started = Instant::now();
    while ACTIVE[e & 1].load(Ordering::SeqCst) != 0 {
        if started.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    true
}

fn enter() -> usize {
    loop {
        let e = EPOCH.load(Ordering::SeqCst);
        ACTIVE[e & 1].fetch_add(1, Ordering::SeqCst);
        if EPOCH.load(Ordering::SeqCst) == e {
            return e;
        }
        ACTIVE[e & 1].fetch_sub(1, Ordering::SeqCst);
    }
}

fn exit(e: usize) {
    ACTIVE[e & 1].fetch_sub(1, Ordering::Release);
}

extern "C" fn on_sigtrap(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo and ucontext to an SA_SIGINFO handler.
    unsafe {
        let errno = *libc::__errno_location();
        let ours = (*info).si_code == SI_KERNEL && handle(&mut *ctx.cast::<libc::ucontext_t>());
        *libc::__errno_location() = errno;
        if !ours {
            FOREIGN.fetch_add(1, Ordering::Relaxed);
            chain(sig, info, ctx);
        }
    }
}

/// Passes a trap that is not Sonde's on, as if Sonde's handler were not there.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let Some(prev) = PREVIOUS.get() else { return };
    match prev.sa_sigaction {
        libc::SIG_IGN => {}
        libc::SIG_DFL => {
            // The default action of SIGTRAP ends the process with a core dump: restore it and
            // raise again (SIGTRAP is not blocked here: SA_NODEFER).
            // SAFETY: sigaction and raise are async-signal-safe.
            unsafe {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGTRAP, &dfl, std::ptr::null_mut());
                libc::raise(libc::SIGTRAP);
            }
        }
        f if prev.sa_flags & libc::SA_SIGINFO != 0 => {
            // SAFETY: the previous handler was installed with this signature.
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(f) };
            f(sig, info, ctx);
        }
        f => {
            // SAFETY: as above, the one-argument form.
            let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(f) };
            f(sig);
        }
    }
}

/// Handles a trap at `rip - 1` if it is Sonde's. Async-signal-safe.
fn handle(uc: &mut libc::ucontext_t) -> bool {
    let gregs = &mut uc.uc_mcontext.gregs;
    let addr = (gregs[libc::REG_RIP as usize] as u64).wrapping_sub(1);
    let e = enter();
    let table = TABLE.load(Ordering::Acquire);
    let handled = if table.is_null() {
        false
    } else {
        // SAFETY: tables are freed only after a grace period that waits for this epoch.
        let table = unsafe { &*table };
        match table.find(addr) {
            Some(bp) => {
                for user in bp.users.iter() {
                    capture(user, uc);
                }
                resume(bp.action, &mut uc.uc_mcontext.gregs);
                true
            }
            // Disarmed after this thread trapped: run the restored instruction.
            // SAFETY: a tombstone is an address in the executable's code.
            None if table.tombstones.binary_search(&addr).is_ok()
                && unsafe { std::ptr::read_volatile(addr as *const u8) } != INT3 =>
            {
                uc.uc_mcontext.gregs[libc::REG_RIP as usize] = addr as i64;
                true
            }
            None => false,
        }
    };
    exit(e);
    handled
}

/// Continues past the displaced instruction.
fn resume(action: Action, gregs: &mut [libc::greg_t; 23]) {
    match action {
        Action::Xol { slot } => gregs[libc::REG_RIP as usize] = slot as i64,
        Action::Call { target, next } => {
            let target = match target {
                CallTarget::Direct(t) => t,
                CallTarget::Reg(r) => gregs[r] as u64,
                CallTarget::Mem {
                    base,
                    index,
                    scale,
                    disp,
                } => {
                    let at = base
                        .map_or(0, |b| gregs[b] as u64)
                        .wrapping_add(
                            index
                                .map_or(0, |i| gregs[i] as u64)
                                .wrapping_mul(u64::from(scale)),
                        )
                        .wrapping_add(disp);
                    // SAFETY: the displaced call would have read this very address; a bad one
                    // faults here as it would have there.
                    unsafe { std::ptr::read_volatile(at as *const u64) }
                }
            };
            let rsp = (gregs[libc::REG_RSP as usize] as u64).wrapping_sub(8);
            // SAFETY: the call would have pushed its return address to this very slot.
            unsafe { std::ptr::write_volatile(rsp as *mut u64, next) };
            gregs[libc::REG_RSP as usize] = rsp as i64;
            gregs[libc::REG_RIP as usize] = target as i64;
        }
    }
}

fn now_ns() -> u64 {
    let mut ts = MaybeUninit::<libc::timespec>::zeroed();
    // SAFETY: clock_gettime is async-signal-safe; the struct is written by it.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, ts.as_mut_ptr());
        let ts = ts.assume_init();
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

/// The registers at a patch point: a signal's saved context, or a trampoline's saved state.
pub(crate) trait Regs {
    /// A general-purpose register by `mcontext_t::gregs` index.
    fn greg(&self, index: usize) -> u64;
    /// An XMM register's 16 bytes, if saved.
    fn xmm(&self, index: usize) -> Option<[u8; 16]>;
}

impl Regs for libc::ucontext_t {
    fn greg(&self, index: usize) -> u64 {
        self.uc_mcontext.gregs[index] as u64
    }

    fn xmm(&self, index: usize) -> Option<[u8; 16]> {
        let fp = self.uc_mcontext.fpregs;
        if fp.is_null() {
            return None;
        }
        // SAFETY: the kernel's saved FP state for this signal frame.
        let reg = unsafe { (*fp)._xmm[index].element };
        let mut bytes = [0u8; 16];
        for (k, w) in reg.iter().enumerate() {
            bytes[k * 4..k * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        Some(bytes)
    }
}

impl Regs for super::tramp::TrampolineRegs {
    fn greg(&self, index: usize) -> u64 {
        match index as libc::c_int {
            libc::REG_RAX => self.rax,
            libc::REG_RBX => self.rbx,
            libc::REG_RCX => self.rcx,
            libc::REG_RDX => self.rdx,
            libc::REG_RSI => self.rsi,
            libc::REG_RDI => self.rdi,
            libc::REG_RBP => self.rbp,
            libc::REG_RSP => self.rsp,
            libc::REG_R8 => self.r8,
            libc::REG_R9 => self.r9,
            libc::REG_R10 => self.r10,
            libc::REG_R11 => self.r11,
            libc::REG_R12 => self.r12,
            libc::REG_R13 => self.r13,
            libc::REG_R14 => self.r14,
            libc::REG_R15 => self.r15,
            libc::REG_RIP => self.rip,
            _ => 0,
        }
    }

    fn xmm(&self, _index: usize) -> Option<[u8; 16]> {
        // Only with the save mode known: see `TrampolineFrame`.
        None
    }
}

/// What a trampoline's callback gets: the users of its address.
pub(crate) struct TrampolineUsers {
    pub users: Box<[User]>,
    /// Whether the trampoline saves the whole vector state (`Plan::uses_wide_vector_state`),
    /// which says where it put the xmm registers.
    pub wide: bool,
}

/// A trampoline's saved registers, with where its vector registers are.
struct TrampolineFrame<'a> {
    regs: &'a super::tramp::TrampolineRegs,
    wide: bool,
}

impl Regs for TrampolineFrame<'_> {
    fn greg(&self, index: usize) -> u64 {
        self.regs.greg(index)
    }

    fn xmm(&self, index: usize) -> Option<[u8; 16]> {
        // SAFETY: `regs` is what the trampoline passed to `on_trampoline`, still running.
        unsafe { super::tramp::saved_xmm(self.regs, self.wide, index) }
    }
}

/// The trampoline callback of native breakpoints: the same captures as the trap handler, from
/// the registers the trampoline saved, with no signal. Allocation-free and lock-free.
pub(crate) extern "C" fn on_trampoline(regs: *mut super::tramp::TrampolineRegs, user: *const ()) {
    // SAFETY: the trampoline passes its saved registers and the `TrampolineUsers` it was
    // installed with, which outlives it (freed only after removal drained every callback).
    let (regs, users) = unsafe { (&*regs, &*user.cast::<TrampolineUsers>()) };
    let frame = TrampolineFrame {
        regs,
        wide: users.wide,
    };
    for user in users.users.iter() {
        capture(user, &frame);
    }
}

/// Captures the variables of `user` into a ring record, if its gate admits this hit.
fn capture<R: Regs>(user: &User, regs: &R) {
    let gate = &*user.gate;
    gate.hits.fetch_add(1, Ordering::Relaxed);
    if !gate.open.load(Ordering::Relaxed) || !gate.admit(now_ns()) {
        return;
    }
    let hint = (regs.greg(libc::REG_RSP as usize) >> 16) as usize;
    let Some(mut slot) = rings().reserve(hint, user.max_record) else {
        gate.lost.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let buf = slot.buf();
    buf[..8].copy_from_slice(&user.line.to_le_bytes());
    buf[8..10].copy_from_slice(&user.addr_index.to_le_bytes());
    buf[10..12].copy_from_slice(&(user.captures.len() as u16).to_le_bytes());
    let mut at = HEADER;
    for cap in user.captures.iter() {
        at = capture_var(cap, regs, buf, at);
    }
    slot.commit(at);
    gate.captured.fetch_add(1, Ordering::Relaxed);
}

/// Writes one variable's part of a record at `at`; returns the end.
fn capture_var<R: Regs>(cap: &VarCapture, regs: &R, buf: &mut [u8], at: usize) -> usize {
    let status_at = at;
    let len_at = at + 1;
    let data = at + 3;
    let mut status = VAR_OK;
    let mut len = cap.inline;
    match &cap.loc {
        Loc::Greg(r) => {
            let bytes = regs.greg(*r).to_le_bytes();
            len = len.min(8);
            buf[data..data + len].copy_from_slice(&bytes[..len]);
        }
        Loc::Xmm(x) => match regs.xmm(*x) {
            Some(bytes) => {
                len = len.min(16);
                buf[data..data + len].copy_from_slice(&bytes[..len]);
            }
            None => {
                status = VAR_UNREADABLE;
                len = 0;
            }
        },
        Loc::Mem { greg, offset } => {
            let src = regs.greg(*greg).wrapping_add(*offset as u64);
            if !guarded_copy(&mut buf[data..data + len], src) {
                status = VAR_UNREADABLE;
                len = 0;
            }
        }
        Loc::Static(a) => {
            if !guarded_copy(&mut buf[data..data + len], *a) {
                status = VAR_UNREADABLE;
                len = 0;
            }
        }
        Loc::Const(bytes) => {
            len = len.min(bytes.len());
            buf[data..data + len].copy_from_slice(&bytes[..len]);
        }
        Loc::Missing => {
            status = VAR_MISSING;
            len = 0;
        }
    }
    buf[status_at] = status;
    buf[len_at..len_at + 2].copy_from_slice(&(len as u16).to_le_bytes());
    let mut at = data + len;
    if status != VAR_OK {
        buf[at] = 0;
        return at + 1;
    }
    // The heap reads: buffers[0] is the inline bytes, buffers[k] deref k-1's result.
    let mut buffers = [(0usize, 0usize, false); MAX_DEREFS + 1];
    buffers[0] = (data, len, true);
    let derefs = &cap.derefs[..cap.derefs.len().min(MAX_DEREFS)];
    buf[at] = derefs.len() as u8;
    at += 1;
    for (k, d) in derefs.iter().enumerate() {
        let copied = deref(d, &buffers[..=k], buf, at + 4);
        let (len, ok) = match copied {
            Some(n) => (n, true),
            None => (0, false),
        };
        buf[at..at + 4]
            .copy_from_slice(&(if ok { len as u32 } else { DEREF_MISSING }).to_le_bytes());
        buffers[k + 1] = (at + 4, len, ok);
        at += 4 + len;
    }
    at
}

fn read_u64(buf: &[u8], at: usize) -> Option<u64> {
    buf.get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
}

/// Performs one heap read into `buf[out..]`; returns the bytes copied, `None` if it failed.
fn deref(d: &Deref, buffers: &[(usize, usize, bool)], buf: &mut [u8], out: usize) -> Option<usize> {
    let &(start, len, ok) = buffers.get(usize::from(d.from))?;
    if !ok {
        return None;
    }
    let src = &buf[start..start + len];
    let ptr = read_u64(src, d.ptr_offset as usize)?;
    let want = match d.len {
        DerefLen::Fixed(n) => u64::from(n),
        DerefLen::Field { offset, elem_size } => {
            read_u64(src, offset as usize)?.saturating_mul(u64::from(elem_size))
        }
    };
    let n = want.min(MAX_DEREF_BYTES as u64) as usize;
    if n == 0 {
        return Some(0);
    }
    if ptr == 0 {
        return None;
    }
    let src = ptr.wrapping_add(u64::from(d.ptr_add));
    guarded_copy(&mut buf[out..out + n], src).then_some(n)
}
