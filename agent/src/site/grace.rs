//! Grace periods: how a hit reads its site's program without a locked instruction, and how the
//! agent knows when an old program may be dropped.
//!
//! # Readers
//! Each thread that runs a hit has a *reader*: a counter only that thread writes, odd while the
//! thread is inside a hit. Entering a hit is a plain store to it (odd), a barrier, then the
//! program's pointer is loaded; leaving is another plain store (even, with release ordering). No
//! read-modify-write, so no locked instruction and no cache line shared with other threads. The
//! counter is also the re-entrancy guard: a hit reached while the thread is already inside one
//! (a probe in a provider, or in code a tracepoint evaluation calls) is skipped.
//!
//! # Writers
//! The agent replaces or clears a site's program by swapping the pointer, then waits for a grace
//! period ([`Retired`]) before dropping the old one: a process-wide barrier, then, for each reader
//! seen inside a hit, a wait until its counter moves. A hit that began after the barrier loads the
//! new pointer; one that began before has ended once its counter moved. The old program (and with
//! it the metrics it registered) is dropped on the agent's thread, never on the application's.
//!
//! # The barrier
//! The reader's barrier must order its store before its load against the writer's swap before its
//! scan. On Linux the writer issues `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which runs a
//! full fence on every CPU that is running one of the process's threads, so the reader's barrier
//! only has to stop the compiler from reordering (the asymmetric fence of userspace RCU and of
//! folly's hazard pointers). Where `membarrier` is not available (another OS, a kernel older
//! than 4.14, a seccomp filter that refuses it) both sides use a full fence, one locked
//! instruction per hit.
//!
//! Readers register on their thread's first hit (a mutex, once per thread) and unregister when
//! the thread exits.

use std::{
    cell::Cell,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering, compiler_fence, fence},
    },
    time::{Duration, Instant},
};

/// One thread's counter: odd while the thread is inside a hit. A cache line of its own, so that
/// two threads' stores never contend for one.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot {
    epoch: AtomicU64,
}

/// Every thread's slot, while the thread lives.
static READERS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());

/// The calling thread's registration.
struct Reader {
    slot: Arc<Slot>,
    /// The process-wide barrier works: the read side needs a compiler fence only.
    asymmetric: bool,
}

impl Reader {
    fn register() -> Self {
        let asymmetric = asymmetric();
        let slot = Arc::new(Slot::default());
        READERS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot.clone());
        Self { slot, asymmetric }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut readers = READERS.lock().unwrap_or_else(|p| p.into_inner());
        readers.retain(|s| !Arc::ptr_eq(s, &self.slot));
    }
}

thread_local! {
    static READER: Reader = Reader::register();
    /// Inside a read-side section: read first, without touching the registration.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Marks the thread as leaving its hit when dropped (also on unwinding).
struct Leave<'a> {
    slot: &'a Slot,
    epoch: u64,
}

impl Drop for Leave<'_> {
    #[inline]
    fn drop(&mut self) {
        // Release: whatever the hit read of the program happens before a writer sees the thread
        // out of it.
        self.slot.epoch.store(self.epoch, Ordering::Release);
        let _ = INSIDE.try_with(|i| i.set(false));
    }
}

/// Runs `f` inside a read-side section: a pointer `f` loads with [`Ordering::Acquire`] that a
/// writer unpublishes stays valid until `f` returns, provided the writer waits for a grace period
/// ([`synchronize`]) before freeing it. Returns `None` without running `f` when the thread is
/// already inside a section (a hit inside a hit), or while the thread is exiting.
#[inline]
pub(crate) fn read<R>(f: impl FnOnce() -> R) -> Option<R> {
    READER
        .try_with(|reader| {
            let slot = &*reader.slot;
            // Only this thread writes its slot: a load and a store, no read-modify-write.
            let epoch = slot.epoch.load(Ordering::Relaxed);
            if epoch & 1 != 0 {
                return None;
            }
            slot.epoch.store(epoch + 1, Ordering::Relaxed);
            let _ = INSIDE.try_with(|i| i.set(true));
            if reader.asymmetric {
                compiler_fence(Ordering::SeqCst);
            } else {
                fence(Ordering::SeqCst);
            }
            let _leave = Leave {
                slot,
                epoch: epoch + 2,
            };
            Some(f())
        })
        .ok()
        .flatten()
}

/// Whether the calling thread is inside a read-side section now (a hit inside a hit).
#[inline]
pub(crate) fn inside() -> bool {
    INSIDE.try_with(Cell::get).unwrap_or(false)
}

/// Waits until every read-side section that was running when it was called has ended. Called
/// after a pointer was swapped out, before freeing what it pointed to. Returns false, without
/// waiting, when called inside a read-side section (it would wait for itself): what was swapped
/// out must then not be freed.
pub(crate) fn synchronize() -> bool {
    if inside() {
        return false;
    }
    heavy_barrier();
    let readers: Vec<Arc<Slot>> = READERS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let started = Instant::now();
    let mut warned = false;
    for slot in readers {
        let seen = slot.epoch.load(Ordering::Acquire);
        if seen & 1 == 0 {
            continue;
        }
        let mut pause = Duration::from_micros(1);
        // Acquire: the reader's section happens before this returns.
        while slot.epoch.load(Ordering::Acquire) == seen {
            if pause < Duration::from_micros(50) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(pause);
            }
            pause = (pause * 2).min(Duration::from_millis(10));
            if !warned && started.elapsed() > Duration::from_secs(1) {
                warned = true;
                tracing::warn!(
                    "sonde agent: waiting for a thread to leave a tracepoint evaluation that has \
                     run for over a second before dropping the old tracepoints of a site"
                );
            }
        }
    }
    true
}

/// Whether the process-wide barrier is available; registers the process for it the first time.
fn asymmetric() -> bool {
    static ASYMMETRIC: OnceLock<bool> = OnceLock::new();
    *ASYMMETRIC.get_or_init(membarrier::register)
}

/// The writer's side of the barrier.
fn heavy_barrier() {
    fence(Ordering::SeqCst);
    if asymmetric() {
        // Once the process registered, the kernel does not refuse the barrier.
        let done = membarrier::expedited();
        debug_assert!(done, "membarrier failed after registering");
    }
}

#[cfg(target_os = "linux")]
mod membarrier {
    // The kernel's command numbers (include/uapi/linux/membarrier.h).
    const PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

    fn call(cmd: libc::c_long) -> bool {
        // SAFETY: membarrier takes three integers and touches no memory of ours.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                cmd,
                0 as libc::c_long,
                0 as libc::c_long,
            ) == 0
        }
    }

    /// Registers the process for private expedited barriers (Linux 4.14 and later).
    pub(super) fn register() -> bool {
        call(REGISTER_PRIVATE_EXPEDITED)
    }

    /// A full fence on every CPU running one of the process's threads.
    pub(super) fn expedited() -> bool {
        call(PRIVATE_EXPEDITED)
    }
}

#[cfg(not(target_os = "linux"))]
mod membarrier {
    pub(super) fn register() -> bool {
        false
    }

    pub(super) fn expedited() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_inside_a_section_does_not_run() {
        let outer = read(|| {
            assert!(inside());
            read(|| ()).is_none()
        });
        assert_eq!(outer, Some(true), "the inner section was skipped");
        assert!(!inside());
        assert_eq!(read(|| 7), Some(7), "a section after the first runs");
    }

    #[test]
    fn a_panic_inside_a_section_leaves_it() {
        let r = std::panic::catch_unwind(|| read(|| panic!("boom")));
        assert!(r.is_err());
        assert!(!inside(), "the unwinding left the section");
        assert_eq!(read(|| 1), Some(1));
    }

    #[test]
    fn synchronize_waits_for_a_section_that_began_before_it() {
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            read(|| {
                entered_tx.send(()).unwrap();
                go_rx.recv().unwrap();
            })
        });
        entered_rx.recv().unwrap();
        let done = Arc::new(AtomicU64::new(0));
        let writer = {
            let done = done.clone();
            std::thread::spawn(move || {
                assert!(synchronize());
                done.store(1, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            done.load(Ordering::SeqCst),
            0,
            "synchronize returned while a section was running"
        );
        go_tx.send(()).unwrap();
        writer.join().unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert_eq!(reader.join().unwrap(), Some(()));
    }

    #[test]
    fn an_exited_thread_unregisters() {
        let slot = std::thread::spawn(|| {
            read(|| ());
            READER.with(|r| r.slot.clone())
        })
        .join()
        .unwrap();
        let readers = READERS.lock().unwrap();
        assert!(
            !readers.iter().any(|s| Arc::ptr_eq(s, &slot)),
            "the exited thread's slot is still registered"
        );
    }

    #[test]
    fn synchronize_inside_a_section_refuses_instead_of_waiting_for_itself() {
        assert_eq!(read(synchronize), Some(false));
        assert!(synchronize());
    }
}
