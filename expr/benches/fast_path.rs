//! Fast path: a plain variable path evaluated without entering rhai (target ≤ 30 ns).

mod common;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sonde_expr::{ExprKind, compile};

fn fast_path(c: &mut Criterion) {
    let vars = common::vars();
    let id = compile("user.id", ExprKind::Value).expect("compiles");
    assert!(id.is_fast_path());
    c.bench_function("fast_path/value user.id", |b| {
        b.iter(|| black_box(&id).eval_f64(black_box(vars.as_slice())))
    });

    let country = compile("order.customer.country", ExprKind::Label).expect("compiles");
    let mut out = String::with_capacity(64);
    c.bench_function("fast_path/label order.customer.country", |b| {
        b.iter(|| {
            out.clear();
            black_box(&country).eval_label(black_box(vars.as_slice()), &mut out)
        })
    });

    let active = compile("user.active", ExprKind::Condition).expect("compiles");
    c.bench_function("fast_path/condition user.active", |b| {
        b.iter(|| black_box(&active).eval_condition(black_box(vars.as_slice())))
    });

    let literal = compile("42", ExprKind::Value).expect("compiles");
    c.bench_function("fast_path/value literal 42", |b| {
        b.iter(|| black_box(&literal).eval_f64(black_box(vars.as_slice())))
    });
}

criterion_group! { name = benches; config = common::config(); targets = fast_path }
criterion_main!(benches);
