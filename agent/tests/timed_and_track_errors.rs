//! `#[timed]` and `#[track_errors]` on sync and async functions: every way out of a timed
//! function (its last expression, an early `return`, `?`, a panic, a dropped future) records its
//! duration, and every `Err` of a tracked one counts once, tagged with the function and the
//! error's type (or variant), while the function returns exactly what it did without them.
//!
//! Both macros record into `metrics::global()`, which is set once per process: this file is its
//! own test binary, and every test installs the same in-memory instance through [`metrics`]
//! first. The tests run in parallel, so each reads only metric names or `function` tags of its
//! own.

use std::{
    future::Future,
    num::ParseIntError,
    pin::{Pin, pin},
    str::FromStr,
    sync::Once,
    task::{Context, Poll, Waker},
    time::Duration,
};

use sonde_agent::{
    InMemoryProvider, SeriesSnapshot,
    metrics::{self, Metrics},
    timed, track_errors,
};

/// The global metrics, installed (in memory) on the first call.
fn metrics() -> &'static Metrics {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        assert!(metrics::set_global(
            Metrics::builder().provider(InMemoryProvider::new()).build()
        ));
    });
    metrics::global()
}

/// The series of `name` with exactly these tags (in key order), if it exists.
fn series(name: &str, tags: &[(&str, &str)]) -> Option<SeriesSnapshot> {
    let tags: Vec<(String, String)> = tags
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    metrics()
        .snapshot()
        .into_iter()
        .find(|m| m.name == name && m.tags == tags)
        .map(|m| m.value)
}

/// `(count, sum)` of the histogram `name` with these tags.
fn histogram(name: &str, tags: &[(&str, &str)]) -> (u64, f64) {
    match series(name, tags) {
        Some(SeriesSnapshot::Histogram { count, sum, .. }) => (count, sum),
        other => panic!("{name} {tags:?}: {other:?} in {:#?}", metrics().snapshot()),
    }
}

/// Observations of the untagged histogram `name` (0 when it has no series yet).
fn observed(name: &str) -> u64 {
    series(name, &[]).map_or(0, |_| histogram(name, &[]).0)
}

/// The value of the counter `name` with these tags (0 when it has no such series).
fn counter(name: &str, tags: &[(&str, &str)]) -> f64 {
    match series(name, tags) {
        Some(SeriesSnapshot::Counter(v)) => v,
        None => 0.0,
        other => panic!("{name} {tags:?}: {other:?}"),
    }
}

/// The help text of the metric `name`.
fn help(name: &str) -> String {
    let mut found = None;
    metrics().visit(|info, _| {
        if info.name == name {
            found = Some(info.help.to_owned());
        }
    });
    found.unwrap_or_else(|| panic!("no metric {name}"))
}

/// Polls `fut` to completion on this thread (the futures here never wait on anything real).
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// Pending once, then ready: makes an async body really suspend.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// Never ready.
struct Forever;

impl Future for Forever {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

#[derive(Debug, PartialEq)]
enum OrderError {
    Empty,
    BadQuantity(ParseIntError),
    TooMany { limit: u32 },
}

impl From<ParseIntError> for OrderError {
    fn from(e: ParseIntError) -> Self {
        OrderError::BadQuantity(e)
    }
}

// ----- #[timed] -----

#[timed("sync_duration_seconds")]
fn sync_timed(quantity: &str) -> Result<u32, OrderError> {
    if quantity.is_empty() {
        return Err(OrderError::Empty);
    }
    if quantity == "panic" {
        panic!("timed through unwinding");
    }
    let n: u32 = quantity.parse()?;
    std::thread::sleep(Duration::from_millis(5));
    Ok(n)
}

#[test]
fn timed_records_every_way_out_of_a_sync_fn() {
    metrics();
    assert_eq!(sync_timed("3"), Ok(3), "last expression");
    assert_eq!(sync_timed(""), Err(OrderError::Empty), "early return");
    assert!(
        matches!(sync_timed("x"), Err(OrderError::BadQuantity(_))),
        "`?` with its From conversion"
    );
    let unwound = std::panic::catch_unwind(|| sync_timed("panic"));
    assert!(unwound.is_err());

    let (count, sum) = histogram("sync_duration_seconds", &[]);
    assert_eq!(count, 4, "every call, the panicking one too");
    assert!(sum >= 0.005, "the 5 ms sleep is in: {sum}");
    assert_eq!(
        help("sync_duration_seconds"),
        "Duration of `sync_timed`, in seconds."
    );
}

#[timed(
    "tagged_duration_seconds",
    help = "Checkout latency.",
    tags(route = "/checkout", method = "POST")
)]
fn tagged_timed() -> u8 {
    7
}

#[test]
fn timed_takes_help_and_constant_tags() {
    metrics();
    assert_eq!(tagged_timed(), 7);
    assert_eq!(tagged_timed(), 7);
    let tags = [("method", "POST"), ("route", "/checkout")];
    assert_eq!(histogram("tagged_duration_seconds", &tags).0, 2);
    assert!(
        series("tagged_duration_seconds", &[]).is_none(),
        "no untagged series registered beside the tagged one"
    );
    assert_eq!(help("tagged_duration_seconds"), "Checkout latency.");
}

#[timed("async_duration_seconds")]
async fn async_timed(quantity: &str) -> Result<u32, OrderError> {
    YieldOnce(false).await;
    if quantity.is_empty() {
        return Err(OrderError::Empty);
    }
    let n: u32 = quantity.parse()?;
    std::thread::sleep(Duration::from_millis(5));
    YieldOnce(false).await;
    Ok(n)
}

#[timed("cancelled_duration_seconds")]
async fn never_finishes() {
    Forever.await;
}

#[test]
fn timed_records_an_async_fn_across_its_polls_and_when_dropped() {
    metrics();
    let future = async_timed("4");
    assert_eq!(
        observed("async_duration_seconds"),
        0,
        "creating the future does not start the clock"
    );
    assert_eq!(block_on(future), Ok(4));
    assert_eq!(block_on(async_timed("")), Err(OrderError::Empty));
    assert!(matches!(
        block_on(async_timed("x")),
        Err(OrderError::BadQuantity(_))
    ));
    let (count, sum) = histogram("async_duration_seconds", &[]);
    assert_eq!(count, 3);
    assert!(sum >= 0.005, "{sum}");

    let mut cancelled = Box::pin(never_finishes());
    let mut cx = Context::from_waker(Waker::noop());
    assert!(cancelled.as_mut().poll(&mut cx).is_pending());
    assert_eq!(observed("cancelled_duration_seconds"), 0, "still running");
    drop(cancelled);
    assert_eq!(
        histogram("cancelled_duration_seconds", &[]).0,
        1,
        "a future dropped before completion records the time until then"
    );
}

// ----- #[track_errors] -----

#[track_errors]
fn place(quantity: &str) -> Result<u32, OrderError> {
    if quantity.is_empty() {
        return Err(OrderError::Empty);
    }
    let n: u32 = quantity.parse()?;
    if n > 10 {
        Err(OrderError::TooMany { limit: 10 })
    } else {
        Ok(n)
    }
}

#[test]
fn track_errors_counts_each_err_by_type_and_returns_it_unchanged() {
    metrics();
    let tags = [("error", "OrderError"), ("function", "place")];
    assert_eq!(place("3"), Ok(3));
    assert_eq!(counter("errors_total", &tags), 0.0, "`Ok` is not counted");
    assert_eq!(place(""), Err(OrderError::Empty), "early return");
    assert!(
        matches!(place("x"), Err(OrderError::BadQuantity(_))),
        "`?` with its From conversion"
    );
    assert_eq!(
        place("11"),
        Err(OrderError::TooMany { limit: 10 }),
        "last expression"
    );
    assert_eq!(counter("errors_total", &tags), 3.0);
    assert_eq!(
        help("errors_total"),
        "Errors returned, by function and error."
    );
}

#[track_errors("payment_errors_total", help = "Payment failures.", variant)]
fn pay(how: u8) -> Result<(), OrderError> {
    match how {
        0 => Ok(()),
        1 => Err(OrderError::Empty),
        2 => Err(OrderError::TooMany { limit: 1 }),
        _ => {
            "x".parse::<u32>()?;
            Ok(())
        }
    }
}

#[track_errors(variant)]
fn pay_with_message(fail: bool) -> Result<(), String> {
    if fail {
        Err("card declined".into())
    } else {
        Ok(())
    }
}

#[test]
fn track_errors_by_variant_tags_the_enum_variant() {
    metrics();
    for how in [0, 1, 1, 2, 3] {
        let _ = pay(how);
    }
    let tags = |error| [("error", error), ("function", "pay")];
    assert_eq!(counter("payment_errors_total", &tags("Empty")), 2.0);
    assert_eq!(counter("payment_errors_total", &tags("TooMany")), 1.0);
    assert_eq!(counter("payment_errors_total", &tags("BadQuantity")), 1.0);
    assert_eq!(help("payment_errors_total"), "Payment failures.");

    assert_eq!(pay_with_message(true), Err("card declined".to_owned()));
    assert_eq!(
        counter(
            "errors_total",
            &[("error", "String"), ("function", "pay_with_message")]
        ),
        1.0,
        "a rendering that starts with data falls back to the type name"
    );
}

#[track_errors]
async fn fetch(id: &str) -> Result<u64, OrderError> {
    YieldOnce(false).await;
    if id.is_empty() {
        return Err(OrderError::Empty);
    }
    let id: u64 = id.parse()?;
    YieldOnce(false).await;
    Ok(id)
}

#[test]
fn track_errors_counts_the_errs_of_an_async_fn() {
    metrics();
    assert_eq!(block_on(fetch("9")), Ok(9));
    assert_eq!(block_on(fetch("")), Err(OrderError::Empty));
    assert!(matches!(
        block_on(fetch("x")),
        Err(OrderError::BadQuantity(_))
    ));
    assert_eq!(
        counter(
            "errors_total",
            &[("error", "OrderError"), ("function", "fetch")]
        ),
        2.0
    );
}

/// Generic over its error type: one site, one series per error type.
#[track_errors]
#[timed("parse_duration_seconds")]
fn parse<T: FromStr>(s: &str) -> Result<T, T::Err> {
    s.parse()
}

#[derive(Debug)]
struct Wrapped<E>(#[allow(dead_code)] E); // read only by `Debug`

#[track_errors]
fn wrapped(s: &str) -> Result<u8, Wrapped<ParseIntError>> {
    s.parse().map_err(Wrapped)
}

#[track_errors]
fn boxed(s: &str) -> Result<u8, Box<dyn std::error::Error + Send + Sync>> {
    Ok(s.parse()?)
}

#[track_errors]
fn read(path: &str) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

#[test]
fn error_type_names_are_shortened_path_by_path() {
    metrics();
    assert_eq!(parse::<u8>("1"), Ok(1));
    assert!(parse::<u8>("x").is_err());
    assert!(parse::<u16>("-1").is_err());
    assert!(parse::<f64>("y").is_err());
    assert!(wrapped("z").is_err());
    assert!(boxed("z").is_err());
    assert!(read("/nonexistent/sonde/test").is_err());

    let errors =
        |function, error| counter("errors_total", &[("error", error), ("function", function)]);
    assert_eq!(errors("parse", "ParseIntError"), 2.0);
    assert_eq!(errors("parse", "ParseFloatError"), 1.0);
    assert_eq!(errors("wrapped", "Wrapped<ParseIntError>"), 1.0);
    assert_eq!(errors("boxed", "Box<dyn Error + Send + Sync>"), 1.0);
    assert_eq!(errors("read", "Error"), 1.0);
    assert_eq!(
        histogram("parse_duration_seconds", &[]).0,
        4,
        "stacked with #[track_errors]"
    );
}

// ----- shapes that must compile -----

struct Store {
    slots: Vec<u64>,
}

#[derive(Debug)]
struct NoSlot;

impl Store {
    #[timed("store_get_duration_seconds")]
    #[track_errors]
    fn get(&self, i: usize) -> Result<u64, NoSlot> {
        self.slots.get(i).copied().ok_or(NoSlot)
    }

    /// Returns a reference reborrowed from `&mut self`.
    #[track_errors]
    #[timed("store_slot_duration_seconds")]
    fn slot(&mut self, i: usize) -> Result<&mut u64, NoSlot> {
        self.slots.get_mut(i).ok_or(NoSlot)
    }

    #[track_errors]
    async fn get_later(&self, i: usize) -> Result<u64, NoSlot> {
        YieldOnce(false).await;
        self.get(i)
    }

    #[timed("store_into_duration_seconds")]
    #[track_errors]
    fn into_slots(self) -> Result<Vec<u64>, NoSlot> {
        #![allow(clippy::needless_question_mark)] // an inner attribute stays in the body
        Ok(Ok::<_, NoSlot>(self.slots)?)
    }
}

#[timed("evens_duration_seconds")]
fn evens(limit: u32) -> impl Iterator<Item = u32> {
    (0..limit).filter(|n| n % 2 == 0)
}

#[timed("generic_duration_seconds")]
fn largest<T: PartialOrd + Copy>(items: &[T]) -> Option<T> {
    let mut best = *items.first()?;
    for &item in items {
        if item > best {
            best = item;
        }
    }
    Some(best)
}

#[test]
fn methods_generics_and_stacked_attributes_work() {
    metrics();
    let mut store = Store { slots: vec![1, 2] };
    assert_eq!(store.get(1).ok(), Some(2));
    assert!(store.get(5).is_err());
    *store.slot(0).unwrap() = 10;
    assert!(store.slot(9).is_err());
    assert_eq!(block_on(store.get_later(0)).ok(), Some(10));
    assert!(block_on(store.get_later(7)).is_err());
    assert_eq!(store.into_slots().ok(), Some(vec![10, 2]));
    assert_eq!(evens(5).collect::<Vec<_>>(), [0, 2, 4]);
    assert_eq!(largest(&[3, 9, 4]), Some(9));
    assert_eq!(largest::<f64>(&[]), None);

    let errors = |function| {
        counter(
            "errors_total",
            &[("error", "NoSlot"), ("function", function)],
        )
    };
    assert_eq!(errors("get"), 2.0, "one direct, one through get_later");
    assert_eq!(errors("slot"), 1.0);
    assert_eq!(errors("get_later"), 1.0);
    assert_eq!(errors("into_slots"), 0.0);
    assert_eq!(histogram("store_get_duration_seconds", &[]).0, 4);
    assert_eq!(histogram("store_slot_duration_seconds", &[]).0, 2);
    assert_eq!(histogram("store_into_duration_seconds", &[]).0, 1);
    assert_eq!(histogram("evens_duration_seconds", &[]).0, 1);
    assert_eq!(histogram("generic_duration_seconds", &[]).0, 2);
}
