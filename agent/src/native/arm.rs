//! [`Native`]: arms tracepoints on lines that have no probe site, from the debug info, and runs
//! what their traps capture through the same pipeline as probe sites.
//!
//! Arming a line: look its addresses up in the [`DebugIndex`]; refuse code Sonde must not patch
//! (its own, the standard library's) and refuse everything under a debugger; compile a capture
//! for each variable the expressions read at each address (location plan + type shape); decode
//! each address's instruction and choose the handler's [`Action`]; publish a new breakpoint
//! table; write the `int3`s. Disarming restores the bytes, publishes a table without them (the
//! addresses stay as tombstones for a while, see `trap`), waits for a grace period before
//! freeing the old table, and gives slots back to the arena (reused only much later).
//!
//! A decoder thread drains the rings every few milliseconds, decodes each record with the
//! variables' type shapes and fires the tracepoint, and once a second checks each line's trap
//! rate against its budget, disarming a line that traps too often.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex, OnceLock, RwLock, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sonde_expr::Value;

use super::{
    CapturePlan, DebugIndex, LineLookup, LoadError, TypeShape,
    patch::{self, Action, SlotArena},
    plan::Reader,
    shape::MAX_INLINE,
    tramp::{self, Trampoline},
    trap::{
        self, Bp, DEREF_MISSING, Gate, HEADER, Loc, Table, TrampolineUsers, User, VAR_OK,
        VarCapture,
    },
};
use crate::{
    metrics::self_metrics::NativeMetrics,
    tracepoint::pipeline::{self, Installed},
};

/// Limits of native breakpoints.
#[derive(Debug, Clone, Copy)]
pub struct NativeBudget {
    /// Captures per second per tracepoint (a token bucket in the handler; traps beyond it only
    /// resume).
    pub captures_per_sec: u32,
    /// Captures allowed at once before the rate applies.
    pub burst: u32,
    /// Traps per second per tracepoint above which it is disarmed: each trap costs a few
    /// microseconds whether it captures or not. A line whose every address runs through a
    /// jump trampoline instead (tens of nanoseconds) may be hit 100 times as often.
    pub max_traps_per_sec: u64,
    /// Hits per second above which a line's `int3`s are replaced by jumps into trampolines
    /// where the code allows it (no signal; see docs/native.md). `u64::MAX`: never.
    pub jump_above: u64,
}

impl Default for NativeBudget {
    fn default() -> Self {
        Self {
            captures_per_sec: 1000,
            burst: 100,
            max_traps_per_sec: 10_000,
            jump_above: 200,
        }
    }
}

/// Why a line could not be armed natively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ArmError {
    /// Nothing to arm: no debug info, no matching file, or no code on the line.
    Unbound(String),
    /// It cannot be armed (debugger, unpatchable code, unknown variable, patch refused).
    Failed(String),
}

/// How a line is armed, for the tracepoint's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ArmReport {
    /// `file:line (native, N addresses)`.
    pub location: String,
    /// Variables that cannot be read at some or all addresses, and where they can.
    pub notes: Vec<String>,
}

/// One armed line, shared by the decoder thread and the tracepoint's handle.
struct Line {
    id: u64,
    tp: Arc<Installed>,
    addresses: Vec<u64>,
    /// Per address: the captured variables, in record order.
    vars: Vec<Vec<VarSpec>>,
    /// Per address: what the handler copies for them.
    captures: Vec<Vec<VarCapture>>,
    gate: Arc<Gate>,
    /// Set when the trap budget disarmed it; the message says why.
    over_budget: Mutex<Option<String>>,
    /// Traps counted at the last budget check.
    last_hits: AtomicU64,
    /// Traps and throttled traps already added to the agent's own metrics.
    exported_hits: AtomicU64,
    exported_throttled: AtomicU64,
    /// Throttled traps already carried as weight by a decoded capture.
    weighed_throttled: AtomicU64,
    /// Addresses of the line that run through a jump trampoline.
    jumps: AtomicU64,
}

struct VarSpec {
    name: String,
    shape: Option<TypeShape>,
    /// Kept by name only: never read (its name or type is on the redaction list).
    redacted: bool,
}

struct Patched {
    orig: u8,
    action: Action,
    lines: usize,
    /// The jump that replaced the `int3`, its callback's data, and the bytes it displaced.
    jump: Option<(Trampoline, Box<TrampolineUsers>, Vec<u8>)>,
    /// Jumps tried for this address (a thread found inside the bytes fails an attempt; at most
    /// [`JUMP_ATTEMPTS`] are made, one per budget check).
    jump_attempts: u8,
}

struct State {
    arena: Option<SlotArena>,
    patched: HashMap<u64, Patched>,
    lines: HashMap<u64, Arc<Line>>,
    tombstones: Vec<(u64, Instant)>,
    next_id: u64,
}

struct Shared {
    index: OnceLock<Result<Arc<DebugIndex>, LoadError>>,
    state: Mutex<State>,
    /// The decoder's view of the armed lines.
    lines: RwLock<HashMap<u64, Arc<Line>>>,
    budget: NativeBudget,
    /// Set when a line's status changed off the agent's thread (budget disarm).
    dirty: Mutex<Option<Arc<AtomicBool>>>,
    /// The agent's own metrics, when it exports them, and the process-wide counts already
    /// added to them.
    own: OnceLock<OwnMetrics>,
}

struct OwnMetrics {
    metrics: NativeMetrics,
    exported_dropped: AtomicU64,
    exported_foreign: AtomicU64,
}

impl OwnMetrics {
    /// Adds what `line` counted since the last export.
    fn export_line(&self, line: &Line) {
        let id = [line.tp.id.as_str()];
        let hits = line.gate.hits.load(Ordering::Relaxed);
        let new = hits.saturating_sub(line.exported_hits.swap(hits, Ordering::Relaxed));
        if new > 0 {
            self.metrics.traps.add(&id, new as f64);
        }
        let throttled = line.gate.throttled.load(Ordering::Relaxed);
        let new =
            throttled.saturating_sub(line.exported_throttled.swap(throttled, Ordering::Relaxed));
        if new > 0 {
            self.metrics.throttled.add(&id, new as f64);
        }
    }

    /// Adds every line's counts and the process-wide ones, and sets the gauges.
    fn export(&self, lines: &HashMap<u64, Arc<Line>>) {
        let mut jumps = 0;
        for line in lines.values() {
            self.export_line(line);
            jumps += line.jumps.load(Ordering::Relaxed);
        }
        self.metrics.lines_armed.set(lines.len() as f64);
        self.metrics.jump_addresses.set(jumps as f64);
        let dropped = trap::rings().dropped.load(Ordering::Relaxed);
        let new = dropped.saturating_sub(self.exported_dropped.swap(dropped, Ordering::Relaxed));
        if new > 0 {
            self.metrics.dropped_records.add(new as f64);
        }
        let foreign = trap::FOREIGN.load(Ordering::Relaxed);
        let new = foreign.saturating_sub(self.exported_foreign.swap(foreign, Ordering::Relaxed));
        if new > 0 {
            self.metrics.foreign_traps.add(new as f64);
        }
    }
}

/// Native breakpoints for one agent. Cheap to clone.
#[derive(Clone)]
pub struct Native {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Native {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Native").finish_non_exhaustive()
    }
}

/// Keeps a line armed; dropping it disarms the line.
pub(crate) struct NativeHandle {
    shared: Arc<Shared>,
    line: Arc<Line>,
    pub report: ArmReport,
}

impl std::fmt::Debug for NativeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeHandle")
            .field("line", &self.line.id)
            .finish()
    }
}

/// How long tombstones of disarmed addresses stay in the table.
const TOMBSTONE_TTL: Duration = Duration::from_secs(60);
/// How long disarming waits for handlers to leave an old table before leaking it instead.
const GRACE_TIMEOUT: Duration = Duration::from_secs(2);

impl Native {
    /// Starts indexing the running executable's debug info on a background thread, and the
    /// decoder thread.
    pub fn start(budget: NativeBudget) -> Self {
        let shared = Arc::new(Shared {
            index: OnceLock::new(),
            state: Mutex::new(State {
                arena: None,
                patched: HashMap::new(),
                lines: HashMap::new(),
                tombstones: Vec::new(),
                next_id: 1,
            }),
            lines: RwLock::new(HashMap::new()),
            budget,
            dirty: Mutex::new(None),
            own: OnceLock::new(),
        });
        let indexing = Arc::downgrade(&shared);
        let _ = std::thread::Builder::new()
            .name("sonde-native-index".into())
            .spawn(move || {
                let started = Instant::now();
                let built = DebugIndex::for_current_exe().map(Arc::new);
                match &built {
                    Ok(index) => tracing::debug!(
                        elapsed = ?started.elapsed(),
                        file = %index.debug_file().display(),
                        "native breakpoints: debug info indexed"
                    ),
                    Err(e) => {
                        tracing::info!(
                            "native breakpoints unavailable: {e}; probe sites work as usual"
                        )
                    }
                }
                if let Some(shared) = indexing.upgrade() {
                    let _ = shared.index.set(built);
                }
            });
        // The decoder holds a weak reference: it ends once the agent drops this.
        let decoding = Arc::downgrade(&shared);
        let _ = std::thread::Builder::new()
            .name("sonde-native-decode".into())
            .spawn(move || decode_loop(decoding));
        Self { shared }
    }

    /// The flag to raise when a line's status changes on the decoder thread.
    pub(crate) fn set_dirty_flag(&self, dirty: Arc<AtomicBool>) {
        *self.shared.dirty.lock().unwrap_or_else(|p| p.into_inner()) = Some(dirty);
    }

    /// Exports `sonde_agent_native_*` through the agent's own metrics, once a second.
    pub(crate) fn set_self_metrics(&self, metrics: NativeMetrics) {
        // Counts from before (another agent in this process) are not this agent's.
        let _ = self.shared.own.set(OwnMetrics {
            metrics,
            exported_dropped: AtomicU64::new(trap::rings().dropped.load(Ordering::Relaxed)),
            exported_foreign: AtomicU64::new(trap::FOREIGN.load(Ordering::Relaxed)),
        });
    }

    /// The index, waiting for it to be built (at most `wait`).
    pub(super) fn index(&self, wait: Duration) -> Result<Arc<DebugIndex>, String> {
        let started = Instant::now();
        loop {
            if let Some(built) = self.shared.index.get() {
                return built.as_ref().map(Arc::clone).map_err(|e| e.to_string());
            }
            if started.elapsed() > wait {
                return Err("the debug info is still being indexed".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Arms `path:line` for `tp`, capturing `variables` (the root names its expressions read),
    /// each only as far as `paths` (every path the expressions read) needs.
    pub(crate) fn arm(
        &self,
        path: &str,
        line: u32,
        variables: &[String],
        paths: &[sonde_expr::Path],
        tp: Arc<Installed>,
    ) -> Result<NativeHandle, ArmError> {
        let index = self
            .index(Duration::from_secs(30))
            .map_err(|e| ArmError::Unbound(format!("native breakpoints unavailable: {e}")))?;
        // One reader for the line's addresses: each unit parsed once, each function's scopes
        // found once (see `plan::Reader`).
        let reader = index.reader();
        let found = line_addresses(&reader, path, line)?;
        let file = index.file_path(found.addresses[0].file).to_owned();
        if let Some(why) = forbidden(&file) {
            return Err(ArmError::Failed(why));
        }
        if let Some(pid) = tracer_pid() {
            return Err(ArmError::Failed(format!(
                "a debugger is attached (TracerPid {pid}): native breakpoints are refused \
                 while one is, since it would take the traps"
            )));
        }
        trap::install_handler().map_err(ArmError::Failed)?;

        // Captures per address.
        let mut vars = Vec::with_capacity(found.addresses.len());
        let mut captures = Vec::with_capacity(found.addresses.len());
        let mut unreadable: HashMap<String, (usize, Vec<String>, Vec<u32>)> = HashMap::new();
        // Locals of an optimized `async fn` read from its state, with the `.await` lines their
        // value there dates from.
        let mut from_state: HashMap<String, Vec<u32>> = HashMap::new();
        for a in &found.addresses {
            let in_scope = reader.variables_at_reading(a.address, paths).map_err(|e| {
                ArmError::Failed(format!("reading the variables at {:#x}: {e}", a.address))
            })?;
            let mut specs = Vec::with_capacity(variables.len());
            let mut caps = Vec::with_capacity(variables.len());
            for name in variables {
                let Some(v) = in_scope.iter().rev().find(|v| v.name == *name) else {
                    let mut names: Vec<&str> = in_scope.iter().map(|v| v.name.as_str()).collect();
                    names.sort_unstable();
                    names.dedup();
                    return Err(ArmError::Failed(format!(
                        "the expressions read `{name}`, which is not a variable in scope at \
                         {path}:{line} (one declared on this line is in scope from the next \
                         statement on); in scope: {}",
                        if names.is_empty() {
                            "nothing (was it built with debug = 2?)".to_owned()
                        } else {
                            names.join(", ")
                        }
                    )));
                };
                let shape = v.shape.as_ref().ok().cloned();
                let loc = match judge(v) {
                    Ok(loc) => {
                        if let Some(at) = v.in_state_since {
                            from_state.entry(name.clone()).or_default().push(at);
                        }
                        loc
                    }
                    Err(why) => {
                        let lines: &[u32] = match why {
                            Unreadable::Plan(_) => &v.available_at,
                            _ => &[],
                        };
                        note(&mut unreadable, name, why.to_string(), lines);
                        Loc::Missing
                    }
                };
                let (inline, derefs) = match &shape {
                    Some(s) if loc != Loc::Missing => (
                        s.inline_size().min(MAX_INLINE),
                        s.derefs().to_vec().into_boxed_slice(),
                    ),
                    _ => (0, Box::default()),
                };
                caps.push(VarCapture {
                    loc,
                    inline,
                    derefs,
                });
                specs.push(VarSpec {
                    name: name.clone(),
                    shape,
                    redacted: false,
                });
            }
            // A snapshot holds every variable readable here, not only those the expressions
            // read. One whose name or type is on the redaction list is kept by name and never
            // read; one that cannot be read here is left out.
            if tp.snapshot.is_some() {
                let all = reader.variables_at(a.address).map_err(|e| {
                    ArmError::Failed(format!("reading the variables at {:#x}: {e}", a.address))
                })?;
                let mut seen: std::collections::HashSet<String> =
                    variables.iter().cloned().collect();
                // Innermost first: a shadowing variable wins.
                for v in all.iter().rev() {
                    if !seen.insert(v.name.clone()) {
                        continue;
                    }
                    let redacted = crate::site::redact::is_redacted(&v.name)
                        || v.type_name.as_deref().is_some_and(redacted_type);
                    let loc = if redacted { None } else { loc_of(&v.plan) };
                    let shape = v.shape.as_ref().ok().filter(|_| loc.is_some()).cloned();
                    if !redacted && shape.is_none() {
                        continue;
                    }
                    let (inline, derefs) = match (&shape, &loc) {
                        (Some(s), Some(_)) => (
                            s.inline_size().min(MAX_INLINE),
                            s.derefs().to_vec().into_boxed_slice(),
                        ),
                        _ => (0, Box::default()),
                    };
                    caps.push(VarCapture {
                        loc: loc.unwrap_or(Loc::Missing),
                        inline,
                        derefs,
                    });
                    specs.push(VarSpec {
                        name: v.name.clone(),
                        shape,
                        redacted,
                    });
                }
            }
            vars.push(specs);
            captures.push(caps);
        }
        let mut notes = Vec::new();
        let total = found.addresses.len();
        for (name, (missing, whys, lines)) in &unreadable {
            let mut whys = whys.clone();
            whys.sort();
            whys.dedup();
            let mut s = if *missing == total {
                format!(
                    "`{name}` cannot be read at {path}:{line} ({})",
                    whys.join("; ")
                )
            } else {
                format!(
                    "`{name}` cannot be read at {missing} of the line's {total} addresses ({})",
                    whys.join("; ")
                )
            };
            if !lines.is_empty() {
                let _ = write!(
                    s,
                    "; it can be read at line{} {}",
                    if lines.len() == 1 { "" } else { "s" },
                    lines
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            notes.push(s);
        }
        for (name, mut awaits) in from_state {
            awaits.sort_unstable();
            awaits.dedup();
            let awaits: Vec<String> = awaits.iter().map(u32::to_string).collect();
            notes.push(format!(
                "`{name}` is read from the async fn's state (this optimized build gives it no \
                 location): a change made to it since the task last suspended, at the `.await` \
                 on line{} {} or an earlier one, may not be seen",
                if awaits.len() == 1 { "" } else { "s" },
                awaits.join(", ")
            ));
        }
        notes.sort();

        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *state;
        if state.arena.is_none() {
            let near = found.addresses[0].address;
            state.arena = Some(SlotArena::new(near).map_err(|e| ArmError::Failed(e.to_string()))?);
        }
        let arena = state.arena.as_ref().expect("just made");
        // Plan every address not yet patched before touching any code.
        let mut planned: Vec<(u64, u8, Action)> = Vec::new();
        for a in &found.addresses {
            if state.patched.contains_key(&a.address) {
                continue;
            }
            let code = patch::read_code::<16>(a.address);
            let plan = patch::decode(a.address, &code).and_then(|insn| patch::plan(&insn, arena));
            match plan {
                Ok(action) => planned.push((a.address, code[0], action)),
                Err(e) => {
                    for (_, _, action) in planned {
                        if let Action::Xol { slot } = action {
                            arena.free(slot);
                        }
                    }
                    return Err(ArmError::Failed(format!("{path}:{line}: {e}")));
                }
            }
        }
        let id = state.next_id;
        state.next_id += 1;
        let budget = self.shared.budget;
        let line_arm = Arc::new(Line {
            id,
            tp,
            addresses: found.addresses.iter().map(|a| a.address).collect(),
            vars,
            captures,
            gate: Arc::new(Gate::new(budget.captures_per_sec, budget.burst)),
            over_budget: Mutex::new(None),
            last_hits: AtomicU64::new(0),
            exported_hits: AtomicU64::new(0),
            exported_throttled: AtomicU64::new(0),
            weighed_throttled: AtomicU64::new(0),
            jumps: AtomicU64::new(0),
        });
        for (addr, orig, action) in &planned {
            state.patched.insert(
                *addr,
                Patched {
                    orig: *orig,
                    action: *action,
                    lines: 0,
                    jump: None,
                    jump_attempts: 0,
                },
            );
        }
        for a in &line_arm.addresses {
            if let Some(p) = state.patched.get_mut(a) {
                p.lines += 1;
            }
        }
        state.lines.insert(id, line_arm.clone());
        self.shared
            .lines
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, line_arm.clone());
        // Table first, then the int3s: a thread never traps at an address the table lacks.
        republish(state);
        for (addr, _, _) in &planned {
            if let Err(e) = patch::write_code(*addr, &[patch::INT3]) {
                drop_line(&self.shared, state, id);
                return Err(ArmError::Failed(format!(
                    "patching {addr:#x} ({path}:{line}) failed: {e}"
                )));
            }
        }
        let location = format!(
            "{file}:{line} (native, {total} address{})",
            if total == 1 { "" } else { "es" }
        );
        Ok(NativeHandle {
            shared: self.shared.clone(),
            line: line_arm,
            report: ArmReport { location, notes },
        })
    }

    /// Traps taken and records lost since start, over all lines (diagnostics).
    pub fn stats(&self) -> NativeStats {
        let lines = self.shared.lines.read().unwrap_or_else(|p| p.into_inner());
        let mut s = NativeStats {
            armed_lines: lines.len(),
            foreign_traps: trap::FOREIGN.load(Ordering::Relaxed),
            dropped_records: trap::rings().dropped.load(Ordering::Relaxed),
            ..NativeStats::default()
        };
        for l in lines.values() {
            s.traps += l.gate.hits.load(Ordering::Relaxed);
            s.captured += l.gate.captured.load(Ordering::Relaxed);
            s.throttled += l.gate.throttled.load(Ordering::Relaxed);
        }
        s
    }
}

/// Counters over the armed lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NativeStats {
    /// Lines armed now.
    pub armed_lines: usize,
    /// Traps taken at armed lines.
    pub traps: u64,
    /// Traps that captured a record.
    pub captured: u64,
    /// Traps the token buckets turned away.
    pub throttled: u64,
    /// SIGTRAPs that were not Sonde's.
    pub foreign_traps: u64,
    /// Records lost for want of ring space.
    pub dropped_records: u64,
}

impl NativeHandle {
    /// `file:line (native, N addresses)`, and how many of them run through a jump.
    pub fn location(&self) -> String {
        match self.line.jumps.load(Ordering::Relaxed) {
            0 => self.report.location.clone(),
            n => format!("{}, {n} by jump", self.report.location),
        }
    }

    /// Why the trap budget disarmed it, if it did.
    pub fn over_budget(&self) -> Option<String> {
        self.line
            .over_budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for NativeHandle {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        drop_line(&self.shared, &mut state, self.line.id);
    }
}

fn note(
    unreadable: &mut HashMap<String, (usize, Vec<String>, Vec<u32>)>,
    name: &str,
    why: String,
    lines: &[u32],
) {
    let e = unreadable.entry(name.to_owned()).or_default();
    e.0 += 1;
    e.1.push(why);
    for l in lines {
        if !e.2.contains(l) {
            e.2.push(*l);
        }
    }
}

/// The addresses a tracepoint at `path:line` traps at: the line's addresses (see
/// [`DebugIndex::lookup`]), one per function. Arming and the catalog's `lines` answer both use it,
/// so a line the catalog lists is a line that arms. `reader` reads the index's DWARF for the
/// request the line is part of.
pub(super) fn line_addresses(
    reader: &Reader<'_>,
    path: &str,
    line: u32,
) -> Result<LineLookup, ArmError> {
    let found = reader.index().lookup(path, line);
    if found.files.is_empty() {
        return Err(ArmError::Unbound(format!(
            "no file matching {path:?} in the debug info either"
        )));
    }
    if found.is_empty() {
        let near: Vec<String> = [found.nearest.before, found.nearest.after]
            .into_iter()
            .flatten()
            .map(|l| l.to_string())
            .collect();
        return Err(ArmError::Unbound(format!(
            "line {line} of {path} has no code in this build{}",
            if near.is_empty() {
                String::new()
            } else {
                format!("; nearest lines with code: {}", near.join(", "))
            }
        )));
    }
    // One address per function: a line whose code is interleaved with inlined callees
    // "starts" again after each of them, and trapping at every start would count one
    // execution several times (debuggers keep the lowest address per function too).
    let mut found = found;
    let mut functions = std::collections::HashSet::new();
    let mut allocator = None;
    found.addresses.retain(|a| {
        let function = reader.function_at(a.address).ok().flatten();
        if let Some(f) = &function
            && is_allocator(f)
        {
            allocator = f.name.clone();
        }
        functions.insert(function.map_or(a.address, |f| f.range.start))
    });
    if let Some(name) = allocator {
        return Err(ArmError::Failed(format!(
            "{path}:{line} is in `{name}`, part of the global allocator, which native \
                 breakpoints never patch (the agent allocates while decoding)"
        )));
    }
    Ok(found)
}

/// Why a variable in scope cannot be read at an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unreadable {
    /// Its type cannot be copied (the shape's error).
    Type(String),
    /// The debug info gives it no usable location here.
    Plan(super::Unavailable),
    /// A location the handler cannot read (a register it does not save).
    Location(String),
}

impl Unreadable {
    /// The reason in a word or two, as `sonde lines` shows it.
    pub(super) fn word(&self) -> &'static str {
        match self {
            Self::Type(_) => "unsupported type",
            Self::Plan(super::Unavailable::OptimizedOut | super::Unavailable::NotLiveHere) => {
                "optimized out"
            }
            Self::Plan(
                super::Unavailable::NotKeptAcrossAwait { .. }
                | super::Unavailable::InStateAfterAwait { .. },
            ) => "async state",
            Self::Plan(_) | Self::Location(_) => "unsupported location",
        }
    }
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Type(why) | Self::Location(why) => f.write_str(why),
            Self::Plan(why) => write!(f, "{why}"),
        }
    }
}

/// Where the handler reads `v` at its address, or why it cannot: the one judgement arming and
/// the catalog's `lines` share, so the two never disagree.
pub(super) fn judge(v: &super::Variable) -> Result<Loc, Unreadable> {
    match (&v.plan, &v.shape) {
        (_, Err(why)) => Err(Unreadable::Type(why.clone())),
        (CapturePlan::Unavailable(why), _) => Err(Unreadable::Plan(*why)),
        (plan, Ok(_)) => loc_of(plan)
            .ok_or_else(|| Unreadable::Location(format!("unsupported location {plan:?}"))),
    }
}

/// Disarms line `id`: restores bytes no other line needs, republishes, frees after the grace.
fn drop_line(shared: &Shared, state: &mut State, id: u64) {
    let Some(line) = state.lines.remove(&id) else {
        return;
    };
    line.gate.open.store(false, Ordering::Relaxed);
    shared
        .lines
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    // Hits after this are handlers already past the gate check: not worth a wait.
    if let Some(own) = shared.own.get() {
        own.export_line(&line);
    }
    let now = Instant::now();
    let mut freed_slots = Vec::new();
    for a in &line.addresses {
        let Some(p) = state.patched.get_mut(a) else {
            continue;
        };
        p.lines = p.lines.saturating_sub(1);
        if p.lines == 0 {
            let p = state.patched.remove(a).expect("present");
            match p.jump {
                Some((mut jump, users, _)) => {
                    // Restores every displaced byte, then waits for callbacks in flight.
                    if let Err(e) = jump.remove() {
                        tracing::error!("removing the jump at {a:#x} failed: {e}; it stays");
                        std::mem::forget(jump);
                        std::mem::forget(users);
                    }
                }
                None => {
                    if let Err(e) = patch::write_code(*a, &[p.orig]) {
                        tracing::error!("restoring the code at {a:#x} failed: {e}");
                    }
                }
            }
            state.tombstones.push((*a, now));
            if let Action::Xol { slot } = p.action {
                freed_slots.push(slot);
            }
        }
    }
    republish(state);
    if let Some(arena) = &state.arena {
        for slot in freed_slots {
            arena.free(slot);
        }
    }
}

/// Builds and publishes the handler's table from the state, then frees the old one after the
/// grace period (or leaks it if handlers do not leave in time).
fn republish(state: &mut State) {
    state
        .tombstones
        .retain(|(a, t)| t.elapsed() < TOMBSTONE_TTL && !state.patched.contains_key(a));
    let mut bps: Vec<Bp> = state
        .patched
        .iter()
        .map(|(addr, p)| {
            let mut users = Vec::new();
            for line in state.lines.values() {
                for (i, a) in line.addresses.iter().enumerate() {
                    if a == addr
                        && let Some(caps) = line.captures.get(i)
                    {
                        users.push(User::new(
                            line.id,
                            i as u16,
                            line.gate.clone(),
                            caps.clone().into_boxed_slice(),
                        ));
                    }
                }
            }
            Bp {
                addr: *addr,
                action: p.action,
                users: users.into_boxed_slice(),
            }
        })
        .collect();
    bps.sort_by_key(|b| b.addr);
    let mut tombstones: Vec<u64> = state.tombstones.iter().map(|(a, _)| *a).collect();
    tombstones.sort_unstable();
    let old = trap::publish(Table { bps, tombstones });
    if let Some(old) = old {
        if trap::synchronize(GRACE_TIMEOUT) {
            drop(old);
        } else {
            tracing::warn!("a trap handler did not leave in time; keeping the old table");
            std::mem::forget(old);
        }
    }
}

/// The handler's location for a plan (DWARF register numbers → `gregs` / XMM).
fn loc_of(plan: &CapturePlan) -> Option<Loc> {
    Some(match plan {
        CapturePlan::Reg(r) => match r {
            0..=15 => Loc::Greg(greg_of(*r)?),
            17..=32 => Loc::Xmm(usize::from(*r - 17)),
            _ => return None,
        },
        CapturePlan::Mem { reg, offset } => Loc::Mem {
            greg: greg_of(*reg)?,
            offset: *offset,
        },
        // The pointer to the coroutine state; the shape's first heap read follows it.
        CapturePlan::Indirect { reg, offset, .. } => Loc::Mem {
            greg: greg_of(*reg)?,
            offset: *offset,
        },
        CapturePlan::Static(a) => Loc::Static(*a),
        CapturePlan::Const(bytes) => Loc::Const(bytes.clone().into_boxed_slice()),
        _ => return None,
    })
}

/// `gregs` index of DWARF x86_64 register `r` (0–15).
fn greg_of(r: u16) -> Option<usize> {
    Some(match r {
        0 => libc::REG_RAX,
        1 => libc::REG_RDX,
        2 => libc::REG_RCX,
        3 => libc::REG_RBX,
        4 => libc::REG_RSI,
        5 => libc::REG_RDI,
        6 => libc::REG_RBP,
        7 => libc::REG_RSP,
        8 => libc::REG_R8,
        9 => libc::REG_R9,
        10 => libc::REG_R10,
        11 => libc::REG_R11,
        12 => libc::REG_R12,
        13 => libc::REG_R13,
        14 => libc::REG_R14,
        15 => libc::REG_R15,
        _ => return None,
    } as usize)
}

/// Code Sonde does not patch, with the reason.
fn forbidden(file: &str) -> Option<String> {
    let own = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = [
        Some(own.join("src")),
        own.parent().map(|p| p.join("expr").join("src")),
    ];
    let path = std::path::Path::new(file);
    if sources.iter().flatten().any(|dir| path.starts_with(dir)) {
        return Some(format!(
            "{file} is Sonde's own code, which native breakpoints never patch"
        ));
    }
    if file.starts_with("/rustc/")
        || file.contains("/library/std/")
        || file.contains("/library/core/")
        || file.contains("/library/alloc/")
    {
        return Some(format!(
            "{file} is the standard library, which native breakpoints never patch (the \
             allocator and the agent itself run through it)"
        ));
    }
    None
}

/// Whether `f` is part of the global allocator: the `__rust_alloc` family of shims, or a
/// method of a `GlobalAlloc` impl (its mangled name names the trait).
fn is_allocator(f: &super::Function) -> bool {
    let shim = f.name.as_deref().is_some_and(|n| {
        [
            "__rust_alloc",
            "__rust_dealloc",
            "__rust_realloc",
            "__rg_",
            "__rdl_",
        ]
        .iter()
        .any(|p| n.starts_with(p))
    });
    shim || f
        .linkage_name
        .as_deref()
        .is_some_and(|l| l.contains("GlobalAlloc"))
}

/// The PID of a tracer (debugger) attached to this process, if any.
fn tracer_pid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let pid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()?;
    (pid != 0).then_some(pid)
}

/// The decoder thread: drain, decode, fire; check budgets once a second.
fn decode_loop(shared: Weak<Shared>) {
    let mut last_budget = Instant::now();
    let mut idle = false;
    loop {
        // Every 5 ms while lines are armed; ten times a second otherwise.
        std::thread::sleep(Duration::from_millis(if idle { 100 } else { 5 }));
        let Some(shared) = shared.upgrade() else {
            return;
        };
        idle = shared
            .lines
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        // Drained even when idle: records of a line disarmed a moment ago are dropped here.
        drain(&shared);
        if last_budget.elapsed() >= Duration::from_secs(1) {
            let secs = last_budget.elapsed().as_secs_f64();
            last_budget = Instant::now();
            check_budgets(&shared, secs);
        }
    }
}

/// Whether a variable's type is redacted: its name, without module path or generic arguments
/// (`secrecy::SecretString` is `SecretString`), spells an entry of the redaction list in whole
/// words (`secret`), as a variable name would.
fn redacted_type(type_name: &str) -> bool {
    let base = type_name
        .split('<')
        .next()
        .unwrap_or(type_name)
        .trim_start_matches(['&', '*'])
        .trim_start_matches("mut ")
        .trim_start_matches("const ");
    let last = base.rsplit("::").next().unwrap_or(base);
    crate::site::redact::is_redacted(last)
}

/// Decodes and fires every record waiting in the rings.
fn drain(shared_lines: &Shared) {
    let lines = shared_lines.lines.read().unwrap_or_else(|p| p.into_inner());
    trap::rings().drain(|rec| {
        if rec.len() < HEADER {
            return;
        }
        let id = u64::from_le_bytes(rec[..8].try_into().expect("8 bytes"));
        let addr_index = usize::from(u16::from_le_bytes([rec[8], rec[9]]));
        let Some(line) = lines.get(&id) else {
            return;
        };
        let Some(specs) = line.vars.get(addr_index) else {
            return;
        };
        // A decoding bug must not end the thread that serves every native tracepoint.
        match std::panic::catch_unwind(|| decode_record(&rec[HEADER..], specs)) {
            Ok(vars) => {
                // The hits the token bucket turned away since the last capture ride on this one
                // (the decoder is the only writer of `weighed_throttled`).
                let throttled = line.gate.throttled.load(Ordering::Relaxed);
                let carried = line.weighed_throttled.swap(throttled, Ordering::Relaxed);
                pipeline::fire_decoded(&line.tp, &vars, 1 + throttled.saturating_sub(carried))
            }
            Err(_) => {
                tracing::error!(tracepoint = %line.tp.id, "decoding a native capture panicked")
            }
        }
    });
}

/// The variables of one record that decoded; the others are left out (the expressions then
/// report them missing).
fn decode_record(mut rec: &[u8], specs: &[VarSpec]) -> Vec<(String, Value)> {
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let Some((&status, rest)) = rec.split_first() else {
            break;
        };
        let Some(len) = rest
            .get(..2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
        else {
            break;
        };
        let Some(inline) = rest.get(2..2 + len) else {
            break;
        };
        let mut at = 2 + len;
        let Some(&nderefs) = rest.get(at) else { break };
        at += 1;
        let mut heap: Vec<Option<&[u8]>> = Vec::with_capacity(usize::from(nderefs));
        for _ in 0..nderefs {
            let Some(n) = rest.get(at..at + 4) else { break };
            let n = u32::from_le_bytes(n.try_into().expect("4 bytes"));
            at += 4;
            if n == DEREF_MISSING {
                heap.push(None);
            } else {
                let n = n as usize;
                heap.push(rest.get(at..at + n));
                at += n;
            }
        }
        rec = rest.get(at..).unwrap_or_default();
        if spec.redacted {
            out.push((
                spec.name.clone(),
                Value::Str(crate::site::redact::REDACTED.to_owned()),
            ));
            continue;
        }
        if status != VAR_OK {
            continue;
        }
        if let Some(shape) = &spec.shape
            && let Ok(v) = shape.decode(inline, &heap)
        {
            out.push((spec.name.clone(), v));
        }
    }
    out
}

fn check_budgets(shared: &Shared, secs: f64) {
    let budget = shared.budget;
    let mut hot = Vec::new();
    let over: Vec<(u64, String)> = {
        let lines = shared.lines.read().unwrap_or_else(|p| p.into_inner());
        if let Some(own) = shared.own.get() {
            own.export(&lines);
        }
        lines
            .values()
            .filter_map(|l| {
                let hits = l.gate.hits.load(Ordering::Relaxed);
                let before = l.last_hits.swap(hits, Ordering::Relaxed);
                let rate = (hits - before) as f64 / secs.max(1e-3);
                let all_jumps = l.jumps.load(Ordering::Relaxed) == l.addresses.len() as u64;
                let limit = if all_jumps {
                    budget.max_traps_per_sec.saturating_mul(100)
                } else {
                    budget.max_traps_per_sec
                };
                if rate > limit as f64 {
                    return Some((
                        l.id,
                        format!(
                            "disarmed: {rate:.0} hits/s over the native budget of {limit}/s (each \
                             trap costs microseconds); use a probe site for a line this hot"
                        ),
                    ));
                }
                if rate >= budget.jump_above as f64 && !all_jumps {
                    hot.push(l.clone());
                }
                None
            })
            .collect()
    };
    if !hot.is_empty() {
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        for line in hot {
            try_jumps(shared, &mut state, &line);
        }
    }
    if over.is_empty() {
        return;
    }
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    for (id, why) in over {
        if let Some(line) = state.lines.get(&id).cloned() {
            tracing::warn!(tracepoint = %line.tp.id, "{why}");
            *line.over_budget.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            if let Some(own) = line.tp.own() {
                own.disarm("native_traps");
            }
            drop_line(shared, &mut state, id);
        }
    }
    if let Some(dirty) = &*shared.dirty.lock().unwrap_or_else(|p| p.into_inner()) {
        dirty.store(true, Ordering::Relaxed);
    }
}

/// How many times an address of a hot line is tried for a jump.
const JUMP_ATTEMPTS: u8 = 5;

/// Replaces the `int3`s of a hot line by jumps into trampolines where the analysis proves it
/// safe (each address is tried up to [`JUMP_ATTEMPTS`] times; refusals are logged at debug
/// level).
fn try_jumps(shared: &Shared, state: &mut State, line: &Line) {
    let Some(Ok(index)) = shared.index.get() else {
        return;
    };
    if !line.gate.open.load(Ordering::Relaxed) {
        return;
    }
    for (i, &addr) in line.addresses.iter().enumerate() {
        let Some(p) = state.patched.get(&addr) else {
            continue;
        };
        if p.jump.is_some() || p.jump_attempts >= JUMP_ATTEMPTS || p.lines != 1 {
            continue;
        }
        let Action::Xol { slot } = p.action else {
            continue;
        };
        let captures = &line.captures[i];
        let result = jump_plan(index, state, addr).and_then(|plan| {
            let users = Box::new(TrampolineUsers {
                users: vec![User::new(
                    line.id,
                    i as u16,
                    line.gate.clone(),
                    captures.clone().into_boxed_slice(),
                )]
                .into_boxed_slice(),
                wide: plan.uses_wide_vector_state(),
            });
            // A thread in the slot jumps back after the first displaced instruction: inside
            // the span when more than one is displaced.
            let busy: Vec<std::ops::Range<u64>> = if plan.mnemonics().len() > 1 {
                std::iter::once(slot..slot + 64).collect()
            } else {
                Vec::new()
            };
            // SAFETY: the callback is allocation- and lock-free and never reaches patched code
            // (Sonde's own code is never patched); `users` is kept in `Patched` until the jump
            // is removed (or leaked with it).
            let jump = unsafe {
                Trampoline::install_over_int3(
                    &plan,
                    trap::on_trampoline,
                    std::ptr::from_ref::<TrampolineUsers>(&users).cast(),
                    &busy,
                )
            }
            .map_err(|e| e.to_string())?;
            Ok((jump, users, plan.original().to_vec()))
        });
        let p = state.patched.get_mut(&addr).expect("present");
        p.jump_attempts += 1;
        match result {
            Ok(jump) => {
                p.jump = Some(jump);
                line.jumps.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(tracepoint = %line.tp.id, "native: {addr:#x} now jumps to a trampoline");
            }
            Err(why) => {
                tracing::debug!(tracepoint = %line.tp.id, "native: {addr:#x} stays on int3: {why}")
            }
        }
    }
}

/// The trampoline plan for `addr`, analysed on the code as it was before any patch of Sonde's.
fn jump_plan(index: &DebugIndex, state: &State, addr: u64) -> Result<tramp::Plan, String> {
    let function = index
        .function_at(addr)
        .map_err(|e| e.to_string())?
        .ok_or("no function there")?
        .range;
    let len = usize::try_from(function.end - function.start).map_err(|_| "huge function")?;
    if len > 1 << 20 {
        return Err("function too large to analyse".into());
    }
    let mut code = vec![0u8; len];
    // SAFETY: the function's code is mapped (it comes from this executable's debug info).
    unsafe { std::ptr::copy_nonoverlapping(function.start as *const u8, code.as_mut_ptr(), len) };
    for (&a, p) in &state.patched {
        if function.contains(&a) {
            let at = (a - function.start) as usize;
            match &p.jump {
                Some((_, _, original)) => {
                    let end = (at + original.len()).min(len);
                    code[at..end].copy_from_slice(&original[..end - at]);
                }
                None => code[at] = p.orig,
            }
        }
    }
    let plan = tramp::qualifies_code(&code, function.start, addr).map_err(|w| w.to_string())?;
    let span = addr + 1..addr + plan.len() as u64;
    if let Some(other) = state.patched.keys().find(|a| span.contains(a)) {
        return Err(format!(
            "another patched address {other:#x} lies in the jump's bytes"
        ));
    }
    Ok(plan)
}
