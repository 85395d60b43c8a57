//! Byte rings from the trap handler to the decoder thread: lock-free, allocation-free and safe to
//! write from a signal handler.
//!
//! There are [`RINGS`] rings. A writer takes one with a single compare-and-swap on its `busy`
//! flag (starting from one picked by its stack address, so threads spread out, and moving on
//! when a ring is taken, which also covers a trap nested inside the handler), writes one record
//! and releases it. Each ring therefore has one writer at a time and one reader (the decoder),
//! and the positions are plain monotonically increasing counters. A record that finds no free
//! ring, or no room, is dropped and counted, never waited for.
//!
//! A record is `[u32 length][payload]`, contiguous in the buffer; when it would run past the
//! end, a length of `u32::MAX` marks the rest as skipped and the record starts at offset 0.

use std::{
    cell::UnsafeCell,
    sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
};

/// Number of rings.
pub(crate) const RINGS: usize = 16;
/// Bytes per ring.
const RING_BYTES: usize = 256 << 10;
const WRAP: u32 = u32::MAX;

/// The set of rings.
pub(crate) struct Rings {
    rings: Box<[Ring]>,
    /// Records dropped because every ring was busy or full.
    pub dropped: AtomicU64,
}

struct Ring {
    busy: AtomicBool,
    /// Bytes written (published), a running total.
    tail: AtomicUsize,
    /// Bytes consumed by the reader, a running total.
    head: AtomicUsize,
    buf: Box<[UnsafeCell<u8>]>,
}

// SAFETY: the buffer is written only by the writer holding `busy` in the region between `tail`
// and `head + len` (not yet visible to the reader), and read only by the single reader in the
// region between `head` and `tail` (published with Release, read with Acquire).
unsafe impl Sync for Ring {}

/// A reservation in a ring, held by one writer until [`Slot::commit`] or drop (which abandons
/// the record).
pub(crate) struct Slot<'a> {
    ring: &'a Ring,
    start: usize,
    /// Where the record's payload begins, after any wrap skip.
    at: usize,
    cap: usize,
}

impl Rings {
    pub fn new() -> Self {
        Self {
            rings: (0..RINGS)
                .map(|_| Ring {
                    busy: AtomicBool::new(false),
                    tail: AtomicUsize::new(0),
                    head: AtomicUsize::new(0),
                    buf: (0..RING_BYTES).map(|_| UnsafeCell::new(0)).collect(),
                })
                .collect(),
            dropped: AtomicU64::new(0),
        }
    }

    /// Reserves room for a record of up to `max` payload bytes, in a free ring starting from
    /// the one `hint` picks. Async-signal-safe.
    pub fn reserve(&self, hint: usize, max: usize) -> Option<Slot<'_>> {
        for i in 0..RINGS {
            let ring = &self.rings[(hint + i) % RINGS];
            if ring
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            if let Some(slot) = ring.reserve(max) {
                return Some(slot);
            }
            ring.busy.store(false, Ordering::Release);
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Calls `f` with each complete record's payload, oldest first per ring, and frees them.
    pub fn drain(&self, mut f: impl FnMut(&[u8])) {
        for ring in self.rings.iter() {
            ring.drain(&mut f);
        }
    }
}

impl Ring {
    fn reserve(&self, max: usize) -> Option<Slot<'_>> {
        let need = 4 + max;
        if need > RING_BYTES / 2 {
            return None;
        }
        let tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Acquire);
        let offset = tail % RING_BYTES;
        // Skip to the start when the record would not fit before the end.
        let skip = if offset + need > RING_BYTES {
            RING_BYTES - offset
        } else {
            0
        };
        if tail + skip + need - head > RING_BYTES {
            return None;
        }
        if skip >= 4 {
            self.write_u32(offset, WRAP);
        }
        Some(Slot {
            ring: self,
            start: tail,
            at: (tail + skip) % RING_BYTES,
            cap: max,
        })
    }

    fn byte(&self, i: usize) -> *mut u8 {
        self.buf[i].get()
    }

    fn write_u32(&self, offset: usize, v: u32) {
        for (k, b) in v.to_le_bytes().into_iter().enumerate() {
            // SAFETY: within the writer's reserved region (see `unsafe impl Sync`).
            unsafe { *self.byte(offset + k) = b };
        }
    }

    fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        for (k, out) in b.iter_mut().enumerate() {
            // SAFETY: within the reader's published region.
            *out = unsafe { *self.byte(offset + k) };
        }
        u32::from_le_bytes(b)
    }

    fn drain(&self, f: &mut impl FnMut(&[u8])) {
        let tail = self.tail.load(Ordering::Acquire);
        let mut head = self.head.load(Ordering::Relaxed);
        while head < tail {
            let offset = head % RING_BYTES;
            if RING_BYTES - offset < 4 {
                head += RING_BYTES - offset;
                continue;
            }
            let len = self.read_u32(offset);
            if len == WRAP {
                head += RING_BYTES - offset;
                continue;
            }
            let len = len as usize;
            // SAFETY: a published record lies contiguously after its length.
            let payload =
                unsafe { std::slice::from_raw_parts(self.byte(offset + 4).cast_const(), len) };
            f(payload);
            head += 4 + len;
        }
        self.head.store(head, Ordering::Release);
    }
}

impl Slot<'_> {
    /// The record's payload buffer (`max` bytes, to be filled from the start).
    pub fn buf(&mut self) -> &mut [u8] {
        // SAFETY: `at + 4 .. at + 4 + cap` is inside the buffer (checked in `reserve`) and is
        // this writer's alone until commit.
        unsafe { std::slice::from_raw_parts_mut(self.ring.byte(self.at + 4), self.cap) }
    }

    /// Publishes the first `len` bytes of the payload as a record.
    pub fn commit(self, len: usize) {
        let len = len.min(self.cap);
        self.ring.write_u32(self.at, len as u32);
        let skipped = (self.at + RING_BYTES - self.start % RING_BYTES) % RING_BYTES;
        self.ring
            .tail
            .store(self.start + skipped + 4 + len, Ordering::Release);
        // Drop releases `busy`.
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.ring.busy.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_out_whole_and_in_order_across_wraps() {
        let rings = Rings::new();
        let mut seen = Vec::new();
        let mut next = 0u32;
        // Far more than one ring holds, so the ring wraps many times.
        for round in 0..200 {
            for _ in 0..50 {
                let len = 100 + (next as usize * 37) % 900;
                let mut slot = rings.reserve(0, len).expect("room after each drain");
                let buf = slot.buf();
                buf[..4].copy_from_slice(&next.to_le_bytes());
                buf[4..len].fill(next as u8);
                slot.commit(len);
                next += 1;
            }
            rings.drain(|r| {
                let n = u32::from_le_bytes(r[..4].try_into().unwrap());
                assert!(r[4..].iter().all(|b| *b == n as u8), "round {round}");
                assert_eq!(r.len(), 100 + (n as usize * 37) % 900);
                seen.push(n);
            });
        }
        assert_eq!(seen, (0..next).collect::<Vec<_>>());
        assert_eq!(rings.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_busy_ring_sends_the_writer_to_the_next_and_a_full_one_drops() {
        let rings = Rings::new();
        let first = rings.reserve(3, 10).expect("free");
        let second = rings.reserve(3, 10).expect("the next ring");
        assert!(!std::ptr::eq(first.ring, second.ring));
        drop((first, second));
        // Fill ring 0 (one writer, no drain) until it refuses.
        let mut written = 0;
        while let Some(mut s) = rings.reserve(0, 60_000) {
            s.buf()[0] = 1;
            s.commit(60_000);
            written += 1;
            if written > RINGS * 8 {
                break;
            }
        }
        assert!(rings.dropped.load(Ordering::Relaxed) >= 1);
    }
}
