//! Hits a thread passes by: a small per-thread table, read before anything of the site's program.
//!
//! After a hit, a site's program may answer that this thread's next `quiet` hits are of no
//! interest to it (its tracepoints are sure to sample them out). The thread then passes them by
//! here: it finds the site's entry in a table of its own (in the thread's static TLS block, no
//! allocation) and counts one down, touching neither the program nor the grace section's counter.
//! In a busy service that is most of what a hit costs: each page it touches is a cache and TLB
//! miss when the hit comes.
//!
//! The hits passed by are owed to the program, which gets them with the next hit it sees on this
//! thread ([`take`]), so it can count them. An entry is valid for one publication of the site's
//! program (the site's generation): when the site is armed again, the entry is stale, its hits
//! are dropped (fewer than one run) and the next hit goes to the new program. An entry that still
//! owes hits is never evicted by another site's; that site then simply goes without passing hits
//! by on this thread until the entry is paid.

use std::cell::Cell;

/// Entries per thread: direct-mapped by the site's address.
const ENTRIES: usize = 8;

/// 32 bytes, aligned: an entry never straddles two cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Entry {
    /// The site's address; 0 for a free entry.
    site: usize,
    /// The site's generation when the run began.
    generation: u64,
    /// The run's length: hits to pass by when it began.
    run: u32,
    /// Hits still to pass by; the `run - quiet` passed by are owed to the program. (Counting
    /// one word down, not two, keeps the pass-by free of any constant to load.)
    quiet: u32,
}

/// An entry no site holds.
const FREE: Entry = Entry {
    site: 0,
    generation: 0,
    run: 0,
    quiet: 0,
};

/// The table, on cache lines of its own.
#[repr(C, align(64))]
struct Table([Cell<Entry>; ENTRIES]);

thread_local! {
    static TABLE: Table = const { Table([const { Cell::new(FREE) }; ENTRIES]) };
}

#[inline]
fn index(site: usize) -> usize {
    ((site >> 6) ^ (site >> 12)) % ENTRIES
}

/// Passes this hit by if the thread's run for `site` at `generation` has hits left; says whether
/// it did.
#[inline]
pub(crate) fn pass(site: usize, generation: u64) -> bool {
    TABLE
        .try_with(|table| {
            let cell = &table.0[index(site)];
            let mut e = cell.get();
            if e.site != site || e.generation != generation || e.quiet == 0 {
                return false;
            }
            e.quiet -= 1;
            cell.set(e);
            true
        })
        .unwrap_or(false)
}

/// The hits passed by that `site`'s program at `generation` is owed (0 if none); they are paid.
#[inline]
pub(crate) fn take(site: usize, generation: u64) -> u64 {
    TABLE
        .try_with(|table| {
            let cell = &table.0[index(site)];
            let e = cell.get();
            if e.site != site {
                return 0;
            }
            // This site's entry: paid now, or stale (a new generation: its hits are dropped).
            cell.set(FREE);
            if e.generation == generation {
                u64::from(e.run - e.quiet)
            } else {
                0
            }
        })
        .unwrap_or(0)
}

/// Starts a run of `quiet` hits to pass by for `site` at `generation` (capped at `u32::MAX`),
/// unless the entry is held by another site that is still owed hits.
#[inline]
pub(crate) fn start(site: usize, generation: u64, quiet: u64) {
    if quiet == 0 {
        return;
    }
    let _ = TABLE.try_with(|table| {
        let cell = &table.0[index(site)];
        let e = cell.get();
        if e.site != site && e.site != 0 && e.run > e.quiet {
            return;
        }
        let run = u32::try_from(quiet).unwrap_or(u32::MAX);
        cell.set(Entry {
            site,
            generation,
            run,
            quiet: run,
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_passes_its_hits_by_and_the_next_hit_collects_them() {
        let site = 0x1000_0040;
        start(site, 7, 3);
        assert!(pass(site, 7));
        assert!(pass(site, 7));
        assert!(pass(site, 7));
        assert!(!pass(site, 7), "the run is over");
        assert_eq!(take(site, 7), 3);
        assert_eq!(take(site, 7), 0, "paid once");
    }

    #[test]
    fn a_new_generation_drops_the_run() {
        let site = 0x2000_0040;
        start(site, 1, 5);
        assert!(pass(site, 1));
        assert!(
            !pass(site, 2),
            "armed again: the run was for the old program"
        );
        assert_eq!(take(site, 2), 0, "its hits are not owed to the new program");
        assert!(!pass(site, 1), "the stale entry is gone");
    }

    #[test]
    fn an_entry_owed_hits_is_not_taken_by_another_site() {
        let a = 0x3000_0000;
        // Another address with the same index.
        let b = (1..)
            .map(|k| a + k * 64)
            .find(|b| index(*b) == index(a))
            .unwrap();
        start(a, 1, 2);
        assert!(pass(a, 1));
        start(b, 1, 10);
        assert!(!pass(b, 1), "b could not start a run over a's unpaid entry");
        assert!(pass(a, 1));
        assert_eq!(take(a, 1), 2);
        start(b, 1, 10);
        assert!(pass(b, 1), "once a is paid, b may use the entry");
        assert_eq!(take(b, 1), 1);
    }
}
