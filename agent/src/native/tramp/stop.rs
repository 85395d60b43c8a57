//! Stopping every other thread of the process for a moment ([`with_world_stopped`]), so code
//! that spans several instructions can be rewritten while no thread runs it.
//!
//! Each thread listed in `/proc/self/task` gets a real-time signal (`tgkill`) whose handler
//! records where the thread was interrupted (its `rip` and `rsp`) and sleeps on a futex until
//! the controller releases it. The listing is repeated until every thread in it has reported:
//! once they all have, no thread but the controller runs, so none can be created. A thread that
//! does not report within [`STOP_TIMEOUT`] (it blocks the signal, or is stuck in the kernel)
//! makes the stop fail, and nothing is written.
//!
//! While the world is stopped the controller must not allocate or take a lock a stopped thread
//! might hold (the allocator's, for one): the thread lists are preallocated, `/proc/self/task`
//! is read with `getdents64` into a stack buffer, and failures are `Copy` values formatted only
//! after release. A stopped thread sleeps at most [`PARK_LIMIT`] and then resumes on its own,
//! which the controller's few microseconds of writes never approach.

use std::{
    mem::MaybeUninit,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// How long the controller waits for every thread to report.
pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a stopped thread waits for its release before resuming anyway.
const PARK_LIMIT: Duration = Duration::from_secs(20);
/// The most threads a stop handles.
const MAX_THREADS: usize = 4096;

/// Where a stopped thread was interrupted.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Stopped {
    pub tid: i32,
    pub rip: u64,
    pub rsp: u64,
}

/// Why the world could not be stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StopError {
    /// No real-time signal is free for the stop handler (or installing it failed).
    #[error("no free real-time signal for stopping threads")]
    NoSignal,
    /// The stop handler was replaced by someone else's.
    #[error("the thread-stop signal's handler was replaced")]
    HandlerReplaced,
    /// A thread did not stop in time (it blocks the signal, or is stuck in the kernel).
    #[error("thread {0} did not stop within 2 s (does it block the stop signal?)")]
    Timeout(i32),
    /// More threads than a stop handles.
    #[error("more than 4096 threads")]
    TooManyThreads,
    /// Listing `/proc/self/task` failed.
    #[error("listing /proc/self/task failed (errno {0})")]
    ListTasks(i32),
}

struct Report {
    /// The stop generation this report belongs to (0: none).
    generation: AtomicU32,
    tid: AtomicI32,
    rip: AtomicU64,
    rsp: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)] // only as an array initialiser
const EMPTY: Report = Report {
    generation: AtomicU32::new(0),
    tid: AtomicI32::new(0),
    rip: AtomicU64::new(0),
    rsp: AtomicU64::new(0),
};

static REPORTS: [Report; MAX_THREADS] = [EMPTY; MAX_THREADS];
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// The stop in progress (its generation), or the last one.
static GENERATION: AtomicU32 = AtomicU32::new(0);
/// The last generation released: stopped threads sleep on this word.
static RELEASED: AtomicU32 = AtomicU32::new(0);
static SIGNAL: OnceLock<Option<libc::c_int>> = OnceLock::new();
static CONTROLLER: Mutex<()> = Mutex::new(());

extern "C" fn on_stop(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // Safety: the kernel passes a valid ucontext to an SA_SIGINFO handler; everything below
    // is async-signal-safe (atomics and raw syscalls).
    unsafe {
        let errno = *libc::__errno_location();
        let generation = GENERATION.load(Ordering::Acquire);
        if generation != RELEASED.load(Ordering::Acquire) {
            let gregs = &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs;
            let i = COUNT.fetch_add(1, Ordering::AcqRel);
            if let Some(r) = REPORTS.get(i) {
                r.tid
                    .store(libc::syscall(libc::SYS_gettid) as i32, Ordering::Relaxed);
                r.rip
                    .store(gregs[libc::REG_RIP as usize] as u64, Ordering::Relaxed);
                r.rsp
                    .store(gregs[libc::REG_RSP as usize] as u64, Ordering::Relaxed);
                r.generation.store(generation, Ordering::Release);
            }
            park(generation);
        }
        *libc::__errno_location() = errno;
    }
}

/// Sleeps until `generation` is released (or [`PARK_LIMIT`] passes).
fn park(generation: u32) {
    let started = Instant::now();
    loop {
        let released = RELEASED.load(Ordering::Acquire);
        if released == generation || started.elapsed() > PARK_LIMIT {
            return;
        }
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        // Safety: FUTEX_WAIT on a static word; returns at once if it no longer holds
        // `released`, and after the timeout at the latest.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                RELEASED.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                released,
                &timeout as *const libc::timespec,
            );
        }
    }
}

fn release(generation: u32) {
    RELEASED.store(generation, Ordering::Release);
    // Safety: FUTEX_WAKE on a static word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            RELEASED.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

/// The stop signal: the highest real-time signal nobody handles, with the handler installed.
fn signal() -> Result<libc::c_int, StopError> {
    let sig = *SIGNAL.get_or_init(|| {
        let handler = on_stop as *const () as usize;
        for sig in (libc::SIGRTMIN() + 4..=libc::SIGRTMAX()).rev() {
            // Safety: querying and setting a signal action with zeroed, then filled, structs.
            unsafe {
                let mut cur = MaybeUninit::<libc::sigaction>::zeroed();
                if libc::sigaction(sig, std::ptr::null(), cur.as_mut_ptr()) != 0
                    || cur.assume_init().sa_sigaction != libc::SIG_DFL
                {
                    continue;
                }
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = handler;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
                libc::sigemptyset(&mut sa.sa_mask);
                if libc::sigaction(sig, &sa, std::ptr::null_mut()) == 0 {
                    return Some(sig);
                }
            }
        }
        None
    });
    let sig = sig.ok_or(StopError::NoSignal)?;
    // Safety: querying the current action only.
    let ours = unsafe {
        let mut cur = MaybeUninit::<libc::sigaction>::zeroed();
        libc::sigaction(sig, std::ptr::null(), cur.as_mut_ptr()) == 0
            && cur.assume_init().sa_sigaction == on_stop as *const () as usize
    };
    if ours {
        Ok(sig)
    } else {
        Err(StopError::HandlerReplaced)
    }
}

/// Lists the threads of this process into `out` (cleared first) without allocating.
fn list_tasks(out: &mut Vec<i32>) -> Result<(), StopError> {
    out.clear();
    // Safety: open/getdents64/close on a NUL-terminated path and a stack buffer; the records
    // are parsed within the length the kernel returned.
    unsafe {
        let fd = libc::open(
            c"/proc/self/task".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return Err(StopError::ListTasks(*libc::__errno_location()));
        }
        let mut buf = [0u8; 4096];
        let result = loop {
            let n = libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len());
            if n < 0 {
                break Err(StopError::ListTasks(*libc::__errno_location()));
            }
            if n == 0 {
                break Ok(());
            }
            let mut at = 0usize;
            let mut full = false;
            while at < n as usize {
                // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; }
                let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
                let name = &buf[at + 19..at + reclen];
                let mut tid = 0i32;
                let mut digits = 0;
                for &b in name.iter().take_while(|&&b| b != 0) {
                    if b.is_ascii_digit() {
                        tid = tid * 10 + i32::from(b - b'0');
                        digits += 1;
                    } else {
                        digits = 0;
                        break;
                    }
                }
                if digits > 0 {
                    if out.len() == out.capacity() {
                        full = true;
                        break;
                    }
                    out.push(tid);
                }
                at += reclen;
            }
            if full {
                break Err(StopError::TooManyThreads);
            }
        };
        libc::close(fd);
        result
    }
}

fn gettid() -> i32 {
    // Safety: a syscall without arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Whether thread `tid` of this process still exists.
fn alive(tid: i32) -> bool {
    // Safety: signal 0 only checks that the thread exists.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, 0) == 0 }
}

/// Stops every other thread, runs `f` with where each was, and releases them. `f` must not
/// allocate or take locks (see the module header).
pub(super) fn with_world_stopped<R>(f: impl FnOnce(&[Stopped]) -> R) -> Result<R, StopError> {
    let sig = signal()?;
    let _one_at_a_time = CONTROLLER.lock().unwrap_or_else(|p| p.into_inner());
    let mut seen: Vec<i32> = Vec::with_capacity(MAX_THREADS);
    let mut signalled: Vec<i32> = Vec::with_capacity(MAX_THREADS);
    let mut stopped: Vec<Stopped> = Vec::with_capacity(MAX_THREADS);
    let me = gettid();
    // Safety: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };

    let generation = GENERATION.load(Ordering::Relaxed).wrapping_add(1).max(1);
    COUNT.store(0, Ordering::Relaxed);
    GENERATION.store(generation, Ordering::Release);

    let outcome = (|| {
        let started = Instant::now();
        loop {
            list_tasks(&mut seen)?;
            let mut new = false;
            for &tid in &seen {
                if tid == me || signalled.contains(&tid) {
                    continue;
                }
                if signalled.len() == signalled.capacity() {
                    return Err(StopError::TooManyThreads);
                }
                // Safety: tgkill to a thread of this process with our handled signal.
                if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) } == 0 {
                    signalled.push(tid);
                    new = true;
                }
            }
            // Wait until every signalled thread has reported (or is gone).
            loop {
                let reported = COUNT.load(Ordering::Acquire).min(MAX_THREADS);
                stopped.clear();
                for r in &REPORTS[..reported] {
                    if r.generation.load(Ordering::Acquire) == generation {
                        stopped.push(Stopped {
                            tid: r.tid.load(Ordering::Relaxed),
                            rip: r.rip.load(Ordering::Relaxed),
                            rsp: r.rsp.load(Ordering::Relaxed),
                        });
                    }
                }
                let missing = signalled
                    .iter()
                    .find(|t| !stopped.iter().any(|s| s.tid == **t));
                match missing {
                    None => break,
                    Some(&tid) if started.elapsed() > STOP_TIMEOUT => {
                        if alive(tid) {
                            return Err(StopError::Timeout(tid));
                        }
                        signalled.retain(|&t| t != tid);
                    }
                    Some(_) => std::thread::yield_now(),
                }
            }
            if !new {
                return Ok(());
            }
        }
    })();
    let result = outcome.map(|()| f(&stopped));
    release(generation);
    result
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    };

    use super::*;

    #[test]
    fn every_thread_stops_and_none_runs_until_released() {
        let stop = Arc::new(AtomicBool::new(false));
        let ticks: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
        let workers: Vec<_> = (0..4)
            .map(|i| {
                let (stop, ticks) = (stop.clone(), ticks.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        ticks[i].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let snapshot = || -> Vec<u64> { ticks.iter().map(|t| t.load(Ordering::Relaxed)).collect() };
        // Every worker moved past `from` (waited for, not slept on: a loaded machine may take long).
        let all_move_past = |from: &[u64], what: &str| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !snapshot().iter().zip(from).all(|(now, was)| now > was) {
                assert!(
                    Instant::now() < deadline,
                    "{what}: {:?} after {from:?}",
                    snapshot()
                );
                std::thread::yield_now();
            }
        };
        all_move_past(&[0; 4], "every worker starts");
        for _ in 0..3 {
            let moved = with_world_stopped(|threads| {
                let before: Vec<u64> = ticks.iter().map(|t| t.load(Ordering::Relaxed)).collect();
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(30) {}
                let after: Vec<u64> = ticks.iter().map(|t| t.load(Ordering::Relaxed)).collect();
                (before != after, threads.len())
            })
            .expect("stops");
            assert!(!moved.0, "a worker ran while the world was stopped");
            assert!(moved.1 >= 4, "saw {} threads", moved.1);
        }
        all_move_past(&snapshot(), "every worker runs again");
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().expect("worker");
        }
    }
}
