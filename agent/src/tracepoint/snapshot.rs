//! [`SnapshotAction`]: what a firing hit of a `snapshot: collect` tracepoint captures, as Deep's
//! `Snapshot` message, and [`SnapshotQueue`], the bounded queue that takes it off the
//! application's thread.
//!
//! # On the application's thread
//! A firing hit walks the site's variables (every one the probe site captures; natively, what
//! the breakpoint read) into Deep's variable table: one [`Variable`] per value, keyed by an ID,
//! children by reference. Redacted names and values are put in the table as `redacted` with no
//! value (they were scrubbed before the walk, so the value was never read into the snapshot).
//! The walk is bounded by [`SnapshotLimits`]: depth, items per collection, string length,
//! variables, and bytes; what is cut is marked `truncated` on the variable it was cut from, as
//! Deep's agents mark it. The stack is captured as return addresses only
//! (`std::backtrace::Backtrace::force_capture`, an unwind without symbol lookup); the result
//! goes into the queue, and the hit returns.
//!
//! # Off it
//! The agent's thread pops the queue, resolves the backtrace into frames (symbols, files and
//! lines: the expensive part, done once per snapshot and never on the application's thread),
//! adds the process's resource, and sends it (`SnapshotService/send`). The queue holds at most
//! its capacity in snapshots: a push past that drops the oldest and counts it, so
//! memory stays bounded while the server is away.

use std::{
    backtrace::Backtrace,
    collections::{BTreeMap, VecDeque},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use sonde_expr::Value;
use sonde_proto::{
    common::{AnyValue, KeyValue, any_value},
    tracepoint::{
        Snapshot, StackFrame, TracePointConfig, Variable, VariableId, WatchResult, WatchSource,
        watch_result,
    },
};

use crate::{
    metrics::Counter,
    site::capture::{HitVars, scrubbed},
    site::redact::{self, REDACTED},
};

/// Bounds of one snapshot (Deep's agents' defaults for depth, collections and strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotLimits {
    /// Levels below a top-level variable (5).
    pub max_depth: usize,
    /// Items kept of a list or map (10).
    pub max_collection: usize,
    /// Bytes kept of a string (1,024), cut at a character boundary.
    pub max_string: usize,
    /// Variables in the table (1,000).
    pub max_variables: usize,
    /// Bytes of names, types and values in the table (64 KiB).
    pub max_bytes: usize,
    /// Frames kept of the stack (64).
    pub max_frames: usize,
}

impl Default for SnapshotLimits {
    fn default() -> Self {
        Self {
            max_depth: 5,
            max_collection: 10,
            max_string: 1024,
            max_variables: 1000,
            max_bytes: 64 * 1024,
            max_frames: 64,
        }
    }
}

/// The variables of a hit, as a snapshot walks them: each name with its value as expressions
/// see it (redacted values already replaced).
pub(crate) trait Variables {
    /// Calls `f` with each variable, in order.
    fn each(&self, f: &mut dyn FnMut(&str, Value));
}

impl Variables for HitVars<'_> {
    fn each(&self, f: &mut dyn FnMut(&str, Value)) {
        for (name, value) in self.names.iter().zip(self.values) {
            if redact::is_redacted(name) || value.redacted() {
                f(name, Value::Str(REDACTED.to_owned()));
            } else {
                f(name, scrubbed(*value));
            }
        }
    }
}

impl Variables for [(String, Value)] {
    fn each(&self, f: &mut dyn FnMut(&str, Value)) {
        for (name, value) in self {
            let mut value = value.clone();
            if redact::is_redacted(name) {
                value = Value::Str(REDACTED.to_owned());
            } else {
                redact::scrub(&mut value);
            }
            f(name, value);
        }
    }
}

impl Variables for Vec<(String, Value)> {
    fn each(&self, f: &mut dyn FnMut(&str, Value)) {
        self.as_slice().each(f);
    }
}

/// A snapshot-taking tracepoint's settings.
#[derive(Debug)]
pub(crate) struct SnapshotAction {
    /// The tracepoint as the snapshot names it (ID, path, line, args, watches).
    pub reference: TracePointConfig,
    /// The watch expressions, compiled (an `Err` is the compile error, reported per snapshot).
    pub watches: Vec<(String, Result<sonde_expr::Expr, String>)>,
    /// Whether to capture the stack (`stack_type` other than `no_stack`).
    pub stack: bool,
    /// The bounds of one snapshot.
    pub limits: SnapshotLimits,
}

/// Where a snapshot was taken: the top frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    pub file: &'static str,
    pub line: u32,
    pub module: &'static str,
}

/// A snapshot taken on the application's thread, its frames not yet resolved.
#[derive(Debug)]
pub(crate) struct Pending {
    pub snapshot: Snapshot,
    place: Option<Place>,
    top_variables: Vec<VariableId>,
    backtrace: Option<Backtrace>,
    max_frames: usize,
}

/// Builds the variable table under the limits.
struct Table {
    lookup: BTreeMap<String, Variable>,
    limits: SnapshotLimits,
    bytes: usize,
    /// Set when a bound cut something.
    full: bool,
}

impl Table {
    fn new(limits: SnapshotLimits) -> Self {
        Self {
            lookup: BTreeMap::new(),
            limits,
            bytes: 0,
            full: false,
        }
    }

    fn room(&self) -> bool {
        self.lookup.len() < self.limits.max_variables && self.bytes < self.limits.max_bytes
    }

    /// Adds `value` under `name` and returns its reference, or `None` when the table is full.
    fn add(&mut self, name: &str, value: &Value, depth: usize) -> Option<VariableId> {
        if !self.room() {
            self.full = true;
            return None;
        }
        let id = (self.lookup.len() + 1).to_string();
        // Reserve the ID before the children take theirs.
        self.lookup.insert(id.clone(), Variable::default());
        let mut var = Variable::default();
        let mut modifiers = Vec::new();
        let mut truncated = false;
        let mut children: Vec<(String, &Value)> = Vec::new();
        let mut total = 0usize;
        match value {
            Value::Str(s) if s == REDACTED => {
                var.r#type = "redacted".into();
                var.value = REDACTED.into();
                modifiers.push("redacted".to_owned());
            }
            Value::None => {
                var.r#type = "none".into();
                var.value = "None".into();
            }
            Value::Bool(b) => {
                var.r#type = "bool".into();
                var.value = b.to_string();
            }
            Value::Int(n) => {
                var.r#type = "i64".into();
                var.value = n.to_string();
            }
            Value::UInt(n) => {
                var.r#type = "u64".into();
                var.value = n.to_string();
            }
            Value::Float(f) => {
                var.r#type = "f64".into();
                var.value = f.to_string();
            }
            Value::Str(s) => {
                var.r#type = "str".into();
                let (cut, was_cut) = cut_str(s, self.limits.max_string);
                var.value = cut.to_owned();
                truncated = was_cut;
            }
            Value::Bytes(b) => {
                var.r#type = "bytes".into();
                let keep = b.len().min(self.limits.max_string / 2);
                var.value = b[..keep].iter().map(|x| format!("{x:02x}")).collect();
                truncated = keep < b.len();
            }
            Value::List(items) => {
                var.r#type = "list".into();
                var.value = format!("len {}", items.len());
                total = items.len();
                children = items
                    .iter()
                    .take(self.limits.max_collection)
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), v))
                    .collect();
            }
            Value::Map(map) => {
                var.r#type = "map".into();
                var.value = format!("len {}", map.len());
                total = map.len();
                children = map
                    .iter()
                    .take(self.limits.max_collection)
                    .map(|(k, v)| (k.clone(), v))
                    .collect();
            }
            Value::Record(fields) => {
                var.r#type = "struct".into();
                total = fields.len();
                children = fields.iter().map(|(k, v)| (k.to_string(), v)).collect();
            }
        }
        if children.len() < total && !matches!(value, Value::Record(_)) {
            truncated = true;
        }
        if !children.is_empty() {
            if depth >= self.limits.max_depth {
                truncated = true;
            } else {
                for (child_name, child) in children {
                    match self.add(&child_name, child, depth + 1) {
                        Some(r) => var.children.push(r),
                        None => {
                            truncated = true;
                            break;
                        }
                    }
                }
            }
        }
        if truncated {
            var.truncated = Some(true);
        }
        self.bytes += name.len() + var.r#type.len() + var.value.len() + id.len() + 8;
        self.lookup.insert(id.clone(), var);
        Some(VariableId {
            id,
            name: name.to_owned(),
            modifiers,
            original_name: None,
        })
    }
}

/// `s` cut to at most `max` bytes at a character boundary, and whether it was cut.
fn cut_str(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

fn kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
    }
}

impl SnapshotAction {
    /// Takes a snapshot of `vars` (on the hit's thread). `log` is the log line this hit wrote.
    pub fn take<L>(&self, vars: &L, place: Option<Place>, log: Option<String>) -> Pending
    where
        L: Variables + sonde_expr::Lookup + ?Sized,
    {
        let started = Instant::now();
        let ts_nanos = now_nanos();
        let mut table = Table::new(self.limits);
        let mut top = Vec::new();
        vars.each(&mut |name, value| {
            if let Some(r) = table.add(name, &value, 0) {
                top.push(r);
            }
        });
        let mut watches = Vec::with_capacity(self.watches.len());
        for (source, expr) in &self.watches {
            let result = match expr {
                Err(e) => watch_result::Result::ErrorResult(e.clone()),
                Ok(expr) => {
                    let mut out = String::new();
                    match expr.eval_label(vars, &mut out) {
                        Ok(()) => match table.add(source, &Value::Str(out), 0) {
                            Some(r) => watch_result::Result::GoodResult(r),
                            None => {
                                watch_result::Result::ErrorResult("the snapshot is full".to_owned())
                            }
                        },
                        Err(e) => watch_result::Result::ErrorResult(e.to_string()),
                    }
                }
            };
            watches.push(WatchResult {
                expression: source.clone(),
                result: Some(result),
                from_metric: None,
                source: WatchSource::Watch as i32,
            });
        }
        // At a probe site the hit runs on the application's thread, under the function that
        // holds the site. A native capture is decoded on the agent's thread, whose stack says
        // nothing of the application's: its snapshot has the line's frame only.
        let backtrace = (self.stack && place.is_some()).then(Backtrace::force_capture);
        let mut attributes = vec![
            kv("tracepoint", self.reference.id.clone()),
            kv("path", self.reference.path.clone()),
            kv("line", self.reference.line_number.to_string()),
            kv("stack", if self.stack { "stack" } else { "no_stack" }),
            kv("frame", "single_frame"),
        ];
        if table.full {
            attributes.push(kv("truncated", "true"));
        }
        let snapshot = Snapshot {
            // Random, without a system call on the hit's thread (a v4 UUID's randomness).
            id: fastrand::u128(..).to_le_bytes().to_vec(),
            tracepoint: Some(self.reference.clone()),
            var_lookup: table.lookup,
            ts_nanos,
            frames: Vec::new(),
            watches,
            attributes,
            duration_nanos: started.elapsed().as_nanos() as u64,
            resource: Vec::new(),
            log_msg: log,
        };
        Pending {
            snapshot,
            place,
            top_variables: top,
            backtrace,
            max_frames: self.limits.max_frames,
        }
    }
}

impl Pending {
    /// The finished message: frames resolved from the backtrace (off the application's thread),
    /// the site's own frame on top holding the variables, and `resource` added.
    pub fn finish(mut self, resource: &[KeyValue]) -> Snapshot {
        let mut frames = self
            .backtrace
            .as_ref()
            .map(|b| app_frames(&b.to_string()))
            .unwrap_or_default();
        let mut top = StackFrame {
            app_frame: Some(true),
            ..Default::default()
        };
        if let Some(place) = self.place {
            top.file_name = place.file.to_owned();
            top.line_number = place.line;
            top.method_name = place.module.to_owned();
            // The first frame of the application is the function holding the site.
            if let Some(first) = frames.first()
                && (first.file_name.ends_with(place.file) || place.file.ends_with(&first.file_name))
            {
                top.method_name = first.method_name.clone();
                frames.remove(0);
            }
        } else if let Some(tp) = &self.snapshot.tracepoint {
            top.file_name = tp.path.clone();
            top.line_number = tp.line_number;
        }
        top.variables = std::mem::take(&mut self.top_variables);
        frames.insert(0, top);
        frames.truncate(self.max_frames);
        self.snapshot.frames = frames;
        self.snapshot.resource = resource.to_vec();
        self.snapshot
    }
}

/// The frames of a rendered `std::backtrace::Backtrace` below the agent's own (everything up to
/// the last `sonde_agent::` frame is the unwinder and the hit pipeline), up to the runtime's
/// entry. The rendering is `N: function`, then `at file:line:column` when known.
fn app_frames(rendered: &str) -> Vec<StackFrame> {
    let mut frames: Vec<StackFrame> = Vec::new();
    for line in rendered.lines() {
        let line = line.trim();
        if let Some(at) = line.strip_prefix("at ") {
            if let Some(frame) = frames.last_mut()
                && frame.file_name.is_empty()
            {
                let mut parts = at.rsplitn(3, ':');
                let column = parts.next().and_then(|c| c.parse().ok());
                let line_no = parts.next().and_then(|l| l.parse().ok());
                match (parts.next(), line_no) {
                    (Some(file), Some(l)) => {
                        frame.file_name = file.to_owned();
                        frame.line_number = l;
                        frame.column_number = column;
                    }
                    _ => frame.file_name = at.to_owned(),
                }
            }
            continue;
        }
        let Some((index, function)) = line.split_once(": ") else {
            continue;
        };
        if index.parse::<usize>().is_err() {
            continue;
        }
        let function = strip_hash(function);
        if function.starts_with("std::rt::lang_start")
            || function.starts_with("std::sys::backtrace::__rust_begin_short_backtrace")
        {
            break;
        }
        frames.push(StackFrame {
            method_name: function.to_owned(),
            app_frame: Some(!function.starts_with("std::") && !function.starts_with("core::")),
            ..Default::default()
        });
    }
    let agent = |f: &StackFrame| {
        f.method_name.starts_with("sonde_agent::") || f.method_name.starts_with("<sonde_agent::")
    };
    match frames.iter().rposition(agent) {
        Some(last) => frames.split_off(last + 1),
        None => frames,
    }
}

/// A symbol without its trailing `::h0123456789abcdef` hash.
fn strip_hash(function: &str) -> &str {
    match function.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            head
        }
        _ => function,
    }
}

/// A snapshot taken on a hit and not yet sent ([`AgentHandle::take_pending_snapshot`]).
///
/// [`AgentHandle::take_pending_snapshot`]: crate::AgentHandle::take_pending_snapshot
#[derive(Debug)]
pub struct PendingSnapshot(Pending);

impl PendingSnapshot {
    pub(crate) fn new(pending: Pending) -> Self {
        Self(pending)
    }

    /// Deep's `Snapshot` message: the frames resolved from the stack taken at the hit (symbol
    /// lookup: the costly part, which the agent does on its own thread), without the resource
    /// (the agent's sender adds it).
    pub fn finish(self) -> Snapshot {
        self.0.finish(&[])
    }
}

/// Snapshots waiting to be sent: bounded, the oldest dropped first.
#[derive(Debug)]
pub(crate) struct SnapshotQueue {
    inner: Mutex<VecDeque<Pending>>,
    capacity: usize,
    /// Snapshots dropped to keep the bound.
    pub dropped: AtomicU64,
    /// Snapshots taken.
    pub taken: AtomicU64,
    /// Wakes the sender.
    pub notify: tokio::sync::Notify,
    dropped_counter: Option<Counter>,
}

impl SnapshotQueue {
    /// A queue of at most `capacity` snapshots; drops also count in `dropped_counter`.
    pub fn new(capacity: usize, dropped_counter: Option<Counter>) -> Self {
        Self {
            inner: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            notify: tokio::sync::Notify::new(),
            dropped_counter,
        }
    }

    /// Snapshots held now.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Queues a snapshot, dropping the oldest past the bound.
    pub fn push(&self, pending: Pending) {
        self.taken.fetch_add(1, Ordering::Relaxed);
        let dropped = {
            let mut q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            q.push_back(pending);
            let mut dropped = None;
            while q.len() > self.capacity {
                dropped = q.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = &self.dropped_counter {
                    c.inc();
                }
            }
            dropped
        };
        // Freed outside the lock.
        drop(dropped);
        self.notify.notify_one();
    }

    /// Counts a snapshot dropped elsewhere (the server refused it).
    pub fn count_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = &self.dropped_counter {
            c.inc();
        }
    }

    /// The oldest snapshot, if any.
    pub fn pop(&self) -> Option<Pending> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(limits: SnapshotLimits) -> SnapshotAction {
        SnapshotAction {
            reference: TracePointConfig {
                id: "tp".into(),
                path: "a.rs".into(),
                line_number: 3,
                ..Default::default()
            },
            watches: Vec::new(),
            stack: false,
            limits,
        }
    }

    fn vars(list: Vec<(&str, Value)>) -> Vec<(String, Value)> {
        list.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    #[test]
    fn variables_by_id_with_bounds_marked() {
        let limits = SnapshotLimits {
            max_collection: 2,
            max_string: 4,
            ..Default::default()
        };
        let v = vars(vec![
            ("s", Value::Str("abcdefgh".into())),
            (
                "items",
                Value::List(vec![Value::Int(1), Value::Int(2), Value::Int(3)]),
            ),
            (
                "user",
                Value::Record(vec![
                    ("name".into(), Value::Str("ann".into())),
                    ("password".into(), Value::Str("hunter2".into())),
                ]),
            ),
            ("token", Value::Str("t0k3n".into())),
        ]);
        let snap = action(limits).take(&*v, None, None).finish(&[]);
        let bytes = prost::Message::encode_to_vec(&snap);
        for secret in [&b"hunter2"[..], b"t0k3n"] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "a redacted value was sent"
            );
        }
        let top = &snap.frames[0].variables;
        assert_eq!(
            top.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
            ["s", "items", "user", "token"]
        );
        let var = |id: &VariableId| &snap.var_lookup[&id.id];
        assert_eq!(var(&top[0]).value, "abcd");
        assert_eq!(var(&top[0]).truncated, Some(true));
        assert_eq!(var(&top[1]).children.len(), 2);
        assert_eq!(var(&top[1]).truncated, Some(true));
        let user = var(&top[2]);
        assert_eq!(var(&user.children[1]).r#type, "redacted");
        assert_eq!(user.children[1].name, "password");
        assert_eq!(var(&top[3]).r#type, "redacted");
    }

    #[test]
    fn depth_and_variable_count_are_bounded() {
        let mut deep = Value::Int(0);
        for _ in 0..20 {
            deep = Value::List(vec![deep]);
        }
        let limits = SnapshotLimits {
            max_depth: 3,
            max_variables: 50,
            ..Default::default()
        };
        let snap = action(limits)
            .take(&*vars(vec![("deep", deep)]), None, None)
            .finish(&[]);
        assert_eq!(snap.var_lookup.len(), 4, "levels 0..=3");
        let wide = Value::List((0..500).map(Value::Int).collect());
        let limits = SnapshotLimits {
            max_collection: 1000,
            max_variables: 50,
            ..Default::default()
        };
        let snap = action(limits)
            .take(&*vars(vec![("wide", wide)]), None, None)
            .finish(&[]);
        assert_eq!(snap.var_lookup.len(), 50);
        assert!(snap.attributes.iter().any(|kv| kv.key == "truncated"));
    }

    #[test]
    fn the_queue_drops_the_oldest() {
        let q = SnapshotQueue::new(2, None);
        for i in 0..5u64 {
            let mut p = action(SnapshotLimits::default()).take(&*vars(vec![]), None, None);
            p.snapshot.ts_nanos = i;
            q.push(p);
        }
        assert_eq!(q.len(), 2);
        assert_eq!(q.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(q.pop().map(|p| p.snapshot.ts_nanos), Some(3));
    }

    #[test]
    fn frames_skip_the_agent_and_stop_at_the_runtime() {
        let rendered = "   0: std::backtrace::Backtrace::force_capture
             at /rustc/x/library/std/src/backtrace.rs:310:13
   1: core::bool::<impl bool>::then
             at /rustc/x/library/std/src/backtrace.rs:310:13
   1: sonde_agent::tracepoint::snapshot::SnapshotAction::take
             at ./src/tracepoint/snapshot.rs:1:1
   2: shop::checkout::h0123456789abcdef
             at ./src/main.rs:42:5
   3: shop::main
             at ./src/main.rs:50:1
   4: std::rt::lang_start::{{closure}}
             at /rustc/x/library/std/src/rt.rs:1:1";
        let frames = app_frames(rendered);
        assert_eq!(
            frames
                .iter()
                .map(|f| (f.method_name.as_str(), f.file_name.as_str(), f.line_number))
                .collect::<Vec<_>>(),
            [
                ("shop::checkout", "./src/main.rs", 42),
                ("shop::main", "./src/main.rs", 50)
            ]
        );
    }
}
