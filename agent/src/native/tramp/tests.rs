//! A census of which statement addresses of a binary qualify for a trampoline, by reason
//! (ignored by default: it prints a table). `examples/jump_survey.rs` does the same through
//! the public API, reading the GOT as the dynamic linker fills it.

use std::collections::BTreeMap;

use object::{Object, ObjectSection, ObjectSymbol, SectionFlags, elf};

use super::*;
use crate::native::DebugIndex;

/// Runs the analysis on every statement address of a binary and prints the tallies:
/// `SONDE_TRAMP_CENSUS=target/release/sonde cargo test -p sonde-agent --features native --lib
/// tramp::tests::census -- --ignored --nocapture` (without the variable: this test binary).
#[test]
#[ignore = "prints a census; run by hand"]
fn census() {
    let path = std::env::var("SONDE_TRAMP_CENSUS").ok();
    let (index, file) = match &path {
        Some(p) => (
            DebugIndex::build(std::path::Path::new(p), 0).expect("index"),
            std::fs::read(p).expect("binary"),
        ),
        None => (
            DebugIndex::for_current_exe().expect("index"),
            std::fs::read("/proc/self/exe").expect("binary"),
        ),
    };
    let obj = object::File::parse(&file[..]).expect("elf");
    let bias = index.bias();
    let code_of = |range: &Range<u64>| -> Option<Vec<u8>> {
        let (start, end) = (range.start - bias, range.end - bias);
        obj.sections().find_map(|s| {
            let (a, size) = (s.address(), s.size());
            (a <= start && end <= a + size)
                .then(|| s.data().ok())
                .flatten()
                .map(|d| d[(start - a) as usize..(end - a) as usize].to_vec())
        })
    };
    // Jump tables: from the sections loaded read-only (at the same bias as the code).
    let read_only: Vec<(u64, &[u8])> = obj
        .sections()
        .filter(|s| {
            matches!(s.flags(), SectionFlags::Elf { sh_flags, .. }
                if sh_flags.0 & elf::SHF_ALLOC.0 != 0 && sh_flags.0 & elf::SHF_WRITE.0 == 0)
        })
        .filter_map(|s| Some((s.address() + bias, s.data().ok()?)))
        .collect();
    let read = |addr: u64, buf: &mut [u8]| -> bool {
        read_only.iter().any(|&(a, data)| {
            let Some(bytes) = addr
                .checked_sub(a)
                .and_then(|at| data.get(at as usize..at as usize + buf.len()))
            else {
                return false;
            };
            buf.copy_from_slice(bytes);
            true
        })
    };
    let mut addrs: Vec<u64> = index
        .by_addr
        .iter()
        .map(|&i| index.rows[i as usize].addr + bias)
        .collect();
    addrs.dedup();
    let mut why: BTreeMap<String, usize> = BTreeMap::new();
    let mut shapes: BTreeMap<String, usize> = BTreeMap::new();
    let mut lens: BTreeMap<usize, usize> = BTreeMap::new();
    // Function extents from the symbol table (one lookup per address; the DWARF subprogram
    // walk `qualifies` does would take hours over a large binary). For a function in one piece
    // the two agree.
    let mut functions: Vec<Range<u64>> = obj
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
        .map(|s| s.address() + bias..s.address() + s.size() + bias)
        .collect();
    functions.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
    functions.dedup_by_key(|r| r.start);
    let mut cached: Option<(Range<u64>, Vec<u8>)> = None;
    let (mut ok, mut total) = (0usize, 0usize);
    for addr in addrs {
        total += 1;
        if cached.as_ref().is_none_or(|(r, _)| !r.contains(&addr)) {
            let at = functions.partition_point(|r| r.start <= addr);
            cached = at
                .checked_sub(1)
                .map(|i| functions[i].clone())
                .filter(|r| r.contains(&addr))
                .and_then(|r| code_of(&r).map(|code| (r, code)));
        }
        let result = match &cached {
            Some((range, code)) => qualifies_code_with(code, range.start, addr, &read),
            None => Err(Why::NoFunction(addr)),
        };
        match result {
            Ok(plan) => {
                ok += 1;
                *shapes.entry(plan.mnemonics().join("+")).or_default() += 1;
                *lens.entry(plan.len()).or_default() += 1;
            }
            Err(w) => *why.entry(w.kind()).or_default() += 1,
        }
    }
    println!(
        "{}: {ok} of {total} statement addresses qualify ({:.1}%)",
        path.as_deref().unwrap_or("this test binary"),
        100.0 * ok as f64 / total.max(1) as f64
    );
    let mut why: Vec<_> = why.into_iter().collect();
    why.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for (w, n) in why {
        println!("  refused, {w}: {n}");
    }
    let mut shapes: Vec<_> = shapes.into_iter().collect();
    shapes.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for (s, n) in shapes.iter().take(15) {
        println!("  qualifies, displaced {s}: {n}");
    }
    println!("  displaced lengths: {lens:?}");
    assert!(total > 0);
}
