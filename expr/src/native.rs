//! `Native`, the fast lane for simple operator expressions, evaluated without entering rhai.
//!
//! # Design
//!
//! Most tracepoint expressions are a comparison or a little arithmetic over variable paths and
//! literals: `order.total * 2`, `len > 3 && name == "x"`, `not user.admin`. rhai spends about
//! 200 ns on such an expression before any conversion; this module evaluates them directly.
//!
//! It parses the *rewritten* text (slots `_vN`, `&&`, `||`, `!(`) with a grammar that mirrors
//! rhai's precedence for the subset it knows: `||` < `&&` < `==` `!=` < `<` `<=` `>` `>=` <
//! `+` `-` < `*` `/` `%` < unary `-` `!` < literals (decimal ints, simple floats, strings without
//! escapes, `true`, `false`, `()`), slots and parentheses. Anything else (calls, methods, `in`,
//! `if`, indexing, `**`, bit operators, …) means the expression is not native, and it runs in
//! rhai as before.
//!
//! At run time the rule is simple: the native lane only ever *succeeds* where rhai would succeed
//! with the same value. Every case where rhai would raise an error, and every type combination
//! the lane does not know (string `+`, mixed-type `==`, a non-bool `&&` operand, integer
//! overflow, division by zero, float `%`, …), answers [`Fallback`] and the same evaluation runs
//! in rhai, which produces the exact result or error. Slots are all resolved before evaluation, as
//! on the rhai path, so a missing variable is an error on both lanes alike. The fuzz target and a
//! property test compare the two lanes.

use std::borrow::Cow;

use crate::value::Value;

/// A binary operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// A native expression tree.
#[derive(Debug)]
pub(crate) enum Node {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Unit,
    Slot(usize),
    /// `len(_vN)` or `_vN.len()`.
    Len(usize),
    Neg(Box<Node>),
    Not(Box<Node>),
    Bin(Op, Box<Node>, Box<Node>),
}

/// The most slots a native expression may read (they are resolved into a stack array).
pub(crate) const MAX_SLOTS: usize = 8;

/// The native lane cannot produce this result; run the expression in rhai.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fallback;

/// A value during native evaluation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum V<'a> {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(&'a str),
    Unit,
}

/// Parses rewritten text as a native expression, or `None` when it is not one.
pub(crate) fn parse(text: &str, slots: usize) -> Option<Node> {
    if slots > MAX_SLOTS {
        return None;
    }
    let toks = lex(text)?;
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let node = p.or()?;
    (p.pos == p.toks.len()).then_some(node)
}

#[derive(Debug, Clone, PartialEq)]
enum T {
    Int(i64),
    Float(f64),
    Str(String),
    Slot(usize),
    Word(&'static str),
}

/// Tokens of the subset; `None` for anything outside it.
fn lex(text: &str) -> Option<Vec<T>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let two = text.get(i..i + 2).unwrap_or("");
        if text[i..].starts_with(".len()") {
            out.push(T::Word(".len()"));
            i += 6;
            continue;
        }
        if text[i..].starts_with("len(")
            && !text[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        {
            out.push(T::Word("len("));
            i += 4;
            continue;
        }
        let word = match two {
            "==" => Some("=="),
            "!=" => Some("!="),
            "<=" => Some("<="),
            ">=" => Some(">="),
            "&&" => Some("&&"),
            "||" => Some("||"),
            "()" => Some("()"),
            "**" | "<<" | ">>" | "=>" | ".." | "//" | "/*" | "?." | "??" | "?[" => return None,
            _ => None,
        };
        if let Some(w) = word {
            out.push(T::Word(w));
            i += 2;
            continue;
        }
        match c {
            b'<' | b'>' | b'+' | b'-' | b'*' | b'/' | b'%' | b'!' | b'(' | b')' => {
                out.push(T::Word(match c {
                    b'<' => "<",
                    b'>' => ">",
                    b'+' => "+",
                    b'-' => "-",
                    b'*' => "*",
                    b'/' => "/",
                    b'%' => "%",
                    b'!' => "!",
                    b'(' => "(",
                    _ => ")",
                }));
                i += 1;
            }
            b'0'..=b'9' => {
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                let float = i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit();
                if float {
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                if i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                    return None; // exponents, hex, separators, methods on literals: rhai's job
                }
                let s = &text[start..i];
                out.push(if float {
                    T::Float(s.parse().ok()?)
                } else {
                    T::Int(s.parse().ok()?)
                });
            }
            b'"' => {
                let end = text[i + 1..].find('"')? + i + 1;
                let s = &text[i + 1..end];
                if s.contains(['\\', '\n', '\r']) {
                    return None;
                }
                out.push(T::Str(s.to_owned()));
                i = end + 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                match &text[start..i] {
                    "true" => out.push(T::Word("true")),
                    "false" => out.push(T::Word("false")),
                    w => {
                        let n = w.strip_prefix("_v")?;
                        if n.is_empty() || !n.bytes().all(|d| d.is_ascii_digit()) {
                            return None;
                        }
                        out.push(T::Slot(n.parse().ok()?));
                    }
                }
            }
            _ => return None,
        }
    }
    Some(out)
}

struct Parser {
    toks: Vec<T>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek_word(&self) -> Option<&'static str> {
        match self.toks.get(self.pos) {
            Some(T::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn binary(&mut self, ops: &[(&str, Op)], next: fn(&mut Self) -> Option<Node>) -> Option<Node> {
        let mut left = next(self)?;
        while let Some(op) = self
            .peek_word()
            .and_then(|w| ops.iter().find(|(s, _)| *s == w))
        {
            self.pos += 1;
            let right = next(self)?;
            left = Node::Bin(op.1, Box::new(left), Box::new(right));
        }
        Some(left)
    }

    fn or(&mut self) -> Option<Node> {
        self.depth += 1;
        if self.depth > 64 {
            return None;
        }
        let r = self.binary(&[("||", Op::Or)], Self::and);
        self.depth -= 1;
        r
    }

    fn and(&mut self) -> Option<Node> {
        self.binary(&[("&&", Op::And)], Self::eq)
    }

    fn eq(&mut self) -> Option<Node> {
        self.binary(&[("==", Op::Eq), ("!=", Op::Ne)], Self::rel)
    }

    fn rel(&mut self) -> Option<Node> {
        self.binary(
            &[("<", Op::Lt), ("<=", Op::Le), (">", Op::Gt), (">=", Op::Ge)],
            Self::add,
        )
    }

    fn add(&mut self) -> Option<Node> {
        self.binary(&[("+", Op::Add), ("-", Op::Sub)], Self::mul)
    }

    fn mul(&mut self) -> Option<Node> {
        self.binary(
            &[("*", Op::Mul), ("/", Op::Div), ("%", Op::Rem)],
            Self::unary,
        )
    }

    fn unary(&mut self) -> Option<Node> {
        let tok = self.toks.get(self.pos)?.clone();
        self.pos += 1;
        Some(match tok {
            T::Word("-") => {
                self.depth += 1;
                if self.depth > 64 {
                    return None;
                }
                let n = self.unary()?;
                self.depth -= 1;
                Node::Neg(Box::new(n))
            }
            T::Word("!") => {
                self.depth += 1;
                if self.depth > 64 {
                    return None;
                }
                let n = self.unary()?;
                self.depth -= 1;
                Node::Not(Box::new(n))
            }
            T::Word("(") => {
                let n = self.or()?;
                if self.peek_word() != Some(")") {
                    return None;
                }
                self.pos += 1;
                n
            }
            T::Word("true") => Node::Bool(true),
            T::Word("false") => Node::Bool(false),
            T::Word("()") => Node::Unit,
            T::Int(i) => Node::Int(i),
            T::Float(f) => Node::Float(f),
            T::Str(s) => Node::Str(s),
            T::Word("len(") => {
                let (Some(T::Slot(n)), Some(T::Word(")"))) =
                    (self.toks.get(self.pos), self.toks.get(self.pos + 1))
                else {
                    return None;
                };
                let n = *n;
                self.pos += 2;
                Node::Len(n)
            }
            T::Slot(n) if self.peek_word() == Some(".len()") => {
                self.pos += 1;
                Node::Len(n)
            }
            T::Slot(n) => Node::Slot(n),
            T::Word(_) => return None,
        })
    }
}

/// A captured value as a native value, converted as the rhai bridge converts it.
fn from_value(v: &Value) -> Result<V<'_>, Fallback> {
    Ok(match v {
        Value::None => V::Unit,
        Value::Bool(b) => V::Bool(*b),
        Value::Int(i) => V::Int(*i),
        Value::UInt(u) => match i64::try_from(*u) {
            Ok(i) => V::Int(i),
            // As the rhai bridge does: above i64::MAX an unsigned value is a float.
            #[allow(clippy::cast_precision_loss)]
            Err(_) => V::Float(*u as f64),
        },
        Value::Float(f) => V::Float(*f),
        Value::Str(s) => V::Str(s),
        _ => return Err(Fallback),
    })
}

/// Evaluates `node` over resolved slot values.
pub(crate) fn eval<'a>(
    node: &'a Node,
    slots: &'a [Option<Cow<'a, Value>>],
) -> Result<V<'a>, Fallback> {
    Ok(match node {
        Node::Int(i) => V::Int(*i),
        Node::Float(f) => V::Float(*f),
        Node::Bool(b) => V::Bool(*b),
        Node::Str(s) => V::Str(s),
        Node::Unit => V::Unit,
        Node::Slot(n) => from_value(slots.get(*n).and_then(Option::as_deref).ok_or(Fallback)?)?,
        Node::Len(n) => {
            let len = match slots.get(*n).and_then(Option::as_deref).ok_or(Fallback)? {
                // rhai counts a string's characters.
                Value::Str(s) => s.chars().count(),
                Value::Bytes(b) => b.len(),
                Value::List(l) => l.len(),
                Value::Map(m) => m.len(),
                Value::Record(r) => r.len(),
                _ => return Err(Fallback),
            };
            V::Int(i64::try_from(len).map_err(|_| Fallback)?)
        }
        Node::Neg(x) => match eval(x, slots)? {
            V::Int(i) => V::Int(i.checked_neg().ok_or(Fallback)?),
            V::Float(f) => V::Float(-f),
            _ => return Err(Fallback),
        },
        Node::Not(x) => match eval(x, slots)? {
            V::Bool(b) => V::Bool(!b),
            _ => return Err(Fallback),
        },
        Node::Bin(Op::And, l, r) => match eval(l, slots)? {
            V::Bool(false) => V::Bool(false),
            V::Bool(true) => match eval(r, slots)? {
                V::Bool(b) => V::Bool(b),
                _ => return Err(Fallback),
            },
            _ => return Err(Fallback),
        },
        Node::Bin(Op::Or, l, r) => match eval(l, slots)? {
            V::Bool(true) => V::Bool(true),
            V::Bool(false) => match eval(r, slots)? {
                V::Bool(b) => V::Bool(b),
                _ => return Err(Fallback),
            },
            _ => return Err(Fallback),
        },
        Node::Bin(op, l, r) => binary(*op, eval(l, slots)?, eval(r, slots)?)?,
    })
}

fn binary<'a>(op: Op, l: V<'a>, r: V<'a>) -> Result<V<'a>, Fallback> {
    use std::cmp::Ordering;
    // Mixed int/float arithmetic and comparison is done in floats, as rhai does.
    #[allow(clippy::cast_precision_loss)]
    let floats = match (&l, &r) {
        (V::Int(a), V::Float(b)) => Some((*a as f64, *b)),
        (V::Float(a), V::Int(b)) => Some((*a, *b as f64)),
        (V::Float(a), V::Float(b)) => Some((*a, *b)),
        _ => None,
    };
    if let (V::Int(a), V::Int(b)) = (&l, &r) {
        let (a, b) = (*a, *b);
        return Ok(match op {
            Op::Add => V::Int(a.checked_add(b).ok_or(Fallback)?),
            Op::Sub => V::Int(a.checked_sub(b).ok_or(Fallback)?),
            Op::Mul => V::Int(a.checked_mul(b).ok_or(Fallback)?),
            Op::Div => V::Int(a.checked_div(b).ok_or(Fallback)?),
            Op::Rem => V::Int(a.checked_rem(b).ok_or(Fallback)?),
            _ => V::Bool(compare(op, a.cmp(&b))?),
        });
    }
    if let Some((a, b)) = floats {
        return Ok(match op {
            Op::Add => V::Float(a + b),
            Op::Sub => V::Float(a - b),
            Op::Mul => V::Float(a * b),
            Op::Div if b != 0.0 => V::Float(a / b),
            Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge => V::Bool(float_compare(op, a, b)),
            _ => return Err(Fallback),
        });
    }
    let ordering: Ordering = match (&l, &r) {
        (V::Str(a), V::Str(b)) => a.cmp(b),
        (V::Bool(a), V::Bool(b)) if matches!(op, Op::Eq | Op::Ne) => a.cmp(b),
        (V::Unit, V::Unit) if matches!(op, Op::Eq | Op::Ne) => Ordering::Equal,
        _ => return Err(Fallback),
    };
    Ok(V::Bool(compare(op, ordering)?))
}

/// Compares floats as rhai does: within one epsilon relative to the larger magnitude, or
/// absolutely when the product of the two is zero (so `1e-300 == 0.0`; NaN is neither equal nor
/// unequal to a non-zero number, and equal to zero).
fn float_compare(op: Op, x: f64, y: f64) -> bool {
    let max = if x * y == 0.0 {
        1.0
    } else {
        x.abs().max(y.abs())
    };
    if max == 0.0 {
        // Zero against NaN: `max` skips the NaN, and rhai calls the two equal.
        return matches!(op, Op::Eq | Op::Le | Op::Ge);
    }
    match op {
        Op::Eq => (x - y).abs() / max <= f64::EPSILON,
        Op::Ne => (x - y).abs() / max > f64::EPSILON,
        Op::Gt => (x - y) / max > f64::EPSILON,
        Op::Ge => (x - y) / max > -f64::EPSILON,
        Op::Lt => (y - x) / max > f64::EPSILON,
        // `Op::Le`, the one comparison left.
        _ => (y - x) / max > -f64::EPSILON,
    }
}

fn compare(op: Op, o: std::cmp::Ordering) -> Result<bool, Fallback> {
    Ok(match op {
        Op::Eq => o.is_eq(),
        Op::Ne => o.is_ne(),
        Op::Lt => o.is_lt(),
        Op::Le => o.is_le(),
        Op::Gt => o.is_gt(),
        Op::Ge => o.is_ge(),
        _ => return Err(Fallback),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str, slots: &[Value]) -> Result<V<'static>, Fallback> {
        let node = Box::leak(Box::new(parse(text, slots.len()).expect("native")));
        let slots: &'static [Option<Cow<'static, Value>>] = Box::leak(
            slots
                .iter()
                .map(|v| Some(Cow::Owned(v.clone())))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        eval(node, slots)
    }

    #[test]
    fn precedence_follows_rhai() {
        assert_eq!(run("1 + 2 * 3", &[]), Ok(V::Int(7)));
        assert_eq!(run("(1 + 2) * 3", &[]), Ok(V::Int(9)));
        assert_eq!(run("1 < 2 == true", &[]), Ok(V::Bool(true)));
        assert_eq!(
            run(
                "!(_v0 > 3 ) && _v1 == \"x\" || false",
                &[Value::Int(2), "x".into()]
            ),
            Ok(V::Bool(true))
        );
        assert_eq!(run("-_v0 * 2", &[Value::Float(1.5)]), Ok(V::Float(-3.0)));
    }

    #[test]
    fn failures_fall_back_to_rhai() {
        assert_eq!(run("1 / 0", &[]), Err(Fallback));
        assert_eq!(run("_v0 + 1", &[Value::Int(i64::MAX)]), Err(Fallback));
        assert_eq!(run("\"a\" + \"b\"", &[]), Err(Fallback));
        assert_eq!(run("1 == \"a\"", &[]), Err(Fallback));
        assert_eq!(run("1 && true", &[]), Err(Fallback));
        assert_eq!(run("_v0 == 1", &[Value::List(vec![])]), Err(Fallback));
    }

    #[test]
    fn only_the_subset_parses() {
        assert_eq!(
            run(
                "len(_v0) + _v1.len()",
                &[Value::from("héllo"), Value::List(vec![Value::None])]
            ),
            Ok(V::Int(6))
        );
        for text in [
            "len(_v0 + 1)",
            "_v0.len(1)",
            "xlen(_v0)",
            "_v0 in [1]",
            "2 ** 3",
            "1e3",
            "0x10",
            "\"a\\n\"",
            "if true {1} else {2}",
            "_v0[1]",
            "x",
        ] {
            assert!(parse(text, 1).is_none(), "{text}");
        }
        assert!(parse("_v0", 9).is_none());
    }
}
