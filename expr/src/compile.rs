//! `compile`: source text to [`Expr`], with errors a person can act on.
//!
//! Steps for one expression (a template does this for each `{…}`): length check, rewrite (see
//! the `rewrite` module), known-variable check, then
//! - a single variable path becomes a fast-path unit without asking rhai;
//! - anything else is compiled by the shared engine in expression mode, with the slots as the
//!   only variables (strict variables);
//! - an expression that reads no variable is evaluated once, here, and kept as a constant: a
//!   literal costs nothing on the hit, and a constant that fails (`1 / 0`) or has the wrong type
//!   for its kind (`"yes"` as a condition) is a compile error.

use std::sync::Arc;

use rhai::{Dynamic, ParseErrorType, Scope};

use crate::engine::{MAX_EXPR_DEPTH, engine, from_dynamic};
use crate::error::{CompileError, Position};
use crate::expr::{Body, Expr, Inner, Part, Unit};
use crate::kind::ExprKind;
use crate::lookup::Path;
use crate::native;
use crate::rewrite::{find_closing_brace, rewrite, slot_name};
use crate::value::Value;

/// The longest source [`compile`] accepts, in bytes (unless [`CompileOptions::max_source_len`]
/// says otherwise).
pub const MAX_SOURCE_LEN: usize = 4096;

/// Options for [`compile_with`].
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// The root variable names the expression may read (the variables a probe captures). When
    /// set, any other name is a compile error that lists these.
    pub variables: Option<Vec<String>>,
    /// The longest source accepted, in bytes; `None` means [`MAX_SOURCE_LEN`].
    pub max_source_len: Option<usize>,
}

impl CompileOptions {
    /// Options that allow only `names` as root variables.
    #[must_use]
    pub fn with_variables<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        CompileOptions {
            variables: Some(names.into_iter().map(Into::into).collect()),
            max_source_len: None,
        }
    }
}

/// Compiles `source` as an expression of `kind`, with default options.
///
/// # Errors
/// A [`CompileError`] with a message and, where it applies, the position in `source`.
pub fn compile(source: &str, kind: ExprKind) -> Result<Expr, CompileError> {
    compile_with(source, kind, &CompileOptions::default())
}

/// Compiles `source` as an expression of `kind`.
///
/// # Errors
/// A [`CompileError`] with a message and, where it applies, the position in `source`.
pub fn compile_with(
    source: &str,
    kind: ExprKind,
    options: &CompileOptions,
) -> Result<Expr, CompileError> {
    let max = options.max_source_len.unwrap_or(MAX_SOURCE_LEN);
    if source.len() > max {
        return Err(CompileError::new(
            format!(
                "the {kind} is {} bytes long; the limit is {max}",
                source.len()
            ),
            None,
        ));
    }
    let mut c = Compiler {
        full: source,
        options,
        paths: Vec::new(),
    };
    let body = if kind == ExprKind::Template {
        Body::Template(c.template()?)
    } else {
        let unit = c.unit(0, source)?;
        check_constant(&unit, kind, source)?;
        Body::Single(unit)
    };
    let mut variables: Vec<String> = Vec::new();
    for p in &c.paths {
        if !variables.iter().any(|v| v == p.root()) {
            variables.push(p.root().to_owned());
        }
    }
    Ok(Expr(Arc::new(Inner {
        source: source.to_owned(),
        kind,
        variables,
        paths: c.paths,
        body,
    })))
}

/// A constant must already have the kind's type.
fn check_constant(unit: &Unit, kind: ExprKind, source: &str) -> Result<(), CompileError> {
    let Unit::Const(v) = unit else { return Ok(()) };
    let ok = match kind {
        ExprKind::Condition => matches!(v, Value::Bool(_)),
        ExprKind::Value => matches!(v, Value::Int(_) | Value::UInt(_) | Value::Float(_)),
        ExprKind::Label | ExprKind::Template | ExprKind::Any => true,
    };
    if ok {
        return Ok(());
    }
    let wanted = if kind == ExprKind::Condition {
        "true or false"
    } else {
        "a number"
    };
    Err(CompileError::new(
        format!(
            "a {kind} must be {wanted}, but this is always the {} `{v}`",
            v.type_name()
        ),
        Some(Position::at(
            source,
            source.len() - source.trim_start().len(),
        )),
    ))
}

/// The identifier or operator that starts at `offset` of `src`.
fn token_at(src: &str, offset: usize) -> &str {
    let rest = src.get(offset..).unwrap_or("");
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let len = if rest.starts_with(ident) {
        rest.find(|c: char| !ident(c))
    } else {
        rest.find(|c: char| !"=+-*/%<>&|^!?".contains(c))
    };
    &rest[..len.unwrap_or(rest.len())]
}

/// A message that says what to do instead, for the constructs the sandbox refuses.
fn friendly(err: &ParseErrorType, token: &str) -> Option<String> {
    if matches!(err, ParseErrorType::ExprTooDeep) {
        return Some(format!(
            "the expression is nested too deeply (the limit is {MAX_EXPR_DEPTH} levels of \
             parentheses, calls or chained operators)"
        ));
    }
    let message = match token {
        "while" | "loop" | "for" | "do" | "until" => "loops are not allowed in expressions",
        "let" | "const" => "declaring variables is not allowed in expressions",
        "eval" => "`eval` is not allowed in expressions",
        "print" | "debug" => "printing is not allowed in expressions",
        "import" | "export" => "modules are not allowed in expressions",
        "fn" | "|" => "defining functions is not allowed in expressions",
        "=" | "+=" | "-=" | "*=" | "/=" | "%=" | "**=" | "<<=" | ">>=" | "&=" | "|=" | "^="
        | "??=" => "assignment is not allowed in expressions (use `==` to compare)",
        _ => return None,
    };
    Some(message.to_owned())
}

struct Compiler<'a> {
    full: &'a str,
    options: &'a CompileOptions,
    paths: Vec<Path>,
}

impl Compiler<'_> {
    fn err(&self, message: impl Into<String>, offset: usize) -> CompileError {
        CompileError::new(message, Some(Position::at(self.full, offset)))
    }

    /// Compiles the expression `src`, which starts at byte `base` of the full source.
    fn unit(&mut self, base: usize, src: &str) -> Result<Unit, CompileError> {
        if src.trim().is_empty() {
            return Err(self.err("the expression is empty", base));
        }
        let rw = rewrite(src).map_err(|e| self.err(e.message, base + e.offset))?;
        if let Some(known) = &self.options.variables {
            for slot in &rw.slots {
                let root = slot.path.root();
                if !known.iter().any(|k| k == root) {
                    let available = if known.is_empty() {
                        "no variables are captured here".to_owned()
                    } else {
                        format!("available: {}", known.join(", "))
                    };
                    return Err(self.err(
                        format!("unknown variable `{root}`; {available}"),
                        base + slot.offset,
                    ));
                }
            }
        }
        let ids: Vec<usize> = rw
            .slots
            .iter()
            .map(|s| match self.paths.iter().position(|p| *p == s.path) {
                Some(i) => i,
                None => {
                    self.paths.push(s.path.clone());
                    self.paths.len() - 1
                }
            })
            .collect();
        if rw.single_path {
            return Ok(Unit::Path(ids[0]));
        }
        let mut scope = Scope::new();
        let names: Vec<String> = (0..ids.len()).map(slot_name).collect();
        for name in &names {
            scope.push_dynamic(name.as_str(), Dynamic::UNIT);
        }
        let ast = engine()
            .compile_expression_with_scope(&scope, &rw.text)
            .map_err(|e| {
                let offset = match (e.1.line(), e.1.position()) {
                    (Some(line), Some(col)) => rw.source_offset_at(line, col),
                    (Some(line), None) => rw.source_offset_at(line, 1),
                    _ => rw.text.len(),
                };
                let message = friendly(&e.0, token_at(src, offset))
                    .unwrap_or_else(|| rw.unmangle(&e.0.to_string()));
                self.err(message, base + offset)
            })?;
        if ids.is_empty() {
            return match engine().eval_ast::<Dynamic>(&ast) {
                Ok(d) => Ok(Unit::Const(from_dynamic(&d))),
                Err(e) => {
                    let pos = e.position();
                    let offset = match (pos.line(), pos.position()) {
                        (Some(line), Some(col)) => rw.source_offset_at(line, col),
                        _ => 0,
                    };
                    let mut e = *e;
                    e.clear_position();
                    Err(self.err(rw.unmangle(&e.to_string()), base + offset))
                }
            };
        }
        let native = native::parse(&rw.text, ids.len());
        // Every occurrence of `_vN` in the text, even inside `_vN0` or a string literal: the
        // count may be high (a value is then cloned where it could have moved), never low.
        let reads = names
            .iter()
            .map(|n| u32::try_from(rw.text.matches(n.as_str()).count()).unwrap_or(u32::MAX))
            .collect();
        Ok(Unit::Rhai {
            ast,
            slots: ids,
            reads,
            native,
        })
    }

    /// Splits a template into text and `{…}` units.
    fn template(&mut self) -> Result<Vec<Part>, CompileError> {
        let src = self.full;
        let b = src.as_bytes();
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'{' if b.get(i + 1) == Some(&b'{') => {
                    text.push('{');
                    i += 2;
                }
                b'}' if b.get(i + 1) == Some(&b'}') => {
                    text.push('}');
                    i += 2;
                }
                b'}' => {
                    return Err(
                        self.err("single `}` in template (write `}}` for a literal brace)", i)
                    );
                }
                b'{' => {
                    let close = find_closing_brace(src, i + 1)
                        .map_err(|e| self.err(e.message, e.offset))?;
                    let unit = self.unit(i + 1, &src[i + 1..close])?;
                    if let Unit::Const(v) = &unit {
                        v.render(&mut text);
                    } else {
                        if !text.is_empty() {
                            parts.push(Part::Text(std::mem::take(&mut text)));
                        }
                        parts.push(Part::Unit(unit));
                    }
                    i = close + 1;
                }
                _ => {
                    let next = src[i..].find(['{', '}']).map_or(src.len(), |n| i + n);
                    text.push_str(&src[i..next]);
                    i = next;
                }
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(parts)
    }
}
