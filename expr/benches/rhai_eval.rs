//! General expressions (target ≤ 300 ns on the native lane): operators, a method call, an index
//! and concatenation, an `if`; the last scenario needs rhai (`upper` is not native).

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
    assert!(contains.is_native());
    c.bench_function("rhai/condition method call (native)", |b| {
        b.iter(|| black_box(&contains).eval_condition(black_box(vars.as_slice())))
    });

    let label = compile(
        "order.items[len - 5] + \"-\" + order.customer.tier.to_upper()",
        ExprKind::Label,
    )
    .expect("compiles");
    assert!(label.is_native());
    let mut out = String::with_capacity(64);
    c.bench_function("rhai/label index + concatenation (native)", |b| {
        b.iter(|| {
            out.clear();
            black_box(&label).eval_label(black_box(vars.as_slice()), &mut out)
        })
    });

    let branch = compile(
        "if order.total > 10 { order.total * 1.5 } else { len * 2 }",
        ExprKind::Value,
    )
    .expect("compiles");
    assert!(branch.is_native());
    c.bench_function("rhai/value if (native)", |b| {
        b.iter(|| black_box(&branch).eval_f64(black_box(vars.as_slice())))
    });

    // Issue 19's three forms, evaluated together as one hit would (lookup lends its values).
    let three = [
        compile(
            "order.country.contains(\"Z\") && order.total > 3",
            ExprKind::Condition,
        ),
        compile(
            "order.items[-1] + \"/\" + order.customer.tier",
            ExprKind::Label,
        ),
        compile("order.total * 2 + len", ExprKind::Value),
    ]
    .map(|e| e.expect("compiles"));
    assert!(three.iter().all(|e| e.is_native()));
    c.bench_function("rhai/three issue-19 forms (native)", |b| {
        b.iter(|| {
            let vars = black_box(vars.as_slice());
            let ok = three[0].eval_condition(vars) == Ok(true);
            out.clear();
            let label = three[1].eval_label(vars, &mut out);
            (ok, label, three[2].eval_f64(vars))
        })
    });

    let rhai = compile(
        "upper(user.name) == \"ADA\" && order.total > 10",
        ExprKind::Condition,
    )
    .expect("compiles");
    assert!(!rhai.is_native());
    c.bench_function("rhai/condition rhai lane: upper()", |b| {
        b.iter(|| black_box(&rhai).eval_condition(black_box(vars.as_slice())))
    });
}

criterion_group! { name = benches; config = common::config(); targets = rhai_eval }
criterion_main!(benches);
