//! `Native`, the fast lane for the expressions operators write, evaluated without entering rhai.
//!
//! # Design
//!
//! Most tracepoint expressions are a comparison, a little arithmetic, a string method or an index
//! over variable paths and literals: `order.total * 2`, `len > 3 && name == "x"`,
//! `user.name.contains("d")`, `items[i].sku + "-" + tier`. rhai spends 200 ns to 1 µs on such an
//! expression before any conversion; this module evaluates them directly.
//!
//! It parses the *rewritten* text (slots `_vN`, `&&`, `||`, `!(`, `!in`) with a grammar that
//! mirrors rhai's precedence for the subset it knows:
//! `||` < `&&` < `==` `!=` < `in` `!in` < `<` `<=` `>` `>=` < `+` `-` < `*` `/` `%` < unary `-` `!`
//! < postfix (`.method(args)`, `.property`, `[index]`) < literals (decimal ints, simple floats,
//! strings without escapes, `true`, `false`, `()`), slots, parentheses, calls of the known
//! functions, and `if c { a } else { b }` (with `else if` chains; without `else` it yields `()`).
//! The known functions, callable as `f(x, …)` or `x.f(…)`: `len`, `is_empty`, `contains`,
//! `starts_with`, `ends_with`, `startswith`, `endswith`, `to_upper`, `to_lower`, `strip`.
//! Anything else (other calls, `**`, bit operators, `??`, ranges, `switch`, char literals, …)
//! means the expression is not native, and it runs in rhai as before. (`x.trim()` is not native on
//! purpose: rhai's `trim` trims in place and returns `()`, so on a captured value, a constant, it
//! is an error; `strip(x)` is the form that works.)
//!
//! At run time the rule is simple: the native lane only ever *succeeds* where rhai would succeed
//! with the same value. Every case where rhai would raise an error, and every type combination
//! the lane does not know (mixed-type `==`, a non-bool `&&` operand or `if` condition, integer
//! overflow, division by zero, float `%`, string `+` of a float, an index out of range, a missing
//! map key, a list or map as the result, a string over rhai's size limit, an expression that might
//! exceed rhai's operation budget, …), answers [`Fallback`] and the same evaluation runs in rhai,
//! which produces the exact result or error. Slots are all resolved before evaluation, as on the
//! rhai path, so a missing variable is an error on both lanes alike. The fuzz target and a
//! property test compare the two lanes.
//!
//! Labels render straight into the caller's buffer ([`render`]): a string concatenation writes
//! each piece where it belongs instead of building intermediate strings, and an `if` renders the
//! branch it takes.

use std::borrow::Cow;

use crate::engine::{MAX_OPERATIONS, MAX_STRING_SIZE};
use crate::lookup::Lent;
use crate::value::{Number, Value, write_f64, write_hex, write_i64};

/// A binary operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Or,
    And,
    Eq,
    Ne,
    In,
    NotIn,
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

/// A function the native lane knows, by its rhai name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Func {
    Len,
    IsEmpty,
    Contains,
    StartsWith,
    EndsWith,
    /// The Python spelling `startswith` (strings only).
    PyStartsWith,
    /// The Python spelling `endswith` (strings only).
    PyEndsWith,
    ToUpper,
    ToLower,
    Strip,
}

impl Func {
    fn named(name: &str, arity: usize) -> Option<Func> {
        let f = match name {
            "len" => Func::Len,
            "is_empty" => Func::IsEmpty,
            "contains" => Func::Contains,
            "starts_with" => Func::StartsWith,
            "ends_with" => Func::EndsWith,
            "startswith" => Func::PyStartsWith,
            "endswith" => Func::PyEndsWith,
            "to_upper" => Func::ToUpper,
            "to_lower" => Func::ToLower,
            "strip" => Func::Strip,
            _ => return None,
        };
        let want = match f {
            Func::Len | Func::IsEmpty | Func::ToUpper | Func::ToLower | Func::Strip => 1,
            _ => 2,
        };
        (arity == want).then_some(f)
    }
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
    Neg(Box<Node>),
    Not(Box<Node>),
    Bin(Op, Box<Node>, Box<Node>),
    /// `t0 + t1 + …`, grouped from the left as rhai groups it (kept flat so that a label renders
    /// it piece by piece without walking a tree).
    Sum(Vec<Node>),
    /// A call of a known function; a method call `x.f(a)` is `f(x, a)`, as in rhai.
    Call(Func, Vec<Node>),
    /// `x[i]`.
    Index(Box<Node>, Box<Node>),
    /// `x.name` on an expression that is not a slot path (a slot path's fields are in the slot).
    Field(Box<Node>, String),
    /// `if c { a } else { b }`; no `else` yields `()`.
    If(Box<Node>, Box<Node>, Option<Box<Node>>),
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
    Str(Cow<'a, str>),
    /// A character (indexing a string yields one, as in rhai).
    Char(char),
    Unit,
    /// A list, map, record or byte string, borrowed from a slot.
    Ref(&'a Value),
}

/// A parsed native expression and the most operations rhai could count evaluating it.
#[derive(Debug)]
pub(crate) struct Program {
    node: Node,
    /// [`OPS_PER_NODE`] for every node (each is evaluated at most once, except the items a
    /// list's `in` compares, which are counted as they are compared).
    ops: u64,
}

/// Parses rewritten text as a native expression, or `None` when it is not one (or could pass
/// rhai's operation budget without a loop: so large an expression is left to rhai).
pub(crate) fn parse(text: &str, slots: usize) -> Option<Program> {
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
    if p.pos != p.toks.len() {
        return None;
    }
    let ops = (count_nodes(&node) as u64).saturating_mul(OPS_PER_NODE);
    (ops <= MAX_OPERATIONS).then_some(Program { node, ops })
}

/// The nodes of a tree.
fn count_nodes(node: &Node) -> usize {
    1 + match node {
        Node::Int(_)
        | Node::Float(_)
        | Node::Bool(_)
        | Node::Str(_)
        | Node::Unit
        | Node::Slot(_) => 0,
        Node::Neg(x) | Node::Not(x) | Node::Field(x, _) => count_nodes(x),
        Node::Bin(_, l, r) | Node::Index(l, r) => count_nodes(l) + count_nodes(r),
        Node::Sum(terms) | Node::Call(_, terms) => terms.iter().map(count_nodes).sum(),
        Node::If(c, a, b) => count_nodes(c) + count_nodes(a) + b.as_deref().map_or(0, count_nodes),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum T {
    Int(i64),
    Float(f64),
    Str(String),
    Slot(usize),
    Ident(String),
    Word(&'static str),
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
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
        // `!in` (rewritten from `not in`) is one token, as in rhai.
        if two == "!i"
            && text[i..].starts_with("!in")
            && !b.get(i + 3).is_some_and(|&n| is_ident_byte(n))
        {
            out.push(T::Word("!in"));
            i += 3;
            continue;
        }
        let word = match two {
            "==" => Some("=="),
            "!=" => Some("!="),
            "<=" => Some("<="),
            ">=" => Some(">="),
            "&&" => Some("&&"),
            "||" => Some("||"),
            "**" | "<<" | ">>" | "=>" | ".." | "//" | "/*" | "?." | "??" | "?[" | "#{" | "::" => {
                return None;
            }
            _ => None,
        };
        if let Some(w) = word {
            out.push(T::Word(w));
            i += 2;
            continue;
        }
        match c {
            b'<' | b'>' | b'+' | b'-' | b'*' | b'/' | b'%' | b'!' | b'(' | b')' | b'[' | b']'
            | b'{' | b'}' | b',' | b'.' => {
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
                    b')' => ")",
                    b'[' => "[",
                    b']' => "]",
                    b'{' => "{",
                    b'}' => "}",
                    b',' => ",",
                    _ => ".",
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
                if i < b.len() && (is_ident_byte(b[i]) || b[i] == b'.') {
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
                while i < b.len() && is_ident_byte(b[i]) {
                    i += 1;
                }
                let w = &text[start..i];
                let slot = w
                    .strip_prefix("_v")
                    .filter(|n| !n.is_empty() && n.bytes().all(|d| d.is_ascii_digit()));
                out.push(match slot {
                    Some(n) => T::Slot(n.parse().ok()?),
                    None => T::Ident(w.to_owned()),
                });
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The deepest nesting the parser follows (rhai's own limit is the same).
const MAX_DEPTH: usize = 64;

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

    fn peek_ident(&self) -> Option<&str> {
        match self.toks.get(self.pos) {
            Some(T::Ident(w)) => Some(w),
            _ => None,
        }
    }

    fn expect(&mut self, word: &str) -> Option<()> {
        (self.peek_word() == Some(word)).then(|| self.pos += 1)
    }

    /// Counts one more level of the tree being built: evaluation recurses as deep as the tree,
    /// so chains (`a + b + …`, `x[i][j]…`) count as nesting too.
    fn deeper(&mut self, levels: &mut usize) -> Option<()> {
        *levels += 1;
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn binary(&mut self, ops: &[(&str, Op)], next: fn(&mut Self) -> Option<Node>) -> Option<Node> {
        let mut left = next(self)?;
        let mut levels = 0;
        while let Some(op) = self
            .peek_word()
            .and_then(|w| ops.iter().find(|(s, _)| *s == w))
        {
            self.deeper(&mut levels)?;
            self.pos += 1;
            let right = next(self)?;
            left = match (op.1, left) {
                (Op::Add, Node::Sum(mut terms)) => {
                    terms.push(right);
                    Node::Sum(terms)
                }
                (Op::Add, left) => Node::Sum(vec![left, right]),
                (op, left) => Node::Bin(op, Box::new(left), Box::new(right)),
            };
        }
        self.depth -= levels;
        Some(left)
    }

    fn or(&mut self) -> Option<Node> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
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
        self.binary(&[("==", Op::Eq), ("!=", Op::Ne)], Self::in_)
    }

    fn in_(&mut self) -> Option<Node> {
        let mut left = self.rel()?;
        let mut levels = 0;
        loop {
            let op = if self.peek_word() == Some("!in") {
                Op::NotIn
            } else if self.peek_ident() == Some("in") {
                Op::In
            } else {
                self.depth -= levels;
                return Some(left);
            };
            self.deeper(&mut levels)?;
            self.pos += 1;
            let right = self.rel()?;
            left = Node::Bin(op, Box::new(left), Box::new(right));
        }
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
        let wrap: fn(Box<Node>) -> Node = match self.peek_word() {
            Some("-") => Node::Neg,
            Some("!") => Node::Not,
            _ => return self.postfix(),
        };
        self.pos += 1;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let n = self.unary()?;
        self.depth -= 1;
        Some(wrap(Box::new(n)))
    }

    /// A primary followed by `.method(args)`, `.property` and `[index]` steps.
    fn postfix(&mut self) -> Option<Node> {
        let mut node = self.primary()?;
        let mut levels = 0;
        loop {
            match self.peek_word() {
                Some(".") => {
                    self.deeper(&mut levels)?;
                    self.pos += 1;
                    let Some(T::Ident(name)) = self.toks.get(self.pos).cloned() else {
                        return None;
                    };
                    self.pos += 1;
                    if self.peek_word() == Some("(") {
                        let mut args = vec![node];
                        args.extend(self.args()?);
                        node = Node::Call(Func::named(&name, args.len())?, args);
                    } else {
                        node = Node::Field(Box::new(node), name);
                    }
                }
                Some("[") => {
                    self.deeper(&mut levels)?;
                    self.pos += 1;
                    let index = self.or()?;
                    self.expect("]")?;
                    node = Node::Index(Box::new(node), Box::new(index));
                }
                _ => {
                    self.depth -= levels;
                    return Some(node);
                }
            }
        }
    }

    /// `(a, b, …)` after a function name.
    fn args(&mut self) -> Option<Vec<Node>> {
        self.expect("(")?;
        let mut args = Vec::new();
        if self.expect(")").is_some() {
            return Some(args);
        }
        loop {
            args.push(self.or()?);
            if self.expect(")").is_some() {
                return Some(args);
            }
            self.expect(",")?;
        }
    }

    /// `{ expr }`: an `if` branch.
    fn block(&mut self) -> Option<Node> {
        self.expect("{")?;
        let n = self.or()?;
        self.expect("}")?;
        Some(n)
    }

    /// `if c { a } [else (if … | { b })]`, which must end the expression it is in.
    fn if_(&mut self) -> Option<Node> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let cond = self.or()?;
        let then = self.block()?;
        let other = if self.peek_ident() == Some("else") {
            self.pos += 1;
            if self.peek_ident() == Some("if") {
                self.pos += 1;
                Some(self.if_()?)
            } else {
                Some(self.block()?)
            }
        } else {
            None
        };
        self.depth -= 1;
        Some(Node::If(
            Box::new(cond),
            Box::new(then),
            other.map(Box::new),
        ))
    }

    fn primary(&mut self) -> Option<Node> {
        let tok = self.toks.get(self.pos)?.clone();
        self.pos += 1;
        Some(match tok {
            T::Word("(") => {
                if self.expect(")").is_some() {
                    return Some(Node::Unit);
                }
                let n = self.or()?;
                self.expect(")")?;
                n
            }
            T::Int(i) => Node::Int(i),
            T::Float(f) => Node::Float(f),
            T::Str(s) => Node::Str(s),
            T::Slot(n) => Node::Slot(n),
            T::Ident(w) => match w.as_str() {
                "true" => Node::Bool(true),
                "false" => Node::Bool(false),
                "if" => {
                    let n = self.if_()?;
                    // rhai reads an `if` as a statement: only an end may follow it.
                    match self.toks.get(self.pos) {
                        None | Some(T::Word(")" | "}" | "]" | ",")) => return Some(n),
                        _ => return None,
                    }
                }
                name => {
                    let args = self.args()?;
                    Node::Call(Func::named(name, args.len())?, args)
                }
            },
            T::Word(_) => return None,
        })
    }
}

/// A captured number as a native value, converted as the rhai bridge converts it.
#[inline]
fn from_number(n: Number) -> V<'static> {
    match n {
        Number::Int(i) => V::Int(i),
        Number::UInt(u) => match i64::try_from(u) {
            Ok(i) => V::Int(i),
            // As the rhai bridge does: above i64::MAX an unsigned value is a float.
            #[allow(clippy::cast_precision_loss)]
            Err(_) => V::Float(u as f64),
        },
        Number::Float(f) => V::Float(f),
    }
}

/// A captured value as a native value, converted as the rhai bridge converts it.
fn from_value(v: &Value) -> V<'_> {
    match v {
        Value::None => V::Unit,
        Value::Bool(b) => V::Bool(*b),
        Value::Int(i) => V::Int(*i),
        Value::UInt(u) => from_number(Number::UInt(*u)),
        Value::Float(f) => V::Float(*f),
        Value::Str(s) => V::Str(Cow::Borrowed(s)),
        Value::Bytes(_) | Value::List(_) | Value::Map(_) | Value::Record(_) => V::Ref(v),
    }
}

/// The native value as an owned [`Value`], as the rhai bridge would bring rhai's result back;
/// lists, maps and records are left to rhai (whose maps order their keys).
pub(crate) fn to_value(v: V<'_>) -> Result<Value, Fallback> {
    Ok(match v {
        V::Int(i) => Value::Int(i),
        V::Float(f) => Value::Float(f),
        V::Bool(b) => Value::Bool(b),
        V::Str(s) => Value::Str(s.into_owned()),
        V::Char(c) => Value::Str(c.to_string()),
        V::Unit => Value::None,
        V::Ref(Value::Bytes(b)) => Value::Bytes(b.clone()),
        V::Ref(_) => return Err(Fallback),
    })
}

/// Appends the rendering of a native result; lists, maps and records are left to rhai.
fn render_v(v: &V<'_>, out: &mut String) -> Result<(), Fallback> {
    match v {
        V::Int(i) => write_i64(out, *i),
        V::Float(f) => write_f64(out, *f),
        V::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        V::Str(s) => out.push_str(s),
        V::Char(c) => out.push(*c),
        V::Unit => out.push_str("none"),
        V::Ref(Value::Bytes(b)) => write_hex(out, b),
        V::Ref(_) => return Err(Fallback),
    }
    Ok(())
}

/// Appends the rendering of a result of [`eval`] (which never is a list, map or record).
pub(crate) fn render_value(v: &V<'_>, out: &mut String) {
    match v {
        V::Ref(v) => v.render(out),
        v => {
            let _ = render_v(v, out);
        }
    }
}

/// Evaluates `program` over resolved slot values. A result that is a list, map or record is a
/// [`Fallback`] (see [`to_value`]), so every `Ok` converts.
pub(crate) fn eval<'a>(program: &'a Program, slots: &'a [Lent<'a>]) -> Result<V<'a>, Fallback> {
    let v = Ctx {
        slots,
        ops: program.ops,
    }
    .eval(&program.node)?;
    match v {
        V::Ref(Value::Bytes(_)) | V::Int(_) | V::Float(_) | V::Bool(_) | V::Str(_) => Ok(v),
        V::Char(_) | V::Unit => Ok(v),
        V::Ref(_) => Err(Fallback),
    }
}

/// Evaluates `node` and appends its rendering to `out`. On [`Fallback`] `out` may hold part of
/// the rendering: the caller truncates it.
pub(crate) fn render<'a>(
    program: &'a Program,
    slots: &'a [Lent<'a>],
    out: &mut String,
) -> Result<(), Fallback> {
    Ctx {
        slots,
        ops: program.ops,
    }
    .render(&program.node, out)
}

/// An upper bound of the operations rhai counts for one node (expression, call, index): when the
/// native tally could pass rhai's budget, rhai might have stopped, so the native lane hands over.
const OPS_PER_NODE: u64 = 4;

struct Ctx<'a> {
    slots: &'a [Lent<'a>],
    ops: u64,
}

impl<'a> Ctx<'a> {
    fn charge(&mut self, ops: u64) -> Result<(), Fallback> {
        self.ops = self.ops.saturating_add(ops);
        if self.ops > MAX_OPERATIONS {
            return Err(Fallback);
        }
        Ok(())
    }

    /// Slot `n`'s value: a lent string as it is, a value as the rhai bridge converts it.
    #[inline(always)]
    fn slot(&self, n: usize) -> Result<V<'a>, Fallback> {
        Ok(match self.slots.get(n).ok_or(Fallback)? {
            Lent::Str(s) => V::Str(Cow::Borrowed(s)),
            Lent::Value(v) => from_value(v),
            Lent::Number(n) => from_number(*n),
            Lent::Bool(b) => V::Bool(*b),
        })
    }

    /// Evaluates an operand: leaves (slots and literals, the usual operands) without a
    /// recursive call, whose large frame and by-stack result cost more than the leaf itself.
    #[inline(always)]
    fn operand(&mut self, node: &'a Node) -> Result<V<'a>, Fallback> {
        match node {
            Node::Slot(n) => self.slot(*n),
            Node::Int(i) => Ok(V::Int(*i)),
            Node::Float(f) => Ok(V::Float(*f)),
            Node::Str(s) => Ok(V::Str(Cow::Borrowed(s))),
            // `len(x)` of a slot, the commonest call.
            Node::Call(Func::Len, args) if matches!(args.as_slice(), [Node::Slot(_)]) => {
                let Some(Node::Slot(n)) = args.first() else {
                    return Err(Fallback);
                };
                match self.slots.get(*n).ok_or(Fallback)? {
                    Lent::Str(s) => count(s.chars().count()),
                    Lent::Number(_) | Lent::Bool(_) => Err(Fallback),
                    Lent::Value(v) => match &**v {
                        Value::Str(s) => count(s.chars().count()),
                        v => count(collection_len(v)?),
                    },
                }
            }
            _ => self.eval(node),
        }
    }

    /// Evaluates `node`. The common nodes (leaves, operators, sums, calls) are handled here;
    /// the rest in [`Ctx::rare`], so that this frame, entered for every inner node, stays small.
    fn eval(&mut self, node: &'a Node) -> Result<V<'a>, Fallback> {
        match node {
            Node::Slot(n) => self.slot(*n),
            Node::Int(i) => Ok(V::Int(*i)),
            Node::Float(f) => Ok(V::Float(*f)),
            Node::Bool(b) => Ok(V::Bool(*b)),
            Node::Str(s) => Ok(V::Str(Cow::Borrowed(s))),
            Node::Unit => Ok(V::Unit),
            Node::Not(_) | Node::Bin(Op::And | Op::Or, ..) => self.bool(node).map(V::Bool),
            Node::Bin(Op::In | Op::NotIn, ..) => self.rare(node),
            Node::Bin(op, l, r) => {
                let (l, r) = (self.operand(l)?, self.operand(r)?);
                binary(*op, l, r)
            }
            Node::Sum(terms) => {
                let mut acc = V::Unit;
                for (i, term) in terms.iter().enumerate() {
                    let v = self.operand(term)?;
                    acc = if i == 0 { v } else { binary(Op::Add, acc, v)? };
                }
                Ok(acc)
            }
            Node::Call(f, args) => self.call(*f, args),
            Node::Neg(_) | Node::If(..) | Node::Index(..) | Node::Field(..) => self.rare(node),
        }
    }

    /// A node that must be a bool: a condition, an operand of `&&`, `||` or `!`, an `if`'s
    /// test. The connectives and comparisons answer a bool without building a value.
    fn bool(&mut self, node: &'a Node) -> Result<bool, Fallback> {
        match node {
            Node::Bin(Op::And, l, r) => Ok(self.bool(l)? && self.bool(r)?),
            Node::Bin(Op::Or, l, r) => Ok(self.bool(l)? || self.bool(r)?),
            Node::Not(x) => Ok(!self.bool(x)?),
            Node::Bool(b) => Ok(*b),
            Node::Call(Func::Contains, args) => match args.as_slice() {
                [hay, needle] => {
                    let (hay, needle) = (self.operand(hay)?, self.operand(needle)?);
                    self.contains(hay, needle)
                }
                _ => Err(Fallback),
            },
            Node::Bin(op @ (Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge), l, r) => {
                let (l, r) = (self.operand(l)?, self.operand(r)?);
                match binary(*op, l, r)? {
                    V::Bool(b) => Ok(b),
                    _ => Err(Fallback),
                }
            }
            _ => match self.eval(node)? {
                V::Bool(b) => Ok(b),
                _ => Err(Fallback),
            },
        }
    }

    /// The nodes operators write less often: `-x`, `in`, `if`, `x[i]`, `x.field`.
    #[inline(never)]
    fn rare(&mut self, node: &'a Node) -> Result<V<'a>, Fallback> {
        Ok(match node {
            Node::Neg(x) => match self.eval(x)? {
                V::Int(i) => V::Int(i.checked_neg().ok_or(Fallback)?),
                V::Float(f) => V::Float(-f),
                _ => return Err(Fallback),
            },
            Node::Bin(Op::In, l, r) => {
                let (needle, hay) = (self.operand(l)?, self.operand(r)?);
                V::Bool(self.contains(hay, needle)?)
            }
            Node::Bin(Op::NotIn, l, r) => {
                let (needle, hay) = (self.operand(l)?, self.operand(r)?);
                V::Bool(!self.contains(hay, needle)?)
            }
            Node::If(c, a, b) => {
                if self.bool(c)? {
                    self.eval(a)?
                } else if let Some(b) = b {
                    self.eval(b)?
                } else {
                    V::Unit
                }
            }
            Node::Index(x, i) => {
                let (x, i) = (self.operand(x)?, self.operand(i)?);
                index(x, i)?
            }
            Node::Field(x, name) => match self.eval(x)? {
                V::Ref(v @ (Value::Map(_) | Value::Record(_))) => {
                    from_value(field(v, name).ok_or(Fallback)?)
                }
                _ => return Err(Fallback),
            },
            // `eval` sends only the nodes above here.
            _ => return Err(Fallback),
        })
    }

    /// `hay.contains(needle)`, which is also what `needle in hay` runs in rhai.
    fn contains(&mut self, hay: V<'a>, needle: V<'a>) -> Result<bool, Fallback> {
        Ok(match (hay, needle) {
            (V::Str(s), V::Str(p)) => str_contains(&s, &p),
            (V::Str(s), V::Char(c)) => s.contains(c),
            (V::Ref(m @ (Value::Map(_) | Value::Record(_))), V::Str(k)) => field(m, &k).is_some(),
            (V::Ref(Value::Bytes(b)), V::Int(i)) => {
                // rhai compares the low byte of the integer.
                let byte = u8::try_from(i & 0xff).map_err(|_| Fallback)?;
                b.contains(&byte)
            }
            (V::Ref(Value::List(items)), needle) => {
                // rhai calls `==` on every item: the native `==` must answer for each.
                if matches!(needle, V::Ref(_)) {
                    return Err(Fallback);
                }
                self.charge(OPS_PER_NODE.saturating_mul(items.len() as u64))?;
                let mut found = false;
                for item in items {
                    let item = from_value(item);
                    if matches!(item, V::Ref(_)) {
                        return Err(Fallback);
                    }
                    if binary(Op::Eq, item, needle.clone())? == V::Bool(true) {
                        found = true;
                        break;
                    }
                }
                found
            }
            _ => return Err(Fallback),
        })
    }

    fn call(&mut self, f: Func, args: &'a [Node]) -> Result<V<'a>, Fallback> {
        let mut vals = [V::Unit, V::Unit];
        for (cell, arg) in vals.iter_mut().zip(args) {
            *cell = self.operand(arg)?;
        }
        let [x, y] = vals;
        let s = match (f, x) {
            (Func::Len, V::Str(s)) => return count(s.chars().count()),
            (Func::Len, V::Ref(v)) => return count(collection_len(v)?),
            (Func::IsEmpty, V::Str(s)) => return Ok(V::Bool(s.is_empty())),
            (Func::IsEmpty, V::Ref(v)) => return Ok(V::Bool(collection_len(v)? == 0)),
            (Func::Contains, hay) => return Ok(V::Bool(self.contains(hay, y)?)),
            (Func::StartsWith | Func::PyStartsWith, V::Str(s)) => {
                return Ok(V::Bool(match (f, y) {
                    (_, V::Str(p)) => s.starts_with(&*p),
                    (Func::StartsWith, V::Char(c)) => s.starts_with(c),
                    _ => return Err(Fallback),
                }));
            }
            (Func::EndsWith | Func::PyEndsWith, V::Str(s)) => {
                return Ok(V::Bool(match (f, y) {
                    (_, V::Str(p)) => s.ends_with(&*p),
                    (Func::EndsWith, V::Char(c)) => s.ends_with(c),
                    _ => return Err(Fallback),
                }));
            }
            // rhai returns the string itself when it is already in the wanted case.
            (Func::ToUpper, V::Str(s)) if s.chars().all(char::is_uppercase) => s,
            (Func::ToUpper, V::Str(s)) => Cow::Owned(s.to_uppercase()),
            (Func::ToLower, V::Str(s)) if s.is_empty() || s.chars().all(char::is_lowercase) => s,
            (Func::ToLower, V::Str(s)) => Cow::Owned(s.to_lowercase()),
            (Func::Strip, V::Str(Cow::Borrowed(s))) => Cow::Borrowed(s.trim()),
            (Func::Strip, V::Str(Cow::Owned(s))) => Cow::Owned(s.trim().to_owned()),
            _ => return Err(Fallback),
        };
        // rhai checks the size of every function result.
        if s.len() > MAX_STRING_SIZE {
            return Err(Fallback);
        }
        Ok(V::Str(s))
    }

    /// Renders `node` into `out`: string concatenations piece by piece, `if` by its branch.
    fn render(&mut self, node: &'a Node, out: &mut String) -> Result<(), Fallback> {
        match node {
            Node::If(c, a, b) => {
                if self.bool(c)? {
                    self.render(a, out)
                } else if let Some(b) = b {
                    self.render(b, out)
                } else {
                    out.push_str("none");
                    Ok(())
                }
            }
            Node::Sum(terms) => self.render_sum(terms, out),
            _ => {
                let v = self.eval(node)?;
                render_v(&v, out)
            }
        }
    }

    /// Renders a chain `t0 + t1 + …` (left to right, as rhai groups it). Until a string enters,
    /// the terms add up as values; from then on every term is appended to `out` as rhai's string
    /// `+` would append it.
    fn render_sum(&mut self, terms: &'a [Node], out: &mut String) -> Result<(), Fallback> {
        let start = out.len();
        let mut acc: Option<V<'a>> = None; // `None`: the sum so far is a string, in `out`
        for (i, term) in terms.iter().enumerate() {
            let v = self.operand(term)?;
            if i == 0 {
                acc = Some(v);
                continue;
            }
            acc = match acc {
                None => {
                    append(&v, out)?;
                    None
                }
                // The first string: `a + "s"` and `"s" + a` both render `a` as rhai would.
                Some(a) if is_text(&a) || is_text(&v) => {
                    append(&a, out)?;
                    append(&v, out)?;
                    None
                }
                Some(a) => Some(binary(Op::Add, a, v)?),
            };
            if acc.is_none() && out.len() - start > MAX_STRING_SIZE {
                return Err(Fallback);
            }
        }
        match acc {
            Some(v) => render_v(&v, out),
            None => Ok(()),
        }
    }
}

/// `s.contains(p)`; a one-byte needle (ASCII, which never occurs inside a longer UTF-8
/// sequence) is found by a byte scan, without the substring searcher's setup.
#[inline]
fn str_contains(s: &str, p: &str) -> bool {
    match p.as_bytes() {
        [b] => s.as_bytes().contains(b),
        _ => s.contains(p),
    }
}

/// A string: `+` with a string on either side concatenates (a char alone does not: rhai has no
/// `+` for a char and an integer).
fn is_text(v: &V<'_>) -> bool {
    matches!(v, V::Str(_))
}

/// Appends `v` as rhai's string `+` appends it (or prepends it to a string on its right):
/// strings and chars as they are, `()` as nothing, integers in decimal, bools as words. Anything
/// else (floats, whose `to_string` differs from the label rendering, and collections) goes to rhai.
fn append(v: &V<'_>, out: &mut String) -> Result<(), Fallback> {
    match v {
        V::Str(s) => out.push_str(s),
        V::Char(c) => out.push(*c),
        V::Unit => {}
        V::Int(i) => write_i64(out, *i),
        V::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        V::Float(_) | V::Ref(_) => return Err(Fallback),
    }
    Ok(())
}

fn count(n: usize) -> Result<V<'static>, Fallback> {
    Ok(V::Int(i64::try_from(n).map_err(|_| Fallback)?))
}

/// The number of items rhai sees in a collection (a record is a rhai map: a repeated field name
/// is one key).
fn collection_len(v: &Value) -> Result<usize, Fallback> {
    Ok(match v {
        Value::Bytes(b) => b.len(),
        Value::List(l) => l.len(),
        Value::Map(m) => m.len(),
        Value::Record(r) if r.len() <= 32 => r
            .iter()
            .enumerate()
            .filter(|(i, (k, _))| !r[i + 1..].iter().any(|(k2, _)| k2 == k))
            .count(),
        _ => return Err(Fallback),
    })
}

/// A field of a map or record as rhai sees it (a record is a rhai map: the last of repeated
/// field names wins).
fn field<'v>(v: &'v Value, name: &str) -> Option<&'v Value> {
    match v {
        Value::Map(m) => m.get(name),
        Value::Record(r) => r.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v),
        _ => None,
    }
}

/// `x[i]` as rhai indexes: lists and byte strings by position, strings by character (negative
/// positions count from the end), maps and records by key. Out of range or missing: rhai's error.
fn index<'a>(x: V<'a>, i: V<'a>) -> Result<V<'a>, Fallback> {
    match (x, i) {
        (V::Ref(Value::List(items)), V::Int(i)) => Ok(from_value(
            items.get(position(i, items.len())?).ok_or(Fallback)?,
        )),
        (V::Ref(Value::Bytes(b)), V::Int(i)) => Ok(V::Int(i64::from(
            *b.get(position(i, b.len())?).ok_or(Fallback)?,
        ))),
        (V::Ref(m @ (Value::Map(_) | Value::Record(_))), V::Str(k)) => {
            Ok(from_value(field(m, &k).ok_or(Fallback)?))
        }
        (V::Str(s), V::Int(i)) => {
            let c = if i >= 0 {
                s.chars().nth(usize::try_from(i).map_err(|_| Fallback)?)
            } else {
                let back = usize::try_from(i.unsigned_abs()).map_err(|_| Fallback)?;
                s.chars().rev().nth(back - 1)
            };
            c.map(V::Char).ok_or(Fallback)
        }
        _ => Err(Fallback),
    }
}

/// A position in `len` items, negative counting from the end, as rhai's `calc_index`.
fn position(i: i64, len: usize) -> Result<usize, Fallback> {
    crate::value::resolve_index(i, len).ok_or(Fallback)
}

/// `l op r` for the operators other than `&&`, `||`, `in`: numbers here, the rest in
/// [`binary_other`].
#[inline]
fn binary<'a>(op: Op, l: V<'a>, r: V<'a>) -> Result<V<'a>, Fallback> {
    // Mixed int/float arithmetic and comparison is done in floats, as rhai does.
    #[allow(clippy::cast_precision_loss)]
    match (&l, &r) {
        (V::Int(a), V::Int(b)) => int_binary(op, *a, *b),
        (V::Float(a), V::Float(b)) => float_binary(op, *a, *b),
        (V::Int(a), V::Float(b)) => float_binary(op, *a as f64, *b),
        (V::Float(a), V::Int(b)) => float_binary(op, *a, *b as f64),
        _ => binary_other(op, l, r),
    }
}

fn int_binary(op: Op, a: i64, b: i64) -> Result<V<'static>, Fallback> {
    Ok(match op {
        Op::Add => V::Int(a.checked_add(b).ok_or(Fallback)?),
        Op::Sub => V::Int(a.checked_sub(b).ok_or(Fallback)?),
        Op::Mul => V::Int(a.checked_mul(b).ok_or(Fallback)?),
        Op::Div => V::Int(a.checked_div(b).ok_or(Fallback)?),
        Op::Rem => V::Int(a.checked_rem(b).ok_or(Fallback)?),
        _ => V::Bool(compare(op, a.cmp(&b))?),
    })
}

fn float_binary(op: Op, a: f64, b: f64) -> Result<V<'static>, Fallback> {
    Ok(match op {
        Op::Add => V::Float(a + b),
        Op::Sub => V::Float(a - b),
        Op::Mul => V::Float(a * b),
        Op::Div if b != 0.0 => V::Float(a / b),
        Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge => V::Bool(float_compare(op, a, b)),
        _ => return Err(Fallback),
    })
}

/// `l op r` where not both are numbers: string concatenation and comparison.
#[inline(never)]
fn binary_other<'a>(op: Op, l: V<'a>, r: V<'a>) -> Result<V<'a>, Fallback> {
    use std::cmp::Ordering;
    if op == Op::Add {
        // String concatenation (what rhai's string `+` does with these operand types).
        let mut s = String::new();
        match (&l, &r) {
            (V::Str(_), _) | (_, V::Str(_)) => {
                append(&l, &mut s)?;
                append(&r, &mut s)?;
            }
            _ => return Err(Fallback),
        }
        if s.len() > MAX_STRING_SIZE {
            return Err(Fallback);
        }
        return Ok(V::Str(Cow::Owned(s)));
    }
    let ordering: Ordering = match (&l, &r) {
        (V::Str(a), V::Str(b)) => a.cmp(b),
        (V::Char(a), V::Char(b)) => a.cmp(b),
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
    use std::collections::BTreeMap;

    use super::*;

    fn run(text: &str, slots: &[Value]) -> Result<Value, Fallback> {
        let node = parse(text, slots.len()).expect("native");
        let slots: Vec<Lent<'_>> = slots
            .iter()
            .map(|v| Lent::Value(Cow::Borrowed(v)))
            .collect();
        eval(&node, &slots).and_then(to_value)
    }

    fn render_text(text: &str, slots: &[Value]) -> Result<String, Fallback> {
        let node = parse(text, slots.len()).expect("native");
        let slots: Vec<Lent<'_>> = slots
            .iter()
            .map(|v| Lent::Value(Cow::Borrowed(v)))
            .collect();
        let mut out = String::new();
        render(&node, &slots, &mut out).map(|()| out)
    }

    #[test]
    fn precedence_follows_rhai() {
        assert_eq!(run("1 + 2 * 3", &[]), Ok(Value::Int(7)));
        assert_eq!(run("(1 + 2) * 3", &[]), Ok(Value::Int(9)));
        assert_eq!(run("1 < 2 == true", &[]), Ok(Value::Bool(true)));
        assert_eq!(
            run(
                "!(_v0 > 3 ) && _v1 == \"x\" || false",
                &[Value::Int(2), "x".into()]
            ),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            run("-_v0 * 2", &[Value::Float(1.5)]),
            Ok(Value::Float(-3.0))
        );
        // `in` binds tighter than `==` and looser than `<`: (1 < 2) in … would be a bool.
        assert_eq!(run("\"a\" in \"cat\" == true", &[]), Ok(Value::Bool(true)));
        // Postfix binds tighter than unary: `!(s.is_empty())`, `-(s.len())`.
        assert_eq!(
            run("!_v0.is_empty()", &["ab".into()]),
            Ok(Value::Bool(true))
        );
        assert_eq!(run("-_v0.len()", &["ab".into()]), Ok(Value::Int(-2)));
    }

    #[test]
    fn failures_fall_back_to_rhai() {
        assert_eq!(run("1 / 0", &[]), Err(Fallback));
        assert_eq!(run("_v0 + 1", &[Value::Int(i64::MAX)]), Err(Fallback));
        assert_eq!(run("1 == \"a\"", &[]), Err(Fallback));
        assert_eq!(run("1 && true", &[]), Err(Fallback));
        assert_eq!(run("_v0 == 1", &[Value::List(vec![])]), Err(Fallback));
        assert_eq!(
            run("_v0[2]", &[Value::List(vec![Value::Int(1)])]),
            Err(Fallback)
        );
        assert_eq!(
            run("_v0[\"x\"]", &[Value::Map(BTreeMap::new())]),
            Err(Fallback)
        );
        assert_eq!(run("\"a\" + 1.5", &[]), Err(Fallback));
        assert_eq!(run("if 1 { 2 } else { 3 }", &[]), Err(Fallback));
        // A list as the result: rhai's own conversion decides.
        assert_eq!(run("_v0", &[Value::List(vec![])]), Err(Fallback));
        let big = "x".repeat(MAX_STRING_SIZE);
        assert_eq!(run("_v0 + \"y\"", &[big.as_str().into()]), Err(Fallback));
        assert_eq!(run("_v0.to_upper()", &[(big + "x").into()]), Err(Fallback));
        let long = Value::List(vec![Value::Int(0); 3000]);
        assert_eq!(run("1 in _v0", &[long]), Err(Fallback));
    }

    #[test]
    fn methods_indexes_in_and_if_evaluate() {
        let s: Value = "héllo".into();
        assert_eq!(
            run("len(_v0) + _v0.len()", std::slice::from_ref(&s)),
            Ok(Value::Int(10))
        );
        assert_eq!(
            run("_v0.contains(\"é\")", std::slice::from_ref(&s)),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            run("_v0.to_upper()", std::slice::from_ref(&s)),
            Ok("HÉLLO".into())
        );
        assert_eq!(run("_v0[-1]", std::slice::from_ref(&s)), Ok("o".into()));
        assert_eq!(run("_v0[1]", &[s]), Ok("é".into()));
        let xs = Value::List(vec![Value::Int(1), Value::Float(2.0)]);
        assert_eq!(
            run("2 in _v0", std::slice::from_ref(&xs)),
            Ok(Value::Bool(true))
        );
        assert_eq!(run("3 !in _v0", &[xs]), Ok(Value::Bool(true)));
        assert_eq!(
            run(
                "if _v0 > 1 { \"big\" } else if _v0 > 0 { \"one\" } else { \"none\" }",
                &[Value::Int(1)]
            ),
            Ok("one".into())
        );
        assert_eq!(run("if false { 1 }", &[]), Ok(Value::None));
    }

    #[test]
    fn labels_render_concatenations_piece_by_piece() {
        let vars = ["NZ".into(), "gold".into(), Value::Int(7)];
        assert_eq!(
            render_text("_v0 + \"-\" + _v1", &vars),
            Ok("NZ-gold".into())
        );
        // Numbers add up until a string enters, then each term is appended.
        assert_eq!(
            render_text("1 + _v2 + \"/\" + _v2 + 1", &vars),
            Ok("8/71".into())
        );
        assert_eq!(
            render_text("if true { _v0 + _v1 }", &vars),
            Ok("NZgold".into())
        );
        assert_eq!(render_text("_v0 + 0.5", &vars), Err(Fallback));
    }

    #[test]
    fn only_the_subset_parses() {
        for text in [
            "len(_v0 + 1, 2)",
            "_v0.len(1)",
            "xlen(_v0)",
            "upper(_v0)",
            "_v0.trim()",
            "2 ** 3",
            "1e3",
            "0x10",
            "\"a\\n\"",
            "'a'",
            "if true {1} else {2} + 1",
            "_v0[1..2]",
            "x",
        ] {
            assert!(parse(text, 1).is_none(), "{text}");
        }
        assert!(parse("_v0", 9).is_none());
    }

    #[test]
    fn chains_count_as_nesting() {
        let sum = vec!["_v0"; 60].join(" + ");
        assert!(parse(&sum, 1).is_some());
        let sum = vec!["_v0"; 70].join(" + ");
        assert!(parse(&sum, 1).is_none());
        let index = format!("_v0{}", "[_v0]".repeat(70));
        assert!(parse(&index, 1).is_none());
        let calls = format!("_v0{}", ".to_upper()".repeat(70));
        assert!(parse(&calls, 1).is_none());
    }
}
