//! Fuzz target: compile any source as any kind, evaluate it over a fixed set of captured values,
//! and check that the native lane agrees with rhai wherever it answers.
//!
//! Input: the first byte picks the kind, the rest is the source (UTF-8).
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use sonde_expr::{compile, EvalError, ExprKind, Lent, Lookup, Number, Path, Value};

/// A lookup that lends the strings it holds in place and numbers and bools by value (as Sonde's
/// agent does) instead of handing `Value`s.
struct Lending<'a>(&'a [(&'static str, Value)]);

impl Lookup for Lending<'_> {
    fn get(&self, name: &str) -> Option<Cow<'_, Value>> {
        Lookup::get(self.0, name)
    }

    fn lend_path(&self, path: &Path) -> Result<Lent<'_>, EvalError> {
        Ok(match self.0.get_path(path)? {
            Cow::Borrowed(Value::Str(s)) => Lent::Str(s),
            Cow::Borrowed(Value::Int(i)) => Lent::Number(Number::Int(*i)),
            Cow::Borrowed(Value::UInt(u)) => Lent::Number(Number::UInt(*u)),
            Cow::Borrowed(Value::Float(f)) => Lent::Number(Number::Float(*f)),
            Cow::Borrowed(Value::Bool(b)) => Lent::Bool(*b),
            v => Lent::Value(v),
        })
    }
}

fn vars() -> Vec<(&'static str, Value)> {
    vec![
        ("i", Value::Int(-7)),
        ("u", Value::UInt(u64::MAX)),
        ("f", Value::Float(2.5)),
        ("b", Value::Bool(true)),
        ("s", Value::from("héllo")),
        ("n", Value::None),
        ("raw", Value::Bytes(vec![1, 2, 3])),
        ("xs", Value::List(vec![Value::Int(1), Value::from("a"), Value::Float(0.5)])),
        ("m", Value::Map([("k".to_owned(), Value::Int(1))].into())),
        (
            "order",
            Value::Record(vec![
                ("total".into(), Value::Float(12.5)),
                ("customer".into(), Value::Record(vec![("country".into(), Value::from("NZ"))])),
            ]),
        ),
    ]
}

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else { return };
    let Ok(src) = std::str::from_utf8(rest) else { return };
    let kind = match k % 5 {
        0 => ExprKind::Condition,
        1 => ExprKind::Value,
        2 => ExprKind::Label,
        3 => ExprKind::Template,
        _ => ExprKind::Any,
    };
    let Ok(expr) = compile(src, kind) else { return };
    let vars = vars();
    let _ = expr.eval_condition(&vars);
    let _ = expr.eval_number(&vars);
    let mut out = String::new();
    let _ = expr.render(&vars, &mut out);
    let value = expr.eval(&vars);

    // Differential check: the native lane must agree with rhai alone on the same expression,
    // both as a value and as a rendering.
    if expr.is_native() && !expr.is_fast_path() {
        let rhai = expr.eval_rhai_lane(&vars);
        let a = value.map(|v| v.to_string());
        let b = rhai.map(|v| v.to_string());
        assert_eq!(a, b, "native and rhai disagree on {src:?}");
        let lent = expr.eval(&Lending(&vars)).map(|v| v.to_string());
        assert_eq!(lent, b, "a lending lookup changes {src:?}");
        if kind != ExprKind::Template {
            assert_eq!(out_or_err(&expr, &vars), b, "native and rhai render {src:?} differently");
        }
    }
});

fn out_or_err(expr: &sonde_expr::Expr, vars: &[(&str, Value)]) -> Result<String, sonde_expr::EvalError> {
    let mut out = String::new();
    expr.render(vars, &mut out).map(|()| out)
}
