//! What the native catalog costs on a large binary: the time to build the debug-info index (the
//! agent does it once, on its own thread, after start), the memory it adds, the files listed, and
//! the time and size of a `lines` answer per file (every line with code and its variables) and per
//! line.
//!
//! ```sh
//! cargo run --release -p sonde-agent --features native --example catalog_bench -- [BINARY] [N | FILE...]
//! ```
//!
//! BINARY defaults to the workspace's `target/release/sonde`; N (default 5) is how many of its
//! own source files to answer `lines` for, the ones with the most lines with code first, or the
//! FILEs named (as a tracepoint's path names them, `src/cli.rs`) are answered instead. Build
//! the binary with `debug = 2` for variables (`CARGO_PROFILE_RELEASE_DEBUG=2 cargo build
//! --release`): with line tables only, lines are listed without variables.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn main() {
    use std::time::Instant;

    use sonde_agent::native::{DebugIndex, catalog_files, catalog_lines};

    let mut args = std::env::args().skip(1);
    let path = args.next().map_or_else(
        || {
            std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/release/sonde"
            ))
        },
        std::path::PathBuf::from,
    );
    let rest: Vec<String> = args.collect();
    let (top, named): (usize, Vec<String>) = match rest.first().map(|a| a.parse::<usize>()) {
        None => (5, Vec::new()),
        Some(Ok(n)) => (n, Vec::new()),
        Some(Err(_)) => (rest.len(), rest),
    };
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());

    let rss_before = rss_kib("VmRSS:");
    let anon_before = rss_kib("RssAnon:");
    let started = Instant::now();
    let index = DebugIndex::build(&path, 0).expect("the binary has debug info");
    let built = started.elapsed();
    let rss_after = rss_kib("VmRSS:");
    let anon_after = rss_kib("RssAnon:");
    let (files, rows) = index.stats();
    println!(
        "binary {} ({:.1} MB): {files} files, {rows} statement addresses, variables: {}",
        path.display(),
        size as f64 / 1e6,
        index.has_variables()
    );
    println!(
        "index: built in {:.0} ms; RSS {:.1} -> {:.1} MB (+{:.1} MB, the binary mapped and read \
         included)",
        built.as_secs_f64() * 1e3,
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        (rss_after - rss_before) as f64 / 1024.0
    );
    println!(
        "index: of which the agent's own memory (RssAnon; the rest is the file's pages, shared \
         with the page cache): {:.1} -> {:.1} MB (+{:.1} MB)",
        anon_before as f64 / 1024.0,
        anon_after as f64 / 1024.0,
        (anon_after - anon_before) as f64 / 1024.0
    );

    let started = Instant::now();
    let own = catalog_files(&index, false);
    let listing = started.elapsed();
    let all = catalog_files(&index, true);
    let own_bytes: usize = own.iter().map(|f| f.len() + 2).sum();
    println!(
        "files: {} own of {} in all, listed in {:.2} ms, about {own_bytes} bytes on the wire",
        own.len(),
        all.len(),
        listing.as_secs_f64() * 1e3
    );

    let mut by_size: Vec<(usize, &String)> =
        own.iter().map(|f| (index.code_lines(f).len(), f)).collect();
    by_size.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let total_lines: usize = by_size.iter().map(|(n, _)| n).sum();
    println!("own files have {total_lines} lines with code in all");
    if !named.is_empty() {
        by_size = named
            .iter()
            .map(|f| (index.code_lines(f).len(), f))
            .collect();
    }
    println!("file | lines with code | variables | lines answer | bytes | one line (median)");
    for (n, file) in by_size.iter().take(top) {
        let started = Instant::now();
        let lines = catalog_lines(&index, file, None).expect("lines");
        let whole = started.elapsed();
        let variables: usize = lines.iter().map(|l| l.variables.len()).sum();
        // Wire size: names, types and reasons, plus a few bytes of framing per item.
        let bytes: usize = lines
            .iter()
            .map(|l| {
                8 + l
                    .variables
                    .iter()
                    .map(|v| {
                        8 + v.name.len()
                            + v.type_name.as_ref().map_or(0, String::len)
                            + v.why.map_or(0, str::len)
                            + v.detail.len()
                    })
                    .sum::<usize>()
            })
            .sum();
        let mut one: Vec<f64> = lines
            .iter()
            .step_by((lines.len() / 20).max(1))
            .map(|l| {
                let started = Instant::now();
                let _ = catalog_lines(&index, file, Some(l.line));
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        one.sort_by(f64::total_cmp);
        println!(
            "{file} | {n} | {variables} | {:.1} ms | {bytes} | {:.2} ms",
            whole.as_secs_f64() * 1e3,
            one.get(one.len() / 2).copied().unwrap_or(0.0)
        );
    }
}

/// A `/proc/self/status` figure in KiB (`VmRSS:`, `RssAnon:`).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn rss_kib(key: &str) -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn main() {
    eprintln!("native breakpoints are Linux x86_64 only");
}
