//! The one sandboxed rhai `Engine`, shared by every expression, and the bridges to and from rhai.
//!
//! The engine is built once ([`engine`]) and never changed. Its sandbox:
//! - no loops (`for`, `while`, `loop`, `do`), no statement blocks, no anonymous functions, no
//!   function definitions, no modules or `import` (crate features `no_function`, `no_module`,
//!   `no_closure`, `no_custom_syntax`); expressions are compiled in rhai's expression mode, so
//!   `let`, `const`, assignment and compound assignment are syntax errors;
//! - `eval`, `print`, `debug`, `import`, `export` and the assignment operators are disabled
//!   symbols; `print`/`debug` output would go nowhere in any case;
//! - strict variables (every name must be a known slot), invalid map properties fail;
//! - captured values reach rhai through its variable resolver, which makes them read-only like
//!   constants, so a mutating method (`items.push(1)`) fails;
//! - budgets: [`MAX_OPERATIONS`] operations, expression depth [`MAX_EXPR_DEPTH`], strings of
//!   [`MAX_STRING_SIZE`] bytes, lists and maps of [`MAX_COLLECTION_SIZE`] items. There is no
//!   call-depth limit to set: with `no_function` no script function exists, so calls cannot nest
//!   beyond what the expression depth allows (rhai offers `set_max_call_levels` only with script
//!   functions).

use std::cell::RefCell;
use std::sync::OnceLock;

use rhai::{Dynamic, Engine, EvalAltResult, INT, ImmutableString, OptimizationLevel};
use smallvec::SmallVec;

use crate::error::EvalError;
use crate::value::{Value, write_f64, write_hex, write_i64, write_quoted};

/// Operations one evaluation may perform.
pub const MAX_OPERATIONS: u64 = 10_000;
/// Nesting depth of an expression (parenthesis, operators, calls).
pub const MAX_EXPR_DEPTH: usize = 64;
/// Largest string an expression may build, in bytes.
pub const MAX_STRING_SIZE: usize = 64 * 1024;
/// Largest list or map an expression may build.
pub const MAX_COLLECTION_SIZE: usize = 10_000;
/// Deepest captured value converted for rhai; deeper values are a budget error.
const MAX_VALUE_DEPTH: usize = 32;

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// The values of one evaluation's slots, in slot order, each with how many reads of it the
/// expression's text holds at most (see [`slot_value`]).
pub(crate) type Slots = SmallVec<[(Dynamic, u32); 8]>;

thread_local! {
    /// The slots of the evaluation running on this thread, read by the engine's variable
    /// resolver: filled once per evaluation, with no scope to refill (a scope entry costs an
    /// allocation for its name on every push).
    static SLOTS: RefCell<Slots> = const { RefCell::new(SmallVec::new_const()) };
}

/// Runs `f` (an evaluation) with `values` as its slots `_v0`, `_v1`, …; the slots of an
/// evaluation it interrupted, if any, are back in place afterwards, panic or not.
pub(crate) fn with_slots<R>(values: Slots, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Slots>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(prev) = self.0.take() {
                let _ = SLOTS.try_with(|s| s.replace(prev));
            }
        }
    }
    let _restore = Restore(SLOTS.try_with(|s| s.replace(values)).ok());
    f()
}

/// The value of slot `name` (`_vN`) of the running evaluation. Its last read (by the count of
/// its occurrences in the text, which no evaluation exceeds: there are no loops or functions)
/// moves it out; the others clone it. A captured string is a reference-counted rhai string, and
/// a clone costs an atomic increment and decrement: most slots are read once, for nothing.
fn slot_value(name: &str) -> RhaiResult<Option<Dynamic>> {
    let Some(n) = name
        .strip_prefix("_v")
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return Ok(None);
    };
    let read = SLOTS.try_with(|s| {
        let mut s = s.try_borrow_mut().ok()?;
        let (value, left) = s.get_mut(n)?;
        Some(match *left {
            0 => None,
            1 => {
                *left = 0;
                Some(std::mem::replace(value, Dynamic::UNIT))
            }
            _ => {
                *left -= 1;
                Some(value.clone())
            }
        })
    });
    match read {
        Ok(Some(Some(v))) => Ok(Some(v)),
        // Read more often than its text allows: refuse rather than answer with a moved-out `()`.
        Ok(Some(None)) => Err(format!("slot {name} read more often than it occurs").into()),
        _ => Ok(None),
    }
}

/// The shared engine.
pub(crate) fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(build)
}

fn build() -> Engine {
    let mut e = Engine::new();
    e.set_optimization_level(OptimizationLevel::Simple)
        .set_allow_looping(false)
        .set_allow_loop_expressions(false)
        .set_allow_statement_expression(false)
        .set_allow_shadowing(false)
        .set_strict_variables(true)
        .set_fail_on_invalid_map_property(true)
        .set_max_operations(MAX_OPERATIONS)
        .set_max_expr_depths(MAX_EXPR_DEPTH)
        .set_max_string_size(MAX_STRING_SIZE)
        .set_max_array_size(MAX_COLLECTION_SIZE)
        .set_max_map_size(MAX_COLLECTION_SIZE)
        .set_max_variables(4096)
        .on_print(|_| {})
        .on_debug(|_, _, _| {});
    // The slots `_v0`, `_v1`, … of the evaluation running on this thread (see [`with_slots`]).
    // rhai marks what a resolver returns read-only, as it does a constant in a scope.
    #[allow(deprecated)] // `on_var` is not deprecated; rhai marks it so to say it may change
    e.on_var(|name, _, _| slot_value(name));
    for symbol in [
        "eval", "print", "debug", "import", "export", "while", "loop", "for", "do", "until", "=",
        "+=", "-=", "*=", "/=", "%=", "**=", "<<=", ">>=", "&=", "|=", "^=", "??=",
    ] {
        e.disable_symbol(symbol);
    }
    register_functions(&mut e);
    e
}

/// Deep-style conversions and Python spellings of rhai's string functions.
fn register_functions(e: &mut Engine) {
    e.register_fn("str", |x: Dynamic| -> ImmutableString {
        let mut s = String::new();
        render_dynamic(&x, &mut s, false);
        s.into()
    });
    e.register_fn("int", to_int);
    // rhai's math package has `int(float) -> float` (the integer part); Python's `int` wins here.
    e.register_fn("int", |f: f64| to_int(Dynamic::from_float(f)));
    e.register_fn("float", to_float);
    e.register_fn("lower", |s: ImmutableString| -> ImmutableString {
        s.to_lowercase().into()
    });
    e.register_fn("upper", |s: ImmutableString| -> ImmutableString {
        s.to_uppercase().into()
    });
    e.register_fn("strip", |s: ImmutableString| -> ImmutableString {
        s.trim().into()
    });
    e.register_fn("startswith", |s: ImmutableString, p: ImmutableString| {
        s.starts_with(p.as_str())
    });
    e.register_fn("endswith", |s: ImmutableString, p: ImmutableString| {
        s.ends_with(p.as_str())
    });
}

fn arithmetic(msg: &str) -> Box<EvalAltResult> {
    EvalAltResult::ErrorArithmetic(msg.into(), rhai::Position::NONE).into()
}

fn to_int(x: Dynamic) -> RhaiResult<INT> {
    if let Ok(i) = x.as_int() {
        Ok(i)
    } else if let Ok(f) = x.as_float() {
        // `i64::MAX as f64` rounds up to 2^63, hence `<` at the top.
        #[allow(clippy::cast_precision_loss)]
        let in_range = f.is_finite() && f >= i64::MIN as f64 && f < i64::MAX as f64;
        if in_range {
            // In range and finite: truncation toward zero is the documented conversion.
            #[allow(clippy::cast_possible_truncation)]
            Ok(f.trunc() as i64)
        } else {
            Err(arithmetic("int(): float out of range"))
        }
    } else if let Ok(b) = x.as_bool() {
        Ok(INT::from(b))
    } else if let Ok(s) = x.as_immutable_string_ref() {
        s.trim()
            .parse::<INT>()
            .map_err(|_| arithmetic("int(): not an integer"))
    } else {
        Err(EvalAltResult::ErrorMismatchDataType(
            "int".into(),
            x.type_name().into(),
            rhai::Position::NONE,
        )
        .into())
    }
}

fn to_float(x: Dynamic) -> RhaiResult<f64> {
    if let Ok(f) = x.as_float() {
        Ok(f)
    } else if let Ok(i) = x.as_int() {
        // Rounding to the nearest float is the documented conversion.
        #[allow(clippy::cast_precision_loss)]
        Ok(i as f64)
    } else if let Ok(b) = x.as_bool() {
        Ok(if b { 1.0 } else { 0.0 })
    } else if let Ok(s) = x.as_immutable_string_ref() {
        s.trim()
            .parse::<f64>()
            .map_err(|_| arithmetic("float(): not a number"))
    } else {
        Err(EvalAltResult::ErrorMismatchDataType(
            "float".into(),
            x.type_name().into(),
            rhai::Position::NONE,
        )
        .into())
    }
}

/// Converts a captured value for rhai (records and maps become rhai maps).
pub(crate) fn to_dynamic(v: &Value) -> Result<Dynamic, EvalError> {
    to_dynamic_at(v, 0)
}

fn to_dynamic_at(v: &Value, depth: usize) -> Result<Dynamic, EvalError> {
    if depth > MAX_VALUE_DEPTH {
        return Err(EvalError::BudgetExceeded);
    }
    Ok(match v {
        Value::None => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Int(i) => Dynamic::from_int(*i),
        Value::UInt(u) => match i64::try_from(*u) {
            Ok(i) => Dynamic::from_int(i),
            // Documented: unsigned values above i64::MAX become floats inside rhai.
            #[allow(clippy::cast_precision_loss)]
            Err(_) => Dynamic::from_float(*u as f64),
        },
        Value::Float(f) => Dynamic::from_float(*f),
        Value::Str(s) => Dynamic::from(ImmutableString::from(s.as_str())),
        Value::Bytes(b) => Dynamic::from_blob(b.clone()),
        Value::List(items) => Dynamic::from_array(
            items
                .iter()
                .map(|x| to_dynamic_at(x, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(m) => {
            let mut map = rhai::Map::new();
            for (k, v) in m {
                map.insert(k.as_str().into(), to_dynamic_at(v, depth + 1)?);
            }
            Dynamic::from_map(map)
        }
        Value::Record(fields) => {
            let mut map = rhai::Map::new();
            for (k, v) in fields {
                map.insert(k.as_ref().into(), to_dynamic_at(v, depth + 1)?);
            }
            Dynamic::from_map(map)
        }
    })
}

/// Converts a rhai result back to a [`Value`] (rhai maps become [`Value::Map`]).
pub(crate) fn from_dynamic(d: &Dynamic) -> Value {
    if d.is_unit() {
        Value::None
    } else if let Ok(b) = d.as_bool() {
        Value::Bool(b)
    } else if let Ok(i) = d.as_int() {
        Value::Int(i)
    } else if let Ok(f) = d.as_float() {
        Value::Float(f)
    } else if let Ok(s) = d.as_immutable_string_ref() {
        Value::Str(s.as_str().to_owned())
    } else if let Ok(c) = d.as_char() {
        Value::Str(c.to_string())
    } else if let Ok(a) = d.as_array_ref() {
        Value::List(a.iter().map(from_dynamic).collect())
    } else if let Ok(b) = d.as_blob_ref() {
        Value::Bytes(b.clone())
    } else if let Ok(m) = d.as_map_ref() {
        Value::Map(
            m.iter()
                .map(|(k, v)| (k.to_string(), from_dynamic(v)))
                .collect(),
        )
    } else {
        Value::Str(d.to_string())
    }
}

/// Appends a rhai value rendered by the same rules as [`Value::render`].
pub(crate) fn render_dynamic(d: &Dynamic, out: &mut String, nested: bool) {
    if d.is_unit() {
        out.push_str("none");
    } else if let Ok(b) = d.as_bool() {
        out.push_str(if b { "true" } else { "false" });
    } else if let Ok(i) = d.as_int() {
        write_i64(out, i);
    } else if let Ok(f) = d.as_float() {
        write_f64(out, f);
    } else if let Ok(s) = d.as_immutable_string_ref() {
        if nested {
            write_quoted(out, &s);
        } else {
            out.push_str(&s);
        }
    } else if let Ok(c) = d.as_char() {
        if nested {
            write_quoted(out, c.encode_utf8(&mut [0; 4]));
        } else {
            out.push(c);
        }
    } else if let Ok(a) = d.as_array_ref() {
        out.push('[');
        for (i, x) in a.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            render_dynamic(x, out, true);
        }
        out.push(']');
    } else if let Ok(b) = d.as_blob_ref() {
        write_hex(out, &b);
    } else if let Ok(m) = d.as_map_ref() {
        out.push('{');
        for (i, (k, v)) in m.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            write_quoted(out, k);
            out.push_str(": ");
            render_dynamic(v, out, true);
        }
        out.push('}');
    } else {
        out.push_str(&d.to_string());
    }
}

/// Maps a rhai runtime error to the hot path's `Copy` error.
pub(crate) fn eval_error(err: &EvalAltResult) -> EvalError {
    use EvalAltResult as E;
    match err {
        E::ErrorVariableNotFound(..) => EvalError::MissingVariable,
        E::ErrorPropertyNotFound(..) | E::ErrorIndexNotFound(..) => EvalError::MissingField,
        E::ErrorArrayBounds(..) | E::ErrorStringBounds(..) | E::ErrorBitFieldBounds(..) => {
            EvalError::IndexOutOfBounds
        }
        E::ErrorMismatchDataType(..)
        | E::ErrorMismatchOutputType(..)
        | E::ErrorFunctionNotFound(..)
        | E::ErrorIndexingType(..)
        | E::ErrorDotExpr(..)
        | E::ErrorFor(..)
        | E::ErrorNonPureMethodCallOnConstant(..)
        | E::ErrorAssignmentToConstant(..) => EvalError::TypeMismatch,
        E::ErrorArithmetic(..) => EvalError::Arithmetic,
        E::ErrorTooManyOperations(..)
        | E::ErrorTooManyVariables(..)
        | E::ErrorTooManyModules(..)
        | E::ErrorStackOverflow(..)
        | E::ErrorDataTooLarge(..) => EvalError::BudgetExceeded,
        E::ErrorInFunctionCall(_, _, inner, _) | E::ErrorInModule(_, inner, _) => eval_error(inner),
        _ => EvalError::Runtime,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_rhai() {
        let v = Value::Map(
            [
                (
                    "a".to_owned(),
                    Value::List(vec![Value::Int(1), Value::Float(0.5), Value::None]),
                ),
                ("b".to_owned(), Value::Bytes(vec![1, 2])),
                ("c".to_owned(), Value::Str("x".into())),
                ("d".to_owned(), Value::Bool(false)),
            ]
            .into(),
        );
        let d = to_dynamic(&v).expect("converts");
        assert_eq!(from_dynamic(&d), v);
        let mut a = String::new();
        render_dynamic(&d, &mut a, false);
        assert_eq!(a, v.to_string());
    }

    #[test]
    fn big_unsigned_values_become_floats_in_rhai() {
        let d = to_dynamic(&Value::UInt(u64::MAX)).expect("converts");
        assert!(d.is_float());
        let d = to_dynamic(&Value::UInt(5)).expect("converts");
        assert_eq!(d.as_int(), Ok(5));
    }

    #[test]
    fn too_deep_values_exceed_the_budget() {
        let mut v = Value::None;
        for _ in 0..40 {
            v = Value::List(vec![v]);
        }
        assert_eq!(to_dynamic(&v).err(), Some(EvalError::BudgetExceeded));
    }
}
