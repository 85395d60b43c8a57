//! [`Reads`]: the parts of a variable's value that a tracepoint's expressions read, which
//! [`build`] keeps of its shape.
//!
//! A tracepoint's expressions usually read a few paths (`order.country`, `order.user.tier`), not
//! whole values. [`build`] takes the paths rooted at the variable as a [`Reads`] tree and keeps
//! only what they reach, so heap reads (a syscall each in the handler) and the
//! [`MAX_DEREFS`] budget go to fields that are read, and a field the full shape left out for
//! lack of budget is captured when a path needs it. The inline copy is unchanged (it is one
//! cheap copy); what is pruned is the heap reads and the decode nodes. Per step:
//!
//! - `.name` on a struct keeps only the named fields (each pruned by the rest of its paths); the
//!   decoded `Record` has only those fields, so a field no path reads is absent. On an enum
//!   with data it keeps the arms' fields of that name (`variant` is always decoded).
//! - References, `Box`, `Rc`, `Arc` and `Option` are passed through: `order.user.tier` with
//!   `user: Box<User>` or `Option<User>` reads the box (or the `Some` payload) and prunes the
//!   `User` inside to `tier`.
//! - `[i]` (any index) on a `Vec`, slice or array keeps every element, each pruned by the rest of
//!   the path; `.head[i]` likewise.
//! - A path that ends at a value (`order`, `{order}` in a template, `len(order)`), `.len` or a
//!   whole `.head` of a sequence, or a step the type does not have (a field no struct member is
//!   named, an index into a struct), keeps the full shape of that value, so the path resolves
//!   (or fails) on the pruned capture as on the full one.
//!
//! One difference can show: heap reads no longer spent on unread fields go to further elements
//! of sequences whose elements need heap reads of their own (`Vec<String>`), so such a sequence
//! can decode to a complete `List` where the full shape gave `{len, head}`, as a shorter
//! runtime length would (and `x.len` / `x.head[i]` then fail as on any complete list).
//!
//! [`build`]: fn@super::build
//! [`MAX_DEREFS`]: super::MAX_DEREFS

use std::borrow::Cow;

use sonde_expr::{Path, Segment};

/// The parts of a variable's value that expressions read: the steps of the paths rooted at the
/// variable ([`Path::segments`]) as a tree. [`build`](fn@super::build) keeps only these parts
/// (see the module header for what each step keeps).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Reads {
    /// A path ends here: the whole value is read.
    all: bool,
    /// `.name` steps, and what is read below each.
    fields: Vec<(Box<str>, Reads)>,
    /// `[i]` steps (any index), and what is read below them.
    index: Option<Box<Reads>>,
}

/// The whole value is read.
static ALL: Reads = Reads {
    all: true,
    fields: Vec::new(),
    index: None,
};

impl Reads {
    /// The whole value: the full shape.
    pub(crate) fn all() -> &'static Self {
        &ALL
    }

    /// What the paths rooted at `root` read, or `None` when no path is rooted there.
    pub(crate) fn of(paths: &[Path], root: &str) -> Option<Self> {
        let mut reads: Option<Self> = None;
        for p in paths.iter().filter(|p| p.root() == root) {
            reads.get_or_insert_with(Self::default).add(p.segments());
        }
        reads
    }

    fn add(&mut self, segments: &[Segment]) {
        if self.all {
            return;
        }
        let Some((first, rest)) = segments.split_first() else {
            *self = ALL.clone();
            return;
        };
        let below = match first {
            Segment::Field(name) => self.field_mut(name),
            Segment::Index(_) => self.index.get_or_insert_with(Box::default),
        };
        below.add(rest);
    }

    fn field_mut(&mut self, name: &str) -> &mut Self {
        let at = match self.fields.iter().position(|(n, _)| &**n == name) {
            Some(at) => at,
            None => {
                self.fields.push((name.into(), Self::default()));
                self.fields.len() - 1
            }
        };
        &mut self.fields[at].1
    }

    fn field(&self, name: &str) -> Option<&Self> {
        self.fields
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, r)| r)
    }

    fn merge(&mut self, other: &Self) {
        if self.all {
            return;
        }
        if other.all {
            *self = ALL.clone();
            return;
        }
        for (name, below) in &other.fields {
            self.field_mut(name).merge(below);
        }
        if let Some(below) = &other.index {
            self.index.get_or_insert_with(Box::default).merge(below);
        }
    }

    /// What is read of a struct (or enum with data) whose fields are `names`: these reads, or
    /// the whole value when a step is not one of its fields.
    pub(super) fn of_fields<'s>(&'s self, names: &[&str]) -> &'s Self {
        let unknown =
            self.index.is_some() || self.fields.iter().any(|(n, _)| !names.contains(&&**n));
        if unknown { &ALL } else { self }
    }

    /// What is read of each element of a sequence: `[i]` and `.head[i]` steps; the whole
    /// elements for anything else (`.len`, all of `.head`, a step a sequence does not have).
    pub(super) fn elements(&self) -> Cow<'_, Self> {
        if self.all {
            return Cow::Borrowed(&ALL);
        }
        let mut out = match &self.index {
            Some(below) => Cow::Borrowed(&**below),
            None => Cow::Owned(Self::default()),
        };
        for (name, below) in &self.fields {
            match (&**name, below) {
                (
                    "head",
                    Self {
                        all: false,
                        fields,
                        index: Some(i),
                    },
                ) if fields.is_empty() => {
                    out.to_mut().merge(i);
                }
                _ => return Cow::Borrowed(&ALL),
            }
        }
        out
    }
}

/// Which fields of a struct or enum arm to build.
#[derive(Clone, Copy)]
pub(super) enum FieldReads<'r> {
    /// The fields `reads` names (all of them when it reads the whole value).
    Named(&'r Reads),
    /// Every field, each with these reads (the payload of `Some`, passed through).
    Each(&'r Reads),
}

impl<'r> FieldReads<'r> {
    /// What is read of the field `name`, or `None` when it is not read.
    pub(super) fn of(self, name: &str) -> Option<&'r Reads> {
        match self {
            Self::Each(r) => Some(r),
            Self::Named(r) if r.all => Some(&ALL),
            Self::Named(r) => r.field(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(template: &str, root: &str) -> Option<Reads> {
        let expr = sonde_expr::compile(template, sonde_expr::ExprKind::Template).unwrap();
        Reads::of(expr.paths(), root)
    }

    #[test]
    fn reads_are_the_union_of_the_paths_below_a_root() {
        assert_eq!(reads("{a.b}", "x"), None);
        let r = reads("{x.a.b} {x.a.c} {x.items[0].sku} {x.items[-1].qty}", "x").unwrap();
        assert!(!r.all);
        let a = r.field("a").unwrap();
        assert!(a.field("b").unwrap().all && a.field("c").unwrap().all);
        assert_eq!(r.of_fields(&["a", "items"]), &r);
        // A step the value does not have: the whole value.
        assert!(r.of_fields(&["a"]).all);
        let items = r.field("items").unwrap().elements();
        assert!(!items.all && items.field("sku").is_some() && items.field("qty").is_some());
        // A path ending at the root reads all of it, whatever else is read.
        assert!(reads("{x.a} {x}", "x").unwrap().all);
        assert!(reads("{x} {x.a}", "x").unwrap().all);
    }

    #[test]
    fn sequence_elements_are_read_by_index_and_head_index() {
        let r = reads("{v[0].a} {v.head[1].b}", "v").unwrap();
        let e = r.elements();
        assert!(!e.all && e.field("a").unwrap().all && e.field("b").unwrap().all);
        // `len`, the whole `head`, or a step a sequence does not have: whole elements.
        for t in ["{v.len} {v[0].a}", "{v.head}", "{v.nope.a}"] {
            assert!(reads(t, "v").unwrap().elements().all, "{t}");
        }
    }
}
