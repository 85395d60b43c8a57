//! Interpreted expressions: rhai over slot values from the lookup (target ≤ 300 ns).

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use sonde_expr::{compile, ExprKind};

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

    let py = compile("len(order.items) > 1 and not user.name == \"bob\"", ExprKind::Condition)
        .expect("compiles");
    c.bench_function("rhai/condition python-style", |b| {
        b.iter(|| black_box(&py).eval_condition(black_box(vars.as_slice())))
    });
}

criterion_group! { name = benches; config = common::config(); targets = rhai_eval }
criterion_main!(benches);
