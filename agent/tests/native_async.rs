//! Native breakpoints on lines of an `async fn`, driven by a multi-threaded tokio runtime whose
//! tasks suspend at an `.await` and resume, often on another worker thread: the locals a user
//! sees on a line read exactly the values the code computes, whether they are stack slots of the
//! poll function (locals not held across an `.await`) or fields of the coroutine's state
//! (locals and arguments held across one, reached through the state pointer), and a local that
//! the coroutine does not keep across an `.await` is named in the status with the reason instead
//! of being read from a stale stack slot.
//!
//! What rustc 1.95 emits at opt-level 0 for the poll function `checkout::{async_fn#0}` (its
//! frame base is `DW_OP_reg7 (rsp)`): a local held across an `.await` is a `DW_TAG_variable` in
//! the poll function's lexical blocks with the location `DW_OP_fbreg N; DW_OP_deref;
//! DW_OP_plus_uconst M` (the poll function keeps the pointer to the state in its frame at N;
//! the local is at offset M of the state, the offset of its member in the `SuspendK` variant of
//! `checkout::{async_fn_env#0}`); a local that is not held is a plain `DW_OP_fbreg N`.
//!
//! The `async` block a task runs is the same: `{async_block#0}`, its captured variables at
//! `DW_OP_fbreg N; DW_OP_deref; DW_OP_plus_uconst M` too.
//!
//! Optimized code: `sonde_native_fixture::checkout_handler`, a web handler's `async fn` in the
//! fixture crate (opt-level 2), boxed there by `checkout_boxed` as a framework boxes a
//! handler's future, so its poll function is the fixture's optimized code, called out of line
//! through the box's vtable (a future boxed in this file would have its poll function compiled
//! here, at opt-level 0). What rustc 1.95 emits for it: the poll function's `self`
//! (`Pin<&mut {async_fn_env#0}>`) has a location list, `DW_OP_reg5 (rdi)` at entry, then
//! `DW_OP_reg3 (rbx)`; the locals and arguments held across an `.await` are `DW_TAG_variable`s
//! with no `DW_AT_location` at all; the state type's `Suspend0` and `Suspend1` list them with
//! their offsets (`subtotal` at 0xd0, `points` at 0xd8, …), then the arguments again (`req`,
//! `rate`) at their offsets in that variant. So they are read at `rbx` plus the offset, on
//! lines after the first `.await` that follows their declaration; before it the status says
//! after which `.await` they can be read; and every such read is named in the status, since
//! the state may lag a change: on the line right after `points +=`, the state still holds the
//! value `points` had at the `.await` (its store comes later in that line's code).
//!
//! This binary is built with `debug = 2` (`[profile.dev.package.sonde-agent]` in the root
//! Cargo.toml), unoptimized. Lines are found by marker comments in this file's own text and
//! the fixture's. One agent per process, so the tests take turns (`serial`).
#![cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod markers;
mod native_agent;

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Duration;

use native_agent::{serial, status, wait_for};
use sonde_agent::{
    Agent, AgentHandle, Budgets, PrometheusProvider, TracepointState,
    native::{CapturePlan, DebugIndex, NativeBudget, Unavailable, Variable},
};
use sonde_native_fixture::{Checkout, Customer, Item, Region, checkout_boxed};
use sonde_proto::tracepoint::{
    LabelExpression, Metric, MetricType, TracePointConfig, label_expression,
};

const FILE: &str = "tests/native_async.rs";

#[allow(dead_code)] // fields are read through the debug info, not by the code
struct User {
    id: u64,
    tier: String,
}

#[allow(dead_code)] // as `User`
struct Order {
    country: String,
    user: User,
    total: u64,
}

struct Cart {
    items: u64,
    label: String,
}

#[inline(never)]
async fn checkout(qty: u64, order: Order) -> u64 {
    let before = qty * 3;
    let plain = black_box(qty + 1);
    let cart = Cart {
        items: qty % 7,
        label: format!("cart{}", qty % 2),
    };
    black_box(plain); // @before-await
    tokio::task::yield_now().await; // @await
    let after = before + cart.items + order.user.id; // @after-await
    let charged = black_box(after * 2);
    black_box(charged) + qty + order.total + cart.label.len() as u64 // @after-local
}

const TASKS: u64 = 8;
const CALLS: u64 = 50;
const COUNTRIES: [&str; 2] = ["NZ", "FR"];
const TIERS: [&str; 3] = ["gold", "basic", "silver"];

/// The inputs of call `k` of task `t`.
fn inputs(t: u64, k: u64) -> (u64, Order) {
    let qty = t * 100 + k;
    let order = Order {
        country: COUNTRIES[(t % 2) as usize].to_owned(),
        user: User {
            id: t,
            tier: TIERS[(k % 3) as usize].to_owned(),
        },
        total: k,
    };
    (qty, order)
}

/// Runs `checkout` `CALLS` times in each of `TASKS` tasks on a 4-thread runtime; the results
/// by (task, call).
fn workload() -> Vec<u64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for k in 0..CALLS {
                        let (qty, order) = inputs(t, k);
                        let got = checkout(qty, order).await;
                        out.push(black_box(got)); // @block
                    }
                    out
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    })
}

fn index() -> &'static DebugIndex {
    static INDEX: OnceLock<DebugIndex> = OnceLock::new();
    INDEX.get_or_init(|| DebugIndex::for_current_exe().expect("this test binary has debug info"))
}

/// The line of this file holding `marker`.
fn line_of(marker: &str) -> u32 {
    markers::line(include_str!("native_async.rs"), marker)
}

/// The variables at each address of the line holding `marker`, by name (innermost wins).
fn variables(marker: &str) -> Vec<HashMap<String, Variable>> {
    variables_on(FILE, line_of(marker))
}

/// The variables at each address of `path:line`, by name (innermost wins).
fn variables_on(path: &str, line: u32) -> Vec<HashMap<String, Variable>> {
    let found = index().lookup(path, line);
    assert!(!found.addresses.is_empty(), "{path}:{line} has code");
    found
        .addresses
        .iter()
        .map(|a| {
            index()
                .variables_at(a.address)
                .expect("readable DWARF")
                .into_iter()
                .map(|v| (v.name.clone(), v))
                .collect()
        })
        .collect()
}

fn agent(registry: &prometheus::Registry) -> AgentHandle {
    let prometheus = PrometheusProvider::new(registry.clone());
    Agent::builder()
        .offline()
        .provider(prometheus)
        // The evaluation CPU budget is not under test here; a loaded machine must not trip it.
        .budgets(Budgets::unlimited_cpu())
        .native_breakpoints(NativeBudget {
            captures_per_sec: 10_000_000,
            burst: 10_000_000,
            max_traps_per_sec: u64::MAX,
            jump_above: u64::MAX,
        })
        .start()
        .expect("agent starts")
}

/// A tracepoint at the line holding `marker` counting `value`, with labels.
fn counter(id: &str, marker: &str, value: &str, labels: &[(&str, &str)]) -> TracePointConfig {
    counter_at(id, FILE, line_of(marker), value, labels)
}

/// A tracepoint at `path:line` counting `value`, with labels.
fn counter_at(
    id: &str,
    path: &str,
    line: u32,
    value: &str,
    labels: &[(&str, &str)],
) -> TracePointConfig {
    TracePointConfig {
        id: id.into(),
        path: path.into(),
        line_number: line,
        metrics: vec![Metric {
            name: format!("async_{id}_total"),
            r#type: MetricType::Counter as i32,
            expression: Some(value.into()),
            label_expressions: labels
                .iter()
                .map(|(k, e)| LabelExpression {
                    key: (*k).into(),
                    value: Some(label_expression::Value::Expression((*e).into())),
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Every series of the counter of tracepoint `id`, as (sorted labels, value).
fn series(registry: &prometheus::Registry, id: &str) -> Vec<(Vec<(String, String)>, f64)> {
    let name = format!("deep_async_{id}_total");
    let mut out: Vec<(Vec<(String, String)>, f64)> = registry
        .gather()
        .into_iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| {
            f.get_metric()
                .iter()
                .map(|m| {
                    let mut labels: Vec<(String, String)> = m
                        .get_label()
                        .iter()
                        .map(|l| (l.name().to_owned(), l.value().to_owned()))
                        .collect();
                    labels.sort();
                    (labels, m.get_counter().get_value())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The expected series: `value` of each call summed by its labels.
fn expected(
    labels: impl Fn(u64, u64, &Order) -> Vec<(&'static str, String)>,
    value: impl Fn(u64, u64, &Order) -> u64,
) -> Vec<(Vec<(String, String)>, f64)> {
    let mut sums: HashMap<Vec<(String, String)>, u64> = HashMap::new();
    for t in 0..TASKS {
        for k in 0..CALLS {
            let (qty, order) = inputs(t, k);
            let mut key: Vec<(String, String)> = labels(t, k, &order)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            key.sort();
            *sums.entry(key).or_default() += value(t, qty, &order);
        }
    }
    let mut out: Vec<(Vec<(String, String)>, f64)> =
        sums.into_iter().map(|(k, v)| (k, v as f64)).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The results `checkout` computes, by (task, call), without the runtime.
fn expected_results() -> Vec<u64> {
    let mut out = Vec::new();
    for t in 0..TASKS {
        for k in 0..CALLS {
            let (qty, order) = inputs(t, k);
            let before = qty * 3;
            let after = before + qty % 7 + order.user.id;
            out.push(after * 2 + qty + order.total + format!("cart{}", qty % 2).len() as u64);
        }
    }
    out
}

#[test]
fn locals_of_async_code_are_planned_through_its_state_or_its_frame() {
    let _serial = serial();
    let await_line = line_of("// @await");
    for (marker, in_state, in_frame) in [
        (
            "// @before-await",
            &["before", "cart", "order", "qty"][..],
            &["plain"][..],
        ),
        ("// @after-await", &["before", "cart", "order", "qty"], &[]),
        (
            "// @after-local",
            &["before", "cart", "order", "qty"],
            &["after", "charged"],
        ),
    ] {
        for vars in variables(marker) {
            let mut pointers = Vec::new();
            for name in in_state {
                let plan = &vars[*name].plan;
                let CapturePlan::Indirect { reg, offset, add } = *plan else {
                    panic!("{name} at {marker}: {plan:?}");
                };
                assert_eq!(reg, 7, "{name}: the state pointer is in the frame");
                pointers.push((reg, offset));
                let shape = vars[*name].shape.as_ref().unwrap();
                assert_eq!(shape.inline_size(), 8, "{name}: the state pointer");
                assert_eq!(
                    shape.derefs()[0].ptr_add,
                    add,
                    "{name}: the first heap read adds the offset in the state"
                );
            }
            // One state pointer for all of them.
            assert!(pointers.windows(2).all(|w| w[0] == w[1]), "{pointers:?}");
            for name in in_frame {
                let plan = &vars[*name].plan;
                assert!(
                    matches!(plan, CapturePlan::Mem { reg: 7, .. }),
                    "{name} at {marker}: {plan:?}"
                );
            }
            // `plain` is not held across the `.await`: a stale stack slot after it.
            if marker != "// @before-await" {
                let plain = &vars["plain"];
                assert_eq!(
                    plain.plan,
                    CapturePlan::Unavailable(Unavailable::NotKeptAcrossAwait { line: await_line }),
                    "plain at {marker}"
                );
                assert!(
                    plain.available_at.contains(&line_of("// @before-await")),
                    "{:?}",
                    plain.available_at
                );
            }
            // The poll's `Context` is stored again on each resumption.
            assert!(vars["_task_context"].plan.is_available(), "{marker}");
        }
    }
    // In the spawned `async` block, after `checkout(..).await`: the captured `t` is in the
    // block's state; `k` and `order`, not used after the `.await`, are gone there.
    let block_await = line_of("// @block") - 1;
    for vars in variables("// @block") {
        let plan = |name: &str| vars[name].plan.clone();
        assert!(
            matches!(plan("t"), CapturePlan::Indirect { reg: 7, .. }),
            "{:?}",
            plan("t")
        );
        assert!(matches!(plan("got"), CapturePlan::Mem { reg: 7, .. }));
        for gone in ["k", "order"] {
            assert_eq!(
                plan(gone),
                CapturePlan::Unavailable(Unavailable::NotKeptAcrossAwait { line: block_await }),
                "{gone}"
            );
        }
    }
}

#[test]
fn locals_read_after_an_await_are_exact_across_worker_threads() {
    const IDS: [&str; 5] = ["before", "qty", "plain", "charged", "block"];
    let _serial = serial();
    let unpatched = workload();
    assert_eq!(unpatched, expected_results());
    let registry = prometheus::Registry::new();
    let agent = agent(&registry);
    agent.apply(vec![
        // A local defined before the `.await`, read after it, labelled by a field of a struct
        // argument and a field of a struct local, both held across the `.await`.
        counter(
            "before",
            "// @after-await",
            "before",
            &[("tier", "order.user.tier"), ("cart", "cart.label")],
        ),
        // An argument held across the `.await`.
        counter(
            "qty",
            "// @after-await",
            "qty",
            &[("country", "order.country")],
        ),
        // A plain local, read before the `.await`.
        counter("plain", "// @before-await", "plain", &[]),
        // In an `async` block: a local defined after an `.await`, and a captured variable.
        counter("block", "// @block", "got", &[("task", "t")]),
        // A plain local defined after the `.await`, with a field of a struct local.
        counter(
            "charged",
            "// @after-local",
            "charged",
            &[("items", "cart.items")],
        ),
    ]);
    for id in IDS {
        let st = status(&agent, id);
        assert_eq!(st.state, TracepointState::Bound, "{st:?}");
        assert!(st.sites[0].contains("(native,"), "{st:?}");
        assert!(st.message.is_empty(), "every variable is readable: {st:?}");
    }

    assert_eq!(workload(), unpatched, "the patched code computes the same");
    let calls = TASKS * CALLS;
    for id in IDS {
        wait_for(&format!("every hit of {id} to be decoded"), || {
            agent.fires(id) == Some(calls)
        });
    }
    let tier = |_: u64, k: u64, o: &Order| {
        assert_eq!(o.user.tier, TIERS[(k % 3) as usize]);
        ("tier", o.user.tier.clone())
    };
    assert_eq!(
        series(&registry, "before"),
        expected(
            |t, k, o| {
                let qty = t * 100 + k;
                vec![tier(t, k, o), ("cart", format!("cart{}", qty % 2))]
            },
            |_, qty, _| qty * 3,
        )
    );
    assert_eq!(
        series(&registry, "qty"),
        expected(
            |_, _, o| vec![("country", o.country.clone())],
            |_, qty, _| qty
        )
    );
    assert_eq!(
        series(&registry, "plain"),
        expected(|_, _, _| Vec::new(), |_, qty, _| qty + 1)
    );
    assert_eq!(
        series(&registry, "charged"),
        expected(
            |t, k, _| vec![("items", ((t * 100 + k) % 7).to_string())],
            |_, qty, o| (qty * 3 + qty % 7 + o.user.id) * 2,
        )
    );

    let results = expected_results();
    let mut by_task: Vec<(Vec<(String, String)>, f64)> = (0..TASKS)
        .map(|t| {
            let of_task = &results[(t * CALLS) as usize..((t + 1) * CALLS) as usize];
            let labels = vec![("task".to_owned(), t.to_string())];
            (labels, of_task.iter().sum::<u64>() as f64)
        })
        .collect();
    by_task.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(series(&registry, "block"), by_task);

    agent.apply(Vec::new());
    assert_eq!(workload(), unpatched, "the restored code computes the same");
    std::thread::sleep(Duration::from_millis(50));
    for id in IDS {
        assert_eq!(agent.fires(id), None, "{id} is gone");
    }
    agent.shutdown();
}

#[test]
fn a_local_not_kept_across_an_await_is_named_with_the_reason() {
    let _serial = serial();
    let registry = prometheus::Registry::new();
    let agent = agent(&registry);
    let line = line_of("// @after-await");
    agent.apply(vec![counter("stale", "// @after-await", "plain", &[])]);
    let st = status(&agent, "stale");
    assert_eq!(st.state, TracepointState::Bound, "{st:?}");
    let want = format!(
        "`plain` cannot be read at {FILE}:{line} (its value is gone after the `.await` on line \
         {}: the async fn keeps only the locals used after an `.await`)",
        line_of("// @await")
    );
    assert!(st.message.contains(&want), "{st:?}");
    let before = line_of("// @before-await");
    assert!(
        st.message
            .contains(&format!("it can be read at lines {before}, ")),
        "{st:?} names line {before}"
    );
    // Nothing is read from the stale slot: the hits count, no series appears.
    assert_eq!(workload(), expected_results());
    assert!(series(&registry, "stale").is_empty());
    agent.apply(Vec::new());
    agent.shutdown();
}

// The optimized `async fn` (see the header): `sonde_native_fixture::checkout_handler`, run
// through `checkout_boxed`.

const FIXTURE: &str = "fixture/src/lib.rs";

/// The line of the fixture crate's source holding `marker`.
fn fixture_line(marker: &str) -> u32 {
    markers::line(include_str!("../fixture/src/lib.rs"), marker)
}

const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

/// The request and rate of call `k` of task `t`.
fn request(t: u64, k: u64) -> (Checkout, u64) {
    let items = (0..k % 3 + 1)
        .map(|i| Item {
            quantity: (i + 1 + t % 2) as u32,
            cents: 100 + t * 10 + k,
            sku: format!("SKU-{i}"),
        })
        .collect();
    let req = Checkout {
        customer: Customer {
            id: t * 1000 + k,
            tier: TIERS[(k % 3) as usize].to_owned(),
            region: Region {
                code: REGIONS[(t % 3) as usize].to_owned(),
                zone: (t % 4 + 1) as u32,
            },
        },
        items,
        coupon: (k % 4 * 5) as u32,
    };
    (req, k % 5 + 1)
}

/// What `checkout_handler` computes for a request, step by step, without the fixture.
struct Handled {
    subtotal: u64,
    /// `points` at the `.await`, after `points +=` and at the reply.
    points: [u64; 3],
    reply: u64,
}

fn handled(req: &Checkout, rate: u64) -> Handled {
    let gross: u64 = req
        .items
        .iter()
        .map(|i| u64::from(i.quantity) * i.cents)
        .sum();
    let subtotal = gross * u64::from(100 - req.coupon.min(100)) / 100;
    let at_await = subtotal / 100;
    let changed = at_await + u64::from(req.customer.region.zone) * rate;
    let at_reply = changed + changed / 10;
    Handled {
        subtotal,
        points: [at_await, changed, at_reply],
        reply: subtotal * 1000 + at_reply + req.customer.id,
    }
}

/// Runs the boxed handler `CALLS` times in each of `TASKS` tasks on a 4-thread runtime; the
/// results by (task, call).
fn handler_workload() -> Vec<u64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for k in 0..CALLS {
                        let (req, rate) = request(t, k);
                        out.push(checkout_boxed(req, rate).await);
                    }
                    out
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    })
}

/// The expected series over every call: `value` summed by `labels`.
fn expected_handled(
    labels: impl Fn(&Checkout, u64) -> Vec<(&'static str, String)>,
    value: impl Fn(&Checkout, u64, &Handled) -> u64,
) -> Vec<(Vec<(String, String)>, f64)> {
    let mut sums: HashMap<Vec<(String, String)>, u64> = HashMap::new();
    for t in 0..TASKS {
        for k in 0..CALLS {
            let (req, rate) = request(t, k);
            let mut key: Vec<(String, String)> = labels(&req, rate)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            key.sort();
            *sums.entry(key).or_default() += value(&req, rate, &handled(&req, rate));
        }
    }
    let mut out: Vec<(Vec<(String, String)>, f64)> =
        sums.into_iter().map(|(k, v)| (k, v as f64)).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The note a tracepoint's status carries for a local read from the optimized state.
fn from_state_note(name: &str, await_line: u32) -> String {
    format!(
        "`{name}` is read from the async fn's state (this optimized build gives it no \
         location): a change made to it since the task last suspended, at the `.await` on line \
         {await_line} or an earlier one, may not be seen"
    )
}

#[test]
fn optimized_async_fn_locals_are_planned_from_the_state_after_the_await() {
    let _serial = serial();
    let await_line = fixture_line("// @handler-await");
    let before = fixture_line("// @handler-before-await");
    let after = fixture_line("// @handler-after-await");
    let held = ["req", "rate", "subtotal", "points"];
    // The precondition: the poll function is out of line (the box calls it), and rustc gives
    // the locals it holds across the `.await` no location.
    for line in [before, after] {
        for a in index().lookup(FIXTURE, line).addresses {
            let f = index().function_at(a.address).unwrap().unwrap();
            assert_eq!(f.name.as_deref(), Some("{async_fn#0}"), "{line}: {f:?}");
            assert!(
                f.linkage_name
                    .as_deref()
                    .is_some_and(|n| n.contains("checkout_handler")),
                "{line}: {f:?}"
            );
        }
    }
    // After the `.await`: memory at the state pointer (a register) plus each one's offset in
    // the suspended variant, one pointer for all, each marked as read from the state.
    for vars in variables_on(FIXTURE, after) {
        let mut regs = Vec::new();
        let mut offsets = Vec::new();
        for name in held {
            let v = &vars[name];
            let CapturePlan::Mem { reg, offset } = v.plan else {
                panic!("{name} at line {after}: {:?}", v.plan);
            };
            regs.push(reg);
            offsets.push(offset);
            assert_eq!(v.in_state_since, Some(await_line), "{name}");
            assert!(v.shape.is_ok(), "{name}: {:?}", v.shape);
        }
        assert!(regs.windows(2).all(|w| w[0] == w[1]), "{regs:?}");
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len(), held.len(), "one field each: {offsets:?}");
    }
    // Before it: not read, with the `.await` after which it is, and lines where it is.
    for vars in variables_on(FIXTURE, before) {
        for name in held {
            let v = &vars[name];
            assert_eq!(
                v.plan,
                CapturePlan::Unavailable(Unavailable::InStateAfterAwait { line: await_line }),
                "{name}"
            );
            assert_eq!(v.in_state_since, None, "{name}");
            assert!(
                v.available_at.contains(&after),
                "{name}: {:?}",
                v.available_at
            );
        }
    }
}

#[test]
fn optimized_async_fn_locals_read_after_the_await_are_exact() {
    let _serial = serial();
    let unpatched = handler_workload();
    let want: Vec<u64> = (0..TASKS)
        .flat_map(|t| (0..CALLS).map(move |k| (t, k)))
        .map(|(t, k)| {
            let (req, rate) = request(t, k);
            handled(&req, rate).reply
        })
        .collect();
    assert_eq!(unpatched, want);
    let after = fixture_line("// @handler-after-await");
    let before = fixture_line("// @handler-before-await");
    let await_line = fixture_line("// @handler-await");
    let registry = prometheus::Registry::new();
    let agent = agent(&registry);
    agent.apply(vec![
        // A local computed before the `.await`, labelled by fields of the owned argument, one
        // of them two structs deep.
        counter_at(
            "subtotal",
            FIXTURE,
            after,
            "subtotal",
            &[
                ("tier", "req.customer.tier"),
                ("region", "req.customer.region.code"),
            ],
        ),
        // An argument, labelled by a nested field.
        counter_at(
            "rate",
            FIXTURE,
            after,
            "rate",
            &[("zone", "req.customer.region.zone")],
        ),
        // A local held across the `.await`, before it.
        counter_at("early", FIXTURE, before, "subtotal", &[]),
    ]);
    for id in ["subtotal", "rate"] {
        let st = status(&agent, id);
        assert_eq!(st.state, TracepointState::Bound, "{st:?}");
        assert!(st.sites[0].contains("(native,"), "{st:?}");
        assert!(!st.message.contains("cannot be read"), "{st:?}");
    }
    // Every local read from the state is named in the status.
    let st = status(&agent, "subtotal");
    for name in ["subtotal", "req"] {
        assert!(
            st.message.contains(&from_state_note(name, await_line)),
            "{st:?}"
        );
    }
    let early = status(&agent, "early");
    assert_eq!(early.state, TracepointState::Bound, "{early:?}");
    let want = format!(
        "`subtotal` cannot be read at {FIXTURE}:{before} (optimized out; the async fn's state \
         holds it, read only after the `.await` on line {await_line})"
    );
    assert!(early.message.contains(&want), "{early:?}");
    assert!(
        early
            .message
            .contains(&format!("it can be read at lines {after}, ")),
        "{early:?} names line {after}"
    );

    assert_eq!(
        handler_workload(),
        unpatched,
        "the patched code computes the same"
    );
    let calls = TASKS * CALLS;
    for id in ["subtotal", "rate"] {
        wait_for(&format!("every hit of {id} to be decoded"), || {
            agent.fires(id) == Some(calls)
        });
    }
    assert_eq!(
        series(&registry, "subtotal"),
        expected_handled(
            |req, _| {
                vec![
                    ("tier", req.customer.tier.clone()),
                    ("region", req.customer.region.code.clone()),
                ]
            },
            |_, _, h| h.subtotal,
        )
    );
    assert_eq!(
        series(&registry, "rate"),
        expected_handled(
            |req, _| vec![("zone", req.customer.region.zone.to_string())],
            |_, rate, _| rate,
        )
    );
    // Nothing is read before the `.await`: no series appears (the evaluation errors disarm
    // the tracepoint), and the status still says why.
    assert!(series(&registry, "early").is_empty());
    let early = status(&agent, "early");
    assert!(early.message.contains(&want), "{early:?}");

    agent.apply(Vec::new());
    assert_eq!(
        handler_workload(),
        unpatched,
        "the restored code computes the same"
    );
    agent.shutdown();
}

#[test]
fn a_local_changed_after_the_await_is_read_with_a_warning() {
    let _serial = serial();
    let await_line = fixture_line("// @handler-await");
    let second = fixture_line("// @handler-second-await");
    let changed = fixture_line("// @handler-after-change");
    let reply = fixture_line("// @handler-reply");
    let registry = prometheus::Registry::new();
    let agent = agent(&registry);
    agent.apply(vec![
        // Right after `points +=`, and after the second `.await`.
        counter_at("changed", FIXTURE, changed, "points", &[]),
        counter_at("reply", FIXTURE, reply, "points", &[]),
    ]);
    // DWARF does not say that `points` is changed after the `.await` (nor that `subtotal` is
    // not): every read from the state carries the warning, naming the last `.await` before
    // the line, and the tracepoint is bound.
    for (id, last) in [("changed", await_line), ("reply", second)] {
        let st = status(&agent, id);
        assert_eq!(st.state, TracepointState::Bound, "{st:?}");
        assert!(
            st.message.contains(&from_state_note("points", last)),
            "{st:?}"
        );
    }
    let results = handler_workload();
    let calls = TASKS * CALLS;
    for id in ["changed", "reply"] {
        wait_for(&format!("every hit of {id} to be decoded"), || {
            agent.fires(id) == Some(calls)
        });
    }
    assert_eq!(results.len() as u64, calls);
    // What the warning is about, as rustc 1.95 compiles the fixture at opt-level 2: the store
    // of `points +=` to the state is scheduled after the first instruction of the next line,
    // so there the state still holds the value at the first `.await`, not the one the code
    // uses. (Another compiler may schedule the store otherwise; the status cannot tell.)
    let stale = expected_handled(|_, _| Vec::new(), |_, _, h| h.points[0]);
    let current = expected_handled(|_, _| Vec::new(), |_, _, h| h.points[1]);
    assert_ne!(stale, current);
    assert_eq!(
        series(&registry, "changed"),
        stale,
        "the value at the `.await`"
    );
    // After the second `.await`, which suspends, the state holds the value at it: the
    // current one, as no change follows.
    assert_eq!(
        series(&registry, "reply"),
        expected_handled(|_, _| Vec::new(), |_, _, h| h.points[2]),
        "the value at the second `.await`"
    );
    agent.apply(Vec::new());
    agent.shutdown();
}
