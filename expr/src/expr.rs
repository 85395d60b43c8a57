//! `Expr`, a compiled expression, and its evaluation.
//!
//! # Design of the hit
//!
//! An `Expr` holds one or more *units* (one, or one per `{…}` of a template). A unit is a
//! constant, a single variable path (the fast path), or a rhai AST whose variables are *slots*
//! (see the `rewrite` module): the paths it reads, each resolved once through the caller's
//! [`Lookup`].
//!
//! - Constant: the value was computed at compile time; nothing is looked up.
//! - Path: `Lookup::lend_path`, then the typed read (`eval_condition` wants a bool, …). With a
//!   lookup that lends its values (strings in place, numbers and bools by value, the rest
//!   `Cow::Borrowed`) nothing is allocated or cloned.
//! - native: simple operator expressions over slots and literals (`order.total * 2`,
//!   `len > 3 && name == "x"`) are evaluated by the `native` module without rhai; whatever that
//!   lane cannot answer exactly falls through to rhai.
//! - rhai: the unit's slots are converted to rhai values, once each, into a per-thread list
//!   that the engine's variable resolver reads (`_vN` is item N), then the AST runs on the
//!   shared engine. Refilling a per-thread `Scope` instead (cleared, then a constant pushed per
//!   slot) allocated each slot's name on every hit: rhai's scope keeps names as shared strings.
//!   The resolver marks what it returns read-only, as a constant in a scope is. An evaluation
//!   that interrupts another on its thread (from inside a lookup) puts the other's slots back
//!   when it ends.
//!
//! Every evaluation runs inside `catch_unwind`: a panic (in rhai or in the lookup) becomes
//! [`EvalError::Panicked`].

use std::borrow::Cow;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use rhai::{AST, Dynamic, ImmutableString};
use smallvec::SmallVec;

use crate::engine::{
    Slots, engine, eval_error, from_dynamic, render_dynamic, to_dynamic, with_slots,
};
use crate::error::EvalError;
use crate::kind::ExprKind;
use crate::lookup::{Lent, Lookup, Path};
use crate::native::{self, MAX_SLOTS, V};
use crate::value::{Number, Value};

/// A compiled expression: `Send + Sync`, cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Expr(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub source: String,
    pub kind: ExprKind,
    pub variables: Vec<String>,
    pub paths: Vec<Path>,
    pub body: Body,
}

pub(crate) enum Body {
    Single(Unit),
    Template(Vec<Part>),
}

pub(crate) enum Part {
    Text(String),
    Unit(Unit),
}

pub(crate) enum Unit {
    Const(Value),
    /// Index into `Inner::paths`.
    Path(usize),
    Rhai {
        ast: AST,
        /// Slot `i` (rhai name `_v{i}`) reads `Inner::paths[slots[i]]`.
        slots: Vec<usize>,
        /// How many times at most slot `i` is read by one evaluation (its occurrences in the
        /// rewritten text, counted generously).
        reads: Vec<u32>,
        /// The same expression for the native lane, when it is in the native subset.
        native: Option<native::Program>,
    },
}

/// A borrowed result, before it is read as the type the caller wants.
enum Res<'a> {
    Value(&'a Value),
    Dyn(&'a Dynamic),
    Native(V<'a>),
}

/// The values a native unit reads, one per slot, on the stack (the parser takes at most
/// [`MAX_SLOTS`], so it never spills): only the slots filled are written and dropped.
type Store<'a> = SmallVec<[Lent<'a>; MAX_SLOTS]>;

impl Expr {
    /// The source as the user wrote it.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.0.source
    }

    /// What the expression was compiled as.
    #[must_use]
    pub fn kind(&self) -> ExprKind {
        self.0.kind
    }

    /// The root variable names the expression reads, in order of first use, without repeats.
    #[must_use]
    pub fn variables(&self) -> &[String] {
        &self.0.variables
    }

    /// The variable paths the expression reads (`order.total`, `items[0].sku`), each once: these
    /// are exactly the paths an evaluation may ask its [`Lookup`] for (through
    /// [`Lookup::lend_path`], [`Lookup::render_path`] or [`Lookup::get_path`]).
    #[must_use]
    pub fn paths(&self) -> &[Path] {
        &self.0.paths
    }

    /// Whether evaluation never enters rhai: the expression (or every `{…}` of a template) is a
    /// constant or a plain variable path. (Simple operator expressions are evaluated natively
    /// too, see [`Expr::is_native`], but may fall back to rhai for some values.)
    #[must_use]
    pub fn is_fast_path(&self) -> bool {
        match &self.0.body {
            Body::Single(u) => !matches!(u, Unit::Rhai { .. }),
            Body::Template(parts) => parts
                .iter()
                .all(|p| !matches!(p, Part::Unit(Unit::Rhai { .. }))),
        }
    }

    /// Whether the expression (or every `{…}` of a template) is a constant, a plain path, or in
    /// the native lane's subset (operators, string methods, indexes, `in`, `if`, concatenation),
    /// which is evaluated without rhai when the values allow (see the crate README).
    #[must_use]
    pub fn is_native(&self) -> bool {
        let native = |u: &Unit| !matches!(u, Unit::Rhai { native: None, .. });
        match &self.0.body {
            Body::Single(u) => native(u),
            Body::Template(parts) => parts.iter().all(|p| match p {
                Part::Text(_) => true,
                Part::Unit(u) => native(u),
            }),
        }
    }

    /// Evaluates a condition.
    ///
    /// # Errors
    /// [`EvalError::TypeMismatch`] when the result is not a bool (a template never is), or the
    /// evaluation's own error.
    pub fn eval_condition<L: Lookup + ?Sized>(&self, vars: &L) -> Result<bool, EvalError> {
        guard(|| {
            self.with_single(vars, |r| match r {
                Res::Value(Value::Bool(b)) => Ok(*b),
                Res::Value(_) => Err(EvalError::TypeMismatch),
                Res::Dyn(d) => d.as_bool().map_err(|_| EvalError::TypeMismatch),
                Res::Native(V::Bool(b)) => Ok(b),
                Res::Native(_) => Err(EvalError::TypeMismatch),
            })
        })
    }

    /// Evaluates a number (a metric value).
    ///
    /// # Errors
    /// [`EvalError::TypeMismatch`] when the result is not an int, uint or float, or the
    /// evaluation's own error.
    pub fn eval_number<L: Lookup + ?Sized>(&self, vars: &L) -> Result<Number, EvalError> {
        guard(|| {
            self.with_single(vars, |r| match r {
                Res::Value(Value::Int(i)) => Ok(Number::Int(*i)),
                Res::Value(Value::UInt(u)) => Ok(Number::UInt(*u)),
                Res::Value(Value::Float(f)) => Ok(Number::Float(*f)),
                Res::Value(_) => Err(EvalError::TypeMismatch),
                Res::Dyn(d) => {
                    if let Ok(i) = d.as_int() {
                        Ok(Number::Int(i))
                    } else {
                        d.as_float()
                            .map(Number::Float)
                            .map_err(|_| EvalError::TypeMismatch)
                    }
                }
                Res::Native(V::Int(i)) => Ok(Number::Int(i)),
                Res::Native(V::Float(f)) => Ok(Number::Float(f)),
                Res::Native(_) => Err(EvalError::TypeMismatch),
            })
        })
    }

    /// Evaluates a number as an `f64` (see [`Number::as_f64`]).
    ///
    /// # Errors
    /// As [`Expr::eval_number`].
    pub fn eval_f64<L: Lookup + ?Sized>(&self, vars: &L) -> Result<f64, EvalError> {
        self.eval_number(vars).map(Number::as_f64)
    }

    /// Evaluates a label value and appends its rendering to `out` (rules in [`Value`]'s module
    /// docs: `2.0`, `true`, `none`, …). On error `out` is left as it was.
    ///
    /// # Errors
    /// The evaluation's error.
    pub fn eval_label<L: Lookup + ?Sized>(
        &self,
        vars: &L,
        out: &mut String,
    ) -> Result<(), EvalError> {
        self.render(vars, out)
    }

    /// Evaluates any kind and appends its rendering to `out`: a template's text with its holes
    /// filled, any other kind's value rendered as a label is. On error `out` is left as it was.
    ///
    /// # Errors
    /// The first failing hole's error.
    pub fn render<L: Lookup + ?Sized>(&self, vars: &L, out: &mut String) -> Result<(), EvalError> {
        let len = out.len();
        let r = guard(|| match &self.0.body {
            Body::Single(u) => self.render_unit(u, vars, out),
            Body::Template(parts) => {
                for part in parts {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Unit(u) => self.render_unit(u, vars, out)?,
                    }
                }
                Ok(())
            }
        });
        if r.is_err() {
            out.truncate(len);
        }
        r
    }

    /// Evaluates as [`Expr::eval`] does, but never on the native lane: what rhai alone answers.
    /// For the tests and the fuzzer that compare the two lanes.
    ///
    /// # Errors
    /// The evaluation's error.
    #[doc(hidden)]
    pub fn eval_rhai_lane<L: Lookup + ?Sized>(&self, vars: &L) -> Result<Value, EvalError> {
        match &self.0.body {
            Body::Single(u) => guard(|| {
                self.with_rhai(u, vars, |r| {
                    Ok(match r {
                        Res::Value(v) => v.clone(),
                        Res::Dyn(d) => from_dynamic(d),
                        Res::Native(v) => native::to_value(v).map_err(|_| EvalError::Runtime)?,
                    })
                })
            }),
            Body::Template(parts) => {
                let mut s = String::new();
                guard(|| {
                    for part in parts {
                        match part {
                            Part::Text(t) => s.push_str(t),
                            Part::Unit(u) => self.with_rhai(u, vars, |r| {
                                render_res(&r, &mut s);
                                Ok(())
                            })?,
                        }
                    }
                    Ok(())
                })?;
                Ok(Value::Str(s))
            }
        }
    }

    /// Evaluates any kind to an owned [`Value`] (a template yields [`Value::Str`]); rhai maps come
    /// back as [`Value::Map`].
    ///
    /// # Errors
    /// The evaluation's error.
    pub fn eval<L: Lookup + ?Sized>(&self, vars: &L) -> Result<Value, EvalError> {
        match &self.0.body {
            Body::Single(u) => guard(|| {
                self.with_unit(u, vars, |r| {
                    Ok(match r {
                        Res::Value(v) => v.clone(),
                        Res::Dyn(d) => from_dynamic(d),
                        // `native::eval` answers only with values that convert.
                        Res::Native(v) => native::to_value(v).map_err(|_| EvalError::Runtime)?,
                    })
                })
            }),
            Body::Template(_) => {
                let mut s = String::new();
                self.render(vars, &mut s)?;
                Ok(Value::Str(s))
            }
        }
    }

    fn with_single<L, R>(
        &self,
        vars: &L,
        f: impl FnOnce(Res<'_>) -> Result<R, EvalError>,
    ) -> Result<R, EvalError>
    where
        L: Lookup + ?Sized,
    {
        match &self.0.body {
            Body::Single(u) => self.with_unit(u, vars, f),
            Body::Template(_) => Err(EvalError::TypeMismatch),
        }
    }

    #[inline]
    /// Renders one unit; a plain path first asks the lookup to write it directly.
    fn render_unit<L: Lookup + ?Sized>(
        &self,
        unit: &Unit,
        vars: &L,
        out: &mut String,
    ) -> Result<(), EvalError> {
        if let Unit::Path(p) = unit
            && let Some(done) = vars.render_path(&self.0.paths[*p], out)
        {
            return done;
        }
        if let Unit::Rhai {
            slots,
            native: Some(node),
            ..
        } = unit
        {
            // Straight into `out`; on a fallback, rhai renders from where it was.
            let len = out.len();
            if self.with_lent(slots, vars, |lent| native::render(node, lent, out).is_ok())? {
                return Ok(());
            }
            out.truncate(len);
            return self.with_rhai(unit, vars, |r| {
                render_res(&r, out);
                Ok(())
            });
        }
        self.with_unit(unit, vars, |r| {
            render_res(&r, out);
            Ok(())
        })
    }

    fn with_unit<L, R>(
        &self,
        unit: &Unit,
        vars: &L,
        f: impl FnOnce(Res<'_>) -> Result<R, EvalError>,
    ) -> Result<R, EvalError>
    where
        L: Lookup + ?Sized,
    {
        match unit {
            Unit::Const(v) => f(Res::Value(v)),
            // Lent, so that a number or a string is read in place (a `Value` with no heap part
            // is built for a number; a string reads as `Value::Str` would).
            Unit::Path(p) => match vars.lend_path(&self.0.paths[*p])? {
                Lent::Value(v) => f(Res::Value(&v)),
                Lent::Number(n) => f(Res::Value(&Value::from(n))),
                Lent::Bool(b) => f(Res::Value(&Value::Bool(b))),
                Lent::Str(s) => f(Res::Native(V::Str(Cow::Borrowed(s)))),
            },
            Unit::Rhai {
                ast,
                slots,
                reads,
                native,
            } => {
                if let Some(node) = native {
                    let mut f = Some(f);
                    let answered = self.with_lent(slots, vars, |lent| {
                        let v = native::eval(node, lent).ok()?;
                        f.take().map(|f| f(Res::Native(v)))
                    })?;
                    match (answered, f) {
                        (Some(r), _) => return r,
                        (None, Some(g)) => return self.with_rhai(unit, vars, g),
                        (None, None) => return Err(EvalError::Runtime),
                    }
                }
                let d = self.run(ast, slots, reads, vars)?;
                f(Res::Dyn(&d))
            }
        }
    }

    /// As [`Expr::with_unit`], skipping the native lane.
    fn with_rhai<L, R>(
        &self,
        unit: &Unit,
        vars: &L,
        f: impl FnOnce(Res<'_>) -> Result<R, EvalError>,
    ) -> Result<R, EvalError>
    where
        L: Lookup + ?Sized,
    {
        match unit {
            Unit::Rhai {
                ast, slots, reads, ..
            } => {
                let d = self.run(ast, slots, reads, vars)?;
                f(Res::Dyn(&d))
            }
            _ => self.with_unit(unit, vars, f),
        }
    }

    /// Runs `f` on the values of `slots` (indexes into the paths), lent in order: up to three
    /// in an array of their own size (most expressions read one to three), more in a [`Store`].
    #[inline(always)]
    fn with_lent<'v, L: Lookup + ?Sized, R>(
        &self,
        slots: &[usize],
        vars: &'v L,
        f: impl FnOnce(&[Lent<'v>]) -> R,
    ) -> Result<R, EvalError> {
        let lend = |p: usize| vars.lend_path(&self.0.paths[p]);
        Ok(match *slots {
            [a] => f(&[lend(a)?]),
            [a, b] => f(&[lend(a)?, lend(b)?]),
            [a, b, c] => f(&[lend(a)?, lend(b)?, lend(c)?]),
            _ => {
                let mut store = Store::new();
                for &p in slots {
                    store.push(lend(p)?);
                }
                f(&store)
            }
        })
    }

    fn run<L: Lookup + ?Sized>(
        &self,
        ast: &AST,
        slots: &[usize],
        reads: &[u32],
        vars: &L,
    ) -> Result<Dynamic, EvalError> {
        let mut values = Slots::new();
        for (&p, &reads) in slots.iter().zip(reads) {
            // A lent string is copied once, into rhai's string, not first into a `Value`.
            let value = match vars.lend_path(&self.0.paths[p])? {
                Lent::Str(s) => Dynamic::from(ImmutableString::from(s)),
                Lent::Value(v) => to_dynamic(&v)?,
                Lent::Number(n) => to_dynamic(&Value::from(n))?,
                Lent::Bool(b) => Dynamic::from_bool(b),
            };
            values.push((value, reads));
        }
        with_slots(values, || engine().eval_ast::<Dynamic>(ast)).map_err(|e| eval_error(&e))
    }
}

fn render_res(r: &Res<'_>, out: &mut String) {
    match r {
        Res::Value(v) => v.render(out),
        Res::Dyn(d) => render_dynamic(d, out, false),
        Res::Native(v) => native::render_value(v, out),
    }
}

/// Runs `f`, turning a panic into [`EvalError::Panicked`].
#[inline]
fn guard<R>(f: impl FnOnce() -> Result<R, EvalError>) -> Result<R, EvalError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(Err(EvalError::Panicked))
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expr")
            .field("kind", &self.0.kind)
            .field("source", &self.0.source)
            .field("variables", &self.0.variables)
            .field("fast_path", &self.is_fast_path())
            .finish()
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.source)
    }
}
