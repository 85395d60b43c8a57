//! A snapshot of the shop's checkout line: an order of 3 items and its user (whose `password`
//! is redacted), taken by a `snapshot: collect` tracepoint firing on every hit (target under
//! 20 µs on the application's thread).
//!
//! - `with_stack`: what the application's thread pays per hit: the variable table under its
//!   bounds, the watch, an unwind of the stack into return addresses
//!   (`std::backtrace::Backtrace::force_capture`, unresolved), and the push into the queue;
//! - `no_stack`: the same with `stack_type: no_stack` (the unwind's share is the difference);
//! - `finish`: what the agent's thread pays per snapshot before sending: symbols resolved,
//!   frames built (never on the application's thread).
//!
//! After the runs it prints the bytes of one snapshot on the wire (protobuf) and the queue under
//! a server outage: no client drains it (the agent is offline), so every hit past the queue's
//! bound drops the oldest; the queue's length stays at its bound and the drops are counted.

mod common;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message as _;
use sonde_agent::{Agent, Capture, probe};
use sonde_proto::tracepoint::TracePointConfig;

#[derive(Capture)]
struct User {
    id: u64,
    name: String,
    password: String,
}

#[derive(Capture)]
struct Item {
    sku: String,
    qty: u32,
    price: f64,
}

#[derive(Capture)]
struct Order {
    id: u64,
    country: String,
    items: Vec<Item>,
    total: f64,
}

#[inline(never)]
fn checkout(order: &Order, user: &User) {
    probe!(order, user);
}

fn shop_order() -> (Order, User) {
    let items: Vec<Item> = (1..=3)
        .map(|i| Item {
            sku: format!("SKU-{i:04}"),
            qty: i,
            price: 9.99 * f64::from(i),
        })
        .collect();
    let total = items.iter().map(|i| i.price * f64::from(i.qty)).sum();
    (
        Order {
            id: 1001,
            country: "NZ".into(),
            items,
            total,
        },
        User {
            id: 7,
            name: "ann".into(),
            password: "hunter2".into(),
        },
    )
}

fn tracepoint(site: &sonde_agent::Site, stack: bool) -> TracePointConfig {
    let mut tp = TracePointConfig {
        id: "tp-snapshot".into(),
        path: site.file().into(),
        line_number: site.line(),
        watches: vec!["order.items[0].sku".into()],
        ..Default::default()
    };
    tp.args.insert("fire_count".into(), "-1".into());
    tp.args.insert("fire_period".into(), "0".into());
    if !stack {
        tp.args.insert("stack_type".into(), "no_stack".into());
    }
    tp
}

fn snapshot_checkout(c: &mut Criterion) {
    // The CPU budget is lifted, as in the other benches: a snapshot tracepoint does not sample,
    // so over the default budget it would disarm and the rest would measure nothing.
    let agent = Agent::builder()
        .budgets(sonde_agent::Budgets::unlimited_cpu())
        .offline()
        .snapshots(sonde_agent::SnapshotLimits::default(), 64)
        .start()
        .expect("agent");
    let site = common::site(&["order", "user"]);
    let (order, user) = shop_order();
    let mut g = c.benchmark_group("snapshot_checkout");
    for (name, stack) in [("with_stack", true), ("no_stack", false)] {
        agent.apply(vec![tracepoint(site, stack)]);
        common::assert_bound(&agent);
        let taken = || agent.snapshots_queued() as u64 + agent.snapshots_dropped();
        let before = taken();
        checkout(&order, &user);
        assert_eq!(taken(), before + 1, "a hit takes a snapshot");
        g.bench_function(name, |b| {
            b.iter(|| checkout(black_box(&order), black_box(&user)))
        });
    }
    agent.apply(vec![tracepoint(site, true)]);
    g.bench_function("finish", |b| {
        b.iter_batched(
            || {
                checkout(&order, &user);
                agent.take_pending_snapshot().expect("a snapshot")
            },
            |pending| black_box(pending.finish()),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();

    // Bytes on the wire, and the queue under an outage.
    while agent.take_pending_snapshot().is_some() {}
    checkout(&order, &user);
    let snap = agent.take_pending_snapshot().expect("a snapshot").finish();
    let text = format!("{snap:?}");
    assert!(!text.contains("hunter2"), "the password was captured");
    eprintln!(
        "snapshot_checkout: one snapshot is {} bytes of protobuf ({} variables, {} frames)",
        snap.encoded_len(),
        snap.var_lookup.len(),
        snap.frames.len()
    );
    let dropped_before = agent.snapshots_dropped();
    for _ in 0..10_000 {
        checkout(&order, &user);
    }
    eprintln!(
        "snapshot_checkout: server away, 10000 hits: {} queued (bound 64), {} dropped",
        agent.snapshots_queued(),
        agent.snapshots_dropped() - dropped_before
    );
    agent.shutdown();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = snapshot_checkout
}
criterion_main!(benches);
