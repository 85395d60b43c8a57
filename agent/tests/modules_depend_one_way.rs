//! The agent's rooms depend one way: a module folder (or top-level file) of `agent/src` may use
//! only the rooms below it in [`LAYERS`], and no two files import each other.
//!
//! Read from the source, not the compiler: every `crate::room::...` path (in `use` trees and
//! inline) and every `super::` path outside `#[cfg(test)] mod tests` counts. Test modules may
//! reach anywhere.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Top to bottom: each room may use the rooms after it.
const LAYERS: &[&str] = &[
    "agent",
    "client",
    "install",
    "native",
    "tracepoint",
    "site",
    "metrics",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read agent/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `a/b/mod.rs` -> `a::b`; `a/c.rs` -> `a::c`; `lib.rs` -> `` (the root).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The source without comments and without its unit-test module.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a file names below `crate::` (each as `a::b::c`), with `super::` resolved.
fn paths_named(module: &str, code: &str) -> Vec<String> {
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    let mut out = Vec::new();
    for (prefix, base) in [("crate::", String::new()), ("super::", parent.to_owned())] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == ':') {
                continue;
            }
            for tail in expand(rest) {
                out.push(if base.is_empty() {
                    tail
                } else {
                    format!("{base}::{tail}")
                });
            }
        }
    }
    out
}

/// The paths at the start of `s`: `a::b` or a use tree `{a::b, c::{d, e}}`.
fn expand(s: &str) -> Vec<String> {
    let s = s.trim_start();
    if let Some(inner) = s.strip_prefix('{') {
        let mut depth = 0;
        let mut items = Vec::new();
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    items.push(&inner[start..i]);
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&inner[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return items
            .into_iter()
            .filter(|i| !i.trim().is_empty())
            .flat_map(expand)
            .collect();
    }
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    let head = s[..end].trim_end_matches(':');
    if s[end..].starts_with('{') {
        return expand(&s[end..])
            .into_iter()
            .map(|t| format!("{head}::{t}"))
            .collect();
    }
    vec![head.to_owned()]
}

struct Graph {
    /// File module -> the file modules it names.
    edges: BTreeMap<String, BTreeSet<String>>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        let code = code_of(&std::fs::read_to_string(file).expect("read source"));
        let mut named = BTreeSet::new();
        for path in paths_named(&module, &code) {
            // The longest prefix of the path that is a module of the crate.
            let parts: Vec<&str> = path.split("::").collect();
            let target = (1..=parts.len())
                .rev()
                .map(|n| parts[..n].join("::"))
                .find(|m| modules.contains(m));
            if let Some(target) = target
                && target != module
                && !module.starts_with(&format!("{target}::"))
            {
                named.insert(target);
            }
        }
        edges.insert(module, named);
    }
    Graph { edges }
}

fn room(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

#[test]
fn rooms_use_only_the_rooms_below_them() {
    let graph = graph();
    let mut wrong = Vec::new();
    for (from, targets) in &graph.edges {
        let Some(from_layer) = LAYERS.iter().position(|l| *l == room(from)) else {
            continue; // lib.rs and the macro support may use anything
        };
        for to in targets {
            let to_layer = LAYERS.iter().position(|l| *l == room(to));
            if to_layer.is_some_and(|t| t < from_layer) {
                wrong.push(format!("{from} uses {to}"));
            }
        }
    }
    assert!(
        graph.edges.contains_key("tracepoint::pipeline") && graph.edges.len() > 30,
        "the source was read: {:?}",
        graph.edges.keys().collect::<Vec<_>>()
    );
    assert!(wrong.is_empty(), "upward dependencies: {wrong:#?}");
}

#[test]
fn no_two_modules_import_each_other() {
    let graph = graph();
    let mut cycles = Vec::new();
    for (a, targets) in &graph.edges {
        for b in targets {
            if a < b && graph.edges.get(b).is_some_and(|t| t.contains(a)) {
                cycles.push(format!("{a} <-> {b}"));
            }
        }
    }
    assert!(
        graph
            .edges
            .get("install")
            .is_some_and(|t| t.contains("tracepoint::pipeline")),
        "edges are found: {:?}",
        graph.edges.get("install")
    );
    assert!(
        cycles.is_empty(),
        "modules that import each other: {cycles:#?}"
    );
}
