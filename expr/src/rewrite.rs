//! `Rewritten`: what the user wrote, turned into what rhai compiles.
//!
//! # Design
//!
//! A small tokenizer (identifiers, numbers, strings, chars, comments, punctuation) walks the
//! source once and makes three changes, keeping a map from every output offset back to the
//! source offset so that rhai's error positions point at what the user wrote:
//!
//! 1. **Variable paths become slots.** Every identifier in variable position (not after `.`, not
//!    before `(` or `:`, not a keyword), with the `.field`, `["key"]` and `[integer]` steps that
//!    follow it (stopping before a method call), is one [`Path`]; equal paths share a slot, and
//!    the path is replaced by the slot's name (`_v0`, `_v1`, …). At evaluation the caller's
//!    lookup resolves each slot once and rhai sees only the leaf values: `order.total * 2`
//!    converts one number, not the whole `order` record, and the interpreter does no map
//!    look-ups. Because every variable is rewritten, a user's own `_v0` cannot collide.
//! 2. **Python's boolean words.** `and` → `&&`, `or` → `||`, `not in` → `!in`, and `not x` →
//!    `!(x)` where the parenthesis closes before the next `and`/`or`, closing bracket, `,`, `;`,
//!    `{` or the end at the same nesting depth, so `not a == b` means `!(a == b)` as in Python.
//!    `True`, `False` and `None` in variable position become `true`, `false` and `()`.
//! 3. **Shape.** It notes whether the whole expression is one path (possibly parenthesised):
//!    such expressions take the fast path and never enter rhai.
//!
//! Rewriting grants nothing: the sandbox is enforced by the rhai engine on the rewritten text, and
//! anything the tokenizer misreads is at worst a compile error.

use crate::lookup::{Path, Segment};

/// A lexing or rewriting failure at a byte offset of the source.
#[derive(Debug)]
pub(crate) struct LexError {
    pub message: String,
    pub offset: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ident,
    Num,
    Str,
    Char,
    Punct,
}

#[derive(Clone, Copy, Debug)]
struct Tok {
    kind: Kind,
    start: usize,
    end: usize,
}

/// rhai keywords and reserved words: identifiers that are never variables.
const KEYWORDS: &[&str] = &[
    "_",
    "true",
    "false",
    "let",
    "const",
    "if",
    "else",
    "switch",
    "do",
    "while",
    "until",
    "loop",
    "for",
    "in",
    "continue",
    "break",
    "return",
    "throw",
    "try",
    "catch",
    "fn",
    "private",
    "import",
    "export",
    "as",
    "global",
    "this",
    "Fn",
    "call",
    "curry",
    "is_shared",
    "is_def_fn",
    "is_def_var",
    "print",
    "debug",
    "eval",
    "type_of",
    "var",
    "static",
    "shared",
    "goto",
    "exit",
    "match",
    "case",
    "public",
    "protected",
    "new",
    "use",
    "with",
    "module",
    "package",
    "super",
    "thread",
    "spawn",
    "go",
    "await",
    "async",
    "sync",
    "yield",
    "default",
    "void",
    "null",
    "nil",
];

/// The name rhai sees for slot `i`.
pub(crate) fn slot_name(i: usize) -> String {
    format!("_v{i}")
}

/// Returns the next token at or after `pos` (skipping whitespace and comments), or `None` at the end.
fn next_token(src: &str, mut pos: usize) -> Result<Option<Tok>, LexError> {
    let b = src.as_bytes();
    let n = b.len();
    // Skip whitespace and comments.
    loop {
        while pos < n && b[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if pos + 1 < n && b[pos] == b'/' && b[pos + 1] == b'/' {
            while pos < n && b[pos] != b'\n' {
                pos += 1;
            }
        } else if pos + 1 < n && b[pos] == b'/' && b[pos + 1] == b'*' {
            let open = pos;
            let mut level = 0usize;
            loop {
                if pos + 1 >= n {
                    return Err(LexError {
                        message: "unterminated `/*` comment".into(),
                        offset: open,
                    });
                }
                if b[pos] == b'/' && b[pos + 1] == b'*' {
                    level += 1;
                    pos += 2;
                } else if b[pos] == b'*' && b[pos + 1] == b'/' {
                    level -= 1;
                    pos += 2;
                    if level == 0 {
                        break;
                    }
                } else {
                    pos += 1;
                }
            }
        } else {
            break;
        }
    }
    if pos >= n {
        return Ok(None);
    }
    let start = pos;
    let c = b[pos];
    let kind = if c.is_ascii_alphabetic() || c == b'_' {
        while pos < n && (b[pos].is_ascii_alphanumeric() || b[pos] == b'_') {
            pos += 1;
        }
        Kind::Ident
    } else if c.is_ascii_digit() {
        let hex = c == b'0' && pos + 1 < n && matches!(b[pos + 1], b'x' | b'X');
        let mut seen_dot = false;
        loop {
            while pos < n && (b[pos].is_ascii_alphanumeric() || b[pos] == b'_') {
                pos += 1;
            }
            if !hex
                && pos + 1 < n
                && matches!(b[pos], b'+' | b'-')
                && matches!(b[pos - 1], b'e' | b'E')
                && b[pos + 1].is_ascii_digit()
            {
                pos += 1;
                continue;
            }
            if !seen_dot && pos + 1 < n && b[pos] == b'.' && b[pos + 1].is_ascii_digit() {
                seen_dot = true;
                pos += 1;
                continue;
            }
            break;
        }
        Kind::Num
    } else if c == b'"' || c == b'\'' {
        pos += 1;
        loop {
            if pos >= n {
                let what = if c == b'"' { "string" } else { "character" };
                return Err(LexError {
                    message: format!("unterminated {what} literal"),
                    offset: start,
                });
            }
            if b[pos] == b'\\' {
                pos += 2;
            } else if b[pos] == c {
                pos += 1;
                break;
            } else {
                pos += 1;
            }
        }
        pos = pos.min(n);
        if c == b'"' { Kind::Str } else { Kind::Char }
    } else if c == b'`' {
        return Err(LexError {
            message: "back-tick strings are not supported; use a template (kind Template) to \
                      interpolate values"
                .into(),
            offset: start,
        });
    } else {
        let two = src.get(pos..pos + 2).unwrap_or("");
        if matches!(two, "?." | "?[" | "#{" | "::" | "=>") {
            pos += 2;
        } else {
            // One character, whole (non-ASCII characters are passed on for rhai to reject).
            pos += src[pos..].chars().next().map_or(1, char::len_utf8);
        }
        Kind::Punct
    };
    Ok(Some(Tok {
        kind,
        start,
        end: pos,
    }))
}

fn tokenize(src: &str) -> Result<Vec<Tok>, LexError> {
    let mut toks = Vec::new();
    let mut pos = 0;
    while let Some(t) = next_token(src, pos)? {
        pos = t.end;
        toks.push(t);
    }
    Ok(toks)
}

/// In a template, the offset of the `}` that closes an expression starting at `start`.
pub(crate) fn find_closing_brace(src: &str, start: usize) -> Result<usize, LexError> {
    let mut depth = 0usize;
    let mut pos = start;
    while let Some(t) = next_token(src, pos)? {
        match &src[t.start..t.end] {
            "{" | "#{" => depth += 1,
            "}" if depth == 0 => return Ok(t.start),
            "}" => depth -= 1,
            _ => {}
        }
        pos = t.end;
    }
    Err(LexError {
        message: "unclosed `{` in template (write `{{` for a literal brace)".into(),
        offset: start.saturating_sub(1),
    })
}

/// One slot: the path it reads, where it is first written, and how it was written.
#[derive(Debug)]
pub(crate) struct Slot {
    pub path: Path,
    pub offset: usize,
    pub text: String,
}

/// The rewritten source with its slots and its offset map.
#[derive(Debug)]
pub(crate) struct Rewritten {
    pub text: String,
    pub slots: Vec<Slot>,
    /// The whole expression is a single variable path.
    pub single_path: bool,
    /// `(output offset, source offset)` at the start of every emitted chunk, ascending.
    map: Vec<(usize, usize)>,
    source_len: usize,
}

impl Rewritten {
    /// Maps an offset in the rewritten text back to the source.
    pub(crate) fn source_offset(&self, out: usize) -> usize {
        let i = self.map.partition_point(|&(o, _)| o <= out);
        let off = match i.checked_sub(1).and_then(|i| self.map.get(i)) {
            Some(&(o, s)) => s + (out - o),
            None => out,
        };
        off.min(self.source_len)
    }

    /// Maps a 1-based (line, column) in the rewritten text back to a source offset.
    pub(crate) fn source_offset_at(&self, line: usize, column: usize) -> usize {
        let mut out = 0;
        for (n, l) in self.text.split_inclusive('\n').enumerate() {
            if n + 1 == line {
                let col = l
                    .char_indices()
                    .nth(column.saturating_sub(1))
                    .map_or(l.len(), |(i, _)| i);
                return self.source_offset(out + col);
            }
            out += l.len();
        }
        self.source_offset(self.text.len())
    }

    /// Replaces slot names in a message by the paths as the user wrote them.
    pub(crate) fn unmangle(&self, message: &str) -> String {
        let mut out = String::with_capacity(message.len());
        let mut rest = message;
        while let Some(i) = rest.find("_v") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let slot = after[..digits]
                .parse::<usize>()
                .ok()
                .and_then(|n| self.slots.get(n));
            let boundary_before = !out.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            match slot {
                Some(s) if boundary_before => out.push_str(&s.text),
                _ => out.push_str(&rest[i..i + 2 + digits]),
            }
            rest = &after[digits..];
        }
        out.push_str(rest);
        out
    }
}

struct Writer<'s> {
    src: &'s str,
    out: String,
    map: Vec<(usize, usize)>,
}

impl Writer<'_> {
    fn copy(&mut self, from: usize, to: usize) {
        if from < to {
            self.map.push((self.out.len(), from));
            self.out.push_str(&self.src[from..to]);
        }
    }

    fn emit(&mut self, text: &str, at: usize) {
        self.map.push((self.out.len(), at));
        self.out.push_str(text);
    }
}

/// Rewrites `src` (see the module docs).
pub(crate) fn rewrite(src: &str) -> Result<Rewritten, LexError> {
    let toks = tokenize(src)?;
    let text = |t: &Tok| &src[t.start..t.end];
    let mut w = Writer {
        src,
        out: String::with_capacity(src.len() + 8),
        map: Vec::new(),
    };
    let mut slots: Vec<Slot> = Vec::new();
    let mut last = 0;
    let mut depth = 0usize;
    let mut nots: Vec<usize> = Vec::new();
    let mut used_not = false;
    let (mut units, mut path_units) = (0usize, 0usize);

    let close_nots = |w: &mut Writer<'_>, nots: &mut Vec<usize>, depth: usize, at: usize| {
        while nots.last() == Some(&depth) {
            nots.pop();
            w.emit(")", at);
        }
    };

    let mut i = 0;
    while i < toks.len() {
        let t = toks[i];
        w.copy(last, t.start);
        last = t.end;
        let s = text(&t);
        i += 1;
        match t.kind {
            Kind::Punct => {
                match s {
                    "(" => depth += 1,
                    ")" => {
                        close_nots(&mut w, &mut nots, depth, t.start);
                        depth = depth.saturating_sub(1);
                    }
                    "{" => {
                        close_nots(&mut w, &mut nots, depth, t.start);
                        depth += 1;
                        units += 1;
                    }
                    "[" | "?[" | "#{" => {
                        depth += 1;
                        units += 1;
                    }
                    "]" | "}" => {
                        close_nots(&mut w, &mut nots, depth, t.start);
                        depth = depth.saturating_sub(1);
                        units += 1;
                    }
                    "," | ";" | "=>" => {
                        close_nots(&mut w, &mut nots, depth, t.start);
                        units += 1;
                    }
                    _ => units += 1,
                }
                w.copy(t.start, t.end);
            }
            Kind::Num | Kind::Str | Kind::Char => {
                units += 1;
                w.copy(t.start, t.end);
            }
            Kind::Ident => {
                units += 1;
                let prev = i.checked_sub(2).and_then(|p| toks.get(p)).map(text);
                let next = toks.get(i).map(text);
                if matches!(prev, Some("." | "?." | "::")) {
                    w.copy(t.start, t.end);
                    continue;
                }
                let not_a_variable =
                    matches!(next, Some("(" | ":" | "::")) || KEYWORDS.contains(&s);
                match s {
                    "and" | "or" => {
                        close_nots(&mut w, &mut nots, depth, t.start);
                        w.emit(if s == "and" { "&&" } else { "||" }, t.start);
                    }
                    "not" if next == Some("in") => {
                        w.emit("!in", t.start);
                        last = toks[i].end;
                        i += 1;
                    }
                    "not" => {
                        used_not = true;
                        nots.push(depth);
                        w.emit("!(", t.start);
                    }
                    "True" => w.emit("true", t.start),
                    "False" => w.emit("false", t.start),
                    "None" => w.emit("()", t.start),
                    _ if not_a_variable => w.copy(t.start, t.end),
                    _ => {
                        let (path, end, j) = parse_path(src, &toks, i - 1);
                        i = j;
                        last = end;
                        let slot = match slots.iter().position(|x| x.path == path) {
                            Some(n) => n,
                            None => {
                                slots.push(Slot {
                                    path,
                                    offset: t.start,
                                    text: src[t.start..end].to_owned(),
                                });
                                slots.len() - 1
                            }
                        };
                        w.emit(&slot_name(slot), t.start);
                        path_units += 1;
                    }
                }
            }
        }
    }
    w.copy(last, src.len());
    while nots.pop().is_some() {
        w.emit(")", src.len());
    }
    Ok(Rewritten {
        text: w.out,
        slots,
        single_path: units == 1 && path_units == 1 && !used_not,
        map: w.map,
        source_len: src.len(),
    })
}

/// Parses the path whose root is `toks[i]`: returns it, its end offset and the next token index.
fn parse_path(src: &str, toks: &[Tok], i: usize) -> (Path, usize, usize) {
    let text = |j: usize| toks.get(j).map(|t| &src[t.start..t.end]);
    let kind = |j: usize| toks.get(j).map(|t| t.kind);
    let root = src[toks[i].start..toks[i].end].to_owned();
    let mut segments = Vec::new();
    let mut end = toks[i].end;
    let mut j = i + 1;
    loop {
        match text(j) {
            Some(".") if kind(j + 1) == Some(Kind::Ident) && text(j + 2) != Some("(") => {
                segments.push(Segment::Field(text(j + 1).unwrap_or_default().to_owned()));
                end = toks[j + 1].end;
                j += 2;
            }
            Some("[") => {
                let (neg, k) = if text(j + 1) == Some("-") {
                    (true, j + 2)
                } else {
                    (false, j + 1)
                };
                let seg = match (kind(k), text(k), text(k + 1)) {
                    (Some(Kind::Num), Some(num), Some("]"))
                        if num.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        num.parse::<i64>()
                            .ok()
                            .map(|n| Segment::Index(if neg { -n } else { n }))
                    }
                    (Some(Kind::Str), Some(lit), Some("]")) if !neg && !lit.contains('\\') => {
                        Some(Segment::Field(lit[1..lit.len() - 1].to_owned()))
                    }
                    _ => None,
                };
                match seg {
                    Some(seg) => {
                        segments.push(seg);
                        end = toks[k + 1].end;
                        j = k + 2;
                    }
                    None => break,
                }
            }
            _ => break,
        }
    }
    (Path::new(root, segments), end, j)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(src: &str) -> String {
        rewrite(src).expect("rewrites").text
    }

    #[test]
    fn paths_become_slots_and_equal_paths_share_one() {
        let r = rewrite("order.total * 2 + order.total + items[0].price - m[\"k\"]").expect("ok");
        assert_eq!(r.text, "_v0 * 2 + _v0 + _v1 - _v2");
        let texts: Vec<_> = r.slots.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts, ["order.total", "items[0].price", "m[\"k\"]"]);
        assert_eq!(r.slots[1].path.to_string(), "items[0].price");
        assert!(!r.single_path);
    }

    #[test]
    fn method_calls_functions_and_map_keys_are_not_variables() {
        assert_eq!(rw("user.name.contains(\"x\")"), "_v0.contains(\"x\")");
        assert_eq!(rw("len(items) > 3"), "len(_v0) > 3");
        assert_eq!(rw("#{a: x}"), "#{a: _v0}");
        assert_eq!(
            rw("if x { \"a\" } else { \"b\" }"),
            "if _v0 { \"a\" } else { \"b\" }"
        );
        assert_eq!(rw("items[i]"), "_v0[_v1]");
        assert_eq!(rw("items[-1]"), "_v0");
    }

    #[test]
    fn python_boolean_words_are_rewritten() {
        assert_eq!(rw("a and b or c"), "_v0 && _v1 || _v2");
        assert_eq!(rw("not a == b and c"), "!( _v0 == _v1 )&& _v2");
        assert_eq!(rw("not not a"), "!( !( _v0))");
        assert_eq!(rw("not (a or b) and c"), "!( (_v0 || _v1) )&& _v2");
        assert_eq!(rw("f(not a, b)"), "f(!( _v0), _v1)");
        assert_eq!(rw("x not in xs"), "_v0 !in _v1");
        assert_eq!(rw("x == None or True"), "_v0 == () || true");
    }

    #[test]
    fn single_paths_are_recognised() {
        assert!(rewrite("user.id").expect("ok").single_path);
        assert!(rewrite(" ( order.items[2].sku ) ").expect("ok").single_path);
        assert!(!rewrite("-x").expect("ok").single_path);
        assert!(!rewrite("not x").expect("ok").single_path);
        assert!(!rewrite("x.len()").expect("ok").single_path);
    }

    #[test]
    fn strings_and_comments_are_left_alone() {
        assert_eq!(rw("\"a.b and c\" + x // y.z"), "\"a.b and c\" + _v0 // y.z");
        assert_eq!(rw("/* a /* nested */ b */ x"), "/* a /* nested */ b */ _v0");
        assert_eq!(rw("'a' + 1.5e-3 + 0x1F"), "'a' + 1.5e-3 + 0x1F");
    }

    #[test]
    fn lexing_errors_have_offsets() {
        let e = rewrite("x + \"abc").expect_err("unterminated");
        assert_eq!(e.offset, 4);
        let e = rewrite("`a ${b}`").expect_err("backtick");
        assert_eq!(e.offset, 0);
        assert!(rewrite("x /* open").is_err());
    }

    #[test]
    fn offsets_map_back_to_the_source() {
        let r = rewrite("order.total + bad").expect("ok");
        // "_v0 + _v1": `_v1` starts at output offset 6, `bad` at source offset 14.
        assert_eq!(r.source_offset(6), 14);
        assert_eq!(r.source_offset_at(1, 7), 14);
        assert_eq!(
            r.unmangle("no _v1 and _v0, x_v0"),
            "no bad and order.total, x_v0"
        );
    }

    #[test]
    fn template_braces_skip_nested_braces_and_strings() {
        let src = "a {if x { \"}\" } else { #{b: 1}.b }} z";
        let close = find_closing_brace(src, 3).expect("closes");
        assert_eq!(&src[close..], "} z");
        assert!(find_closing_brace("{x", 1).is_err());
    }
}
