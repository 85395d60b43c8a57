//! Armed hit, general expressions: a COUNTER with condition `total > 3 && country != "x"`, value
//! `total * 2` and label `country + "-" + tier`, over plain captured variables (target ≤ 1 µs per
//! hit).
//!
//! `as_written` is that tracepoint: sonde-expr evaluates all three on its native lane (operators,
//! and string `+` written straight into the label buffer). `all_rhai` makes each of the three
//! enter rhai (`upper`, `float` and `str` are not native): `total > 3 && upper(country) != "X"`,
//! `float(total) * 2`, `str(country) + "-" + tier`.
//! `condition_false` is a hit the condition rejects.

mod common;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sonde_agent::probe;

#[inline(never)]
fn checkout(country: &str, tier: &str, total: f64) {
    probe!(country, tier, total);
}

fn armed_rhai_expressions(c: &mut Criterion) {
    let (agent, registry) = common::agent();
    let site = common::site(&["country", "tier", "total"]);
    let mut g = c.benchmark_group("armed_rhai_expressions");

    let variants = [
        (
            "as_written",
            r#"total > 3 && country != "x""#,
            "total * 2",
            r#"country + "-" + tier"#,
        ),
        (
            "all_rhai",
            r#"total > 3 && upper(country) != "X""#,
            "float(total) * 2",
            r#"str(country) + "-" + tier"#,
        ),
    ];
    for (name, condition, value, label) in variants {
        for (src, kind) in [
            (condition, sonde_expr::ExprKind::Condition),
            (value, sonde_expr::ExprKind::Value),
            (label, sonde_expr::ExprKind::Label),
        ] {
            let e = sonde_expr::compile(src, kind).expect("compiles");
            assert_eq!(e.is_native(), name == "as_written", "{src}");
        }
        let tp = common::counter_tracepoint(
            "tp-bench",
            site,
            &format!("bench_{name}"),
            value,
            vec![common::label("segment", label)],
            Some(condition),
        );
        agent.apply(vec![tp]);
        common::assert_bound(&agent);
        checkout("NZ", "gold", 12.5);
        let text = common::exposition(&registry);
        assert!(
            text.contains(&format!(
                r#"deep_bench_{name}_total{{segment="NZ-gold"}} 25"#
            )),
            "{text}"
        );
        g.bench_function(name, |b| {
            b.iter(|| checkout(black_box("NZ"), black_box("gold"), black_box(12.5)))
        });
        if name == "as_written" {
            g.bench_function("condition_false", |b| {
                b.iter(|| checkout(black_box("NZ"), black_box("gold"), black_box(1.0)))
            });
        }
        common::assert_bound(&agent);
        assert_eq!(agent.statuses()[0].message, "", "no evaluation errors");
    }
    g.finish();
    agent.shutdown();
}

criterion_group! { name = benches; config = common::config(); targets = armed_rhai_expressions }
criterion_main!(benches);
