//! Sonde's agent macros: `#[derive(Capture)]` and `#[instrument]`. Use them through
//! `sonde-agent`, which re-exports them (`sonde_agent::Capture`, `sonde_agent::instrument`);
//! their expansions name `::sonde_agent`.

#![forbid(unsafe_code)]

use proc_macro::TokenStream;
use syn::{DeriveInput, ItemFn, parse_macro_input};

mod derive;
mod instrument;

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
