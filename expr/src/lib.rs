//! Sonde's expression language: tracepoint conditions, metric values, label values, log templates
//! and Deep watches, compiled once and evaluated on the application's hot path.
//!
//! The language is [rhai](https://rhai.rs), sandboxed (no loops, no assignment, no `eval`, no
//! I/O, bounded operations, depth and sizes), with Python-flavoured additions for Deep users:
//! `and` / `or` / `not`, `not in`, `True` / `False` / `None`, and `len(x)`, `str(x)`, `int(x)`,
//! `float(x)`, `lower(s)`, `upper(s)`, `strip(s)`, `startswith`, `endswith`. The server compiles
//! (to reject bad tracepoints with a position); agents compile and evaluate.
//!
//! ```
//! use sonde_expr::{compile, CompileOptions, compile_with, ExprKind, Value};
//!
//! // The variables captured at a line: name → value (any `Lookup` will do).
//! let order = Value::Record(vec![
//!     ("total".into(), Value::Float(12.5)),
//!     ("country".into(), Value::from("NZ")),
//!     ("items".into(), Value::List(vec![Value::from("a"), Value::from("b")])),
//! ]);
//! let vars = [("order", order)];
//!
//! let cond = compile("len(order.items) > 1 and order.country == \"NZ\"", ExprKind::Condition)?;
//! assert_eq!(cond.eval_condition(&vars), Ok(true));
//!
//! let value = compile("order.total * 2", ExprKind::Value)?;
//! assert_eq!(value.eval_f64(&vars), Ok(25.0));
//!
//! let label = compile("order.country", ExprKind::Label)?;
//! assert!(label.is_fast_path()); // a plain path never enters rhai
//! let mut out = String::new();
//! label.eval_label(&vars, &mut out)?;
//! assert_eq!(out, "NZ");
//!
//! let log = compile("{len(order.items)} items for {order.total}", ExprKind::Template)?;
//! out.clear();
//! log.render(&vars, &mut out)?;
//! assert_eq!(out, "2 items for 12.5");
//!
//! // Where the captured names are known, other names are errors with a position.
//! let err = compile_with("user.id", ExprKind::Label, &CompileOptions::with_variables(["order"]))
//!     .unwrap_err();
//! assert_eq!(err.to_string(), "unknown variable `user`; available: order (at line 1, column 1)");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Kinds and results
//! | kind | evaluate with | yields |
//! | --- | --- | --- |
//! | [`ExprKind::Condition`] | [`Expr::eval_condition`] | `bool`; any other type is [`EvalError::TypeMismatch`], never `false` |
//! | [`ExprKind::Value`] | [`Expr::eval_f64`] / [`Expr::eval_number`] | a number (int, uint, float); anything else is a type mismatch |
//! | [`ExprKind::Label`] | [`Expr::eval_label`] | any value, rendered into a caller's `String` |
//! | [`ExprKind::Template`] | [`Expr::render`] | the text with every `{expression}` rendered; `{{` / `}}` are literal braces |
//! | [`ExprKind::Any`] | [`Expr::eval`] | any value as a [`Value`] |
//!
//! Rendering (labels, templates, `str(x)`) is described on [`Value`]: floats keep `.0` when
//! integral (`2.0`), use exponents at and above `1e16` and below `1e-4`, `NaN`/`+Inf`/`-Inf`;
//! bools are `true`/`false`; none is `none`; bytes are lower-case hex.
//!
//! # The fast path
//! These shapes never enter rhai on the hit:
//! - a plain variable path: a name followed by any number of `.field`, `["key"]` and `[integer]`
//!   steps (negative integers count from the end), optionally in parentheses: `user.id`,
//!   `order.customer.country`, `items[0].sku`, `headers["x-id"]`;
//! - anything that reads no variable (`42`, `"checkout"`, `true`, `60 * 1000`), which is evaluated
//!   once at compile time; in templates, constant holes are folded into the text.
//!
//! In rhai expressions too, each variable path is resolved through the caller's [`Lookup`] once
//! and only its leaf value is converted: `order.total * 2` converts one float, not `order`.
//!
//! # Sandbox
//! One shared, immutable engine; expressions are compiled in rhai's expression mode. Refused at
//! compile time: loops, `let`/`const`, assignment and compound assignment, statement blocks,
//! function definitions and closures, modules and `import`, `eval`, `print`, `debug`, back-tick
//! strings, sources over [`MAX_SOURCE_LEN`] bytes, nesting deeper than [`MAX_EXPR_DEPTH`]. Stopped
//! at run time with [`EvalError::BudgetExceeded`]: more than [`MAX_OPERATIONS`] operations, strings
//! over [`MAX_STRING_SIZE`] bytes, lists or maps over [`MAX_COLLECTION_SIZE`] items. Captured
//! values are constants to rhai: a mutating method (`items.push(1)`) is an error, and nothing an
//! expression does reaches the application's data. Panics are caught ([`EvalError::Panicked`]).
#![forbid(unsafe_code)]

mod compile;
mod engine;
mod error;
mod expr;
mod kind;
mod lookup;
mod native;
mod rewrite;
mod value;

pub use compile::{CompileOptions, MAX_SOURCE_LEN, compile, compile_with};
pub use engine::{MAX_COLLECTION_SIZE, MAX_EXPR_DEPTH, MAX_OPERATIONS, MAX_STRING_SIZE};
pub use error::{CompileError, EvalError, Position};
pub use expr::Expr;
pub use kind::ExprKind;
pub use lookup::{FnLookup, Lent, Lookup, Path, Segment};
pub use value::{Number, Value};
