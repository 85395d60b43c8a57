//! The hit pipeline: what runs when an armed site is reached. [`Installed`] is one compiled
//! tracepoint; [`Program`] is the list of them bound to one site.
//!
//! Per hit (the site's grace section already skips a hit inside a hit): the thread's run of hits
//! to pass by (see [`Program`]); then per tracepoint: local disarm flag, time window, sampler, fire
//! budget, condition, then each metric (labels, value, cached series, record) and the log line.
//! Every evaluation error is counted and remembered for the status report, never turned into a
//! made-up value. Panics are caught per tracepoint. The CPU budget ([`Sampler`]) decides how many
//! hits are evaluated: one in N, each recorded with weight N; past the error budget, or past the
//! CPU budget with no way left to sample, the tracepoint disarms itself.

use std::{
    cell::RefCell,
    hint::black_box,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sonde_expr::{EvalError, Expr, Lookup};

use super::{
    budget::{Budgets, FireBudget, WindowCounter},
    cpu::{self, AgentCpu, Cost, Sampler, ThreadCounts, Verdict},
    snapshot::{Place, SnapshotAction, SnapshotQueue, Variables},
};
use crate::{
    metrics::provider::{Instrument, RecordError, Series},
    metrics::self_metrics::TracepointMetrics,
    metrics::series_cache::{SeriesCache, make_series},
    site::capture::{Capture, HitVars},
    site::{self, Site},
    tracepoint::spec::now_unix_ms,
};

/// The tracepoints bound to one site.
///
/// # Passing hits by
/// When every tracepoint at the site samples, most hits are sure to be sampled out, and which
/// ones is known in advance ([`cpu::quiet`]). After a hit, the program answers the shortest quiet
/// run of its tracepoints, and the site passes that many of the thread's next hits by
/// (`site::pass`: a count in the thread's own table, touching nothing of the program). The next
/// hit credits them to every tracepoint at once, so the hits evaluated, and their weights, are
/// the ones a hit-by-hit count would give.
pub(crate) struct Program {
    pub tracepoints: Vec<Arc<Installed>>,
}

/// A run of hits passed by never exceeds this: a tracepoint outside its time window or
/// disarmed does not shorten the run, and this bounds how late the site notices a change.
const MAX_QUIET: u64 = 1024;

/// Where a label value comes from, compiled.
pub(crate) enum Label {
    Static(String),
    Expr(Expr),
}

/// One metric of an installed tracepoint, with its series per label set.
pub(crate) struct BoundMetric {
    pub labels: Vec<Label>,
    pub value: Option<Expr>,
    /// One instrument per provider; dropping them unregisters the metric.
    pub instruments: Vec<Box<dyn Instrument>>,
    pub series: SeriesCache,
}

impl BoundMetric {
    pub fn new(
        labels: Vec<Label>,
        value: Option<Expr>,
        instruments: Vec<Box<dyn Instrument>>,
    ) -> Self {
        Self {
            labels,
            value,
            instruments,
            series: SeriesCache::default(),
        }
    }

    /// Runs `f` on the cached series for a label set, creating it (or folding into overflow past
    /// the cap), without cloning it; also says whether the set folded into overflow.
    fn with_series<R>(
        &self,
        values: &[&str],
        max_series: usize,
        f: impl FnOnce(&dyn Series) -> R,
    ) -> (Option<R>, bool) {
        let before = self.series.overflowed.load(Ordering::Relaxed);
        let r = self
            .series
            .with_made(values, max_series, |v| make_series(&self.instruments, v), f);
        (r, self.series.overflowed.load(Ordering::Relaxed) != before)
    }
}

/// Why a tracepoint disarmed itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DisarmReason {
    Cpu,
    Errors,
}

/// A compiled, installed tracepoint.
pub(crate) struct Installed {
    pub id: String,
    /// Installed before every tracepoint with a larger one: a site's program runs its
    /// tracepoints in this order, so the oldest numbers a thread's hits for the others
    /// ([`Sampler::admit`]).
    pub seq: u64,
    pub condition: Option<Expr>,
    pub log: Option<Expr>,
    pub log_level: tracing::Level,
    pub metrics: Vec<BoundMetric>,
    pub metric_budget: FireBudget,
    pub log_budget: FireBudget,
    /// The snapshot it takes on a firing hit (`snapshot: collect`), its fire budget, and the
    /// queue that takes it off the hit's thread.
    pub snapshot: Option<(SnapshotAction, FireBudget, Arc<SnapshotQueue>)>,
    /// The span it records on a firing hit (`span: line` or `method`), and its fire budget.
    #[cfg(feature = "opentelemetry")]
    pub span: Option<(super::span::SpanAction, FireBudget)>,
    pub window: (Option<u64>, Option<u64>),
    pub budgets: Budgets,
    sampler: Sampler,
    agent_cpu: Arc<AgentCpu>,
    /// Whether evaluated hits record with weight N: only while the metric fire budget is
    /// unlimited (a fire-limited tracepoint records what it fires, no more).
    weighted: bool,
    /// Whether a timed evaluation may be repeated to estimate its cache refill ([`Self::rehearse`]):
    /// only when all it does is a condition and metrics (a log line, a snapshot or a span would
    /// not be repeated, and their cost would be taken for a refill).
    rehearsable: bool,
    errors: WindowCounter,
    disarmed: AtomicBool,
    /// Reached after its window ended (it then does nothing).
    expired: AtomicBool,
    disarm_reason: Mutex<Option<DisarmReason>>,
    last_error: Mutex<Option<(&'static str, String)>>,
    /// Set when the status changed (disarm, first error) and should be reported.
    pub dirty: Arc<AtomicBool>,
    pub stats: Stats,
    own: Option<TracepointMetrics>,
}

/// Counters of one installed tracepoint that are not counted per thread (those are the
/// sampler's [`ThreadCounts`]: hits, fires, condition false).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub errors: AtomicU64,
}

pub(crate) struct InstalledParts {
    pub id: String,
    pub condition: Option<Expr>,
    pub log: Option<Expr>,
    pub log_level: tracing::Level,
    pub metrics: Vec<BoundMetric>,
    pub metric_budget: FireBudget,
    pub log_budget: FireBudget,
    pub snapshot: Option<(SnapshotAction, FireBudget, Arc<SnapshotQueue>)>,
    #[cfg(feature = "opentelemetry")]
    pub span: Option<(super::span::SpanAction, FireBudget)>,
    pub window: (Option<u64>, Option<u64>),
    pub budgets: Budgets,
    pub dirty: Arc<AtomicBool>,
    /// The agent's own metrics for this tracepoint, when the agent exports them.
    pub own: Option<TracepointMetrics>,
    pub sampler: Sampler,
    pub agent_cpu: Arc<AgentCpu>,
}

impl Installed {
    pub fn new(p: InstalledParts) -> Self {
        let weighted = p.metric_budget.is_unlimited();
        #[cfg(feature = "opentelemetry")]
        let spans = p.span.is_some();
        #[cfg(not(feature = "opentelemetry"))]
        let spans = false;
        let rehearsable = p.log.is_none() && p.snapshot.is_none() && !spans;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        Self {
            id: p.id,
            seq: SEQ.fetch_add(1, Ordering::Relaxed),
            condition: p.condition,
            log: p.log,
            log_level: p.log_level,
            metrics: p.metrics,
            metric_budget: p.metric_budget,
            log_budget: p.log_budget,
            snapshot: p.snapshot,
            #[cfg(feature = "opentelemetry")]
            span: p.span,
            window: p.window,
            budgets: p.budgets,
            weighted,
            rehearsable,
            sampler: p.sampler,
            agent_cpu: p.agent_cpu,
            errors: WindowCounter::new(),
            disarmed: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            disarm_reason: Mutex::new(None),
            last_error: Mutex::new(None),
            dirty: p.dirty,
            stats: Stats::default(),
            own: p.own,
        }
    }

    /// The agent's own metrics for this tracepoint, when the agent exports them.
    #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
    pub fn own(&self) -> Option<&TracepointMetrics> {
        self.own.as_ref()
    }

    /// Why it disarmed itself, if it did.
    pub fn disarmed(&self) -> Option<DisarmReason> {
        if !self.disarmed.load(Ordering::Relaxed) {
            return None;
        }
        *self.disarm_reason.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether it was reached after its window ended.
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::Relaxed)
    }

    /// The last evaluation error: where (`condition`, `label`, `value`, `log`) and what.
    pub fn last_error(&self) -> Option<(&'static str, String)> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn disarm(&self, reason: DisarmReason) {
        if !self.disarmed.swap(true, Ordering::Relaxed) {
            *self.disarm_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
            self.dirty.store(true, Ordering::Relaxed);
            if let Some(own) = &self.own {
                own.disarm(match reason {
                    DisarmReason::Cpu => "cpu",
                    DisarmReason::Errors => "errors",
                });
            }
            tracing::warn!(tracepoint = %self.id, ?reason, "tracepoint disarmed locally: budget exceeded");
        }
    }

    #[cold]
    fn error(&self, stage: &'static str, kind: &'static str, err: impl std::fmt::Display) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        if let Some(own) = &self.own {
            own.error(stage, kind);
        }
        {
            let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_none() {
                self.dirty.store(true, Ordering::Relaxed);
            }
            *last = Some((stage, err.to_string()));
        }
        if self.errors.add(1, self.budgets.window) > self.budgets.errors {
            self.disarm(DisarmReason::Errors);
        }
    }

    /// Runs the tracepoint on one hit that stands for `hits` hits (1 at a probe site; more for a
    /// native capture that also stands for the hits its trap budget turned away before it),
    /// after `passed` hits the site passed by (sure to be sampled out). `align` carries the
    /// hit's number between the tracepoints of a site ([`Sampler::admit`]). Returns how many of
    /// the thread's next hits are sure to be sampled out (`u64::MAX`: this tracepoint does not
    /// mind).
    fn fire<L: Lookup + Variables + ?Sized>(
        &self,
        vars: &L,
        hits: u64,
        place: Option<Place>,
        passed: u64,
        align: &mut Option<u64>,
    ) -> u64 {
        if self.disarmed.load(Ordering::Relaxed) {
            return u64::MAX;
        }
        if self.window.0.is_some() || self.window.1.is_some() {
            let now = now_unix_ms();
            if self.window.0.is_some_and(|s| now < s) {
                return u64::MAX;
            }
            if self.window.1.is_some_and(|e| now > e) {
                if !self.expired.swap(true, Ordering::Relaxed) {
                    self.dirty.store(true, Ordering::Relaxed);
                    if let Some(own) = &self.own {
                        own.expired.inc();
                    }
                }
                return u64::MAX;
            }
        }
        let admitted = match self.sampler.admit(passed, align) {
            Ok(admitted) => admitted,
            Err(quiet) => return quiet,
        };
        let weight = if self.weighted {
            admitted.every.saturating_mul(hits)
        } else {
            1
        };
        let Some(span) = admitted.timed else {
            self.run(vars, weight, place, admitted.counts);
            return admitted.quiet;
        };
        let floor = self.agent_cpu.clock_floor;
        let started = cpu::ThreadTime::now();
        self.run(vars, weight, place, admitted.counts);
        let ran = cpu::ThreadTime::now();
        // Less what the clock's reads add, which the charge counts once (`ThreadTime::floor_ns`).
        let ns = ran.since(started).saturating_sub(floor);
        let mut cost = Cost {
            each: ns,
            once: 2 * floor,
        };
        if self.rehearsable {
            // The same evaluation again, at once, with what it reads still in the caches: the
            // difference is what it spent fetching its lines, and about what the application
            // will spend fetching back the lines those displaced (see `rehearse`).
            self.rehearse(vars);
            let warm = ran.elapsed_ns().saturating_sub(floor);
            let refill = ns.saturating_sub(warm);
            cost = Cost {
                each: ns + refill,
                once: 3 * floor + warm,
            };
            if let Some(own) = &self.own {
                own.refill.record(Duration::from_nanos(refill));
            }
        }
        if let Some(own) = &self.own {
            own.evaluation.record(Duration::from_nanos(ns));
        }
        match self
            .sampler
            .charge(&self.agent_cpu, cost, span, Instant::now())
        {
            Verdict::Keep => {}
            Verdict::Every(n) => self.sampling_changed(n),
            Verdict::Disarm => self.disarm(DisarmReason::Cpu),
        }
        admitted.quiet
    }

    #[cold]
    fn sampling_changed(&self, every: u64) {
        self.dirty.store(true, Ordering::Relaxed);
        if let Some(own) = &self.own {
            own.sample_every.set(every as f64);
        }
        tracing::debug!(tracepoint = %self.id, every, "tracepoint sampling changed");
    }

    /// Hits so far while armed and within its window (the sampler numbers each one).
    pub fn hits(&self) -> u64 {
        self.sampler.hits()
    }

    /// Hits (by weight) on which it fired.
    pub fn fires(&self) -> u64 {
        self.sampler.sum(|c| &c.fires)
    }

    /// Evaluated hits (by weight) whose condition was false.
    pub fn condition_false(&self) -> u64 {
        self.sampler.sum(|c| &c.condition_false)
    }

    /// One hit in this many is evaluated now.
    pub fn sample_every(&self) -> u64 {
        self.sampler.every()
    }

    /// The share of the process's CPU this tracepoint may use, in percent.
    pub fn cpu_percent(&self) -> f64 {
        self.sampler.percent()
    }

    fn run<L: Lookup + Variables + ?Sized>(
        &self,
        vars: &L,
        weight: u64,
        place: Option<Place>,
        counts: &ThreadCounts,
    ) {
        if let Some(cond) = &self.condition {
            match cond.eval_condition(vars) {
                Ok(true) => {}
                Ok(false) => {
                    cpu::add_own(&counts.condition_false, weight);
                    if let Some(own) = &self.own {
                        own.condition_false.add(weight as f64);
                    }
                    return;
                }
                Err(e) => return self.error("condition", eval_kind(e), e),
            }
        }
        let mut fired = false;
        if !self.metrics.is_empty() && self.metric_budget.try_fire() {
            fired = true;
            for m in &self.metrics {
                self.record(m, vars, weight);
            }
        }
        let mut logged = None;
        if let Some(log) = &self.log
            && self.log_budget.try_fire()
        {
            fired = true;
            let mut msg = String::new();
            match log.render(vars, &mut msg) {
                Ok(()) => {
                    emit_log(self.log_level, &self.id, &msg);
                    logged = Some(msg);
                }
                Err(e) => self.error("log", eval_kind(e), e),
            }
        }
        #[cfg(feature = "opentelemetry")]
        if let Some((span, budget)) = &self.span
            && budget.try_fire()
        {
            fired = true;
            span.record(vars, place);
        }
        if let Some((action, budget, queue)) = &self.snapshot
            && budget.try_fire()
        {
            fired = true;
            queue.push(action.take(vars, place, logged));
        }
        if fired {
            cpu::add_own(&counts.fires, weight);
            if let Some(own) = &self.own {
                own.fires.add(weight as f64);
            }
        }
    }

    fn record<L: Lookup + ?Sized>(&self, m: &BoundMetric, vars: &L, weight: u64) {
        let value = match &m.value {
            None => 1.0,
            Some(e) => match e.eval_f64(vars) {
                Ok(v) => v,
                Err(e) => return self.error("value", eval_kind(e), e),
            },
        };
        let recorded = with_labels(m, vars, |values| {
            let (recorded, overflowed) = m.with_series(values, self.budgets.max_series, |series| {
                if weight > 1 {
                    series.record_weighted(value, weight)
                } else {
                    series.record(value)
                }
            });
            if overflowed && let Some(own) = &self.own {
                own.overflow.inc();
            }
            recorded.unwrap_or(Ok(()))
        });
        match recorded {
            None | Some(Ok(Ok(()))) => {}
            Some(Err(e)) => self.error("label", eval_kind(e), e),
            Some(Ok(Err(e))) => self.error(
                "value",
                match e {
                    RecordError::NegativeCounter => "negative_counter",
                    RecordError::NotFinite => "not_finite",
                    RecordError::Unsupported => "unsupported",
                },
                e,
            ),
        }
    }

    /// Repeats an evaluation that just ran, recording and counting nothing: the condition, then
    /// each metric's value, labels and series lookup. Timed right after the evaluation it
    /// repeats, it measures what the evaluation costs with its lines in the caches; what the
    /// evaluation took beyond that went to fetching them. Each line fetched displaced one of the
    /// application's, which the application fetches back later at about the same cost: that
    /// refill is real CPU the application loses to the tracepoint, and no timer around the
    /// evaluation sees it (on the shop example under callgrind, the shop's own code took about
    /// as many more L1 misses armed as the evaluations did).
    fn rehearse<L: Lookup + ?Sized>(&self, vars: &L) {
        if let Some(cond) = &self.condition
            && !matches!(cond.eval_condition(vars), Ok(true))
        {
            return;
        }
        for m in &self.metrics {
            if let Some(e) = &m.value {
                let _ = black_box(e.eval_f64(vars));
            }
            let _ = black_box(with_labels(m, vars, |values| m.series.contains(values)));
        }
    }
}

/// Renders `m`'s label values into the thread's buffers and calls `f` with them; `None` when the
/// buffers are already in use on this thread (a hit inside a hit, which sites never run).
fn with_labels<L: Lookup + ?Sized, R>(
    m: &BoundMetric,
    vars: &L,
    f: impl FnOnce(&[&str]) -> R,
) -> Option<Result<R, EvalError>> {
    LABELS.with(|bufs| {
        let mut bufs = bufs.try_borrow_mut().ok()?;
        if bufs.len() < m.labels.len() {
            bufs.resize_with(m.labels.len(), String::new);
        }
        for (label, buf) in m.labels.iter().zip(bufs.iter_mut()) {
            buf.clear();
            match label {
                Label::Static(s) => buf.push_str(s),
                Label::Expr(e) => {
                    if let Err(e) = e.eval_label(vars, buf) {
                        return Some(Err(e));
                    }
                }
            }
        }
        let mut values: [&str; 16] = [""; 16];
        let n = m.labels.len().min(16);
        for (slot, buf) in values.iter_mut().zip(bufs.iter()).take(n) {
            *slot = buf.as_str();
        }
        Some(Ok(f(&values[..n])))
    })
}

/// A short, stable name for an evaluation error (a metric tag).
fn eval_kind(e: EvalError) -> &'static str {
    match e {
        EvalError::MissingVariable => "missing_variable",
        EvalError::MissingField => "missing_field",
        EvalError::IndexOutOfBounds => "index_out_of_bounds",
        EvalError::TypeMismatch => "type_mismatch",
        EvalError::Arithmetic => "arithmetic",
        EvalError::BudgetExceeded => "budget_exceeded",
        EvalError::Panicked => "panic",
        _ => "runtime",
    }
}

fn emit_log(level: tracing::Level, id: &str, msg: &str) {
    match level {
        tracing::Level::ERROR => {
            tracing::error!(target: "sonde::tracepoint", tracepoint = %id, "{msg}")
        }
        tracing::Level::WARN => {
            tracing::warn!(target: "sonde::tracepoint", tracepoint = %id, "{msg}")
        }
        tracing::Level::INFO => {
            tracing::info!(target: "sonde::tracepoint", tracepoint = %id, "{msg}")
        }
        tracing::Level::DEBUG => {
            tracing::debug!(target: "sonde::tracepoint", tracepoint = %id, "{msg}")
        }
        tracing::Level::TRACE => {
            tracing::trace!(target: "sonde::tracepoint", tracepoint = %id, "{msg}")
        }
    }
}

thread_local! {
    static LABELS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

impl site::Program for Program {
    /// Runs every tracepoint bound to `site` (never inside another hit: `Site::hit` skips a
    /// hit reached while evaluating, or from a provider).
    fn hit(&self, site: &'static Site, values: &[&dyn Capture], passed: u64) -> u64 {
        let vars = HitVars {
            names: site.names(),
            values,
        };
        let mut quiet = MAX_QUIET;
        let mut align = None;
        for tp in &self.tracepoints {
            let place = Place {
                file: site.file(),
                line: site.line(),
                module: site.module(),
            };
            match catch_unwind(AssertUnwindSafe(|| {
                tp.fire(&vars, 1, Some(place), passed, &mut align)
            })) {
                Ok(q) => quiet = quiet.min(q),
                Err(_) => {
                    quiet = 0;
                    tp.error("panic", "panic", "a panic inside the tracepoint was caught");
                }
            }
        }
        quiet
    }
}

/// Runs one tracepoint on variables decoded off the application's threads (native breakpoints:
/// the decoder thread calls this for each captured record), standing for `hits` hits: the
/// capture's own, and those the line's trap budget turned away since the previous capture, so a
/// throttled line's counts stay unbiased like a sampled one's.
#[cfg_attr(
    not(all(feature = "native", target_os = "linux", target_arch = "x86_64")),
    allow(dead_code)
)]
pub(crate) fn fire_decoded(tp: &Installed, vars: &(impl Lookup + Variables + ?Sized), hits: u64) {
    if catch_unwind(AssertUnwindSafe(|| tp.fire(vars, hits, None, 0, &mut None))).is_err() {
        tp.error("panic", "panic", "a panic inside the tracepoint was caught");
    }
}
