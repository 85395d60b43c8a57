//! [`Installer`]: turns a tracepoint list from the control plane into armed sites, and reports
//! what became of each tracepoint ([`TracepointStatus`]).
//!
//! Applying a list is a diff: a tracepoint whose content is unchanged keeps its installed state
//! (fire counts, series); removed and changed ones are unbound first, so their metrics are
//! unregistered before replacements register; then new and changed ones are compiled, bound and
//! published to their sites, and sites left with no tracepoint are disarmed.
//!
//! May use: `native` (arming lines without a probe site), `tracepoint` (compiling a spec into
//! what a hit runs), `site` and `metrics`. Used by the client and the agent.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use sonde_expr::{Expr, ExprKind, compile};
use sonde_proto::tracepoint::TracePointConfig;

use crate::tracepoint::{
    budget::{Budgets, FireBudget},
    cpu::{AgentCpu, Sampler},
};
use crate::{
    metrics::provider::{MetricProvider, MetricSpec},
    metrics::self_metrics::SelfMetrics,
    site::{Retired, Site, path_matches},
    tracepoint::pipeline::{BoundMetric, DisarmReason, Installed, InstalledParts, Label, Program},
    tracepoint::snapshot::{SnapshotAction, SnapshotLimits, SnapshotQueue},
    tracepoint::spec::{LabelRule, SpanKind, TracepointSpec},
};

/// What became of a tracepoint in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracepointStatus {
    /// The tracepoint's ID.
    pub id: String,
    /// Its state.
    pub state: TracepointState,
    /// Why, for anything but bound (and for bound ones that made evaluation errors).
    pub message: String,
    /// `file:line` of the sites it is bound to.
    pub sites: Vec<String>,
    /// Its counters, while it is installed here.
    pub summary: Option<TracepointSummary>,
}

/// The counters of one installed tracepoint since it was installed, read from those the hit path
/// keeps anyway (nothing is measured for them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TracepointSummary {
    /// Hits on its sites while armed and within its window (sampled-out ones included).
    pub hits: u64,
    /// Hits that recorded its metrics or wrote its log line (weighted while sampling).
    pub fires: u64,
    /// Hits its condition turned away (weighted while sampling).
    pub condition_false: u64,
    /// Evaluation errors.
    pub errors: u64,
    /// The last evaluation error, `stage: message`; empty while there has been none.
    pub last_error: String,
    /// Label sets its metrics hold.
    pub series: u64,
    /// Label sets folded into the overflow series past the cardinality cap.
    pub overflowed: u64,
    /// One hit in this many is evaluated now.
    pub sample_every: u64,
    /// Whether it is disarmed (budgets) or past its window.
    pub disarmed: bool,
}

/// The state of a tracepoint in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TracepointState {
    /// Installed at one or more sites.
    Bound,
    /// No site at that file and line.
    Unbound,
    /// Could not be installed (expression or provider error).
    Error,
    /// Installed, then disarmed locally (CPU or error budget exceeded).
    Disarmed,
}

/// One probe site as the catalog lists it (what a tracepoint can bind to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CatalogSite {
    /// The file as a tracepoint's `path` may name it (`file!()`, with `/` separators).
    pub file: String,
    pub line: u32,
    pub module: &'static str,
    pub names: &'static [&'static str],
    /// Per captured name whose value offered field names (once the site has run), those names.
    pub fields: Vec<(&'static str, &'static [&'static str])>,
}

enum Outcome {
    Bound {
        tp: Arc<Installed>,
        sites: Vec<&'static Site>,
    },
    /// Armed natively (a breakpoint on a line without a probe site).
    #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
    Native {
        tp: Arc<Installed>,
        handle: crate::native::NativeHandle,
    },
    Unbound(String),
    Failed(String),
}

struct Entry {
    spec: TracepointSpec,
    outcome: Outcome,
}

/// Installs tracepoint lists.
pub(crate) struct Installer {
    sites: Vec<&'static Site>,
    providers: Vec<Arc<dyn MetricProvider>>,
    budgets: Budgets,
    log_level: tracing::Level,
    entries: HashMap<String, Entry>,
    armed: Vec<&'static Site>,
    /// Set by tracepoints when their status changes on the hot path.
    pub dirty: Arc<AtomicBool>,
    own: Option<Arc<SelfMetrics>>,
    /// The CPU budget all tracepoints share.
    agent_cpu: Arc<AgentCpu>,
    /// Where firing hits put their snapshots, and the bounds of one.
    snapshots: Arc<SnapshotQueue>,
    snapshot_limits: SnapshotLimits,
    #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
    native: Option<crate::native::Native>,
}

impl Installer {
    pub fn new(
        sites: Vec<&'static Site>,
        providers: Vec<Arc<dyn MetricProvider>>,
        budgets: Budgets,
        log_level: tracing::Level,
        own: Option<Arc<SelfMetrics>>,
    ) -> Self {
        Self {
            sites,
            providers,
            budgets,
            log_level,
            entries: HashMap::new(),
            armed: Vec::new(),
            dirty: Arc::new(AtomicBool::new(false)),
            snapshots: Arc::new(SnapshotQueue::new(
                DEFAULT_SNAPSHOT_QUEUE,
                own.as_ref().map(|m| m.snapshots_dropped.clone()),
            )),
            own,
            agent_cpu: Arc::new(AgentCpu::new(&budgets)),
            snapshot_limits: SnapshotLimits::default(),
            #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
            native: None,
        }
    }

    /// Sets the bounds of one snapshot and of the queue of snapshots waiting to be sent.
    pub fn set_snapshots(&mut self, limits: SnapshotLimits, queue: usize) {
        self.snapshot_limits = limits;
        self.snapshots = Arc::new(SnapshotQueue::new(
            queue,
            self.own.as_ref().map(|m| m.snapshots_dropped.clone()),
        ));
    }

    /// The queue of snapshots waiting to be sent (the client drains it).
    pub fn snapshot_queue(&self) -> Arc<SnapshotQueue> {
        self.snapshots.clone()
    }

    /// Arms tracepoints on lines without a probe site natively, through `native`.
    #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
    pub fn set_native(&mut self, native: crate::native::Native) {
        native.set_dirty_flag(self.dirty.clone());
        if let Some(own) = &self.own {
            native.set_self_metrics(own.native());
        }
        self.native = Some(native);
    }

    /// Replaces the installed tracepoints with `configs`.
    pub fn apply(&mut self, configs: &[TracePointConfig]) {
        // Ordered by ID, so that when two tracepoints conflict (the same metric name with other
        // labels) the same one wins in every process.
        let mut wanted: BTreeMap<String, Result<TracepointSpec, String>> = BTreeMap::new();
        for cfg in configs {
            wanted.insert(cfg.id.clone(), TracepointSpec::from_proto(cfg));
        }
        // Phase 1: drop what is gone or changed, and republish the sites without them.
        let before = self.entries.len();
        self.entries
            .retain(|id, entry| matches!(wanted.get(id), Some(Ok(spec)) if *spec == entry.spec));
        if self.entries.len() != before {
            if let Some(own) = &self.own {
                own.removed.add((before - self.entries.len()) as f64);
            }
            self.publish();
        }
        // Phase 2: install what is new or changed.
        for (id, spec) in wanted {
            if self.entries.contains_key(&id) {
                continue;
            }
            let entry = match spec {
                Ok(spec) => {
                    let outcome = self.install(&spec);
                    Entry { spec, outcome }
                }
                Err(message) => Entry {
                    spec: TracepointSpec {
                        id: id.clone(),
                        path: String::new(),
                        line: 0,
                        condition: None,
                        log_msg: None,
                        fire_count: None,
                        fire_period_ms: None,
                        window_start_ms: None,
                        window_end_ms: None,
                        metrics: Vec::new(),
                        cpu_percent: None,
                        sampling: true,
                        snapshot: None,
                        watches: Vec::new(),
                        stack: false,
                        span: None,
                        reference: Default::default(),
                    },
                    outcome: Outcome::Failed(message),
                },
            };
            if let Some(own) = &self.own {
                own.installed.inc();
            }
            // Once per change: a tracepoint that is new or changed is installed again here.
            match &entry.outcome {
                Outcome::Unbound(message) => tracing::info!(tracepoint = %id, %message,
                    "sonde agent: tracepoint not bound"),
                Outcome::Failed(message) => tracing::info!(tracepoint = %id, %message,
                    "sonde agent: tracepoint could not be installed"),
                _ => {}
            }
            self.entries.insert(id, entry);
        }
        if let Some(own) = &self.own {
            own.active.set(self.entries.len() as f64);
        }
        self.publish();
    }

    /// Disarms every site and drops every tracepoint (their metrics unregister).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.publish();
    }

    /// Arms each site with the tracepoints bound to it; disarms sites left with none.
    fn publish(&mut self) {
        let mut programs: HashMap<*const Site, (&'static Site, Vec<Arc<Installed>>)> =
            HashMap::new();
        for entry in self.entries.values() {
            if let Outcome::Bound { tp, sites } = &entry.outcome {
                for site in sites {
                    programs
                        .entry(*site as *const Site)
                        .or_insert_with(|| (*site, Vec::new()))
                        .1
                        .push(tp.clone());
                }
            }
        }
        let mut retired = Vec::new();
        for site in &self.armed {
            if !programs.contains_key(&(*site as *const Site)) {
                retired.push(site.disarm());
            }
        }
        self.armed = programs.values().map(|(s, _)| *s).collect();
        for (site, mut tracepoints) in programs.into_values() {
            // Oldest first: it numbers the thread's hits for the ones added after it.
            tracepoints.sort_by_key(|tp| tp.seq);
            retired.push(site.arm(Box::new(Program { tracepoints })));
        }
        // One grace period for every site, then the old programs (and with them the metrics of
        // the tracepoints removed) drop here, on the agent's thread.
        Retired::drop_all(retired);
    }

    fn install(&self, spec: &TracepointSpec) -> Outcome {
        let candidates: Vec<&'static Site> = self
            .sites
            .iter()
            .copied()
            .filter(|s| s.line() == spec.line && path_matches(&spec.path, s.file()))
            .collect();
        if candidates.is_empty() {
            #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
            if let Some(native) = &self.native {
                return self.install_native(native, spec);
            }
            return Outcome::Unbound(format!(
                "{}; {}",
                self.unbound_message(spec),
                Self::NATIVE_OFF
            ));
        }
        #[cfg(not(feature = "opentelemetry"))]
        if spec.span.is_some() {
            return Outcome::Failed(
                "args.span: span points need the agent's `opentelemetry` feature, which this \
                 process was built without"
                    .into(),
            );
        }
        // A method span at an `#[instrument]`ed function's entry binds to its exit site, which
        // knows how long the call took.
        let candidates: Vec<&'static Site> = if spec.span == Some(SpanKind::Method) {
            candidates
                .into_iter()
                .map(|s| self.exit_site(s).unwrap_or(s))
                .collect()
        } else {
            candidates
        };
        let compiled = match compile_all(spec) {
            Ok(c) => c,
            Err(message) => return Outcome::Failed(message),
        };
        // Bind to the sites that capture every variable the expressions read.
        let (sites, missing): (Vec<_>, Vec<_>) = candidates
            .iter()
            .map(|s| {
                (
                    *s,
                    compiled
                        .variables
                        .iter()
                        .filter(|v| !s.names().contains(&v.as_str()))
                        .cloned()
                        .collect::<Vec<_>>(),
                )
            })
            .partition(|(_, missing)| missing.is_empty());
        if sites.is_empty() {
            let (site, missing) = &missing[0];
            return Outcome::Failed(format!(
                "the expressions read {} that the site at {} does not capture; it captures: {}",
                missing
                    .iter()
                    .map(|v| format!("`{v}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                site.location(),
                if site.names().is_empty() {
                    "nothing".to_owned()
                } else {
                    site.names().join(", ")
                }
            ));
        }
        let sites: Vec<&'static Site> = sites.into_iter().map(|(s, _)| s).collect();
        match self.build(spec, compiled) {
            Ok(tp) => Outcome::Bound { tp, sites },
            Err(message) => Outcome::Failed(message),
        }
    }

    /// Arms a tracepoint on a line without a probe site from the debug info.
    #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
    fn install_native(&self, native: &crate::native::Native, spec: &TracepointSpec) -> Outcome {
        use crate::native::ArmError;
        let compiled = match compile_all(spec) {
            Ok(c) => c,
            Err(message) => return Outcome::Failed(message),
        };
        let variables: Vec<String> = compiled.variables.iter().cloned().collect();
        let paths = compiled.paths.clone();
        let tp = match self.build(spec, compiled) {
            Ok(tp) => tp,
            Err(message) => return Outcome::Failed(message),
        };
        match native.arm(&spec.path, spec.line, &variables, &paths, tp.clone()) {
            Ok(handle) => Outcome::Native { tp, handle },
            Err(ArmError::Unbound(why)) => {
                Outcome::Unbound(format!("{}; {why}", self.unbound_message(spec)))
            }
            Err(ArmError::Failed(why)) => Outcome::Failed(why),
        }
    }

    /// Registers a tracepoint's metrics with every provider and builds its installed form.
    fn build(&self, spec: &TracepointSpec, compiled: Compiled) -> Result<Arc<Installed>, String> {
        let mut metrics = Vec::with_capacity(spec.metrics.len());
        for (rule, (labels, value)) in spec.metrics.iter().zip(compiled.metrics) {
            let keys: Vec<&str> = rule.labels.iter().map(|(k, _)| k.as_str()).collect();
            let metric_spec = MetricSpec {
                name: &rule.name,
                help: &rule.help,
                kind: rule.kind,
                label_keys: &keys,
                tracepoint_id: &spec.id,
                buckets: rule.buckets.as_deref(),
            };
            let mut instruments = Vec::with_capacity(self.providers.len());
            for provider in &self.providers {
                match provider.register(&metric_spec) {
                    Ok(i) => instruments.push(i),
                    Err(err) => return Err(format!("{}: {err}", provider.name())),
                }
            }
            metrics.push(BoundMetric::new(labels, value, instruments));
        }
        let explicit = spec.fire_count.is_some() || spec.fire_period_ms.is_some();
        let (metric_count, metric_period) = if explicit {
            (
                spec.fire_count.unwrap_or(-1),
                spec.fire_period_ms.unwrap_or(0),
            )
        } else {
            (-1, 0)
        };
        let tp = Installed::new(InstalledParts {
            id: spec.id.clone(),
            condition: compiled.condition,
            log: compiled.log,
            log_level: self.log_level,
            metrics,
            metric_budget: FireBudget::new(metric_count, metric_period),
            // Log lines keep Deep's defaults: once, at most every second, unless args say otherwise.
            log_budget: FireBudget::new(
                spec.fire_count.unwrap_or(1),
                spec.fire_period_ms.unwrap_or(1000),
            ),
            // Spans are counted like metrics: every hit unless the args limit them.
            #[cfg(feature = "opentelemetry")]
            span: spec.span.map(|kind| {
                (
                    crate::tracepoint::span::SpanAction::new(spec, kind, span_labels(spec)),
                    FireBudget::new(metric_count, metric_period),
                )
            }),
            // Snapshots too (Deep's defaults).
            snapshot: spec.collects().then(|| {
                (
                    self.snapshot_action(spec),
                    FireBudget::new(
                        spec.fire_count.unwrap_or(1),
                        spec.fire_period_ms.unwrap_or(1000),
                    ),
                    self.snapshots.clone(),
                )
            }),
            window: (spec.window_start_ms, spec.window_end_ms),
            budgets: self.budgets,
            dirty: self.dirty.clone(),
            own: self.own.as_ref().map(|m| m.for_tracepoint(&spec.id)),
            // A log-only tracepoint does not sample (its lines would be lost): over budget it
            // disarms, as does one whose `sampling` arg is `off`.
            sampler: Sampler::new(
                &self.budgets,
                spec.cpu_percent
                    .map_or(self.budgets.cpu_share, |p| p / 100.0),
                spec.sampling && !spec.metrics.is_empty(),
            ),
            agent_cpu: self.agent_cpu.clone(),
        });
        Ok(Arc::new(tp))
    }

    /// The exit site of the `#[instrument]`ed function whose entry site is `entry`: the nearest
    /// site below it in the same file and module that captures `elapsed` and every argument.
    fn exit_site(&self, entry: &'static Site) -> Option<&'static Site> {
        if entry.names().contains(&"elapsed") {
            return None;
        }
        self.sites
            .iter()
            .copied()
            .filter(|s| {
                !std::ptr::eq(*s, entry)
                    && s.file() == entry.file()
                    && s.module() == entry.module()
                    && s.line() >= entry.line()
                    && s.names().contains(&"elapsed")
                    && entry.names().iter().all(|n| s.names().contains(n))
            })
            .min_by_key(|s| s.line())
    }

    /// What a snapshot of `spec` holds; a watch that does not compile, or that reads a redacted
    /// name, is reported in each snapshot as an error result.
    fn snapshot_action(&self, spec: &TracepointSpec) -> SnapshotAction {
        let watches = spec
            .watches
            .iter()
            .map(|w| {
                let compiled = compile(w, ExprKind::Label)
                    .map_err(|e| e.to_string())
                    .and_then(|e| check_redacted("watch", &e).map(|()| e));
                (w.clone(), compiled)
            })
            .collect();
        SnapshotAction {
            reference: spec.reference.clone(),
            watches,
            stack: spec.stack,
            limits: self.snapshot_limits,
        }
    }
    /// What would make a line without a probe site bind here, added to its status.
    #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
    const NATIVE_OFF: &str = "to arm lines without a probe site, turn native breakpoints on: \
        SONDE_AGENT_NATIVE=1 (with AgentBuilder::from_env) or AgentBuilder::native_breakpoints, \
        and build with debug = 2 in the Cargo profile";
    #[cfg(all(not(feature = "native"), target_os = "linux", target_arch = "x86_64"))]
    const NATIVE_OFF: &str = "to arm lines without a probe site, build sonde-agent with the \
        `native` feature (features = [\"native\"]), set SONDE_AGENT_NATIVE=1 and build with \
        debug = 2 in the Cargo profile; or add a probe!() on the line";
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    const NATIVE_OFF: &str = "lines without a probe site can be armed natively only on Linux \
        x86_64; here add a probe!() on the line";

    fn unbound_message(&self, spec: &TracepointSpec) -> String {
        let mut same_file: Vec<&'static Site> = self
            .sites
            .iter()
            .copied()
            .filter(|s| path_matches(&spec.path, s.file()))
            .collect();
        if same_file.is_empty() {
            return format!(
                "no probe site in a file matching {:?} ({} sites in this process)",
                spec.path,
                self.sites.len()
            );
        }
        same_file.sort_by_key(|s| s.line().abs_diff(spec.line));
        let nearby: Vec<String> = same_file.iter().take(5).map(|s| s.location()).collect();
        format!(
            "no probe site at {}:{}; nearest sites: {}",
            spec.path,
            spec.line,
            nearby.join(", ")
        )
    }

    /// The status of every tracepoint held.
    pub fn statuses(&self) -> Vec<TracepointStatus> {
        let mut out: Vec<TracepointStatus> = self
            .entries
            .iter()
            .map(|(id, entry)| match &entry.outcome {
                Outcome::Bound { tp, sites } => bound_status(
                    id,
                    &entry.spec,
                    tp,
                    sites.iter().map(|s| s.location()).collect(),
                ),
                #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
                Outcome::Native { tp, handle } => {
                    let sites = vec![handle.location()];
                    match handle.over_budget() {
                        Some(why) => TracepointStatus {
                            id: id.clone(),
                            state: TracepointState::Disarmed,
                            message: why,
                            sites,
                            summary: Some(summary(tp)),
                        },
                        None => {
                            let mut status = bound_status(id, &entry.spec, tp, sites);
                            let mut parts = handle.report.notes.clone();
                            if !status.message.is_empty() {
                                parts.push(std::mem::take(&mut status.message));
                            }
                            status.message = parts.join("; ");
                            status
                        }
                    }
                }
                Outcome::Unbound(message) => TracepointStatus {
                    id: id.clone(),
                    state: TracepointState::Unbound,
                    message: message.clone(),
                    sites: Vec::new(),
                    summary: None,
                },
                Outcome::Failed(message) => TracepointStatus {
                    id: id.clone(),
                    state: TracepointState::Error,
                    message: message.clone(),
                    sites: Vec::new(),
                    summary: None,
                },
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Every probe site of the process, ordered by file and line: the catalog the agent reports.
    /// Sites are link-time statics, so it is the same for the life of the process.
    pub fn catalog(&self) -> Vec<CatalogSite> {
        let mut out: Vec<CatalogSite> = self
            .sites
            .iter()
            .map(|s| CatalogSite {
                file: s.file().replace('\\', "/"),
                line: s.line(),
                module: s.module(),
                names: s.names(),
                fields: s
                    .field_names()
                    .map(|fields| {
                        s.names()
                            .iter()
                            .copied()
                            .zip(fields.iter().copied())
                            .filter(|(_, f)| !f.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect();
        out.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        out
    }

    /// Whether lines without a probe site can be armed natively.
    pub fn native(&self) -> bool {
        #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
        if self.native.is_some() {
            return true;
        }
        false
    }

    /// The native breakpoints, for questions about lines (the catalog's `lines`).
    #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
    pub(crate) fn native_breakpoints(&self) -> Option<crate::native::Native> {
        self.native.clone()
    }

    /// Fires counted by a tracepoint (for tests and diagnostics).
    pub fn fires(&self, id: &str) -> Option<u64> {
        match &self.entries.get(id)?.outcome {
            Outcome::Bound { tp, .. } => Some(tp.fires()),
            #[cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]
            Outcome::Native { tp, .. } => Some(tp.fires()),
            _ => None,
        }
    }
}

/// The status of a tracepoint installed at `sites`.
/// The counters of an installed tracepoint, read from its atomics.
fn summary(tp: &Installed) -> TracepointSummary {
    let (series, overflowed) = tp.metrics.iter().fold((0, 0), |(s, o), m| {
        (
            s + m.series.label_sets() as u64,
            o + m.series.overflowed.load(Ordering::Relaxed),
        )
    });
    TracepointSummary {
        hits: tp.hits(),
        fires: tp.fires(),
        condition_false: tp.condition_false(),
        errors: tp.stats.errors.load(Ordering::Relaxed),
        last_error: tp
            .last_error()
            .map(|(stage, e)| format!("{stage}: {e}"))
            .unwrap_or_default(),
        series,
        overflowed,
        sample_every: tp.sample_every(),
        disarmed: tp.disarmed().is_some() || tp.expired(),
    }
}

fn bound_status(
    id: &str,
    spec: &TracepointSpec,
    tp: &Installed,
    sites: Vec<String>,
) -> TracepointStatus {
    let mut status = bound_state(id, spec, tp, sites);
    status.summary = Some(summary(tp));
    status
}

fn bound_state(
    id: &str,
    spec: &TracepointSpec,
    tp: &Installed,
    sites: Vec<String>,
) -> TracepointStatus {
    match tp.disarmed() {
        Some(reason) => TracepointStatus {
            id: id.to_owned(),
            state: TracepointState::Disarmed,
            message: match reason {
                DisarmReason::Cpu if tp.sample_every() > 1 => format!(
                    "disarmed: evaluation used more than {} of the process's CPU even sampling \
                     1 in {}",
                    percent(tp.cpu_percent()),
                    tp.sample_every()
                ),
                DisarmReason::Cpu => format!(
                    "disarmed: evaluation used more than {} of the process's CPU{}",
                    percent(tp.cpu_percent()),
                    if spec.sampling {
                        " (a tracepoint without metrics does not sample)"
                    } else {
                        " (sampling is off)"
                    }
                ),
                DisarmReason::Errors => format!(
                    "disarmed: more than {} evaluation errors per {:?}; last: {}",
                    tp.budgets.errors,
                    tp.budgets.window,
                    tp.last_error()
                        .map(|(stage, e)| format!("{stage}: {e}"))
                        .unwrap_or_default()
                ),
            },
            sites,
            summary: None,
        },
        None if tp.expired() => TracepointStatus {
            id: id.to_owned(),
            state: TracepointState::Disarmed,
            message: format!(
                "expired: its window ended at {} (Unix ms); it no longer fires",
                spec.window_end_ms.unwrap_or_default()
            ),
            sites,
            summary: None,
        },
        None => TracepointStatus {
            id: id.to_owned(),
            state: TracepointState::Bound,
            message: {
                let sampling = (tp.sample_every() > 1).then(|| {
                    format!(
                        "sampling 1 in {} to stay within {} of process CPU (at least {:?} a \
                         second)",
                        tp.sample_every(),
                        percent(tp.cpu_percent()),
                        tp.budgets.cpu_floor
                    )
                });
                let errors = tp.last_error().map(|(stage, e)| {
                    format!(
                        "{} evaluation errors; last in {stage}: {e}",
                        tp.stats.errors.load(Ordering::Relaxed)
                    )
                });
                sampling
                    .into_iter()
                    .chain(errors)
                    .collect::<Vec<_>>()
                    .join("; ")
            },
            sites,
            summary: None,
        },
    }
}

/// A share in percent as a status says it: `1%`, `0.5%`.
fn percent(p: f64) -> String {
    format!("{}%", (p * 1000.0).round() / 1000.0)
}

struct Compiled {
    condition: Option<Expr>,
    log: Option<Expr>,
    metrics: Vec<(Vec<Label>, Option<Expr>)>,
    variables: BTreeSet<String>,
    /// Every variable path the expressions read (native captures keep only these).
    #[cfg_attr(
        not(all(feature = "native", target_os = "linux", target_arch = "x86_64")),
        allow(dead_code)
    )]
    paths: Vec<sonde_expr::Path>,
}

/// A span point's attributes: every metric's labels, compiled (they compiled, and passed the
/// redaction check, in `compile_all`).
#[cfg(feature = "opentelemetry")]
fn span_labels(spec: &TracepointSpec) -> Vec<(String, crate::tracepoint::span::SpanLabel)> {
    use crate::tracepoint::span::SpanLabel;
    spec.metrics
        .iter()
        .flat_map(|m| m.labels.iter())
        .filter_map(|(key, rule)| {
            let label = match rule {
                LabelRule::Static(s) => SpanLabel::Static(s.clone()),
                LabelRule::Expression(e) => SpanLabel::Expr(compile(e, ExprKind::Label).ok()?),
            };
            Some((key.clone(), label))
        })
        .collect()
}

/// The number of snapshots that may wait to be sent (each at most its byte bound).
const DEFAULT_SNAPSHOT_QUEUE: usize = 64;

/// Refuses an expression that reads a redacted name: its value must not reach a label, a value,
/// a condition, a log line or a watch.
fn check_redacted(field: &str, expr: &Expr) -> Result<(), String> {
    use crate::site::redact;
    use sonde_expr::Segment;
    let redaction = redact::current();
    for path in expr.paths() {
        let names =
            std::iter::once(path.root()).chain(path.segments().iter().filter_map(|s| match s {
                Segment::Field(name) => Some(name.as_str()),
                Segment::Index(_) => None,
            }));
        for name in names {
            if let Some(entry) = redaction.matches(name) {
                return Err(format!(
                    "{field} reads `{path}`, which is redacted (`{name}` matches `{entry}` on the \
                     agent's redaction list): redacted values never leave the process"
                ));
            }
        }
    }
    for name in expr.variables() {
        if let Some(entry) = redaction.matches(name) {
            return Err(format!(
                "{field} reads `{name}`, which is redacted (it matches `{entry}` on the agent's \
                 redaction list): redacted values never leave the process"
            ));
        }
    }
    Ok(())
}

fn compile_all(spec: &TracepointSpec) -> Result<Compiled, String> {
    let mut variables = BTreeSet::new();
    let mut paths: Vec<sonde_expr::Path> = Vec::new();
    let mut one = |field: &str, source: &str, kind: ExprKind| -> Result<Expr, String> {
        let expr = compile(source, kind).map_err(|e| format!("{field}: {e}"))?;
        check_redacted(field, &expr)?;
        variables.extend(expr.variables().iter().cloned());
        for p in expr.paths() {
            if !paths.contains(p) {
                paths.push(p.clone());
            }
        }
        Ok(expr)
    };
    let condition = spec
        .condition
        .as_deref()
        .map(|c| one("args.condition", c, ExprKind::Condition))
        .transpose()?;
    let log = spec
        .log_msg
        .as_deref()
        .map(|l| one("args.log_msg", l, ExprKind::Template))
        .transpose()?;
    let mut metrics = Vec::with_capacity(spec.metrics.len());
    for (i, m) in spec.metrics.iter().enumerate() {
        let value = m
            .value
            .as_deref()
            .map(|v| one(&format!("metrics[{i}].expression"), v, ExprKind::Value))
            .transpose()?;
        let mut labels = Vec::with_capacity(m.labels.len());
        for (j, (_, rule)) in m.labels.iter().enumerate() {
            labels.push(match rule {
                LabelRule::Static(s) => Label::Static(s.clone()),
                LabelRule::Expression(e) => Label::Expr(one(
                    &format!("metrics[{i}].labelExpressions[{j}].expression"),
                    e,
                    ExprKind::Label,
                )?),
            });
        }
        metrics.push((labels, value));
    }
    Ok(Compiled {
        condition,
        log,
        metrics,
        variables,
        paths,
    })
}
