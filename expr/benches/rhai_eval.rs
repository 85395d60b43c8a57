//! Operator expressions (target ≤ 300 ns): the first three run on the native lane, the last in rhai.

mod common;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sonde_expr::{ExprKind, compile};

fn rhai_eval(c: &mut Criterion) {
    let vars = common::vars();
    let total = compile("order.total * 2", ExprKind::Value).expect("compiles");
    assert!(!total.is_fast_path());
    c.bench_function("rhai/value order.total * 2", |b| {
        b.iter(|| black_box(&total).eval_f64(black_box(vars.as_slice())))
    });

    let cond = compile("len > 3 && name == \"x\"", ExprKind::Condition).expect("compiles");
    c.bench_function("rhai/condition len > 3 && name == \"x\"", |b| {
        b.iter(|| black_box(&cond).eval_condition(black_box(vars.as_slice())))
    });

    let py = compile(
        "len(order.items) > 1 and not user.name == \"bob\"",
        ExprKind::Condition,
    )
    .expect("compiles");
    c.bench_function("rhai/condition python-style", |b| {
        b.iter(|| black_box(&py).eval_condition(black_box(vars.as_slice())))
    });

    let contains = compile(
        "user.name.contains(\"d\") && order.total > 10",
        ExprKind::Condition,
    )
    .expect("compiles");
    assert!(!contains.is_native());
    c.bench_function("rhai/condition rhai lane: method call", |b| {
        b.iter(|| black_box(&contains).eval_condition(black_box(vars.as_slice())))
    });
}

criterion_group! { name = benches; config = common::config(); targets = rhai_eval }
criterion_main!(benches);
