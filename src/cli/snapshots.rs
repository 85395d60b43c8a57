//! `sonde snapshots TRACEPOINT_ID`: the latest snapshots agents sent for a tracepoint, each as
//! an indented tree of its variables, its watches and its frames.

use std::fmt::Write as _;

use clap::Args;
use sonde_proto::tracepoint::{Snapshot, VariableId, watch_result};

use super::{CliError, Client, ClientOpts, Output, client::path_segment, output};

/// Arguments of `sonde snapshots`.
#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// The tracepoint's ID.
    pub id: String,
    /// How many of the latest to print, newest first.
    #[arg(short = 'n', long, default_value_t = 1)]
    pub count: usize,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Runs `sonde snapshots`.
pub fn run(args: SnapshotsArgs) -> Result<(), CliError> {
    let c = Client::new(&args.client)?;
    let answer = c.get_json(&format!(
        "/api/tracepoints/{}/snapshots",
        path_segment(&args.id)
    ))?;
    if args.client.output == Output::Json {
        output::json(&answer);
        return Ok(());
    }
    let list: Vec<Snapshot> = answer
        .get("snapshots")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| {
            CliError::unavailable(format!("the server's answer is not a snapshot list: {e}"))
        })?
        .unwrap_or_default();
    if list.is_empty() {
        eprintln!(
            "no snapshot of tracepoint {} yet: it takes one on a firing hit when its `snapshot` \
             arg is `collect` (the default for a tracepoint without metrics)",
            args.id
        );
        return Ok(());
    }
    let mut out = String::new();
    for (i, snap) in list.iter().take(args.count.max(1)).enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&render(snap));
    }
    print!("{out}");
    Ok(())
}

/// One snapshot as text: a header, the variables of the top frame as an indented tree, the
/// watches, then the frames.
pub fn render(snap: &Snapshot) -> String {
    let mut out = String::new();
    let (id, path, line) = snap
        .tracepoint
        .as_ref()
        .map(|tp| (tp.id.as_str(), tp.path.as_str(), tp.line_number))
        .unwrap_or_default();
    let at_ms = i64::try_from(snap.ts_nanos / 1_000_000).unwrap_or(i64::MAX);
    let _ = writeln!(
        out,
        "snapshot of tracepoint {id} at {path}:{line}, {} (took {} µs)",
        crate::server::rfc3339(at_ms),
        snap.duration_nanos / 1000
    );
    let resource: Vec<String> = snap
        .resource
        .iter()
        .filter(|kv| {
            matches!(
                kv.key.as_str(),
                "service.name" | "service.instance.id" | "process.pid"
            )
        })
        .map(|kv| format!("{}={}", kv.key, any_text(kv.value.as_ref())))
        .collect();
    if !resource.is_empty() {
        let _ = writeln!(out, "from {}", resource.join(" "));
    }
    if let Some(msg) = &snap.log_msg {
        let _ = writeln!(out, "log: {msg}");
    }
    out.push_str("variables:\n");
    let top = snap
        .frames
        .first()
        .map(|f| f.variables.as_slice())
        .unwrap_or_default();
    if top.is_empty() {
        out.push_str("  (none)\n");
    }
    for var in top {
        tree(&mut out, snap, var, 1, 0);
    }
    if !snap.watches.is_empty() {
        out.push_str("watches:\n");
        for w in &snap.watches {
            match &w.result {
                Some(watch_result::Result::GoodResult(var)) => {
                    let value = snap
                        .var_lookup
                        .get(&var.id)
                        .map_or("?", |v| v.value.as_str());
                    let _ = writeln!(out, "  {} = {value}", w.expression);
                }
                Some(watch_result::Result::ErrorResult(e)) => {
                    let _ = writeln!(out, "  {}: error: {e}", w.expression);
                }
                None => {
                    let _ = writeln!(out, "  {}: no result", w.expression);
                }
            }
        }
    }
    out.push_str("frames:\n");
    for frame in &snap.frames {
        let method = if frame.method_name.is_empty() {
            "?"
        } else {
            &frame.method_name
        };
        if frame.file_name.is_empty() {
            let _ = writeln!(out, "  {method}");
        } else {
            let _ = writeln!(
                out,
                "  {method} ({}:{})",
                frame.file_name, frame.line_number
            );
        }
    }
    out
}

/// The deepest a tree is printed (a snapshot's own bounds are far below this).
const MAX_PRINT_DEPTH: usize = 32;

fn tree(out: &mut String, snap: &Snapshot, var: &VariableId, indent: usize, depth: usize) {
    let pad = "  ".repeat(indent);
    let Some(v) = snap.var_lookup.get(&var.id) else {
        let _ = writeln!(out, "{pad}{}: (missing from the snapshot)", var.name);
        return;
    };
    let truncated = if v.truncated == Some(true) {
        " (truncated)"
    } else {
        ""
    };
    if v.r#type == "redacted" {
        let _ = writeln!(out, "{pad}{}: [redacted]", var.name);
        return;
    }
    if v.value.is_empty() {
        let _ = writeln!(out, "{pad}{}: {}{truncated}", var.name, v.r#type);
    } else {
        let _ = writeln!(
            out,
            "{pad}{}: {} = {}{truncated}",
            var.name, v.r#type, v.value
        );
    }
    if depth >= MAX_PRINT_DEPTH {
        return;
    }
    for child in &v.children {
        tree(out, snap, child, indent + 1, depth + 1);
    }
}

/// A resource attribute's value as text (empty for kinds not shown).
pub(super) fn any_text(v: Option<&sonde_proto::common::AnyValue>) -> String {
    use sonde_proto::common::any_value::Value;
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(n)) => n.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_proto::tracepoint::{StackFrame, TracePointConfig, Variable};

    fn id(id: &str, name: &str) -> VariableId {
        VariableId {
            id: id.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn variables_print_as_an_indented_tree_then_frames() {
        let var = |t: &str, v: &str, children: Vec<VariableId>| Variable {
            r#type: t.into(),
            value: v.into(),
            children,
            ..Default::default()
        };
        let snap = Snapshot {
            tracepoint: Some(TracePointConfig {
                id: "TP1".into(),
                path: "src/shop.rs".into(),
                line_number: 42,
                ..Default::default()
            }),
            var_lookup: [
                (
                    "1".to_owned(),
                    var("struct", "", vec![id("2", "id"), id("3", "password")]),
                ),
                ("2".to_owned(), var("u64", "7", vec![])),
                ("3".to_owned(), var("redacted", "[redacted]", vec![])),
            ]
            .into(),
            frames: vec![
                StackFrame {
                    method_name: "shop::checkout".into(),
                    file_name: "src/shop.rs".into(),
                    line_number: 42,
                    variables: vec![id("1", "order")],
                    ..Default::default()
                },
                StackFrame {
                    method_name: "shop::main".into(),
                    file_name: "src/main.rs".into(),
                    line_number: 9,
                    ..Default::default()
                },
            ],
            ts_nanos: 1_700_000_000_000_000_000,
            ..Default::default()
        };
        let text = render(&snap);
        let body: Vec<&str> = text.lines().skip(1).collect();
        assert!(
            text.starts_with(
                "snapshot of tracepoint TP1 at src/shop.rs:42, 2023-11-14T22:13:20.000Z"
            ),
            "{text}"
        );
        assert_eq!(
            body,
            [
                "variables:",
                "  order: struct",
                "    id: u64 = 7",
                "    password: [redacted]",
                "frames:",
                "  shop::checkout (src/shop.rs:42)",
                "  shop::main (src/main.rs:9)",
            ]
        );
    }
}
