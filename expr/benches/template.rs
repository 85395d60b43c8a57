//! Templates: a log line with a fast-path hole and an interpreted hole.

mod common;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sonde_expr::{ExprKind, compile};

fn template(c: &mut Criterion) {
    let vars = common::vars();
    let t = compile(
        "basket {len(order.items)} for {user.name}",
        ExprKind::Template,
    )
    .expect("compiles");
    let mut out = String::with_capacity(128);
    c.bench_function("template/basket {len(order.items)} for {user.name}", |b| {
        b.iter(|| {
            out.clear();
            black_box(&t).render(black_box(vars.as_slice()), &mut out)
        })
    });
}

criterion_group! { name = benches; config = common::config(); targets = template }
criterion_main!(benches);
