//! [`Capture`]: how a variable at a probe site becomes a [`Value`] the expressions read.
//!
//! A probe site holds its variables by reference (`&dyn Capture`) and converts nothing until an
//! armed tracepoint's expression asks for a variable; then only the path asked for is walked.
//! `order.total` on a type that implements [`Capture::field`] (as `#[derive(Capture)]` does)
//! converts one float, not the whole `order`.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    fmt,
};

use sonde_expr::{EvalError, Lent, Lookup, Number, Path, Segment, Value};

/// A value a probe site can capture.
///
/// Implemented for primitives, strings, `Option`, slices, `Vec`, arrays, string-keyed maps,
/// references and boxes; for your own types derive it (`#[derive(sonde_agent::Capture)]`) or
/// implement [`Capture::capture`] (and [`Capture::field`] to let paths skip the rest).
///
/// A type that is neither gets a compile error at the `probe!` naming the ways out: capture it
/// through its `Debug` (`probe!(?x)`) or `Display` (`probe!(%x)`) text, or derive `Capture`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be captured at a probe site: it does not implement `sonde_agent::Capture`",
    label = "not `Capture`",
    note = "capture it as text instead: `probe!(?x)` through its `Debug`, `probe!(%x)` through its `Display`",
    note = "or derive it on your own type: `#[derive(sonde_agent::Capture)]` (fields must be `Capture` too), or implement `sonde_agent::Capture` by hand"
)]
pub trait Capture {
    /// The whole value.
    fn capture(&self) -> Value;

    /// One field, without converting the others. `None`: no such field, or this type does not
    /// offer field access (then the whole value is converted and the field taken from it).
    fn field(&self, name: &str) -> Option<&dyn Capture> {
        let _ = name;
        None
    }

    /// Appends this value's label rendering to `out` without building a [`Value`], if the type
    /// can (strings do: they are written as they are). `false` means not done.
    fn render_into(&self, out: &mut String) -> bool {
        let _ = out;
        false
    }

    /// One element of a list, without converting the others (`items[0].sku` converts one
    /// string); negative indexes count from the end. `None`: no such element, or this type does
    /// not offer element access (then the whole value is converted and the element taken from
    /// it).
    fn element(&self, index: i64) -> Option<&dyn Capture> {
        let _ = index;
        None
    }

    /// This value as a string, lent without a copy, if it is one (strings are): an expression
    /// that compares, searches or concatenates it reads it in place. `None`: not a string, or
    /// not lent (then it is converted with [`Capture::capture`]). When `Some`, it must be what
    /// `capture` returns as [`Value::Str`].
    fn as_str(&self) -> Option<&str> {
        None
    }

    /// This value lent to an expression without building a [`Value`], if it can be: a string in
    /// place (by default what [`Capture::as_str`] gives), a number or a bool by value. `None`:
    /// it is converted with [`Capture::capture`]. When `Some`, it must read as what `capture`
    /// returns. A redacted value is never asked.
    fn lend(&self) -> Option<Lent<'_>> {
        self.as_str().map(Lent::Str)
    }

    /// Whether this value is redacted whatever its name (`#[capture(redact)]` on its type or
    /// field): it then never leaves the process, and reads as [`REDACTED`](super::redact::REDACTED).
    fn redacted(&self) -> bool {
        false
    }

    /// The names a path can take one step into this value (`order.` + one of them), as the
    /// probe-site catalog lists them: `#[derive(Capture)]` gives a struct's fields (neither
    /// skipped nor redacted), or `variant` and the variants' fields for an enum. Empty where
    /// the type does not say (plain values, `?x`, `%x`, maps).
    fn field_names(&self) -> &'static [&'static str] {
        &[]
    }
}

/// A redacted value: what `#[capture(redact)]` puts in place of a field. It holds nothing, so
/// the value it stands for is never read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Redacted;

impl Capture for Redacted {
    fn capture(&self) -> Value {
        Value::Str(super::redact::REDACTED.to_owned())
    }
    fn render_into(&self, out: &mut String) -> bool {
        out.push_str(super::redact::REDACTED);
        true
    }
    fn as_str(&self) -> Option<&str> {
        Some(super::redact::REDACTED)
    }
    fn redacted(&self) -> bool {
        true
    }
}

/// Pointers and references capture what they point to.
macro_rules! forward {
    ($($ptr:ty),*) => {$(
        impl<T: Capture + ?Sized> Capture for $ptr {
            fn capture(&self) -> Value {
                (**self).capture()
            }
            fn field(&self, name: &str) -> Option<&dyn Capture> {
                (**self).field(name)
            }
            fn render_into(&self, out: &mut String) -> bool {
                (**self).render_into(out)
            }
            fn element(&self, index: i64) -> Option<&dyn Capture> {
                (**self).element(index)
            }
            fn as_str(&self) -> Option<&str> {
                (**self).as_str()
            }
            fn lend(&self) -> Option<Lent<'_>> {
                (**self).lend()
            }
            fn redacted(&self) -> bool {
                (**self).redacted()
            }
            fn field_names(&self) -> &'static [&'static str] {
                (**self).field_names()
            }
        }
    )*};
}
forward!(&T, &mut T, Box<T>, std::sync::Arc<T>, std::rc::Rc<T>);

/// Numbers capture as the [`Number`] `$conv` makes of them, and lend it without a `Value`.
macro_rules! number {
    ($($t:ty => |$v:ident| $conv:expr),* $(,)?) => {$(
        impl Capture for $t {
            fn capture(&self) -> Value {
                let $v = *self;
                Value::from($conv)
            }
            fn lend(&self) -> Option<Lent<'_>> {
                let $v = *self;
                Some(Lent::Number($conv))
            }
        }
    )*};
}
number!(
    i8 => |v| Number::Int(i64::from(v)),
    i16 => |v| Number::Int(i64::from(v)),
    i32 => |v| Number::Int(i64::from(v)),
    i64 => |v| Number::Int(v),
    isize => |v| Number::Int(v as i64),
    u8 => |v| Number::UInt(u64::from(v)),
    u16 => |v| Number::UInt(u64::from(v)),
    u32 => |v| Number::UInt(u64::from(v)),
    u64 => |v| Number::UInt(v),
    usize => |v| Number::UInt(v as u64),
    f32 => |v| Number::Float(f64::from(v)),
    f64 => |v| Number::Float(v),
);

impl Capture for i128 {
    fn capture(&self) -> Value {
        i64::try_from(*self).map_or(Value::Float(*self as f64), Value::Int)
    }
}

impl Capture for u128 {
    fn capture(&self) -> Value {
        u64::try_from(*self).map_or(Value::Float(*self as f64), Value::UInt)
    }
}

impl Capture for bool {
    fn capture(&self) -> Value {
        Value::Bool(*self)
    }
    fn lend(&self) -> Option<Lent<'_>> {
        Some(Lent::Bool(*self))
    }
}

impl Capture for char {
    fn capture(&self) -> Value {
        Value::Str(self.to_string())
    }
}

impl Capture for () {
    fn capture(&self) -> Value {
        Value::None
    }
}

impl Capture for str {
    fn capture(&self) -> Value {
        Value::Str(self.to_owned())
    }
    fn as_str(&self) -> Option<&str> {
        Some(self)
    }
    fn render_into(&self, out: &mut String) -> bool {
        out.push_str(self);
        true
    }
}

impl Capture for String {
    fn capture(&self) -> Value {
        Value::Str(self.clone())
    }
    fn as_str(&self) -> Option<&str> {
        Some(self)
    }
    fn render_into(&self, out: &mut String) -> bool {
        out.push_str(self);
        true
    }
}

impl Capture for Cow<'_, str> {
    fn capture(&self) -> Value {
        Value::Str(self.to_string())
    }
    fn as_str(&self) -> Option<&str> {
        Some(self)
    }
    fn render_into(&self, out: &mut String) -> bool {
        out.push_str(self);
        true
    }
}

impl Capture for std::time::Duration {
    /// Seconds, as a float (the unit Prometheus uses for durations).
    fn capture(&self) -> Value {
        Value::Float(self.as_secs_f64())
    }
}

impl<T: Capture> Capture for Option<T> {
    fn capture(&self) -> Value {
        self.as_ref().map_or(Value::None, Capture::capture)
    }
    fn field(&self, name: &str) -> Option<&dyn Capture> {
        self.as_ref()?.field(name)
    }
    fn render_into(&self, out: &mut String) -> bool {
        self.as_ref().is_some_and(|v| v.render_into(out))
    }
    fn element(&self, index: i64) -> Option<&dyn Capture> {
        self.as_ref()?.element(index)
    }
    fn as_str(&self) -> Option<&str> {
        self.as_ref()?.as_str()
    }
    fn lend(&self) -> Option<Lent<'_>> {
        self.as_ref()?.lend()
    }
    fn redacted(&self) -> bool {
        self.as_ref().is_some_and(Capture::redacted)
    }
    fn field_names(&self) -> &'static [&'static str] {
        self.as_ref().map_or(&[], Capture::field_names)
    }
}

impl<T: Capture> Capture for [T] {
    fn capture(&self) -> Value {
        Value::List(self.iter().map(Capture::capture).collect())
    }
    fn element(&self, index: i64) -> Option<&dyn Capture> {
        let i = if index >= 0 {
            usize::try_from(index).ok()?
        } else {
            self.len()
                .checked_sub(usize::try_from(index.unsigned_abs()).ok()?)?
        };
        self.get(i).map(|v| v as &dyn Capture)
    }
}

impl<T: Capture, const N: usize> Capture for [T; N] {
    fn capture(&self) -> Value {
        self.as_slice().capture()
    }
    fn element(&self, index: i64) -> Option<&dyn Capture> {
        self.as_slice().element(index)
    }
}

impl<T: Capture> Capture for Vec<T> {
    fn capture(&self) -> Value {
        self.as_slice().capture()
    }
    fn element(&self, index: i64) -> Option<&dyn Capture> {
        self.as_slice().element(index)
    }
}

impl<V: Capture, S: std::hash::BuildHasher> Capture for HashMap<String, V, S> {
    fn capture(&self) -> Value {
        Value::Map(self.iter().map(|(k, v)| (k.clone(), v.capture())).collect())
    }
    fn field(&self, name: &str) -> Option<&dyn Capture> {
        self.get(name).map(|v| v as &dyn Capture)
    }
}

impl<V: Capture> Capture for BTreeMap<String, V> {
    fn capture(&self) -> Value {
        Value::Map(self.iter().map(|(k, v)| (k.clone(), v.capture())).collect())
    }
    fn field(&self, name: &str) -> Option<&dyn Capture> {
        self.get(name).map(|v| v as &dyn Capture)
    }
}

impl Capture for Value {
    fn capture(&self) -> Value {
        self.clone()
    }
}

/// Captures the `Debug` rendering of a value (`probe!(?request)`).
#[derive(Debug)]
pub struct DebugCapture<'a, T: fmt::Debug + ?Sized>(pub &'a T);

impl<T: fmt::Debug + ?Sized> Capture for DebugCapture<'_, T> {
    fn capture(&self) -> Value {
        Value::Str(format!("{:?}", self.0))
    }
}

/// Captures the `Display` rendering of a value (`probe!(%user_id)`).
#[derive(Debug)]
pub struct DisplayCapture<'a, T: fmt::Display + ?Sized>(pub &'a T);

impl<T: fmt::Display + ?Sized> Capture for DisplayCapture<'_, T> {
    fn capture(&self) -> Value {
        Value::Str(self.0.to_string())
    }
}

/// The variables of one hit: the site's names and the captured references, side by side.
pub(crate) struct HitVars<'a> {
    pub names: &'static [&'static str],
    pub values: &'a [&'a dyn Capture],
}

impl HitVars<'_> {
    fn find(&self, name: &str) -> Option<&dyn Capture> {
        let i = self.names.iter().position(|n| *n == name)?;
        self.values.get(i).copied()
    }

    /// The root of `path`: by the position remembered for this site's names (the same static
    /// list on every hit), else by name, remembering where it was.
    #[inline]
    fn root(&self, path: &Path) -> Option<&dyn Capture> {
        let order = self.names.as_ptr() as usize;
        if let Some(i) = path.root_position(order) {
            return self.values.get(i).copied();
        }
        let i = self.names.iter().position(|n| *n == path.root())?;
        path.remember_root(order, i);
        self.values.get(i).copied()
    }
}

/// The value of a capture as expressions see it: redacted values and fields are gone.
pub(crate) fn scrubbed(node: &dyn Capture) -> Value {
    if node.redacted() {
        return Redacted.capture();
    }
    let mut value = node.capture();
    super::redact::scrub(&mut value);
    value
}

impl HitVars<'_> {
    /// Walks `path` as far as the captured types offer field and element access: the node
    /// reached and how many segments it took.
    #[inline(always)]
    fn walk(&self, path: &Path) -> Result<(&dyn Capture, usize), EvalError> {
        let mut node = self.root(path).ok_or(EvalError::MissingVariable)?;
        let mut walked = 0;
        for seg in path.segments() {
            if node.redacted() {
                break;
            }
            let next = match seg {
                Segment::Field(name) => node.field(name),
                Segment::Index(i) => node.element(*i),
            };
            match next {
                Some(next) => {
                    node = next;
                    walked += 1;
                }
                None => break,
            }
        }
        Ok((node, walked))
    }
}

impl Lookup for HitVars<'_> {
    fn get(&self, name: &str) -> Option<Cow<'_, Value>> {
        self.find(name).map(|v| Cow::Owned(scrubbed(v)))
    }

    fn render_path(&self, path: &Path, out: &mut String) -> Option<Result<(), EvalError>> {
        let (node, walked) = match self.walk(path) {
            Ok(reached) => reached,
            Err(e) => return Some(Err(e)),
        };
        if walked < path.segments().len() {
            return None;
        }
        if node.redacted() {
            out.push_str(super::redact::REDACTED);
            return Some(Ok(()));
        }
        if node.render_into(out) {
            return Some(Ok(()));
        }
        scrubbed(node).render(out);
        Some(Ok(()))
    }

    fn lend_path(&self, path: &Path) -> Result<Lent<'_>, EvalError> {
        let (node, walked) = self.walk(path)?;
        let rest = &path.segments()[walked..];
        if !rest.is_empty() {
            return self.reach(node, rest).map(Lent::Value);
        }
        if node.redacted() {
            return Ok(Lent::Str(super::redact::REDACTED));
        }
        if let Some(lent) = node.lend() {
            return Ok(lent);
        }
        Ok(match Lent::owned(node.capture()) {
            Lent::Value(Cow::Owned(mut value)) => {
                super::redact::scrub(&mut value);
                Lent::Value(Cow::Owned(value))
            }
            lent => lent,
        })
    }

    fn get_path(&self, path: &Path) -> Result<Cow<'_, Value>, EvalError> {
        let (node, walked) = self.walk(path)?;
        self.reach(node, &path.segments()[walked..])
    }
}

impl HitVars<'_> {
    /// The value `rest` reaches below `node`, whose type offers no field or element access
    /// there: `node` is converted and the rest walked in the converted value. Only what the
    /// path reaches is scrubbed: a step naming a redacted field is refused when the tracepoint
    /// binds, so the walk never passes one, and a list converted to reach one element is not
    /// scrubbed whole on every hit.
    fn reach(&self, node: &dyn Capture, rest: &[Segment]) -> Result<Cow<'_, Value>, EvalError> {
        if rest.is_empty() {
            return Ok(Cow::Owned(scrubbed(node)));
        }
        let value = if node.redacted() {
            Redacted.capture()
        } else {
            node.capture()
        };
        let mut cur = &value;
        for seg in rest {
            cur = match seg {
                Segment::Field(name) => cur.field(name).ok_or(EvalError::MissingField)?,
                Segment::Index(i) => cur.index(*i).ok_or(EvalError::IndexOutOfBounds)?,
            };
        }
        let mut reached = cur.clone();
        super::redact::scrub(&mut reached);
        Ok(Cow::Owned(reached))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct Order {
        total: f64,
        country: String,
        converted: Cell<u32>,
    }

    impl Capture for Order {
        fn capture(&self) -> Value {
            self.converted.set(self.converted.get() + 1);
            Value::Record(vec![
                ("total".into(), self.total.capture()),
                ("country".into(), self.country.capture()),
            ])
        }
        fn field(&self, name: &str) -> Option<&dyn Capture> {
            match name {
                "total" => Some(&self.total),
                "country" => Some(&self.country),
                _ => None,
            }
        }
    }

    /// A list of accounts with no field access of its own: paths into it walk its converted
    /// value.
    struct Accounts;

    impl Capture for Accounts {
        fn capture(&self) -> Value {
            Value::List(vec![Value::Record(vec![
                ("name".into(), Value::Str("ann".into())),
                ("password".into(), Value::Str("hunter2".into())),
            ])])
        }
    }

    #[test]
    fn what_a_path_reaches_in_a_converted_value_is_scrubbed() {
        let values: [&dyn Capture; 1] = [&Accounts];
        let vars = HitVars {
            names: &["accounts"],
            values: &values,
        };
        let path = |src: &str| {
            sonde_expr::compile(src, sonde_expr::ExprKind::Any)
                .unwrap()
                .paths()[0]
                .clone()
        };
        let first = vars.get_path(&path("accounts[0]")).unwrap();
        assert_eq!(
            first.field("password"),
            Some(&Value::Str(super::super::redact::REDACTED.into()))
        );
        assert_eq!(first.field("name"), Some(&Value::Str("ann".into())));
        let name = vars.get_path(&path("accounts[0].name")).unwrap();
        assert_eq!(*name, Value::Str("ann".into()));
        let whole = vars.get_path(&path("accounts")).unwrap();
        assert!(!format!("{whole:?}").contains("hunter2"), "{whole:?}");
    }

    #[test]
    fn paths_convert_only_the_leaf() {
        let order = Order {
            total: 12.5,
            country: "NZ".into(),
            converted: Cell::new(0),
        };
        let items = vec![1u32, 2, 3];
        let values: [&dyn Capture; 2] = [&order, &items];
        let vars = HitVars {
            names: &["order", "items"],
            values: &values,
        };
        let total = sonde_expr::compile("order.total * 2", sonde_expr::ExprKind::Value).unwrap();
        assert_eq!(total.eval_f64(&vars), Ok(25.0));
        let label = sonde_expr::compile("order.country", sonde_expr::ExprKind::Label).unwrap();
        let mut out = String::new();
        label.eval_label(&vars, &mut out).unwrap();
        assert_eq!(out, "NZ");
        assert_eq!(
            order.converted.get(),
            0,
            "the whole order was never converted"
        );

        let len =
            sonde_expr::compile("len(items) + items[2]", sonde_expr::ExprKind::Value).unwrap();
        assert_eq!(len.eval_f64(&vars), Ok(6.0));
        let missing = sonde_expr::compile("order.nope", sonde_expr::ExprKind::Label).unwrap();
        assert!(missing.eval_label(&vars, &mut out).is_err());
        assert_eq!(
            order.converted.get(),
            1,
            "an unknown field falls back to the whole value"
        );
    }

    #[test]
    fn paths_index_into_lists_without_converting_them() {
        let orders: Vec<Order> = ["NZ", "AU", "FR"]
            .into_iter()
            .map(|c| Order {
                total: 1.0,
                country: c.into(),
                converted: Cell::new(0),
            })
            .collect();
        let values: [&dyn Capture; 1] = [&orders];
        let vars = HitVars {
            names: &["orders"],
            values: &values,
        };
        let first = sonde_expr::compile(
            r#"orders[0].country + "/" + orders[-1].country"#,
            sonde_expr::ExprKind::Label,
        )
        .unwrap();
        let mut out = String::new();
        first.eval_label(&vars, &mut out).unwrap();
        assert_eq!(out, "NZ/FR");
        let plain = sonde_expr::compile("orders[1].country", sonde_expr::ExprKind::Label).unwrap();
        out.clear();
        plain.eval_label(&vars, &mut out).unwrap();
        assert_eq!(out, "AU");
        // rhai (`upper` is not native) reads the same elements.
        let rhai = sonde_expr::compile(
            r#"upper(orders[-2].country) == "AU" && orders[2].total > 0.5"#,
            sonde_expr::ExprKind::Condition,
        )
        .unwrap();
        assert!(!rhai.is_native());
        assert_eq!(rhai.eval_condition(&vars), Ok(true));
        let converted: u32 = orders.iter().map(|o| o.converted.get()).sum();
        assert_eq!(converted, 0, "no order was converted whole");

        // Out of range on either side: the error the converted list gives.
        let past = sonde_expr::compile("orders[3].total", sonde_expr::ExprKind::Value).unwrap();
        assert_eq!(past.eval_f64(&vars), Err(EvalError::IndexOutOfBounds));
        let before = sonde_expr::compile("orders[-4].total", sonde_expr::ExprKind::Value).unwrap();
        assert_eq!(before.eval_f64(&vars), Err(EvalError::IndexOutOfBounds));
    }

    #[test]
    fn strings_are_lent_and_redacted_ones_stay_redacted() {
        let names = vec![Some("ann".to_owned()), None];
        let secret = Redacted;
        let values: [&dyn Capture; 2] = [&names, &secret];
        let vars = HitVars {
            names: &["names", "secret"],
            values: &values,
        };
        let path = |src: &str| {
            sonde_expr::compile(src, sonde_expr::ExprKind::Any)
                .unwrap()
                .paths()[0]
                .clone()
        };
        assert_eq!(vars.lend_path(&path("names[0]")), Ok(Lent::Str("ann")));
        // Not a string: converted, as `get_path` converts it.
        assert_eq!(
            vars.lend_path(&path("names[1]")),
            Ok(Lent::Value(Cow::Owned(Value::None)))
        );
        assert_eq!(
            vars.lend_path(&path("secret")),
            Ok(Lent::Str(super::super::redact::REDACTED))
        );
        let cond = sonde_expr::compile(
            r#"names[0].contains("n") && secret.starts_with("[")"#,
            sonde_expr::ExprKind::Condition,
        )
        .unwrap();
        assert!(cond.is_native());
        assert_eq!(cond.eval_condition(&vars), Ok(true));
    }

    #[test]
    fn primitives_and_containers() {
        assert_eq!(7u8.capture(), Value::UInt(7));
        assert_eq!((-7i32).capture(), Value::Int(-7));
        assert_eq!(Some("x").capture(), Value::Str("x".into()));
        assert_eq!(None::<u8>.capture(), Value::None);
        assert_eq!(u128::MAX.capture(), Value::Float(u128::MAX as f64));
        assert_eq!(
            DebugCapture(&Some(1)).capture(),
            Value::Str("Some(1)".into())
        );
        let mut m = HashMap::new();
        m.insert("k".to_owned(), 1i64);
        assert!(m.field("k").is_some());
        assert_eq!(
            std::time::Duration::from_millis(1500).capture(),
            Value::Float(1.5)
        );
    }
}
