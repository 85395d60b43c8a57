//! `Lookup`, the caller's side of evaluation: it hands over captured variables by name, on demand.
//!
//! An expression asks only for the variable paths it reads ([`Expr::paths`](crate::Expr::paths)),
//! once each per evaluation, so an agent converts only what is used. A lookup that keeps values
//! already converted returns them borrowed (`Cow::Borrowed`), which costs nothing; one that
//! converts lazily returns `Cow::Owned`. A lookup that can convert a single field without
//! converting the whole record overrides [`Lookup::get_path`].

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use crate::error::EvalError;
use crate::value::{Number, Value};

/// One step of a variable path: `.field` (or `["key"]`) or `[index]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A field of a record or a key of a map.
    Field(String),
    /// An index into a list; negative counts from the end.
    Index(i64),
}

/// A variable path as written in an expression: a root variable and the fields and literal
/// indexes below it (`order.customer.country`, `items[0].sku`).
#[derive(Clone)]
pub struct Path {
    root: String,
    segments: Vec<Segment>,
    /// Where a lookup with a fixed order of variables found the root (see
    /// [`Path::root_position`]); not part of the path's identity.
    found: OnceLock<(usize, usize)>,
}

impl PartialEq for Path {
    fn eq(&self, other: &Self) -> bool {
        self.root == other.root && self.segments == other.segments
    }
}

impl Eq for Path {}

impl Hash for Path {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.root.hash(state);
        self.segments.hash(state);
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Path")
            .field("root", &self.root)
            .field("segments", &self.segments)
            .finish()
    }
}

impl Path {
    pub(crate) fn new(root: String, segments: Vec<Segment>) -> Self {
        Path {
            root,
            segments,
            found: OnceLock::new(),
        }
    }

    /// Where the root was found among the variables of a lookup that holds them in a fixed
    /// order, if [`Path::remember_root`] was told for the same `order`: an agent's probe site
    /// passes the address of its list of names, so every hit after the first finds the root
    /// by position instead of comparing names. One position is remembered per path (the
    /// first told); a lookup with another order compares names as before.
    #[must_use]
    #[inline]
    pub fn root_position(&self, order: usize) -> Option<usize> {
        match self.found.get() {
            Some(&(key, position)) if key == order => Some(position),
            _ => None,
        }
    }

    /// Remembers that the root is variable `position` of the lookup whose order of variables is
    /// `order` (see [`Path::root_position`]); ignored once a position is remembered.
    pub fn remember_root(&self, order: usize, position: usize) {
        let _ = self.found.set((order, position));
    }

    /// The root variable's name.
    #[must_use]
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The steps below the root (empty for a bare variable).
    #[must_use]
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Walks the segments below `root`'s value, keeping a borrowed value borrowed.
    ///
    /// # Errors
    /// [`EvalError::MissingField`] for an absent field, [`EvalError::IndexOutOfBounds`] for an
    /// index past the end, [`EvalError::TypeMismatch`] for a field of a non-record or an index
    /// into a non-list.
    pub fn resolve<'a>(&self, root: Cow<'a, Value>) -> Result<Cow<'a, Value>, EvalError> {
        match root {
            Cow::Borrowed(v) => self.resolve_ref(v).map(Cow::Borrowed),
            Cow::Owned(v) => {
                if self.segments.is_empty() {
                    Ok(Cow::Owned(v))
                } else {
                    self.resolve_ref(&v).map(|leaf| Cow::Owned(leaf.clone()))
                }
            }
        }
    }

    /// Walks the segments below `root`'s value.
    ///
    /// # Errors
    /// As [`Path::resolve`].
    pub fn resolve_ref<'a>(&self, root: &'a Value) -> Result<&'a Value, EvalError> {
        let mut v = root;
        for seg in &self.segments {
            v = match seg {
                Segment::Field(name) => match v {
                    Value::Map(_) | Value::Record(_) => {
                        v.field(name).ok_or(EvalError::MissingField)?
                    }
                    _ => return Err(EvalError::TypeMismatch),
                },
                Segment::Index(i) => match v {
                    Value::List(_) => v.index(*i).ok_or(EvalError::IndexOutOfBounds)?,
                    _ => return Err(EvalError::TypeMismatch),
                },
            };
        }
        Ok(v)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.root)?;
        for seg in &self.segments {
            match seg {
                Segment::Field(name) => write!(f, ".{name}")?,
                Segment::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// A value at a variable path as a [`Lookup`] lends it (see [`Lookup::lend_path`]): a
/// [`Value`], borrowed or converted, or a string lent as it is, without copying it into a
/// `Value` first.
#[derive(Clone, Debug, PartialEq)]
pub enum Lent<'a> {
    /// A converted (or borrowed) value.
    Value(Cow<'a, Value>),
    /// A string, borrowed from the caller's own data: reads as [`Value::Str`] would.
    Str(&'a str),
    /// A number, lent by value: reads as [`Value::Int`], [`Value::UInt`] or [`Value::Float`]
    /// would (and, unlike a `Value`, costs nothing to drop).
    Number(Number),
    /// A bool, lent by value: reads as [`Value::Bool`] would.
    Bool(bool),
}

impl<'a> Lent<'a> {
    /// An owned value lent as it is, numbers and bools as [`Lent::Number`] and [`Lent::Bool`].
    #[must_use]
    #[inline]
    pub fn owned(v: Value) -> Lent<'a> {
        let lent = match v {
            Value::Int(i) => Lent::Number(Number::Int(i)),
            Value::UInt(u) => Lent::Number(Number::UInt(u)),
            Value::Float(f) => Lent::Number(Number::Float(f)),
            Value::Bool(b) => Lent::Bool(b),
            v => return Lent::Value(Cow::Owned(v)),
        };
        // A number or bool holds nothing to free: without this the compiler calls `Value`'s
        // whole drop glue here, on every hit.
        std::mem::forget(v);
        lent
    }
}

/// The variables visible to an evaluation, provided by the caller.
///
/// Implemented for slices, arrays and `Vec`s of `(name, Value)` pairs, for `HashMap` and
/// `BTreeMap` from names to values, for a [`Value`] map or record (its fields are the
/// variables), for `()` (no variables), and for any closure through [`FnLookup`].
pub trait Lookup {
    /// The value of root variable `name`, or `None` when it is not captured.
    fn get(&self, name: &str) -> Option<Cow<'_, Value>>;

    /// The value at `path`. The default gets the root with [`Lookup::get`] and walks it; override
    /// it to convert only the leaf.
    ///
    /// # Errors
    /// [`EvalError::MissingVariable`] when the root is not captured, else as [`Path::resolve`].
    fn get_path(&self, path: &Path) -> Result<Cow<'_, Value>, EvalError> {
        let root = self.get(path.root()).ok_or(EvalError::MissingVariable)?;
        path.resolve(root)
    }

    /// Appends the rendering of the value at `path` to `out` (the rules of [`Value::render`]),
    /// or returns `None` to let the caller go through [`Lookup::get_path`]. Labels and
    /// templates that are plain paths try this first: override it to write a captured string
    /// straight into `out` instead of copying it into a [`Value`] first.
    fn render_path(&self, path: &Path, out: &mut String) -> Option<Result<(), EvalError>> {
        let _ = (path, out);
        None
    }

    /// The value at `path`, lent without a copy where the lookup can: the native lane reads
    /// its operands through this, so a captured string compared, searched or concatenated is
    /// never copied. The default converts through [`Lookup::get_path`]; override it to lend
    /// strings ([`Lent::Str`]). What it lends must equal what `get_path` returns.
    ///
    /// # Errors
    /// As [`Lookup::get_path`].
    fn lend_path(&self, path: &Path) -> Result<Lent<'_>, EvalError> {
        self.get_path(path).map(Lent::Value)
    }
}

impl<L: Lookup + ?Sized> Lookup for &L {
    fn get(&self, name: &str) -> Option<Cow<'_, Value>> {
        (**self).get(name)
    }

    fn get_path(&self, path: &Path) -> Result<Cow<'_, Value>, EvalError> {
        (**self).get_path(path)
    }

    fn render_path(&self, path: &Path, out: &mut String) -> Option<Result<(), EvalError>> {
        (**self).render_path(path, out)
    }

    fn lend_path(&self, path: &Path) -> Result<Lent<'_>, EvalError> {
        (**self).lend_path(path)
    }
}

impl Lookup for () {
    fn get(&self, _name: &str) -> Option<Cow<'_, Value>> {
        None
    }
}

impl<S: AsRef<str>> Lookup for [(S, Value)] {
    fn get(&self, name: &str) -> Option<Cow<'_, Value>> {
        self.iter()
            .find(|(k, _)| k.as_ref() == name)
            .map(|(_, v)| Cow::Borrowed(v))
    }
}

impl<S: AsRef<str>, const N: usize> Lookup for [(S, Value); N] {
    fn get(&self, name: &str) -> Option<Cow<'_, Value>> {
        Lookup::get(self.as_slice(), name)
    }
}

impl<S: AsRef<str>> Lookup for Vec<(S, Value)> {
    fn get(&self, name: &str) -> Option<Cow<'_, Value>> {
        Lookup::get(self.as_slice(), name)
    }
}

impl<S: std::hash::BuildHasher> Lookup for HashMap<String, Value, S> {
    fn get(&self, name: &str) -> Option<Cow<'_, Value>> {
        HashMap::get(self, name).map(Cow::Borrowed)
    }
}

impl Lookup for BTreeMap<String, Value> {
    fn get(&self, name: &str) -> Option<Cow<'_, Value>> {
        BTreeMap::get(self, name).map(Cow::Borrowed)
    }
}

impl Lookup for Value {
    fn get(&self, name: &str) -> Option<Cow<'_, Value>> {
        self.field(name).map(Cow::Borrowed)
    }
}

/// A [`Lookup`] from a closure that converts a variable on demand.
///
/// ```
/// use sonde_expr::{compile, ExprKind, FnLookup, Value};
///
/// let expr = compile("n * 2", ExprKind::Value).expect("compiles");
/// let vars = FnLookup(|name: &str| (name == "n").then(|| Value::Int(21)));
/// assert_eq!(expr.eval_f64(&vars), Ok(42.0));
/// ```
#[derive(Clone, Copy)]
pub struct FnLookup<F>(pub F);

impl<F> fmt::Debug for FnLookup<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnLookup(..)")
    }
}

impl<F: Fn(&str) -> Option<Value>> Lookup for FnLookup<F> {
    fn get(&self, name: &str) -> Option<Cow<'_, Value>> {
        (self.0)(name).map(Cow::Owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> Value {
        Value::Record(vec![
            ("id".into(), Value::Int(7)),
            (
                "items".into(),
                Value::List(vec![Value::Record(vec![("sku".into(), "A1".into())])]),
            ),
        ])
    }

    #[test]
    fn paths_walk_records_and_lists() {
        let vars = [("order", order())];
        let p = Path::new(
            "order".into(),
            vec![
                Segment::Field("items".into()),
                Segment::Index(-1),
                Segment::Field("sku".into()),
            ],
        );
        assert_eq!(p.to_string(), "order.items[-1].sku");
        assert_eq!(
            vars.get_path(&p).map(Cow::into_owned),
            Ok(Value::from("A1"))
        );
    }

    #[test]
    fn path_errors_say_what_went_wrong() {
        let vars = [("order", order())];
        let missing = Path::new("nope".into(), vec![]);
        assert_eq!(vars.get_path(&missing), Err(EvalError::MissingVariable));
        let field = Path::new("order".into(), vec![Segment::Field("x".into())]);
        assert_eq!(vars.get_path(&field), Err(EvalError::MissingField));
        let idx = Path::new(
            "order".into(),
            vec![Segment::Field("items".into()), Segment::Index(5)],
        );
        assert_eq!(vars.get_path(&idx), Err(EvalError::IndexOutOfBounds));
        let ty = Path::new("order".into(), vec![Segment::Index(0)]);
        assert_eq!(vars.get_path(&ty), Err(EvalError::TypeMismatch));
    }

    #[test]
    fn owned_lookups_resolve_to_owned_leaves() {
        let vars = FnLookup(|name: &str| (name == "order").then(order));
        let p = Path::new("order".into(), vec![Segment::Field("id".into())]);
        assert_eq!(vars.get_path(&p).map(Cow::into_owned), Ok(Value::Int(7)));
    }
}
