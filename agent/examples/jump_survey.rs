//! How many statement addresses of an ELF binary a `jmp rel32` into a trampoline may patch, and
//! why the others are refused: indexes the binary with [`DebugIndex::build`], runs the analysis
//! ([`qualifies_code_with`]) on every statement address of its line table against the file's
//! own bytes (jump tables read from its read-only sections), and prints the tally by
//! [`Why::kind`].
//!
//! ```text
//! cargo run --release -p sonde-agent --features native --example jump_survey -- target/release/sonde
//! ```
//!
//! Function extents come from the symbol table (the DWARF subprogram walk `qualifies` does per
//! address would take hours over a large binary; for a function in one piece the two agree).

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    survey::run()
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn main() {
    eprintln!("native breakpoints are Linux x86_64 only");
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod survey {
    use std::{collections::BTreeMap, ops::Range, path::PathBuf, time::Instant};

    use object::{
        LittleEndian, Object, ObjectSection, ObjectSymbol, ObjectSymbolTable, RelocationFlags,
        RelocationTarget, SectionFlags, elf,
        read::elf::{ElfFile64, ProgramHeader},
    };
    use sonde_agent::native::{DebugIndex, Why, qualifies_code_with};

    pub fn run() -> Result<(), Box<dyn std::error::Error>> {
        let path: PathBuf = std::env::args_os()
            .nth(1)
            .ok_or("usage: jump_survey <ELF binary with line tables>")?
            .into();
        let started = Instant::now();
        let index = DebugIndex::build(&path, 0)?;
        let binary = std::fs::read(&path)?;
        let obj = object::File::parse(&binary[..])?;
        let addrs = index.statement_addresses();
        let (files, rows) = index.stats();
        println!(
            "{}: {files} files, {rows} statement rows indexed, {} distinct statement addresses",
            path.display(),
            addrs.len()
        );

        let code_of = |range: &Range<u64>| -> Option<&[u8]> {
            obj.sections().find_map(|s| {
                let (a, size) = (s.address(), s.size());
                (a <= range.start && range.end <= a + size)
                    .then(|| s.data().ok())
                    .flatten()
                    .and_then(|d| d.get((range.start - a) as usize..(range.end - a) as usize))
            })
        };
        let read = loaded_read_only(&obj, &binary)?;
        let mut functions: Vec<Range<u64>> = obj
            .symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
            .map(|s| s.address()..s.address() + s.size())
            .collect();
        functions.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
        functions.dedup_by_key(|r| r.start);

        let mut why: BTreeMap<String, usize> = BTreeMap::new();
        let mut shapes: BTreeMap<String, usize> = BTreeMap::new();
        let mut lens: BTreeMap<usize, usize> = BTreeMap::new();
        let mut ok = 0usize;
        let mut cached: Option<(Range<u64>, &[u8])> = None;
        for &addr in &addrs {
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
        let total = addrs.len();
        println!(
            "{ok} of {total} statement addresses qualify ({:.1}%), in {:.1?}",
            100.0 * ok as f64 / total.max(1) as f64,
            started.elapsed()
        );
        let mut why: Vec<_> = why.into_iter().collect();
        why.sort_by_key(|(w, n)| (std::cmp::Reverse(*n), w.clone()));
        for (w, n) in why {
            println!("  refused, {w}: {n}");
        }
        let mut shapes: Vec<_> = shapes.into_iter().collect();
        shapes.sort_by_key(|(s, n)| (std::cmp::Reverse(*n), s.clone()));
        for (s, n) in shapes.iter().take(15) {
            println!("  qualifies, displaced {s}: {n}");
        }
        println!("  displaced bytes (length: addresses): {lens:?}");
        Ok(())
    }

    /// What the analysis may read at run time, from the file: the sections loaded read-only,
    /// and the `PT_GNU_RELRO` part (the GOT, `.data.rel.ro`) as the dynamic linker fills it
    /// before it makes it read-only (an address from another object reads as 0, which is in
    /// no function of this binary).
    fn loaded_read_only<'a>(
        obj: &'a object::File<'a>,
        binary: &'a [u8],
    ) -> Result<impl Fn(u64, &mut [u8]) -> bool + 'a, Box<dyn std::error::Error>> {
        let elf = ElfFile64::<'_, LittleEndian>::parse(binary)?;
        let endian = elf.endian();
        let relro: Vec<Range<u64>> = elf
            .elf_program_headers()
            .iter()
            .filter(|h| h.p_type(endian) == elf::PT_GNU_RELRO)
            .map(|h| h.p_vaddr(endian)..h.p_vaddr(endian) + h.p_filesz(endian))
            .collect();
        let sections: Vec<(u64, &[u8], bool)> = obj
            .sections()
            .filter_map(|s| {
                let SectionFlags::Elf { sh_flags, .. } = s.flags() else {
                    return None;
                };
                let loaded = sh_flags.0 & elf::SHF_ALLOC.0 != 0;
                let writable = sh_flags.0 & elf::SHF_WRITE.0 != 0;
                let data = s.data().ok().filter(|d| !d.is_empty())?;
                loaded.then_some((s.address(), data, writable))
            })
            .collect();
        let symbols = obj.dynamic_symbol_table();
        let mut filled: BTreeMap<u64, u64> = BTreeMap::new();
        for (at, r) in obj.dynamic_relocations().into_iter().flatten() {
            let RelocationFlags::Elf { r_type } = r.flags() else {
                continue;
            };
            let symbol = match r.target() {
                RelocationTarget::Symbol(i) => {
                    symbols.as_ref().and_then(|t| t.symbol_by_index(i).ok())
                }
                _ => None,
            };
            let value = match r_type {
                elf::R_X86_64_RELATIVE => Some(r.addend() as u64),
                elf::R_X86_64_GLOB_DAT | elf::R_X86_64_JUMP_SLOT | elf::R_X86_64_64 => {
                    symbol.map(|s| {
                        if s.is_undefined() {
                            0
                        } else {
                            s.address().wrapping_add(r.addend() as u64)
                        }
                    })
                }
                _ => None,
            };
            if let Some(value) = value {
                filled.insert(at, value);
            }
        }
        Ok(move |addr: u64, buf: &mut [u8]| -> bool {
            let Some(end) = addr.checked_add(buf.len() as u64) else {
                return false;
            };
            let in_relro = relro.iter().any(|r| r.start <= addr && end <= r.end);
            let Some(&(start, data, _)) = sections.iter().find(|&&(a, d, writable)| {
                a <= addr && end <= a + d.len() as u64 && (!writable || in_relro)
            }) else {
                return false;
            };
            let at = (addr - start) as usize;
            buf.copy_from_slice(&data[at..at + buf.len()]);
            if in_relro {
                for (&slot, value) in filled.range(addr.saturating_sub(7)..end) {
                    for (k, byte) in value.to_le_bytes().into_iter().enumerate() {
                        if let Some(b) = (slot + k as u64)
                            .checked_sub(addr)
                            .and_then(|i| buf.get_mut(i as usize))
                        {
                            *b = byte;
                        }
                    }
                }
            }
            true
        })
    }
}
