//! What the catalog answers about native lines: the application's own source files
//! ([`Native::files`]) and, for one file, its lines with code and the variables readable at each
//! ([`Native::lines`]). Asked for on demand (`sonde lines`), never pushed for the whole binary.
//!
//! A line is listed when arming it would find addresses ([`line_addresses`], the same selection
//! arming makes), and a variable is marked readable when arming would read it at every one of
//! them ([`judge`], the same rule): the catalog and the status after arming cannot disagree.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{
    DebugIndex, Native,
    arm::{ArmError, judge, line_addresses},
};

/// One line with code, as `sonde lines` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeLine {
    /// The line.
    pub line: u32,
    /// How many addresses a tracepoint on it traps at (one per function it is compiled into).
    pub addresses: usize,
    /// The variables in scope there, by name (innermost first where names repeat, as a
    /// tracepoint's expressions would resolve them).
    pub variables: Vec<LineVariable>,
}

/// One variable in scope at a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineVariable {
    /// Its name in the source.
    pub name: String,
    /// Its type's name, where the debug info gives one.
    pub type_name: Option<String>,
    /// Whether it is a parameter of the function.
    pub parameter: bool,
    /// Whether it can be read at every address of the line.
    pub readable: bool,
    /// Why not, in a word or two (`optimized out`, `async state`, `unsupported type`,
    /// `partly in scope`); for a readable one, `async state` when its value is read from an
    /// async fn's state and may date from its last `.await`.
    pub why: Option<&'static str>,
    /// The full reason, as a tracepoint's status would give it.
    pub detail: String,
    /// Lines of the same function where it can be read, where it cannot be here, nearest first.
    pub readable_at: Vec<u32>,
}

/// The most lines one `lines` answer covers (a file longer than this is answered in part).
pub const MAX_LINES: usize = 5_000;

impl Native {
    /// The source files of the debug info as a tracepoint's `path` would name them: the
    /// application's own (not the standard library, not crates from a cargo registry or git
    /// checkout, not Sonde's own crates), or with `all` every file with code. Waits at most
    /// `wait` for the index.
    pub fn files(&self, all: bool, wait: Duration) -> Result<Vec<String>, String> {
        let index = self.index(wait)?;
        Ok(files(&index, all))
    }

    /// The lines of the files matching `path` with code, each with its variables; only `line`
    /// when given, and then an error saying why when it has no code (naming the nearest lines
    /// that have some) or cannot be armed. Waits at most `wait` for the index.
    pub fn lines(
        &self,
        path: &str,
        line: Option<u32>,
        wait: Duration,
    ) -> Result<Vec<CodeLine>, String> {
        let index = self.index(wait)?;
        lines(&index, path, line)
    }
}

/// See [`Native::files`].
pub fn files(index: &DebugIndex, all: bool) -> Vec<String> {
    let mut out: Vec<String> = index
        .files()
        .filter(|(_, full, _)| all || is_own(full))
        .map(|(_, full, relative)| if all { full } else { relative }.to_owned())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// See [`Native::lines`].
pub fn lines(index: &DebugIndex, path: &str, only: Option<u32>) -> Result<Vec<CodeLine>, String> {
    if index.matching_files(path).is_empty() {
        return Err(format!("no file matching {path:?} in the debug info"));
    }
    let code = match only {
        Some(l) => vec![l],
        None => index.code_lines(path),
    };
    // One reader for the whole answer: the units, scopes, `.await`s and `async fn` states the
    // lines share are read once, not once per address.
    let reader = index.reader();
    let mut out = Vec::new();
    for line in code.into_iter().take(MAX_LINES) {
        let found = match line_addresses(&reader, path, line) {
            Ok(found) => found,
            // Asked about one line: say why it is not one (no code there, with the nearest
            // lines that have some; or a line arming refuses).
            Err(ArmError::Unbound(why) | ArmError::Failed(why)) if only.is_some() => {
                return Err(why);
            }
            Err(_) => continue, // a line arming refuses (the allocator's)
        };
        let total = found.addresses.len();
        // name → (in scope at, readable at, first variable seen, first reason, lines)
        let mut by_name: BTreeMap<String, Seen> = BTreeMap::new();
        for a in &found.addresses {
            let in_scope = reader
                .variables_at(a.address)
                .map_err(|e| format!("reading the variables at {:#x}: {e}", a.address))?;
            let mut named = std::collections::HashSet::new();
            for v in in_scope.iter().rev() {
                if !named.insert(v.name.as_str()) {
                    continue; // shadowed by an inner one
                }
                let seen = by_name.entry(v.name.clone()).or_insert_with(|| Seen {
                    in_scope: 0,
                    readable: 0,
                    type_name: v.type_name.clone(),
                    parameter: v.is_parameter,
                    why: None,
                    stale: false,
                    readable_at: Vec::new(),
                });
                seen.in_scope += 1;
                match judge(v) {
                    Ok(_) => {
                        seen.readable += 1;
                        seen.stale |= v.in_state_since.is_some();
                    }
                    Err(why) => {
                        if seen.why.is_none() {
                            seen.why = Some((why.word(), why.to_string()));
                        }
                        for l in &v.available_at {
                            if !seen.readable_at.contains(l) {
                                seen.readable_at.push(*l);
                            }
                        }
                    }
                }
            }
        }
        let variables = by_name
            .into_iter()
            .map(|(name, s)| {
                let readable = s.readable == total;
                let (why, detail) = if readable {
                    if s.stale {
                        (
                            Some("async state"),
                            "read from the async fn's state: a change made since its last \
                             `.await` may not be seen"
                                .to_owned(),
                        )
                    } else {
                        (None, String::new())
                    }
                } else if s.in_scope < total {
                    (
                        Some("partly in scope"),
                        format!("in scope at {} of the line's {total} addresses", s.in_scope),
                    )
                } else {
                    let (word, detail) = s.why.unwrap_or(("unreadable", String::new()));
                    let detail = if total > 1 {
                        format!(
                            "cannot be read at {} of the line's {total} addresses ({detail})",
                            total - s.readable
                        )
                    } else {
                        detail
                    };
                    (Some(word), detail)
                };
                LineVariable {
                    name,
                    type_name: s.type_name,
                    parameter: s.parameter,
                    readable,
                    why,
                    detail,
                    readable_at: s.readable_at,
                }
            })
            .collect();
        out.push(CodeLine {
            line,
            addresses: total,
            variables,
        });
    }
    Ok(out)
}

struct Seen {
    in_scope: usize,
    readable: usize,
    type_name: Option<String>,
    parameter: bool,
    why: Option<(&'static str, String)>,
    stale: bool,
    readable_at: Vec<u32>,
}

/// Whether a file (its path as recorded) is the application's own: not the standard library,
/// not a crate from a cargo registry or git checkout, and not Sonde's own crates.
fn is_own(full: &str) -> bool {
    let path = std::path::Path::new(full);
    let sonde = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sonde_crates = [
        Some(sonde.to_path_buf()),
        sonde.parent().map(|p| p.join("expr")),
        sonde.parent().map(|p| p.join("proto")),
    ];
    // The standard library's sources are remapped to `/rustc/<hash>/`, and the crates it
    // depends on to `/rust/deps/`.
    !(full.starts_with("/rustc/")
        || full.starts_with("/rust/")
        || full.contains("/lib/rustlib/")
        || full.contains("/.cargo/registry/")
        || full.contains("/.cargo/git/")
        || full.contains("/target/") && full.contains("/build/")
        || sonde_crates
            .iter()
            .flatten()
            .any(|dir| path.starts_with(dir)))
}
