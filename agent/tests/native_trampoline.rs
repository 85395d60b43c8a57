//! Trampolines (`jmp rel32` into generated code, no signal) on code of this test binary: hit
//! counts and a local read through the saved registers are exact from several threads, the
//! patched code computes the same results, every register, the flags, the vector registers and
//! the red zone survive a callback that clobbers them, removal while threads run is safe, and
//! the analysis refuses what it cannot prove (a displaced call, a branch into the patched
//! bytes, a jump table whose index nothing bounds, a tail call through a register). Lines of a
//! `match` lowered to a jump table qualify, and every arm runs through its trampoline with the
//! same results: unoptimized in this file, and optimized (`opt-level = 2`) in a small library
//! this test compiles with `rustc` and loads.
//!
//! Lines are found by marker comments in this file (built with `debug = 2`:
//! `[profile.dev.package.sonde-agent]`) and in the library's source below; exact register
//! contents are checked on a small function written in assembly below. Installing stops every
//! thread of the process for a moment, which the other tests running alongside tolerate.
#![cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod markers;

use std::{
    hint::black_box,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use sonde_agent::native::{
    CapturePlan, DebugIndex, Plan, Trampoline, TrampolineRegs, Why, qualifies, qualifies_code,
};

const FILE: &str = "tests/native_trampoline.rs";

#[inline(never)]
fn scaled(i: u64, k: u64) -> u64 {
    let base = black_box(i.wrapping_mul(3));
    let out = base.wrapping_add(k); // @hit
    black_box(out)
}

#[inline(never)]
fn toggled(i: u64) -> u64 {
    let doubled = black_box(i.wrapping_mul(2));
    let out = doubled ^ 0x55; // @toggle
    black_box(out)
}

#[inline(never)]
fn nothing() {
    black_box(());
}

#[inline(never)]
fn calls_first() -> u64 {
    nothing(); // @call
    black_box(7)
}

/// A `match` that rustc lowers to a jump table (at this file's `opt-level = 0` too), one line
/// per arm.
#[inline(never)]
fn dispatch(op: u8, a: u64) -> u64 {
    let a = black_box(a);
    match black_box(op) {
        0 => a.wrapping_add(1), // @arm0
        1 => a.wrapping_mul(3), // @arm1
        2 => a ^ 0xFF,          // @arm2
        3 => a.rotate_left(7),  // @arm3
        4 => a.wrapping_sub(9), // @arm4
        5 => a >> 2,            // @arm5
        6 => a << 3,            // @arm6
        7 => !a,                // @arm7
        _ => a,                 // @arm_
    }
}

/// `dispatch`'s arms' markers, by arm (the last: any other `op`).
const ARMS: [&str; 9] = [
    "// @arm0", "// @arm1", "// @arm2", "// @arm3", "// @arm4", "// @arm5", "// @arm6", "// @arm7",
    "// @arm_",
];

/// What `dispatch` returns, and the arm it takes.
fn dispatch_expected(op: u8, a: u64) -> (u64, usize) {
    match op {
        0 => (a.wrapping_add(1), 0),
        1 => (a.wrapping_mul(3), 1),
        2 => (a ^ 0xFF, 2),
        3 => (a.rotate_left(7), 3),
        4 => (a.wrapping_sub(9), 4),
        5 => (a >> 2, 5),
        6 => (a << 3, 6),
        7 => (!a, 7),
        _ => (a, 8),
    }
}

// The register check: `sonde_tramp_kernel(x, out)` sets every general-purpose register and
// xmm0-15 to `x + k`, puts `x` in the red zone and sets CF from `x < 1000`; at
// `sonde_tramp_kernel_patch` (the probed span: a 7-byte `lea` and a `mov` from the red zone,
// which touch no flags) nothing has been disturbed; after it, it dumps everything into `out`:
// [rax, rbx, rcx, rdx, rsi, rdi, rbp, <unused>, r8..r15, <unused>, rflags, xmm0..xmm15 (low
// 64 bits)].
std::arch::global_asm!(
    ".pushsection .text.sonde_tramp_kernel,\"ax\",@progbits",
    ".globl sonde_tramp_kernel",
    ".globl sonde_tramp_kernel_patch",
    ".globl sonde_tramp_kernel_end",
    "sonde_tramp_kernel:",
    "push rbx",
    "push rbp",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "push rsi",
    ".irp k,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "lea r11, [rdi + \\k]",
    "movq xmm\\k, r11",
    ".endr",
    "mov rax, rdi",
    "lea rbx, [rdi + 1]",
    "lea rcx, [rdi + 2]",
    "lea rdx, [rdi + 3]",
    "lea rsi, [rdi + 4]",
    "lea rbp, [rdi + 6]",
    "lea r8, [rdi + 8]",
    "lea r9, [rdi + 9]",
    "lea r10, [rdi + 10]",
    "lea r11, [rdi + 11]",
    "lea r12, [rdi + 12]",
    "lea r13, [rdi + 13]",
    "lea r14, [rdi + 14]",
    "lea r15, [rdi + 15]",
    "mov [rsp - 8], rdi",
    "cmp rdi, 1000",
    "sonde_tramp_kernel_patch:",
    "lea r10, [r10 + 0x100000]",
    "mov r11, [rsp - 8]",
    "pushfq",
    "push rax",
    "mov rax, [rsp + 16]",
    "pop qword ptr [rax]",
    "pop qword ptr [rax + 8 * 18]",
    "mov [rax + 8 * 1], rbx",
    "mov [rax + 8 * 2], rcx",
    "mov [rax + 8 * 3], rdx",
    "mov [rax + 8 * 4], rsi",
    "mov [rax + 8 * 5], rdi",
    "mov [rax + 8 * 6], rbp",
    "mov [rax + 8 * 8], r8",
    "mov [rax + 8 * 9], r9",
    "mov [rax + 8 * 10], r10",
    "mov [rax + 8 * 11], r11",
    "mov [rax + 8 * 12], r12",
    "mov [rax + 8 * 13], r13",
    "mov [rax + 8 * 14], r14",
    "mov [rax + 8 * 15], r15",
    ".irp k,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    "movq [rax + 8 * 19 + 8 * \\k], xmm\\k",
    ".endr",
    "pop rsi",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbp",
    "pop rbx",
    "ret",
    "sonde_tramp_kernel_end:",
    // Never run: counted as part of the function, it makes the analysis see AVX code, so the
    // trampoline saves the whole vector state with xsave.
    ".globl sonde_tramp_kernel_wide_end",
    "vzeroupper",
    "sonde_tramp_kernel_wide_end:",
    // Refusal shapes, never called. A call among the displaced bytes:
    ".globl sonde_tramp_calls",
    ".globl sonde_tramp_calls_end",
    "sonde_tramp_calls:",
    "xor eax, eax",
    "call sonde_tramp_kernel_end",
    "ret",
    "sonde_tramp_calls_end:",
    // A loop whose back edge lands inside the bytes after `sonde_tramp_loop_patch`:
    ".globl sonde_tramp_loop",
    ".globl sonde_tramp_loop_patch",
    ".globl sonde_tramp_loop_end",
    "sonde_tramp_loop:",
    "mov ecx, 10",
    "sonde_tramp_loop_patch:",
    "xor eax, eax",
    "2:",
    "add rax, rcx",
    "dec rcx",
    "jnz 2b",
    "ret",
    "sonde_tramp_loop_end:",
    ".popsection",
);

unsafe extern "C" {
    fn sonde_tramp_kernel(x: u64, out: *mut [u64; 35]);
    fn sonde_tramp_kernel_patch();
    fn sonde_tramp_kernel_end();
    fn sonde_tramp_kernel_wide_end();
    fn sonde_tramp_calls();
    fn sonde_tramp_calls_end();
    fn sonde_tramp_loop();
    fn sonde_tramp_loop_patch();
    fn sonde_tramp_loop_end();
}

fn kernel(x: u64) -> [u64; 35] {
    let mut out = [0u64; 35];
    // Safety: the kernel writes 35 words to `out` and preserves the callee-saved registers.
    unsafe { sonde_tramp_kernel(x, &mut out) };
    out
}

/// Held by the tests that run `sonde_tramp_kernel` or patch it: installing refuses (`Busy`) while
/// another test's thread is inside the bytes it would displace, so they take turns.
fn kernel_lock() -> std::sync::MutexGuard<'static, ()> {
    static KERNEL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    KERNEL.lock().unwrap_or_else(|p| p.into_inner())
}

fn kernel_expected(x: u64) -> [u64; 35] {
    let mut out = [0u64; 35];
    for (k, o) in out.iter_mut().enumerate().take(16) {
        *o = x + k as u64;
    }
    out[5] = x; // rdi
    out[7] = 0;
    out[10] = x + 10 + 0x10_0000; // r10 after the displaced lea
    out[11] = x; // r11 from the red zone
    out[16] = 0;
    out[18] = 0; // rflags: compared with an unpatched run instead
    for k in 0..16 {
        out[19 + k] = x + k as u64;
    }
    out
}

/// The code of `start..end` in this process.
fn code(start: u64, end: u64) -> Vec<u8> {
    let mut out = vec![0u8; (end - start) as usize];
    // Safety: a function of this binary's text, mapped readable.
    unsafe { std::ptr::copy_nonoverlapping(start as *const u8, out.as_mut_ptr(), out.len()) };
    out
}

fn index() -> &'static DebugIndex {
    static INDEX: OnceLock<DebugIndex> = OnceLock::new();
    INDEX.get_or_init(|| DebugIndex::for_current_exe().expect("this test binary has DWARF"))
}

fn line_of(marker: &str) -> u32 {
    markers::line(include_str!("native_trampoline.rs"), marker)
}

/// The single address of a marked line.
fn address_of(marker: &str) -> u64 {
    let found = index().lookup(FILE, line_of(marker));
    assert_eq!(found.addresses.len(), 1, "{marker}: {found:?}");
    found.addresses[0].address
}

/// Where a variable is at `addr`, as (DWARF register, offset for memory or `None`).
fn plan_of(addr: u64, name: &str) -> Loc {
    let vars = index().variables_at(addr).expect("readable DWARF");
    let var = vars.iter().rev().find(|v| v.name == name).expect(name);
    match var.plan {
        CapturePlan::Reg(r) => (r, None),
        CapturePlan::Mem { reg, offset } => (reg, Some(offset)),
        ref other => panic!("{name} at {addr:#x}: {other:?}"),
    }
}

/// Where a variable is: DWARF register, and the offset when it is in memory at it.
type Loc = (u16, Option<i64>);
/// A second variable and how its value follows from the first's.
type Derived = (Loc, fn(u64) -> u64);

/// What a line's callback counts: hits, and the sum of a local read through the registers.
#[derive(Debug)]
struct Probe {
    hits: AtomicU64,
    sum: AtomicU64,
    /// Hits where a second local did not have the value derived from the first.
    wrong: AtomicU64,
    first: Loc,
    second: Option<Derived>,
}

fn read(regs: &TrampolineRegs, (reg, offset): Loc) -> u64 {
    let r = regs.dwarf(reg).unwrap_or(0);
    match offset {
        None => r,
        // Safety: the variable's stack slot in the patched frame, which is live.
        Some(off) => unsafe { std::ptr::read_volatile(r.wrapping_add(off as u64) as *const u64) },
    }
}

extern "C" fn count(regs: *mut TrampolineRegs, user: *const ()) {
    // Safety: the trampoline passes its saved registers and the `&'static Probe` given at
    // installation.
    let (regs, probe) = unsafe { (&*regs, &*user.cast::<Probe>()) };
    probe.hits.fetch_add(1, Ordering::Relaxed);
    let v = read(regs, probe.first);
    probe.sum.fetch_add(v, Ordering::Relaxed);
    if let Some((loc, derive)) = probe.second
        && read(regs, loc) != derive(v)
    {
        probe.wrong.fetch_add(1, Ordering::Relaxed);
    }
}

fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

#[test]
fn hits_and_a_local_are_exact_from_several_threads_and_results_unchanged() {
    let addr = address_of("// @hit");
    let plan = qualifies(index(), addr).expect("the line qualifies");
    assert!(plan.len() >= 5, "{plan:?}");
    let probe = leak(Probe {
        hits: AtomicU64::new(0),
        sum: AtomicU64::new(0),
        wrong: AtomicU64::new(0),
        first: plan_of(addr, "i"),
        second: Some((plan_of(addr, "base"), |i| i.wrapping_mul(3))),
    });
    // Safety: `count` reads only the patched frame; `probe` lives forever.
    let mut tramp = unsafe { Trampoline::install(&plan, count, (probe as *const Probe).cast()) }
        .expect("installs");
    assert_eq!(
        probe.hits.load(Ordering::Relaxed),
        0,
        "no hit before a call"
    );

    const THREADS: u64 = 4;
    const CALLS: u64 = 20_000;
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut bad = 0u64;
                for n in 0..CALLS {
                    let i = t * CALLS + n;
                    if scaled(i, 5) != i.wrapping_mul(3).wrapping_add(5) {
                        bad += 1;
                    }
                }
                bad
            })
        })
        .collect();
    let bad: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    tramp.remove().expect("removes");
    assert_eq!(bad, 0, "the patched function computed something else");
    assert_eq!(probe.hits.load(Ordering::Relaxed), THREADS * CALLS);
    let n = THREADS * CALLS;
    assert_eq!(
        probe.sum.load(Ordering::Relaxed),
        n * (n - 1) / 2,
        "`i` read through the registers"
    );
    assert_eq!(probe.wrong.load(Ordering::Relaxed), 0, "`base` == 3 * `i`");

    scaled(1, 1);
    assert_eq!(
        probe.hits.load(Ordering::Relaxed),
        n,
        "no hit after removal"
    );
    assert_eq!(code(addr, addr + plan.len() as u64), plan.original());
}

/// What the register callback found wrong, and how often it ran.
#[derive(Debug, Default)]
struct RegCheck {
    hits: AtomicU64,
    wrong: AtomicU64,
    patch: AtomicU64,
}

extern "C" fn check_and_clobber(regs: *mut TrampolineRegs, user: *const ()) {
    // Safety: as in `count`.
    let (regs, check) = unsafe { (&*regs, &*user.cast::<RegCheck>()) };
    check.hits.fetch_add(1, Ordering::Relaxed);
    let x = regs.rdi;
    let gprs = [
        regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp, 0, regs.r8, regs.r9,
        regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
    ];
    let mut ok = gprs
        .iter()
        .enumerate()
        .all(|(k, &v)| k == 5 || k == 7 || v == x + k as u64);
    ok &= regs.rip == check.patch.load(Ordering::Relaxed);
    ok &= (regs.rflags & 1 == 1) == (x < 1000);
    // Safety: the kernel's frame: `x` in the red zone, the `out` pointer on top.
    ok &= unsafe { std::ptr::read_volatile((regs.rsp - 8) as *const u64) } == x;
    ok &= regs.rsp % 16 == 0; // call (8) + 7 pushes (56) from an aligned caller
    if !ok {
        check.wrong.fetch_add(1, Ordering::Relaxed);
    }
    // Clobber every caller-saved register, the vector registers (and their upper halves where
    // there is AVX) and the flags, as any callee may.
    // Safety: only registers declared as clobbered are written.
    unsafe {
        std::arch::asm!(
            "pcmpeqd xmm0, xmm0",
            ".irp k,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
            "movdqa xmm\\k, xmm0",
            ".endr",
            "mov rax, -1", "mov rcx, -1", "mov rdx, -1", "mov rsi, -1", "mov rdi, -1",
            "mov r8, -1", "mov r9, -1", "mov r10, -1", "mov r11, -1",
            "cmp rax, 0",
            out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _, out("xmm4") _,
            out("xmm5") _, out("xmm6") _, out("xmm7") _, out("xmm8") _, out("xmm9") _,
            out("xmm10") _, out("xmm11") _, out("xmm12") _, out("xmm13") _, out("xmm14") _,
            out("xmm15") _,
        );
        if std::arch::is_x86_feature_detected!("avx") {
            // Dirty the upper halves; the kernel reads only the low 64 bits, so this checks
            // that `vzeroupper`-free state restore does not fault or corrupt the low halves.
            std::arch::asm!("vpcmpeqd ymm0, ymm0, ymm0", "vpcmpeqd ymm8, ymm8, ymm8",
                out("xmm0") _, out("xmm8") _);
        }
    }
}

#[test]
fn registers_flags_vectors_and_the_red_zone_survive_the_callback() {
    let _kernel = kernel_lock();
    let (start, patch) = (
        sonde_tramp_kernel as *const () as u64,
        sonde_tramp_kernel_patch as *const () as u64,
    );
    let xs = |t: u64| (0..5_000u64).map(move |n| t * 700 + n); // both sides of 1000
    // Unpatched: what the kernel leaves, flags included.
    let baseline: Arc<Vec<Vec<[u64; 35]>>> =
        Arc::new((0..3).map(|t| xs(t).map(kernel).collect()).collect());
    for (x, mut out) in xs(1).zip(baseline[1].iter().copied()) {
        assert_eq!(out[18] & 1 == 1, x < 1000, "CF, x = {x}");
        out[18] = 0;
        assert_eq!(out, kernel_expected(x), "unpatched, x = {x}");
    }
    // SSE-only code (xmm0-15 and MXCSR saved), then the same with AVX code in the function
    // (the whole state saved with xsavec/xsave).
    for (end, wide) in [
        (sonde_tramp_kernel_end as *const () as u64, false),
        (sonde_tramp_kernel_wide_end as *const () as u64, true),
    ] {
        let plan = qualifies_code(&code(start, end), start, patch).expect("qualifies");
        assert_eq!(
            plan.mnemonics(),
            ["lea"],
            "7 bytes: one instruction is enough"
        );
        assert_eq!(plan.uses_wide_vector_state(), wide);
        let check = leak(RegCheck::default());
        check.patch.store(patch, Ordering::Relaxed);
        // Safety: the callback reads the kernel's frame only; `check` lives forever.
        let mut tramp = unsafe {
            Trampoline::install(&plan, check_and_clobber, (check as *const RegCheck).cast())
        }
        .expect("installs");
        let workers: Vec<_> = (0..3u64)
            .map(|t| {
                let baseline = baseline.clone();
                std::thread::spawn(move || {
                    xs(t)
                        .zip(&baseline[t as usize])
                        .filter(|(x, expected)| kernel(*x) != **expected)
                        .count()
                })
            })
            .collect();
        let bad: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        tramp.remove().expect("removes");
        assert_eq!(
            bad, 0,
            "wide = {wide}: a register, the flags or the red zone changed"
        );
        assert_eq!(check.hits.load(Ordering::Relaxed), 15_000);
        assert_eq!(
            check.wrong.load(Ordering::Relaxed),
            0,
            "wide = {wide}: the callback saw registers other than the patch point's"
        );
    }
}

#[test]
fn removal_while_threads_run_through_the_line_is_safe() {
    let addr = address_of("// @toggle");
    let plan = qualifies(index(), addr).expect("the line qualifies");
    let probe = leak(Probe {
        hits: AtomicU64::new(0),
        sum: AtomicU64::new(0),
        wrong: AtomicU64::new(0),
        first: plan_of(addr, "i"),
        second: Some((plan_of(addr, "doubled"), |i| i.wrapping_mul(2))),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3u64)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut calls, mut bad) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let i = t << 40 | calls;
                    if toggled(i) != i.wrapping_mul(2) ^ 0x55 {
                        bad += 1;
                    }
                    calls += 1;
                }
                (calls, bad)
            })
        })
        .collect();
    for round in 0..40 {
        // Safety: as above.
        let mut tramp =
            unsafe { Trampoline::install(&plan, count, (probe as *const Probe).cast()) }
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        std::thread::sleep(Duration::from_millis(2));
        tramp
            .remove()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(!tramp.is_installed());
    }
    let after = probe.hits.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    let (calls, bad): (u64, u64) = workers
        .into_iter()
        .map(|w| w.join().unwrap())
        .fold((0, 0), |(c, b), (c2, b2)| (c + c2, b + b2));
    assert_eq!(bad, 0, "results changed while patching and unpatching");
    assert!(after > 0, "the line was hit while patched");
    assert_eq!(
        probe.hits.load(Ordering::Relaxed),
        after,
        "hits after the last removal returned"
    );
    assert!(calls > after, "calls also ran unpatched ({calls} calls)");
    assert_eq!(probe.wrong.load(Ordering::Relaxed), 0);
    assert_eq!(code(addr, addr + plan.len() as u64), plan.original());
}

#[test]
fn a_displaced_call_is_refused() {
    black_box(calls_first());
    let addr = address_of("// @call");
    match qualifies(index(), addr) {
        Err(Why::Displaced { shape, .. }) => assert_eq!(shape, "call"),
        other => panic!("{other:?}"),
    }
    let (start, end) = (
        sonde_tramp_calls as *const () as u64,
        sonde_tramp_calls_end as *const () as u64,
    );
    match qualifies_code(&code(start, end), start, start) {
        Err(Why::Displaced { at, shape, .. }) => assert_eq!((at, shape), (start + 2, "call")),
        other => panic!("{other:?}"),
    }
}

/// Whether the code at `start` jumps through a register (`jmp rax`: a jump table's dispatch).
fn jumps_through_a_register(code: &[u8], start: u64) -> bool {
    iced_x86::Decoder::with_ip(64, code, start, iced_x86::DecoderOptions::NONE)
        .iter()
        .any(|i| i.code() == iced_x86::Code::Jmp_rm64 && i.op0_kind() == iced_x86::OpKind::Register)
}

extern "C" fn hit(_regs: *mut TrampolineRegs, user: *const ()) {
    // Safety: the trampoline passes the `&'static AtomicU64` given at installation.
    unsafe { &*user.cast::<AtomicU64>() }.fetch_add(1, Ordering::Relaxed);
}

/// Installs a trampoline counting its hits at each of `plans` (all analysed before any is
/// installed), runs `calls(thread)` on 4 threads while they are in (each returns its wrong
/// results and its calls by arm), removes them, and returns the threads' wrong results and
/// calls by arm summed, and each trampoline's hits.
fn run_through_trampolines(
    plans: &[Plan],
    calls: fn(u64) -> (u64, Vec<u64>),
) -> (u64, Vec<u64>, Vec<u64>) {
    let hits: &'static [AtomicU64] =
        Box::leak((0..plans.len()).map(|_| AtomicU64::new(0)).collect());
    let mut tramps: Vec<Trampoline> = plans
        .iter()
        .zip(hits)
        .map(|(plan, h)| {
            // Safety: `hit` only counts; `h` lives forever.
            unsafe { Trampoline::install(plan, hit, (h as *const AtomicU64).cast()) }
                .unwrap_or_else(|e| panic!("{:#x}: {e}", plan.addr()))
        })
        .collect();
    let workers: Vec<_> = (0..4u64)
        .map(|t| std::thread::spawn(move || calls(t)))
        .collect();
    let (mut bad, mut arms) = (0, vec![0u64; plans.len()]);
    for w in workers {
        let (b, by_arm) = w.join().unwrap();
        bad += b;
        for (a, n) in arms.iter_mut().zip(by_arm) {
            *a += n;
        }
    }
    for t in &mut tramps {
        t.remove().expect("removes");
    }
    for plan in plans {
        assert_eq!(
            code(plan.addr(), plan.addr() + plan.len() as u64),
            plan.original()
        );
    }
    let hits = hits.iter().map(|h| h.load(Ordering::Relaxed)).collect();
    (bad, arms, hits)
}

#[test]
fn every_arm_of_a_match_on_a_jump_table_runs_through_its_trampoline() {
    assert_eq!(dispatch(1, 2), 6);
    let lines: Vec<u64> = ARMS.iter().map(|m| address_of(m)).collect();
    let function = index()
        .function_at(lines[0])
        .expect("readable DWARF")
        .expect("dispatch")
        .range;
    assert!(
        jumps_through_a_register(&code(function.start, function.end), function.start),
        "dispatch is compiled to a jump table"
    );
    // Every arm's line qualifies: the table's targets are proved, none inside a patch.
    let plans: Vec<Plan> = ARMS
        .iter()
        .zip(&lines)
        .map(|(m, &a)| qualifies(index(), a).unwrap_or_else(|w| panic!("{m}: {w}")))
        .collect();
    const CALLS: u64 = 11 * 2_000;
    let (bad, arms, hits) = run_through_trampolines(&plans, |t| {
        let (mut bad, mut arms) = (0, vec![0u64; ARMS.len()]);
        for n in 0..CALLS {
            let (op, a) = ((n % 11) as u8, t << 40 | n);
            let (expected, arm) = dispatch_expected(op, a);
            bad += u64::from(dispatch(op, a) != expected);
            arms[arm] += 1;
        }
        (bad, arms)
    });
    assert_eq!(bad, 0, "a patched arm computed something else");
    assert_eq!(
        hits, arms,
        "each arm's trampoline ran once per call of that arm"
    );
    assert_eq!(arms[0], 4 * CALLS / 11);
    assert_eq!(
        arms[8],
        3 * 4 * CALLS / 11,
        "ops 8, 9 and 10 take the last arm"
    );
}

/// A library compiled with optimizations by the test (`rustc -C opt-level=2`), loaded into
/// this process and indexed.
struct Library {
    index: DebugIndex,
    source: &'static str,
    dispatch: Dispatch,
    unchecked: Unchecked,
    tail: Tail,
    copy: CopyFn,
}

type Dispatch = extern "C" fn(u32, u64) -> u64;
type Unchecked = extern "C" fn(&u32, u64) -> u64;
type Tail = extern "C" fn(extern "C" fn(u64) -> u64, u64) -> u64;
type CopyFn = unsafe extern "C" fn(*mut u8, *const u8, usize);

/// The library's source: `sonde_jt_dispatch`'s `match` on a `u32` (bounded by `cmp edi, 7`
/// / `ja` and zero-extended by `mov ecx, edi` before the table), `sonde_jt_unchecked`'s on an
/// enum read from memory (no bound: LLVM trusts the discriminant), a tail call through a
/// register and one through the GOT (`memcpy`).
const LIBRARY: &str = r#"#![no_std]
use core::hint::black_box;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn sonde_jt_dispatch(op: u32, a: u64) -> u64 {
    match op {
        0 => a.wrapping_add(0x1111_1111), // @so0
        1 => a.wrapping_mul(0x2222_2223), // @so1
        2 => a ^ 0x3333_3333, // @so2
        3 => a.rotate_left(7) ^ 0x4444, // @so3
        4 => a.wrapping_sub(0x5555_5555), // @so4
        5 => (a >> 2) | 0x6666_0000, // @so5
        6 => (a << 3).wrapping_add(0x7777), // @so6
        7 => !a ^ 0x0888_8888, // @so7
        _ => black_box(a), // @so_
    }
}

#[repr(u32)]
#[derive(Clone, Copy)]
pub enum Op { A, B, C, D, E, F, G, H }

#[no_mangle]
#[inline(never)]
pub extern "C" fn sonde_jt_unchecked(op: &Op, a: u64) -> u64 {
    match *op {
        Op::A => a.wrapping_add(0x1111_1111),
        Op::B => a.wrapping_mul(0x2222_2223),
        Op::C => a ^ 0x3333_3333,
        Op::D => a.rotate_left(7) ^ 0x4444,
        Op::E => a.wrapping_sub(0x5555_5555),
        Op::F => (a >> 2) | 0x6666_0000,
        Op::G => (a << 3).wrapping_add(0x7777),
        Op::H => !a ^ 0x0888_8888,
    }
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn sonde_jt_tail(f: extern "C" fn(u64) -> u64, a: u64) -> u64 {
    f(a ^ 0x1234)
}

/// # Safety
/// As `copy_nonoverlapping`, for `n ^ 0x5555_5555` bytes.
#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn sonde_jt_copy(dst: *mut u8, src: *const u8, n: usize) {
    core::ptr::copy_nonoverlapping(src, dst, n ^ 0x5555_5555)
}
"#;

/// What `sonde_jt_dispatch` returns, and the arm it takes.
fn library_expected(op: u32, a: u64) -> (u64, usize) {
    match op {
        0 => (a.wrapping_add(0x1111_1111), 0),
        1 => (a.wrapping_mul(0x2222_2223), 1),
        2 => (a ^ 0x3333_3333, 2),
        3 => (a.rotate_left(7) ^ 0x4444, 3),
        4 => (a.wrapping_sub(0x5555_5555), 4),
        5 => ((a >> 2) | 0x6666_0000, 5),
        6 => ((a << 3).wrapping_add(0x7777), 6),
        7 => (!a ^ 0x0888_8888, 7),
        _ => (a, 8),
    }
}

const LIBRARY_ARMS: [&str; 9] = [
    "// @so0", "// @so1", "// @so2", "// @so3", "// @so4", "// @so5", "// @so6", "// @so7",
    "// @so_",
];

fn library() -> &'static Library {
    static LIBRARY_LOADED: OnceLock<Library> = OnceLock::new();
    LIBRARY_LOADED.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sonde_jt");
        std::fs::create_dir_all(&dir).unwrap();
        let (source, so) = (dir.join("sonde_jt.rs"), dir.join("libsonde_jt.so"));
        std::fs::write(&source, LIBRARY).unwrap();
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let out = std::process::Command::new(rustc)
            .args("--edition 2021 --crate-type cdylib --crate-name sonde_jt".split(' '))
            .args("-C opt-level=2 -C debuginfo=2 -C panic=abort -o".split(' '))
            .arg(&so)
            .arg(&source)
            .output()
            .expect("rustc runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = std::ffi::CString::new(so.to_str().unwrap()).unwrap();
        // Safety: a library of plain functions, without initializers; never unloaded (the
        // trampolines' code jumps back into it).
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!handle.is_null(), "dlopen");
        let symbol = |name: &str| {
            let name = std::ffi::CString::new(name).unwrap();
            // Safety: `handle` is the library, open for good.
            let f = unsafe { libc::dlsym(handle, name.as_ptr()) };
            assert!(!f.is_null(), "{name:?}");
            f
        };
        let dispatch = symbol("sonde_jt_dispatch");
        // Safety: `Dl_info` is plain data, all zeros a valid value.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        // Safety: `dispatch` is an address in the library; `info` is written.
        assert_ne!(unsafe { libc::dladdr(dispatch, &mut info) }, 0);
        type Sym = *mut libc::c_void;
        // Safety: the symbols are the functions of `LIBRARY`, with these signatures.
        unsafe {
            Library {
                index: DebugIndex::build(&so, info.dli_fbase as u64).expect("the library's DWARF"),
                source: LIBRARY,
                dispatch: std::mem::transmute::<Sym, Dispatch>(dispatch),
                unchecked: std::mem::transmute::<Sym, Unchecked>(symbol("sonde_jt_unchecked")),
                tail: std::mem::transmute::<Sym, Tail>(symbol("sonde_jt_tail")),
                copy: std::mem::transmute::<Sym, CopyFn>(symbol("sonde_jt_copy")),
            }
        }
    })
}

impl Library {
    /// The single address of a marked line of the library.
    fn address_of(&self, marker: &str) -> u64 {
        let found = self
            .index
            .lookup("sonde_jt.rs", markers::line(self.source, marker));
        assert_eq!(found.addresses.len(), 1, "{marker}: {found:?}");
        found.addresses[0].address
    }
}

#[test]
fn every_arm_of_an_optimized_match_on_a_jump_table_runs_through_its_trampoline() {
    let lib = library();
    let start = lib.dispatch as *const () as u64;
    let function = lib
        .index
        .function_at(start)
        .unwrap()
        .expect("dispatch")
        .range;
    assert!(jumps_through_a_register(
        &code(function.start, function.end),
        start
    ));
    let plans: Vec<Plan> = LIBRARY_ARMS
        .iter()
        .map(|m| qualifies(&lib.index, lib.address_of(m)).unwrap_or_else(|w| panic!("{m}: {w}")))
        .collect();
    const CALLS: u64 = 11 * 2_000;
    let (bad, arms, hits) = run_through_trampolines(&plans, |t| {
        let lib = library();
        let (mut bad, mut arms) = (0, vec![0u64; LIBRARY_ARMS.len()]);
        for n in 0..CALLS {
            let (op, a) = ((n % 11) as u32, t << 40 | n);
            let (expected, arm) = library_expected(op, a);
            bad += u64::from((lib.dispatch)(op, a) != expected);
            arms[arm] += 1;
        }
        (bad, arms)
    });
    assert_eq!(bad, 0, "a patched arm computed something else");
    assert_eq!(
        hits, arms,
        "each arm's trampoline ran once per call of that arm"
    );
    assert_eq!(arms[8], 3 * 4 * CALLS / 11);
}

#[test]
fn a_jump_table_without_a_bound_and_a_tail_call_through_a_register_are_refused() {
    let lib = library();
    assert_eq!((lib.unchecked)(&2, 0), 0x3333_3333);
    extern "C" fn twice(a: u64) -> u64 {
        a * 2
    }
    assert_eq!((lib.tail)(twice, 1), 0x1235 * 2);
    // `mov ecx, dword ptr [rdi]` then the table: the index is any u32.
    let at = lib.unchecked as *const () as u64;
    match qualifies(&lib.index, at) {
        Err(Why::TableUnbounded { at: jump, .. }) => assert!(jump > at),
        other => panic!("{other:?}"),
    }
    // `jmp rax` with `rax` an argument: it could go anywhere.
    let at = lib.tail as *const () as u64;
    match qualifies(&lib.index, at) {
        Err(Why::IndirectJump { at: jump, mnemonic }) => {
            assert_eq!(mnemonic, "jmp");
            assert!(jump > at);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_tail_call_through_the_got_leaves_the_function_so_its_lines_qualify() {
    let lib = library();
    let at = lib.copy as *const () as u64;
    let function = lib.index.function_at(at).unwrap().expect("copy").range;
    let bytes = code(function.start, function.end);
    let jump = iced_x86::Decoder::with_ip(64, &bytes, function.start, 0)
        .iter()
        .find(|i| i.flow_control() == iced_x86::FlowControl::IndirectBranch)
        .expect("a tail call");
    // `jmp qword ptr [rip + d]`: the slot is memcpy's in the GOT, in the library's
    // PT_GNU_RELRO, and leads out of the function.
    assert!(jump.is_ip_rel_memory_operand(), "{jump:?}");
    let slot = jump.ip_rel_memory_address();
    let target = u64::from_le_bytes(code(slot, slot + 8).try_into().unwrap());
    assert!(!function.contains(&target));
    // The function's first line: `xor rdx, 0x55555555` (7 bytes), before the jump.
    let plan = qualifies(&lib.index, at).expect("the tail call is proved to leave");
    assert_eq!(plan.mnemonics(), ["xor"]);
    let (_, _, hits) = run_through_trampolines(&[plan], |_| {
        let (src, mut dst) = ([7u8; 3], [0u8; 3]);
        // Safety: `n ^ 0x5555_5555` is 3, the arrays' length.
        unsafe { (library().copy)(dst.as_mut_ptr(), src.as_ptr(), 0x5555_5555 ^ 3) };
        (u64::from(dst != src), vec![1])
    });
    assert_eq!(hits, [4], "one call per thread");
}

#[test]
fn a_branch_into_the_patched_bytes_is_refused() {
    let (start, patch, end) = (
        sonde_tramp_loop as *const () as u64,
        sonde_tramp_loop_patch as *const () as u64,
        sonde_tramp_loop_end as *const () as u64,
    );
    match qualifies_code(&code(start, end), start, patch) {
        Err(Why::BranchInto { to, .. }) => assert_eq!(to, patch + 2, "the loop head"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn code_that_changed_since_the_analysis_is_not_patched() {
    let _kernel = kernel_lock();
    let (start, patch, end) = (
        sonde_tramp_kernel as *const () as u64,
        sonde_tramp_kernel_patch as *const () as u64,
        sonde_tramp_kernel_end as *const () as u64,
    );
    let mut bytes = code(start, end);
    let at = (patch - start) as usize;
    bytes[at + 3] ^= 0x01; // a different displacement than the real code has
    let plan = qualifies_code(&bytes, start, patch).expect("still an lea");
    let check = leak(RegCheck::default());
    // Safety: as above; it is never installed.
    let refused =
        unsafe { Trampoline::install(&plan, check_and_clobber, (check as *const RegCheck).cast()) };
    assert!(
        matches!(
            refused,
            Err(sonde_agent::native::TrampolineError::CodeChanged(a)) if a == patch
        ),
        "{refused:?}"
    );
    let mut out = kernel(5);
    out[18] = 0;
    assert_eq!(out, kernel_expected(5));
}
