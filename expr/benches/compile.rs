//! Compile: source to `Expr` for small expressions (target ≤ 5 µs).

mod common;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sonde_expr::{ExprKind, compile};

fn compile_small(c: &mut Criterion) {
    c.bench_function("compile/path user.id", |b| {
        b.iter(|| compile(black_box("user.id"), ExprKind::Label))
    });
    c.bench_function("compile/rhai order.total * 2", |b| {
        b.iter(|| compile(black_box("order.total * 2"), ExprKind::Value))
    });
    c.bench_function("compile/rhai len > 3 && name == \"x\"", |b| {
        b.iter(|| compile(black_box("len > 3 && name == \"x\""), ExprKind::Condition))
    });
}

criterion_group! { name = benches; config = common::config(); targets = compile_small }
criterion_main!(benches);
