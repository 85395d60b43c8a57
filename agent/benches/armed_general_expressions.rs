//! Armed hit, the three general expressions of issue 19: a COUNTER with a condition that calls a
//! method, a label that indexes a list, and a value with arithmetic (targets: ≤ 300 ns per hit
//! when all three are on sonde-expr's native lane, ≤ 1 µs when they are not).
//!
//! `native`: condition `order.country.contains("Z") && order.total > 3`, label
//! `order.items[0].sku + "/" + user.tier`, value `order.total * 2 + order.items[0].qty`, all
//! evaluated by the native lane. `rhai`: the same three with one form each that only rhai
//! evaluates (`upper`, `str`, `float` are not native), so every expression runs in rhai.
//! `native_no_list` is `native` without the index (`order.country + "/" + user.tier`,
//! `order.total * 2 + 3`): a `Vec` lends its elements, but `Item` here offers no field access
//! (no `Capture::field`, as a hand-written capture may), so reaching `items[0].sku` and
//! `items[0].qty` converts that one item each time; the difference is the cost of that.
//! `condition_false` is a hit the native condition rejects. `native_derived` is `native` on
//! types with `#[derive(Capture)]`, as an application would write them: a path reaches
//! `items[0].sku` and `items[0].qty` through the derived field and element access, converting
//! nothing but the leaf.

mod common;

use std::hint::black_box;

use common::User;
use criterion::{Criterion, criterion_group, criterion_main};
use sonde_agent::{Capture, probe};
use sonde_expr::Value;

/// An order with line items, as an application would capture it.
struct Basket {
    total: f64,
    country: String,
    items: Vec<Item>,
}

struct Item {
    sku: String,
    qty: u32,
}

impl Capture for Item {
    fn capture(&self) -> Value {
        Value::Record(vec![
            ("sku".into(), self.sku.capture()),
            ("qty".into(), self.qty.capture()),
        ])
    }
}

impl Capture for Basket {
    fn capture(&self) -> Value {
        Value::Record(vec![
            ("total".into(), self.total.capture()),
            ("country".into(), self.country.capture()),
            ("items".into(), self.items.capture()),
        ])
    }
    fn field(&self, name: &str) -> Option<&dyn Capture> {
        match name {
            "total" => Some(&self.total),
            "country" => Some(&self.country),
            "items" => Some(&self.items),
            _ => None,
        }
    }
}

#[inline(never)]
fn checkout(order: &Basket, user: &User) {
    probe!(order, user);
}

/// The same order and items with `#[derive(Capture)]`, in a module of their own so that their
/// probe site is told apart from `checkout`'s by its module.
mod derived {
    use super::User;
    use sonde_agent::{Capture, probe};

    #[derive(Capture)]
    pub struct Basket {
        pub total: f64,
        pub country: String,
        pub items: Vec<Item>,
    }

    #[derive(Capture)]
    pub struct Item {
        pub sku: String,
        pub qty: u32,
    }

    #[inline(never)]
    pub fn checkout(order: &Basket, user: &User) {
        probe!(order, user);
    }
}

fn armed_general_expressions(c: &mut Criterion) {
    let (agent, registry) = common::agent();
    let site = common::site_in(&["order", "user"], "armed_general_expressions");
    let derived_site = common::site_in(&["order", "user"], "armed_general_expressions::derived");
    let order = Basket {
        total: 12.5,
        country: "NZ".into(),
        items: vec![
            Item {
                sku: "A1".into(),
                qty: 3,
            },
            Item {
                sku: "B2".into(),
                qty: 1,
            },
        ],
    };
    let cheap = Basket {
        total: 1.0,
        country: "NZ".into(),
        items: vec![Item {
            sku: "A1".into(),
            qty: 3,
        }],
    };
    let derived_order = derived::Basket {
        total: order.total,
        country: order.country.clone(),
        items: order
            .items
            .iter()
            .map(|i| derived::Item {
                sku: i.sku.clone(),
                qty: i.qty,
            })
            .collect(),
    };
    let user = User {
        id: 7,
        tier: "gold".into(),
    };
    let mut g = c.benchmark_group("armed_general_expressions");

    let variants = [
        (
            "native",
            r#"order.country.contains("Z") && order.total > 3"#,
            "order.total * 2 + order.items[0].qty",
            r#"order.items[0].sku + "/" + user.tier"#,
        ),
        (
            "native_derived",
            r#"order.country.contains("Z") && order.total > 3"#,
            "order.total * 2 + order.items[0].qty",
            r#"order.items[0].sku + "/" + user.tier"#,
        ),
        (
            "native_no_list",
            r#"order.country.contains("Z") && order.total > 3"#,
            "order.total * 2 + 3",
            r#"order.country + "/" + user.tier"#,
        ),
        (
            "rhai",
            r#"upper(order.country).contains("Z") && order.total > 3"#,
            "float(order.total) * 2 + order.items[0].qty",
            r#"str(order.items[0].sku) + "/" + user.tier"#,
        ),
    ];
    for (name, condition, value, label) in variants {
        for (src, kind) in [
            (condition, sonde_expr::ExprKind::Condition),
            (value, sonde_expr::ExprKind::Value),
            (label, sonde_expr::ExprKind::Label),
        ] {
            let e = sonde_expr::compile(src, kind).expect("compiles");
            assert_eq!(e.is_native(), name != "rhai", "{src}");
        }
        let derived = name == "native_derived";
        let tp = common::counter_tracepoint(
            "tp-bench",
            if derived { derived_site } else { site },
            &format!("bench_{name}"),
            value,
            vec![common::label("item", label)],
            Some(condition),
        );
        agent.apply(vec![tp]);
        common::assert_bound(&agent);
        let hit = || {
            if derived {
                derived::checkout(black_box(&derived_order), black_box(&user))
            } else {
                checkout(black_box(&order), black_box(&user))
            }
        };
        hit();
        let text = common::exposition(&registry);
        let item = if name == "native_no_list" { "NZ" } else { "A1" };
        assert!(
            text.contains(&format!(
                r#"deep_bench_{name}_total{{item="{item}/gold"}} 28"#
            )),
            "{text}"
        );
        g.bench_function(name, |b| b.iter(hit));
        if name == "native" {
            g.bench_function("condition_false", |b| {
                b.iter(|| checkout(black_box(&cheap), black_box(&user)))
            });
        }
        common::assert_bound(&agent);
        assert_eq!(agent.statuses()[0].message, "", "no evaluation errors");
    }
    g.finish();
    agent.shutdown();
}

criterion_group! { name = benches; config = common::config(); targets = armed_general_expressions }
criterion_main!(benches);
