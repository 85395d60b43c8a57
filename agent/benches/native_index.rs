//! Native breakpoints' debug-info index: time to build it for a large binary (target ≤ 2 s for
//! 20 MB) and a `file:line` lookup afterwards (target ≤ 1 ms).
//!
//! The binary indexed is `$SONDE_NATIVE_BENCH_BINARY`, else the workspace's
//! `target/release/sonde` if it has been built, else this bench binary itself; its path and size
//! are printed first. Building reads every unit's line program and DIEs on one thread, as the
//! agent does on its own thread at start-up.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn index(c: &mut Criterion) {
    use sonde_agent::native::DebugIndex;

    let path = std::env::var_os("SONDE_NATIVE_BENCH_BINARY")
        .map(PathBuf::from)
        .or_else(|| {
            let release = PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/release/sonde"
            ));
            release.exists().then_some(release)
        })
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    let index = DebugIndex::build(&path, 0).expect("the bench binary has debug info");
    let (files, rows) = index.stats();
    eprintln!(
        "indexing {} ({:.1} MB): {files} files, {rows} statement addresses, variables: {}",
        path.display(),
        size as f64 / 1e6,
        index.has_variables()
    );

    c.bench_function("native_index_build", |b| {
        b.iter(|| DebugIndex::build(black_box(&path), 0).expect("debug info"))
    });

    // A line with code in the binary's `main.rs` (or any file it has).
    let file = if index.matching_files("src/main.rs").is_empty() {
        "native_index.rs"
    } else {
        "src/main.rs"
    };
    let line = index.lookup(file, 1).nearest.after.unwrap_or(1);
    assert!(
        !index.lookup(file, line).is_empty(),
        "{file}:{line} has code"
    );
    c.bench_function("native_index_lookup_file_line", |b| {
        b.iter(|| index.lookup(black_box(file), black_box(line)))
    });
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn index(_: &mut Criterion) {}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .sample_size(10)
}

criterion_group! { name = benches; config = config(); targets = index }
criterion_main!(benches);
