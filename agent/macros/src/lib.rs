//! Sonde's agent macros: `#[derive(Capture)]`, `#[instrument]`, `#[timed]` and
//! `#[track_errors]`. Use them through `sonde-agent`, which re-exports them
//! (`sonde_agent::Capture`, `sonde_agent::instrument`, …); their expansions name `::sonde_agent`.

#![forbid(unsafe_code)]

use proc_macro::TokenStream;
use syn::{DeriveInput, ItemFn, parse_macro_input};

mod derive;
mod instrument;
mod metric_args;
mod timed;
mod track_errors;

/// Derives `sonde_agent::Capture`, so a probe site can capture the type and tracepoint
/// expressions can read its fields (`order.customer.country`).
///
/// - A struct with named fields is a record of its fields, in declaration order; `field(name)`
///   hands out one field without converting the others, so a path such as `order.total` converts
///   one float, not the whole order.
/// - A tuple struct is a list (`pair[0]`); a unit struct is none.
/// - An enum's unit variant is its name as a string (`"Paid"`). A variant with fields is a record
///   of `variant` (its name) followed by its fields; a tuple variant's fields are named `"0"`,
///   `"1"`, … (read them as `status["0"]`). A field of such a variant may not be captured as
///   `variant`.
/// - Each type parameter gets a `Capture` bound.
///
/// Attributes on fields:
/// - `#[capture(skip)]`: never captured, and not reachable through paths (for secrets, or types
///   that do not implement `Capture`). In a tuple struct the skipped element is none, so indexes
///   stay the field numbers.
/// - `#[capture(rename = "name")]`: captured under another name (named fields only).
/// - `#[capture(debug)]`: captured as its `Debug` rendering (for types that implement `Debug`
///   but not `Capture`). A path through such a field converts the whole value.
/// - `#[capture(redact)]`: kept by name but never read: it is captured as `"[redacted]"`, shows
///   as redacted in snapshots, and its value never leaves the process. (Names on the agent's
///   deny-list, `password`, `token` and the like, are redacted without it.)
///
/// On the type, `#[capture(redact)]` redacts every value of it, wherever it is captured.
///
/// `field_names()` lists what a path can take one step into the value (shown by `sonde sites`
/// once the probe line has run): a struct's named fields as captured (renamed; neither skipped nor
/// redacted), or `variant` and every variant's named fields for an enum with fields.
///
/// On a variant, `#[capture(rename = "name")]` changes the name it is captured under.
///
/// ```
/// use sonde_agent::Capture;
/// use sonde_expr::Value;
///
/// #[derive(Capture)]
/// struct Customer {
///     country: String,
///     #[capture(skip)]
///     password: String,
/// }
///
/// #[derive(Debug)]
/// enum Channel { Web, App }
///
/// #[derive(Capture)]
/// enum Status {
///     Open,
///     Paid { amount: f64 },
/// }
///
/// #[derive(Capture)]
/// struct Order {
///     customer: Customer,
///     #[capture(rename = "total")]
///     total_cents: u64,
///     #[capture(debug)]
///     channel: Channel,
///     status: Status,
/// }
///
/// let order = Order {
///     customer: Customer { country: "NZ".into(), password: "hunter2".into() },
///     total_cents: 1250,
///     channel: Channel::App,
///     status: Status::Paid { amount: 12.5 },
/// };
/// assert_eq!(
///     order.capture(),
///     Value::Record(vec![
///         ("customer".into(), Value::Record(vec![("country".into(), Value::Str("NZ".into()))])),
///         ("total".into(), Value::UInt(1250)),
///         ("channel".into(), Value::Str("App".into())),
///         ("status".into(), Value::Record(vec![
///             ("variant".into(), Value::Str("Paid".into())),
///             ("amount".into(), Value::Float(12.5)),
///         ])),
///     ])
/// );
/// // One field, nothing else converted:
/// let customer = order.field("customer").unwrap();
/// assert_eq!(customer.field("country").unwrap().capture(), Value::Str("NZ".into()));
/// assert!(customer.field("password").is_none());
/// assert_eq!(Status::Open.capture(), Value::Str("Open".into()));
/// // What `sonde sites` lists after `order` (renamed, neither skipped nor redacted):
/// assert_eq!(order.field_names(), ["customer", "total", "channel", "status"]);
/// assert_eq!(order.status.field_names(), ["variant", "amount"]);
/// assert_eq!(order.customer.field_names(), ["country"]);
///
/// #[derive(Capture)]
/// struct Patient {
///     id: u64,
///     #[capture(redact)]
///     diagnosis: String,
/// }
/// #[derive(Capture)]
/// #[capture(redact)]
/// struct PrivateKey(Vec<u8>);
///
/// let p = Patient { id: 7, diagnosis: "flu".into() };
/// assert_eq!(p.field("diagnosis").unwrap().capture(), Value::Str("[redacted]".into()));
/// assert!(p.field("diagnosis").unwrap().redacted());
/// assert!(PrivateKey(vec![1, 2]).redacted());
/// assert_eq!(PrivateKey(vec![1, 2]).capture(), Value::Str("[redacted]".into()));
/// ```
#[proc_macro_derive(Capture, attributes(capture))]
pub fn derive_capture(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    derive::expand(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Puts two probe sites on a function: one at entry, capturing its arguments, and one at exit,
/// capturing the arguments, the return value, whether it succeeded, and how long it took.
/// Works on `fn` and `async fn`, free or in an `impl`.
///
/// | site | file and line | captures |
/// |------|---------------|----------|
/// | entry | the line of the `fn` keyword | the arguments, by name |
/// | exit | the line of the body's closing `}` | the arguments, `ret`, `ok`, `elapsed` |
///
/// - `ret`: the return value, when its type implements `Capture`; for a `Result` whose `Ok` type
///   does, the `Ok` value (none on `Err`); otherwise none.
/// - `ok`: `false` when the function returned `Err`, else `true`.
/// - `elapsed`: the time from entry to exit, in seconds (`f64`); for an `async fn`, wall time
///   from the first poll to completion, including time spent waiting.
///
/// Every way out reaches the exit site: the body runs in a closure (an `async` block for an
/// `async fn`) whose result the exit site sees, so an early `return` and an error leaving
/// through `?` are captured like the last expression. A panic is not.
///
/// Options: `#[instrument(skip(a, b))]` leaves arguments out of both sites (for types that do
/// not implement `Capture`, or that should not be captured); `#[instrument(skip_ret)]` leaves
/// out `ret`. An argument named `ok` or `elapsed` (or `ret`, without `skip_ret`) must be skipped.
/// `self` and arguments written as patterns (`(a, b): (u32, u32)`) are not captured.
///
/// Cost: disarmed, each site is one relaxed atomic load and a branch; the clock is read only
/// when the exit site is armed at entry. When it is, the arguments are held for the exit site:
/// shared references (`x: &T`) are copied and converted only if an expression reads them; other
/// arguments may be moved by the body, so they are converted to values at entry.
///
/// The entry and exit sites share a line when the whole function is written on one line; a
/// tracepoint on that line then binds to whichever sites capture what it reads (both, if it
/// reads only arguments).
///
/// ```
/// use sonde_agent::{Capture, instrument};
///
/// #[derive(Capture)]
/// struct Order {
///     country: String,
///     total: f64,
/// }
///
/// #[derive(Debug)]
/// struct Db;
///
/// #[derive(Debug)]
/// struct OutOfStock;
///
/// #[instrument(skip(db))]
/// fn checkout(db: &Db, order: &Order, quantity: u32) -> Result<f64, OutOfStock> {
///     if quantity == 0 {
///         return Ok(0.0);
///     }
///     let price = reserve(db, quantity)?;
///     Ok(order.total + price)
/// }
///
/// fn reserve(_db: &Db, quantity: u32) -> Result<f64, OutOfStock> {
///     if quantity > 10 { Err(OutOfStock) } else { Ok(f64::from(quantity)) }
/// }
///
/// #[instrument]
/// async fn lookup(id: u64) -> Option<String> {
///     (id == 7).then(|| "seven".to_owned())
/// }
///
/// let order = Order { country: "NZ".into(), total: 10.0 };
/// assert_eq!(checkout(&Db, &order, 2).unwrap(), 12.0);
/// assert!(checkout(&Db, &order, 11).is_err());
///
/// let exit = sonde_agent::sites()
///     .find(|s| s.names() == ["order", "quantity", "ret", "ok", "elapsed"])
///     .unwrap();
/// assert!(!exit.is_armed());
/// assert!(sonde_agent::sites().any(|s| s.names() == ["id"]));
/// # let _ = lookup(7);
/// ```
#[proc_macro_attribute]
pub fn instrument(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut options = instrument::Args::default();
    let parser = syn::meta::parser(|meta| options.parse(meta));
    parse_macro_input!(args with parser);
    let item = parse_macro_input!(item as ItemFn);
    instrument::expand(options, item)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Times a function: the duration of each call, in seconds, goes into a timer (a histogram with
/// `Buckets::LATENCY_SECONDS`) of the given name from `sonde_agent::metrics::global()`. Works on
/// `fn` and `async fn`, free or in an `impl`, generic or not.
///
/// ```text
/// #[timed("name")]
/// #[timed("name", help = "Help text.", tags(key = "value", ...))]
/// ```
/// - `"name"` (required): the metric's name, checked at compile time (ASCII letters, digits,
///   `_` and `:`). Say the unit: `*_seconds`.
/// - `help = "..."`: the help text; by default ``Duration of `f`, in seconds.``
/// - `tags(key = "value", ...)`: constant tags on this site's series; keys are identifiers (not
///   starting with `__`), values string literals. Sites sharing a name should share tag keys:
///   a backend such as Prometheus refuses one name with two sets of label keys. For tags that
///   vary per call, use `Metrics::timer_vec` by hand.
///
/// **What is measured.** A guard created on entry records when it drops: when the body returns
/// (its last expression, an early `return`, an error leaving through `?`) and when a panic
/// unwinds through it. The body itself is left as written (no closure), so borrows, `return`
/// and `?` behave exactly as without the attribute. For an `async fn` the clock runs from the
/// first poll to completion, including time spent waiting; a future dropped before it
/// completes (cancelled, timed out) records the time until it was dropped. A plain `fn` that
/// returns a future (`-> impl Future`) times only the creation of the future.
///
/// **Which metrics.** Each site resolves its timer from `metrics::global()` on its first call
/// and keeps it for the life of the process. Install yours with `metrics::set_global` at
/// start-up, before the first timed call: a call before it resolves (and, as any call to
/// `global()` does, fixes) the default instance, which discards everything.
///
/// **Cost.** After the first call: two clock reads and one histogram observe (with
/// `PrometheusProvider`, atomic adds); nothing is allocated.
///
/// ```
/// use sonde_agent::metrics::{self, Metrics};
/// use sonde_agent::{InMemoryProvider, SeriesSnapshot, timed};
///
/// metrics::set_global(Metrics::builder().provider(InMemoryProvider::new()).build());
///
/// #[timed("checkout_duration_seconds", help = "Checkout latency.", tags(route = "/checkout"))]
/// fn checkout(items: u32) -> Result<u32, String> {
///     if items == 0 {
///         return Err("empty cart".into()); // timed too
///     }
///     Ok(items * 2)
/// }
///
/// #[timed("lookup_duration_seconds")]
/// async fn lookup(id: u64) -> Option<u64> {
///     Some(id)
/// }
///
/// assert_eq!(checkout(3), Ok(6));
/// assert!(checkout(0).is_err());
/// let _future = lookup(7); // timed when it runs
///
/// let snap = metrics::global().snapshot();
/// let timer = snap.iter().find(|m| m.name == "checkout_duration_seconds").unwrap();
/// assert_eq!(timer.tags, [("route".to_owned(), "/checkout".to_owned())]);
/// let SeriesSnapshot::Histogram { count, .. } = &timer.value else { panic!() };
/// assert_eq!(*count, 2);
/// ```
#[proc_macro_attribute]
pub fn timed(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = parse_macro_input!(item as ItemFn);
    timed::expand(args.into(), item)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Counts the errors a function returns: each `Err` adds one to a counter from
/// `sonde_agent::metrics::global()`, tagged `function` (the function's name) and `error` (the
/// error's type). Works on `fn` and `async fn` returning `Result<T, E>` (or an alias such as
/// `io::Result<T>`), free or in an `impl`, generic or not.
///
/// ```text
/// #[track_errors]
/// #[track_errors("name")]
/// #[track_errors("name", help = "Help text.", variant)]
/// ```
/// - `"name"`: the counter's name, `errors_total` by default (so every tracked function shares
///   one metric, told apart by its tags), checked at compile time.
/// - `help = "..."`: the help text.
/// - `variant`: tag `error` with the error's variant rather than its type (below).
///
/// **The `error` tag.** By default, `std::any::type_name::<E>()` with each path shortened to its
/// last segment: `OrderError`, `Error` for `std::io::Error`, `Box<dyn Error + Send + Sync>`.
/// That is one series per function and error type, a number fixed by the code, and counting
/// one allocates nothing (unless the type has generic arguments). With `variant`, the leading
/// identifier of the error's `Debug` rendering, which for an enum with derived `Debug` is the
/// variant (`OutOfStock`, `Declined`): finer, and still bounded by the enum's variants, but the
/// error is formatted (into a 64-byte stack buffer, stopping after the identifier) on each
/// `Err`, and `E` must implement `Debug`. When the rendering does not start with an identifier
/// (a string's quote, a number) the type name is used. Do not use `variant` on a type whose
/// `Debug` starts with data (a hand-written one that prints its message): each distinct first
/// word would become a series, until they overflow into `sonde_overflow`.
///
/// The function's name is its bare identifier: methods of the same name on different types
/// share a series. The function keeps its signature and behaviour: the body runs in a closure
/// (an `async` block for an `async fn`) typed with the declared return type, so `return` and
/// `?` (with its `From` conversion) work as written, and the value is returned unchanged.
///
/// **Which metrics.** The counter is resolved from `metrics::global()` on the site's first
/// `Err` and kept for the life of the process: install yours with `metrics::set_global`
/// before then. On `Ok` the cost is one branch; an `Err` costs a hashed lookup of the series
/// under a read lock and an add.
///
/// ```
/// use sonde_agent::metrics::{self, Metrics};
/// use sonde_agent::{InMemoryProvider, SeriesSnapshot, track_errors};
///
/// metrics::set_global(Metrics::builder().provider(InMemoryProvider::new()).build());
///
/// #[derive(Debug)]
/// enum PaymentError {
///     Declined,
///     Timeout { after_ms: u64 },
/// }
///
/// #[track_errors]
/// fn charge(amount: u64) -> Result<u64, PaymentError> {
///     if amount > 100 {
///         return Err(PaymentError::Declined);
///     }
///     Ok(amount)
/// }
///
/// #[track_errors("payment_errors_total", variant)]
/// async fn refund(amount: u64) -> Result<(), PaymentError> {
///     Err(PaymentError::Timeout { after_ms: amount })
/// }
///
/// assert_eq!(charge(5).unwrap(), 5);
/// assert!(charge(500).is_err());
/// let _future = refund(5); // counted when it runs and fails
///
/// let snap = metrics::global().snapshot();
/// let errors = snap.iter().find(|m| m.name == "errors_total").unwrap();
/// assert_eq!(
///     errors.tags,
///     [("error".to_owned(), "PaymentError".to_owned()), ("function".to_owned(), "charge".to_owned())]
/// );
/// assert_eq!(errors.value, SeriesSnapshot::Counter(1.0));
/// ```
#[proc_macro_attribute]
pub fn track_errors(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = parse_macro_input!(item as ItemFn);
    track_errors::expand(args.into(), item)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
