//! Disarmed site: a loop body with and without `probe!` (target ≤ 1 ns per iteration over the
//! bare code).
//!
//! The same body runs 1,024 times per measured iteration, from an input the optimizer cannot
//! see (`black_box`), into a result it must produce (`black_box`). The body is a serial
//! dependency chain (rotate, xor) so neither version is vectorized and the difference is the
//! site's own cost: one relaxed load and a branch per iteration. No agent runs, so every site
//! is disarmed. Divide the reported time by 1,024 for a figure per iteration.

mod common;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sonde_agent::probe;

const N: usize = 1024;

#[inline(never)]
fn bare(xs: &[u64]) -> u64 {
    let mut acc = 0u64;
    for &a in xs {
        let b = a.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        acc = acc.rotate_left(5) ^ b;
    }
    acc
}

#[inline(never)]
fn probed(xs: &[u64]) -> u64 {
    let mut acc = 0u64;
    for &a in xs {
        let b = a.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        probe!(a, b);
        acc = acc.rotate_left(5) ^ b;
    }
    acc
}

/// A site with every kind of capture: plain, `name = expr` (never evaluated while disarmed),
/// `?debug` and `%display`.
#[inline(never)]
fn probed_rich(xs: &[u64], tag: &str) -> u64 {
    let mut acc = 0u64;
    for &a in xs {
        let b = a.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        probe!(a, b, label = format!("{tag}-{a}"), ?tag, %a);
        acc = acc.rotate_left(5) ^ b;
    }
    acc
}

fn disarmed_site(c: &mut Criterion) {
    let xs: Vec<u64> = (0..N as u64).collect();
    assert!(
        sonde_agent::sites().all(|s| !s.is_armed()),
        "no agent runs here"
    );
    let mut g = c.benchmark_group("disarmed_site");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("bare_loop_x1024", |b| {
        b.iter(|| black_box(bare(black_box(&xs))))
    });
    g.bench_function("probe_a_b_x1024", |b| {
        b.iter(|| black_box(probed(black_box(&xs))))
    });
    g.bench_function("probe_rich_x1024", |b| {
        b.iter(|| black_box(probed_rich(black_box(&xs), black_box("t"))))
    });
    g.finish();

    // One site per measured iteration: criterion's own loop is the bare code.
    let mut g = c.benchmark_group("disarmed_site_single");
    g.bench_function("bare", |b| {
        b.iter(|| {
            let a = black_box(1u64);
            let b = black_box(2u64);
            black_box(a ^ b)
        })
    });
    g.bench_function("probe_a_b", |b| {
        b.iter(|| {
            let a = black_box(1u64);
            let b = black_box(2u64);
            probe!(a, b);
            black_box(a ^ b)
        })
    });
    g.finish();
}

criterion_group! { name = benches; config = common::config(); targets = disarmed_site }
criterion_main!(benches);
