//! Armed hit, plain paths: a COUNTER with labels `order.country` and `user.tier` and value
//! `order.total`, installed through an offline agent into a `PrometheusProvider` (target
//! ≤ 150 ns per hit).
//!
//! `same_labels` hits with one label set (its series is cached after the first hit);
//! `ten_label_sets` cycles through ten (all cached after the first ten hits, but the lookups
//! change every hit). `static_labels` uses fixed label values and `no_labels` none, to separate
//! the label work from the rest of the pipeline. `two_threads` runs `same_labels` on two threads
//! at once (the time is per hit on each thread): what the hit shares between threads (the
//! series' own count) shows as cache lines moving between the cores.

mod common;

use std::hint::black_box;

use common::{Order, User};
use criterion::{Criterion, criterion_group, criterion_main};
use sonde_agent::probe;

#[inline(never)]
fn checkout(order: &Order, user: &User) {
    probe!(order, user);
}

fn orders() -> Vec<(Order, User)> {
    const COUNTRIES: [&str; 5] = ["NZ", "AU", "DE", "FR", "JP"];
    const TIERS: [&str; 2] = ["gold", "basic"];
    (0..10)
        .map(|i| {
            (
                Order {
                    id: i,
                    total: 12.5,
                    country: COUNTRIES[i as usize % 5].into(),
                },
                User {
                    id: 100 + i,
                    tier: TIERS[i as usize / 5].into(),
                },
            )
        })
        .collect()
}

fn armed_plain_paths(c: &mut Criterion) {
    let (agent, registry) = common::agent();
    let site = common::site(&["order", "user"]);
    let data = orders();
    let mut g = c.benchmark_group("armed_plain_paths");

    let variants = [
        (
            "two_path_labels",
            vec![
                common::label("country", "order.country"),
                common::label("tier", "user.tier"),
            ],
        ),
        (
            "two_static_labels",
            vec![
                common::static_label("country", "NZ"),
                common::static_label("tier", "gold"),
            ],
        ),
        ("no_labels", vec![]),
    ];
    for (name, labels) in variants {
        let tp = common::counter_tracepoint(
            "tp-bench",
            site,
            &format!("bench_{name}"),
            "order.total",
            labels,
            None,
        );
        agent.apply(vec![tp]);
        common::assert_bound(&agent);
        assert!(site.is_armed());
        let (order, user) = &data[0];
        checkout(order, user);
        let text = common::exposition(&registry);
        assert!(text.contains(&format!("deep_bench_{name}_total")), "{text}");

        g.bench_function(format!("{name}/same_labels"), |b| {
            b.iter(|| checkout(black_box(order), black_box(user)))
        });
        if name == "two_path_labels" {
            g.bench_function(format!("{name}/two_threads"), |b| {
                b.iter_custom(|iters| {
                    let start = std::sync::Barrier::new(2);
                    std::thread::scope(|s| {
                        let run = || {
                            start.wait();
                            let t = std::time::Instant::now();
                            for _ in 0..iters {
                                checkout(black_box(order), black_box(user));
                            }
                            t.elapsed()
                        };
                        let other = s.spawn(run);
                        let mine = run();
                        mine.max(other.join().expect("the other thread ran"))
                    })
                })
            });
            let mut i = 0;
            let mut ran = false;
            g.bench_function(format!("{name}/ten_label_sets"), |b| {
                ran = true;
                b.iter(|| {
                    let (order, user) = &data[i];
                    i = if i == 9 { 0 } else { i + 1 };
                    checkout(black_box(order), black_box(user))
                })
            });
            // (Filtered out, e.g. `--bench ... no_labels`, it did not run.)
            let text = common::exposition(&registry);
            assert!(
                !ran || text
                    .contains(r#"deep_bench_two_path_labels_total{country="JP",tier="basic"}"#),
                "{text}"
            );
        }
        common::assert_bound(&agent);
        assert_eq!(agent.statuses()[0].message, "", "no evaluation errors");
    }
    g.finish();

    // The same pipeline with nothing bound to the metric's site: the cost of the call itself.
    agent.apply(vec![]);
    assert!(!site.is_armed());
    c.bench_function("armed_plain_paths/baseline_disarmed_call", |b| {
        b.iter(|| checkout(black_box(&data[0].0), black_box(&data[0].1)))
    });
    agent.shutdown();
}

criterion_group! { name = benches; config = common::config(); targets = armed_plain_paths }
criterion_main!(benches);
