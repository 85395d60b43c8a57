//! `Value`, the model of data captured at a line of code, and how values render as text.
//!
//! Rendering rules (used for labels, templates and `str(x)`), one place for all of them:
//!
//! | value | renders as |
//! | --- | --- |
//! | `Str("abc")` | `abc` (as is; quoted with `"` only when nested in a list or map) |
//! | `Int(-3)`, `UInt(7)` | `-3`, `7` |
//! | `Float(2.0)`, `Float(0.25)` | `2.0`, `0.25` (integral floats keep `.0`, like Python) |
//! | `Float(1e20)`, `Float(1.5e-7)` | `1e20`, `1.5e-7` (exponent form at and above 1e16 and below 1e-4) |
//! | `Float(NaN)`, `Float(±inf)` | `NaN`, `+Inf`, `-Inf` (Prometheus spellings) |
//! | `Bool(true)` | `true` (lower case) |
//! | `None` | `none` |
//! | `Bytes([0xde, 0xad])` | `dead` (lower-case hex) |
//! | `List([1, "a"])` | `[1, "a"]` |
//! | `Map` / `Record` | `{"k": 1, "n": "x"}` (maps in key order, records in field order) |

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

/// A captured value: what the agent hands the expression language for one variable.
///
/// Unsigned integers keep their full range on the fast path; inside rhai (whose integers are
/// `i64`) a `UInt` above `i64::MAX` becomes a float.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Value {
    /// No value: Rust's `()` or `None`, Python's `None`.
    #[default]
    None,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// An unsigned 64-bit integer.
    UInt(u64),
    /// A 64-bit float.
    Float(f64),
    /// A string.
    Str(String),
    /// A byte string.
    Bytes(Vec<u8>),
    /// A list (`Vec`, slice, array): indexable with `x[0]`, negative indexes count from the end.
    List(Vec<Value>),
    /// A map with string keys: fields read with `x.key` or `x["key"]`.
    Map(BTreeMap<String, Value>),
    /// A record (a struct's fields in declaration order): fields read with `x.field`.
    Record(Vec<(Cow<'static, str>, Value)>),
}

/// A number: the result of a value expression.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    /// A signed integer.
    Int(i64),
    /// An unsigned integer (only from the fast path: rhai has no unsigned type).
    UInt(u64),
    /// A float.
    Float(f64),
}

impl Number {
    /// The number as an `f64` (large integers round to the nearest float).
    #[must_use]
    pub fn as_f64(self) -> f64 {
        match self {
            // Rounding to the nearest float is the documented behaviour.
            #[allow(clippy::cast_precision_loss)]
            Number::Int(i) => i as f64,
            #[allow(clippy::cast_precision_loss)]
            Number::UInt(u) => u as f64,
            Number::Float(f) => f,
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Number::Int(i) => write!(f, "{i}"),
            Number::UInt(u) => write!(f, "{u}"),
            Number::Float(x) => {
                let mut s = String::new();
                write_f64(&mut s, x);
                f.write_str(&s)
            }
        }
    }
}

impl Value {
    /// The value of field `name` when this is a map or a record.
    #[must_use]
    pub fn field(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Map(m) => m.get(name),
            Value::Record(fields) => fields.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The element at `index` when this is a list (negative indexes count from the end).
    #[must_use]
    pub fn index(&self, index: i64) -> Option<&Value> {
        match self {
            Value::List(items) => resolve_index(index, items.len()).and_then(|i| items.get(i)),
            _ => None,
        }
    }

    /// A short name for the value's type, as used in messages.
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "none",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::UInt(_) => "uint",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "map",
            Value::Record(_) => "record",
        }
    }

    /// Appends the value's rendering (see the module table) to `out`.
    pub fn render(&self, out: &mut String) {
        render_value(self, out, false);
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.render(&mut s);
        f.write_str(&s)
    }
}

macro_rules! value_from {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::$variant(v.into())
            }
        }
    )*};
}

value_from! {
    bool => Bool, i8 => Int, i16 => Int, i32 => Int, i64 => Int,
    u8 => UInt, u16 => UInt, u32 => UInt, u64 => UInt, f32 => Float, f64 => Float,
    String => Str, &str => Str, Vec<u8> => Bytes,
}

impl From<()> for Value {
    fn from((): ()) -> Self {
        Value::None
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::None, Into::into)
    }
}

impl From<Number> for Value {
    fn from(n: Number) -> Self {
        match n {
            Number::Int(i) => Value::Int(i),
            Number::UInt(u) => Value::UInt(u),
            Number::Float(f) => Value::Float(f),
        }
    }
}

impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::List(v)
    }
}

/// Turns a possibly negative index into a position in a sequence of `len` items.
pub(crate) fn resolve_index(index: i64, len: usize) -> Option<usize> {
    if index >= 0 {
        usize::try_from(index).ok().filter(|&i| i < len)
    } else {
        let back = usize::try_from(index.unsigned_abs()).ok()?;
        len.checked_sub(back)
    }
}

/// Appends a float rendered by the crate's rules (see the module table).
pub(crate) fn write_f64(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("NaN");
    } else if x.is_infinite() {
        out.push_str(if x > 0.0 { "+Inf" } else { "-Inf" });
    } else if x == 0.0 || (1e-4..1e16).contains(&x.abs()) {
        if x.fract() == 0.0 {
            // Writing to a String cannot fail.
            let _ = write!(out, "{x:.1}");
        } else {
            let _ = write!(out, "{x}");
        }
    } else {
        let _ = write!(out, "{x:e}");
    }
}

/// Appends `s` quoted, with `"` and `\` and control characters escaped.
pub(crate) fn write_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends bytes as lower-case hex.
pub(crate) fn write_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// Appends an integer without going through `fmt` machinery.
pub(crate) fn write_i64(out: &mut String, v: i64) {
    if v < 0 {
        out.push('-');
    }
    write_u64(out, v.unsigned_abs());
}

/// Appends an unsigned integer without going through `fmt` machinery.
pub(crate) fn write_u64(out: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        // `v % 10` is below 10, so the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let digit = (v % 10) as u8;
        buf[i] = b'0' + digit;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        out.push(char::from(b));
    }
}

fn render_value(v: &Value, out: &mut String, nested: bool) {
    match v {
        Value::None => out.push_str("none"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => write_i64(out, *i),
        Value::UInt(u) => write_u64(out, *u),
        Value::Float(f) => write_f64(out, *f),
        Value::Str(s) if nested => write_quoted(out, s),
        Value::Str(s) => out.push_str(s),
        Value::Bytes(b) => write_hex(out, b),
        Value::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render_value(item, out, true);
            }
            out.push(']');
        }
        Value::Map(m) => render_entries(m.iter().map(|(k, v)| (k.as_str(), v)), out),
        Value::Record(fields) => render_entries(fields.iter().map(|(k, v)| (k.as_ref(), v)), out),
    }
}

fn render_entries<'a>(entries: impl Iterator<Item = (&'a str, &'a Value)>, out: &mut String) {
    out.push('{');
    for (i, (k, v)) in entries.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_quoted(out, k);
        out.push_str(": ");
        render_value(v, out, true);
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(x: f64) -> String {
        let mut s = String::new();
        write_f64(&mut s, x);
        s
    }

    #[test]
    fn floats_render_like_the_table_says() {
        assert_eq!(f(2.0), "2.0");
        assert_eq!(f(-2.0), "-2.0");
        assert_eq!(f(0.0), "0.0");
        assert_eq!(f(0.25), "0.25");
        assert_eq!(f(0.1), "0.1");
        assert_eq!(f(1e20), "1e20");
        assert_eq!(f(1.5e-7), "1.5e-7");
        assert_eq!(f(f64::NAN), "NaN");
        assert_eq!(f(f64::INFINITY), "+Inf");
        assert_eq!(f(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn integers_render_in_decimal() {
        let mut s = String::new();
        write_i64(&mut s, i64::MIN);
        s.push(' ');
        write_u64(&mut s, u64::MAX);
        s.push(' ');
        write_i64(&mut s, 0);
        assert_eq!(s, "-9223372036854775808 18446744073709551615 0");
    }

    #[test]
    fn compound_values_render_with_quoted_strings() {
        let v = Value::Record(vec![
            ("id".into(), Value::Int(7)),
            (
                "tags".into(),
                Value::List(vec!["a\"b".into(), Value::None, Value::Bool(true)]),
            ),
            ("raw".into(), Value::Bytes(vec![0xde, 0xad])),
        ]);
        assert_eq!(
            v.to_string(),
            r#"{"id": 7, "tags": ["a\"b", none, true], "raw": dead}"#
        );
        assert_eq!(Value::from("top").to_string(), "top");
    }

    #[test]
    fn negative_indexes_count_from_the_end() {
        assert_eq!(resolve_index(-1, 3), Some(2));
        assert_eq!(resolve_index(-3, 3), Some(0));
        assert_eq!(resolve_index(-4, 3), None);
        assert_eq!(resolve_index(3, 3), None);
        assert_eq!(resolve_index(i64::MIN, 3), None);
    }
}
