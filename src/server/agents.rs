//! [`Agents`]: the agents that polled or watch recently, with their resource, reported status and
//! probe-site catalog; and [`Judge`], what became of a tracepoint in each agent it targets.

use std::{
    collections::{HashMap, HashSet},
    hash::{DefaultHasher, Hash as _, Hasher as _},
    net::IpAddr,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use sonde_proto::sonde::{StatusReport, TracepointState};

use super::{
    catalog::{Asker, Catalog},
    live::{self, Live},
    state::{Entry, Resource, TenantList},
};

/// How an agent talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// Deep's poll (Deep's agents, or Sonde's agent in poll mode).
    Poll,
    /// Sonde's watch stream.
    Watch,
}

/// The status an agent reported for one tracepoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TracepointStatusView {
    /// The tracepoint.
    pub id: String,
    /// `bound`, `unbound`, `error`, `disarmed` or `unspecified`.
    pub state: &'static str,
    /// Why, for anything but `bound`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// `file:line` of the sites it is bound to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<String>,
    /// Its counters in that agent, when it reported them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Counters>,
}

/// Serialises a shared slice as its elements (serde's `rc` feature not needed for one field).
fn shared_slice<S: serde::Serializer, T: Serialize>(v: &Arc<[T]>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter())
}

/// Longest `last_error` kept from a report.
const MAX_LAST_ERROR: usize = 1024;

/// The counters of one tracepoint, as an agent reported them or summed over agents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Hits while armed and within its window.
    pub hits: u64,
    /// Hits that recorded its metrics or wrote its log line.
    pub fires: u64,
    /// Hits its condition turned away.
    pub condition_false: u64,
    /// Evaluation errors.
    pub errors: u64,
    /// The last evaluation error (`stage: message`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    /// Label sets its metrics hold.
    pub series: u64,
    /// Label sets folded into the overflow series.
    pub overflowed: u64,
    /// One hit in this many is evaluated (the largest over agents when summed).
    pub sample_every: u64,
    /// Agents that disarmed it (1 or 0 for one agent).
    pub disarmed: u64,
}

impl Counters {
    fn from_wire(w: &sonde_proto::sonde::TracepointSummary) -> Self {
        let mut last_error = w.last_error.clone();
        if last_error.len() > MAX_LAST_ERROR {
            let mut end = MAX_LAST_ERROR;
            while !last_error.is_char_boundary(end) {
                end -= 1;
            }
            last_error.truncate(end);
        }
        Self {
            hits: w.hits,
            fires: w.fires,
            condition_false: w.condition_false,
            errors: w.errors,
            last_error,
            series: w.series,
            overflowed: w.overflowed,
            sample_every: w.sample_every.max(1),
            disarmed: u64::from(w.disarmed),
        }
    }

    /// Adds one agent's counters (the last error of the first agent that has one stays).
    pub fn add(&mut self, other: &Counters) {
        self.hits += other.hits;
        self.fires += other.fires;
        self.condition_false += other.condition_false;
        self.errors += other.errors;
        if self.last_error.is_empty() {
            self.last_error.clone_from(&other.last_error);
        }
        self.series += other.series;
        self.overflowed += other.overflowed;
        self.sample_every = self.sample_every.max(other.sample_every);
        self.disarmed += other.disarmed;
    }
}

/// A [`TracepointStatusView`] read back from another replica's copy of an agent.
#[derive(Deserialize)]
struct StatusWire {
    id: String,
    state: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    sites: Vec<String>,
    #[serde(default)]
    summary: Option<Counters>,
}

impl<'de> Deserialize<'de> for TracepointStatusView {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = StatusWire::deserialize(d)?;
        Ok(Self {
            state: ["bound", "unbound", "error", "disarmed"]
                .into_iter()
                .find(|s| *s == w.state)
                .unwrap_or("unspecified"),
            id: w.id,
            message: w.message,
            sites: w.sites,
            summary: w.summary,
        })
    }
}

/// One agent as `GET /api/agents` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentView {
    /// The agent's ID (its own for Sonde agents; for pollers their `service.instance.id`, else
    /// derived from resource and address).
    pub id: String,
    /// How it talks to the server.
    pub kind: AgentKind,
    /// Its address as the server saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// Its resource attributes.
    pub resource: std::collections::BTreeMap<String, String>,
    /// First contact, Unix milliseconds.
    pub first_seen_ms: u64,
    /// Last poll, watch message or report, Unix milliseconds.
    pub last_seen_ms: u64,
    /// Polls answered (including watch messages sent).
    pub polls: u64,
    /// Whether a watch stream is open now.
    pub watching: bool,
    /// The hash of the list it last received.
    pub current_hash: String,
    /// Per-tracepoint status, as last reported (Sonde agents only), ordered by tracepoint ID;
    /// shared, so that listing agents copies no statuses.
    #[serde(serialize_with = "shared_slice")]
    pub tracepoints: Arc<[TracepointStatusView]>,
    /// The hash of the list its last status report was about (empty: none, or not said).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reported_hash: String,
    /// How many probe sites its catalog lists (absent: it reported none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sites: Option<usize>,
}

#[derive(Debug)]
struct Agent {
    view: AgentView,
    last_seen: Instant,
    watches: usize,
    /// Whether it reports status (it watched, reported or sent a catalog): Deep's agents do not.
    reports: bool,
    catalog: Option<Arc<Catalog>>,
    /// Its open `CatalogService/Serve` stream, for questions about native lines.
    asker: Option<Asker>,
}

/// One live agent with what it reported, for catalog and binding questions.
#[derive(Debug, Clone)]
pub struct LiveAgent {
    /// As `GET /api/agents` shows it.
    pub view: AgentView,
    /// Whether it reports status at all.
    pub reports: bool,
    /// Its latest catalog.
    pub catalog: Option<Arc<Catalog>>,
    /// Where to ask it about native lines (while its question stream is open).
    pub asker: Option<Asker>,
}

impl LiveAgent {
    /// Its resource, for targeting.
    pub fn resource(&self) -> Resource {
        Resource::from_pairs(self.view.resource.clone())
    }
}

/// What became of a tracepoint in one agent it targets.
#[derive(Debug, Clone, Serialize)]
pub struct Binding {
    /// The agent.
    pub agent: String,
    /// Its `service.name`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// `bound`, `unbound`, `error`, `disarmed`; `pending` until the agent has reported on the
    /// current version; `silent` for an agent that never reports (Deep's).
    pub state: &'static str,
    /// The agent's message.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// `file:line` of the sites it is bound to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<String>,
    /// Its counters in this agent (from the agent's report on the current version).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
}

/// Counts of [`Binding`] states: what `sonde tracepoint list` shows as `3/4 bound, 1 error`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BindingSummary {
    /// Live agents the tracepoint targets.
    pub agents: usize,
    /// Agents that bound it.
    pub bound: usize,
    /// Agents with no probe site (or native line) for it.
    pub unbound: usize,
    /// Agents that could not install it.
    pub error: usize,
    /// Agents that disarmed it (budgets, window).
    pub disarmed: usize,
    /// Agents that have not reported on its current version yet.
    pub pending: usize,
    /// Agents that report no status (Deep's).
    pub silent: usize,
    /// Hits summed over the agents that reported counters.
    pub hits: u64,
    /// Evaluation errors summed over those agents.
    pub errors_total: u64,
}

impl BindingSummary {
    /// Counts the states of `bindings`.
    pub fn of(bindings: &[Binding]) -> Self {
        let mut s = Self {
            agents: bindings.len(),
            ..Self::default()
        };
        for b in bindings {
            if let Some(c) = &b.counters {
                s.hits += c.hits;
                s.errors_total += c.errors;
            }
            match b.state {
                "bound" => s.bound += 1,
                "unbound" => s.unbound += 1,
                "disarmed" => s.disarmed += 1,
                "pending" => s.pending += 1,
                "silent" => s.silent += 1,
                _ => s.error += 1,
            }
        }
        s
    }
}

/// Problems a tracepoint at `config`'s line will meet in the live agents it targets, foreseen from
/// their catalogs: only agents that reported one and do not arm lines natively are judged (for the
/// others the line may still bind). Empty when every judged agent has a probe site there.
pub fn placement_warnings(
    config: &sonde_proto::tracepoint::TracePointConfig,
    agents: &[LiveAgent],
) -> Vec<String> {
    let (path, line) = (config.path.as_str(), config.line_number);
    let judged: Vec<&Catalog> = agents
        .iter()
        .filter(|a| a.resource().matches(&config.targeting))
        .filter_map(|a| a.catalog.as_deref())
        .filter(|c| !c.native)
        .collect();
    let missing: Vec<&Catalog> = judged
        .iter()
        .copied()
        .filter(|c| !c.has_site(path, line))
        .collect();
    if missing.is_empty() {
        return Vec::new();
    }
    let mut nearest: Vec<&super::catalog::SiteView> = missing
        .iter()
        .flat_map(|c| c.nearest(path, line, 5))
        .collect();
    nearest.sort_by_key(|s| (s.line.abs_diff(line), s.line, &s.file));
    nearest.dedup_by(|a, b| a.file == b.file && a.line == b.line);
    nearest.truncate(5);
    let problem = format!(
        "no probe site at {path}:{line} in {} of the {} targeted agent(s) that reported their \
         probe sites (and arm no lines natively): it will stay unbound there",
        missing.len(),
        judged.len()
    );
    let hint = if nearest.is_empty() {
        format!("no probe site in a file matching {path:?}; `sonde sites` lists them")
    } else {
        format!(
            "nearest probe lines in that file: {}",
            nearest
                .iter()
                .map(|s| format!("{}:{} ({})", s.file, s.line, s.names.join(", ")))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    vec![format!("{problem}; {hint}")]
}

/// Judges what became of tracepoints in the live agents of a tenant. Built once per request: each
/// agent's resource, whether its last report is about the list it should hold now (its reported
/// hash is the hash of the current list for its resource, so after an edit an agent is `pending`
/// until it reports on the new version), and its statuses by tracepoint ID. Judging one
/// tracepoint is then linear in the agents, and all of them (`GET /api/status`) in agents times
/// tracepoints.
pub struct Judge<'a> {
    agents: Vec<Judged<'a>>,
}

/// What the list hash of an agent depends on: whether it has no attributes at all (it then
/// matches every tracepoint), and its attributes that some tracepoint targets.
type HashKey<'a> = (bool, Vec<(&'a str, &'a str)>);

struct Judged<'a> {
    agent: &'a LiveAgent,
    resource: Resource,
    current: bool,
}

impl Judged<'_> {
    /// Its status for tracepoint `id` (statuses are kept ordered by ID).
    fn status(&self, id: &str) -> Option<&TracepointStatusView> {
        let all = &self.agent.view.tracepoints;
        all.binary_search_by(|t| t.id.as_str().cmp(id))
            .ok()
            .map(|i| &all[i])
    }
}

impl<'a> Judge<'a> {
    /// Prepares `agents` against `list`. The hash of the list each agent should hold depends
    /// only on its attributes that some tracepoint targets, so agents alike in those (the
    /// instances of one service) share one computation of it.
    pub fn new(list: &TenantList, agents: &'a [LiveAgent]) -> Self {
        let keys: std::collections::BTreeSet<&str> = list
            .iter()
            .flat_map(|e| e.config.targeting.iter().map(|kv| kv.key.as_str()))
            .collect();
        let mut hashes: HashMap<HashKey<'_>, String> = HashMap::new();
        Self {
            agents: agents
                .iter()
                .map(|a| {
                    let resource = a.resource();
                    let current = a.view.reported_hash.is_empty() || {
                        let key = (
                            a.view.resource.is_empty(),
                            a.view
                                .resource
                                .iter()
                                .filter(|(k, _)| keys.contains(k.as_str()))
                                .map(|(k, v)| (k.as_str(), v.as_str()))
                                .collect(),
                        );
                        let hash = hashes
                            .entry(key)
                            .or_insert_with(|| list.hash_for_client(&resource));
                        a.view.reported_hash == *hash
                    };
                    Judged {
                        agent: a,
                        resource,
                        current,
                    }
                })
                .collect(),
        }
    }

    /// The counts of [`Judge::binding`] for every tracepoint of `list`, in its order, without
    /// building the bindings: per agent one merge of the list with its statuses (both ordered by
    /// ID), so the cost is agents times (tracepoints + statuses) string comparisons.
    pub fn summaries(&self, list: &TenantList) -> Vec<BindingSummary> {
        let entries: Vec<&Arc<Entry>> = list.iter().collect();
        let mut out = vec![BindingSummary::default(); entries.len()];
        for j in &self.agents {
            let statuses = &j.agent.view.tracepoints;
            let mut next = 0;
            for (entry, s) in entries.iter().zip(out.iter_mut()) {
                let id = entry.config.id.as_str();
                while next < statuses.len() && statuses[next].id.as_str() < id {
                    next += 1;
                }
                if !j.resource.matches(&entry.config.targeting) {
                    continue;
                }
                let status = statuses.get(next).filter(|t| t.id == id);
                s.agents += 1;
                let state = match status {
                    _ if !j.agent.reports => "silent",
                    Some(t) if j.current => {
                        if let Some(c) = &t.summary {
                            s.hits += c.hits;
                            s.errors_total += c.errors;
                        }
                        t.state
                    }
                    _ => "pending",
                };
                match state {
                    "bound" => s.bound += 1,
                    "unbound" => s.unbound += 1,
                    "disarmed" => s.disarmed += 1,
                    "pending" => s.pending += 1,
                    "silent" => s.silent += 1,
                    _ => s.error += 1,
                }
            }
        }
        out
    }

    /// What became of `entry` in each agent it targets.
    pub fn binding(&self, entry: &Entry) -> Vec<Binding> {
        let id = entry.config.id.as_str();
        self.agents
            .iter()
            .filter(|j| j.resource.matches(&entry.config.targeting))
            .map(|j| {
                let a = j.agent;
                let (state, message, sites, counters) = match j.status(id) {
                    _ if !a.reports => (
                        "silent",
                        "this agent does not report status (Deep's agents do not)".to_owned(),
                        Vec::new(),
                        None,
                    ),
                    Some(t) if j.current => (
                        t.state,
                        t.message.clone(),
                        t.sites.clone(),
                        t.summary.clone(),
                    ),
                    _ => ("pending", String::new(), Vec::new(), None),
                };
                Binding {
                    agent: a.view.id.clone(),
                    service: a
                        .view
                        .resource
                        .get("service.name")
                        .cloned()
                        .unwrap_or_default(),
                    state,
                    message,
                    sites,
                    counters,
                }
            })
            .collect()
    }
}

/// Agents by ID, per tenant: nested (not keyed by a `(tenant, id)` pair) so that looking up a
/// known agent, once per poll, borrows the request's strings instead of allocating a key.
type ByTenant = HashMap<String, HashMap<String, Agent>>;

/// The agents of every tenant.
#[derive(Debug)]
pub struct Agents {
    ttl: Duration,
    inner: Mutex<ByTenant>,
    /// Catalogs by content hash, so the many agents of one binary share one copy.
    catalogs: Mutex<HashMap<u64, Weak<Catalog>>>,
    /// Agents other replicas serve, by tenant, with when their replica last wrote them (Unix
    /// ms; see [`Agents::set_remote`]); empty with one server.
    remote: Mutex<HashMap<String, Vec<(u64, AgentView)>>>,
    /// Hits, fires and errors per tracepoint over the last minutes.
    live: Live,
}

impl Agents {
    /// Agents are listed while seen within `ttl` or while they hold a watch.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(HashMap::new()),
            catalogs: Mutex::new(HashMap::new()),
            remote: Mutex::new(HashMap::new()),
            live: Live::default(),
        }
    }

    /// The ID of a poller (a poll carries no agent ID): its resource's `service.instance.id`
    /// when it has one (Sonde's agent sets it to the ID it sends with its status reports, so a
    /// Sonde agent in poll mode is one agent, not a poller plus a reporter), else derived from
    /// its resource and address.
    pub fn poller_id(resource: &Resource, address: Option<IpAddr>) -> String {
        if let Some(id) = resource
            .get("service.instance.id")
            .filter(|id| !id.is_empty() && id.len() <= 128)
        {
            return id.to_owned();
        }
        let mut h = DefaultHasher::new();
        resource.hash(&mut h);
        address.hash(&mut h);
        format!("poll-{:016x}", h.finish())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ByTenant> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a poll (or a message sent on a watch) answered with `hash`.
    pub fn seen(
        &self,
        tenant: &str,
        id: &str,
        kind: AgentKind,
        resource: &Resource,
        address: Option<IpAddr>,
        hash: &str,
    ) {
        let now = Instant::now();
        let mut agents = self.lock();
        // The common case, an agent already known, allocates nothing.
        if let Some(agent) = agents.get_mut(tenant).and_then(|t| t.get_mut(id)) {
            agent.last_seen = now;
            agent.view.last_seen_ms = unix_ms();
            agent.view.polls += 1;
            // The latest way it talked decides (a catalog may have made it known before its
            // first poll).
            agent.view.kind = kind;
            agent.reports |= kind == AgentKind::Watch;
            if agent.view.current_hash != hash {
                agent.view.current_hash = hash.to_owned();
            }
            if agent.view.resource.len() != resource.pairs().len() {
                agent.view.resource = resource.pairs().iter().cloned().collect();
            }
            return;
        }
        let ms = unix_ms();
        agents.entry(tenant.to_owned()).or_default().insert(
            id.to_owned(),
            Agent {
                view: AgentView {
                    id: id.to_owned(),
                    kind,
                    address,
                    resource: resource.pairs().iter().cloned().collect(),
                    first_seen_ms: ms,
                    last_seen_ms: ms,
                    polls: 1,
                    watching: false,
                    current_hash: hash.to_owned(),
                    tracepoints: Arc::default(),
                    reported_hash: String::new(),
                    sites: None,
                },
                last_seen: now,
                watches: 0,
                reports: kind == AgentKind::Watch,
                catalog: None,
                asker: None,
            },
        );
    }

    /// Marks a watch stream opened (`true`) or closed (`false`).
    pub fn watching(&self, tenant: &str, id: &str, open: bool) {
        let mut agents = self.lock();
        if let Some(agent) = agents.get_mut(tenant).and_then(|t| t.get_mut(id)) {
            if open {
                agent.watches += 1;
            } else {
                agent.watches = agent.watches.saturating_sub(1);
                agent.last_seen = Instant::now();
                agent.view.last_seen_ms = unix_ms();
            }
            agent.view.watching = agent.watches > 0;
        }
    }

    /// Runs `f` on an agent that sent a report or a catalog, making it known first.
    fn reporting(
        &self,
        tenant: &str,
        id: &str,
        resource: Option<&sonde_proto::resource::Resource>,
        address: Option<IpAddr>,
        f: impl FnOnce(&mut Agent),
    ) {
        let mut agents = self.lock();
        if !agents.get(tenant).is_some_and(|t| t.contains_key(id)) {
            drop(agents);
            let resource = resource
                .map(|r| Resource::from_attributes(&r.attributes))
                .unwrap_or_default();
            self.seen(tenant, id, AgentKind::Watch, &resource, address, "");
            agents = self.lock();
        }
        if let Some(agent) = agents.get_mut(tenant).and_then(|t| t.get_mut(id)) {
            agent.last_seen = Instant::now();
            agent.view.last_seen_ms = unix_ms();
            agent.reports = true;
            f(agent);
        }
    }

    /// Stores an agent's probe-site catalog (it replaces the previous one).
    pub fn catalog(
        &self,
        tenant: &str,
        id: &str,
        resource: Option<&sonde_proto::resource::Resource>,
        address: Option<IpAddr>,
        catalog: Catalog,
    ) {
        let catalog = self.intern(catalog);
        self.reporting(tenant, id, resource, address, |agent| {
            agent.view.sites = Some(catalog.sites.len());
            agent.catalog = Some(catalog);
        });
    }

    /// Records an agent's question stream (it replaces an older one).
    pub fn asker(
        &self,
        tenant: &str,
        id: &str,
        resource: Option<&sonde_proto::resource::Resource>,
        address: Option<IpAddr>,
        asker: Asker,
    ) {
        self.reporting(tenant, id, resource, address, |agent| {
            agent.asker = Some(asker);
        });
    }

    /// Forgets an agent's question stream `stream` when it ends (not a newer one).
    pub fn asker_gone(&self, tenant: &str, id: &str, stream: u64) {
        let mut agents = self.lock();
        if let Some(agent) = agents.get_mut(tenant).and_then(|t| t.get_mut(id))
            && agent.asker.as_ref().is_some_and(|a| a.stream == stream)
        {
            agent.asker = None;
        }
    }

    /// The shared copy of `catalog`: agents running the same binary report equal catalogs.
    fn intern(&self, catalog: Catalog) -> Arc<Catalog> {
        let mut h = DefaultHasher::new();
        catalog.hash(&mut h);
        let key = h.finish();
        let mut catalogs = self.catalogs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shared) = catalogs.get(&key).and_then(Weak::upgrade)
            && *shared == catalog
        {
            return shared;
        }
        let shared = Arc::new(catalog);
        catalogs.insert(key, Arc::downgrade(&shared));
        shared
    }

    /// The tenant's live agents with their catalogs, most recent first.
    pub fn live_agents(&self, tenant: &str) -> Vec<LiveAgent> {
        let now = Instant::now();
        let agents = self.lock();
        let mut out: Vec<_> = agents
            .get(tenant)
            .into_iter()
            .flat_map(HashMap::values)
            .filter(|a| a.watches > 0 || now - a.last_seen <= self.ttl)
            .map(|a| LiveAgent {
                view: a.view.clone(),
                reports: a.reports,
                catalog: a.catalog.clone(),
                asker: a.asker.clone(),
            })
            .collect();
        drop(agents);
        // A set, not a scan of `out` per remote agent: with thousands on each replica that
        // scan was quadratic.
        let local: HashSet<&str> = out.iter().map(|a| a.view.id.as_str()).collect();
        let remote = self.remote_of(tenant, |id| local.contains(id));
        drop(local);
        for view in remote {
            out.push(LiveAgent {
                reports: view.kind == AgentKind::Watch || !view.tracepoints.is_empty(),
                view,
                catalog: None,
                asker: None,
            });
        }
        out.sort_by(|a, b| {
            b.view
                .last_seen_ms
                .cmp(&a.view.last_seen_ms)
                .then(a.view.id.cmp(&b.view.id))
        });
        out
    }

    /// Stores an agent's status report (it replaces the previous one), and adds how far its
    /// counters moved since its previous report to the tenant's [`Live`] rates.
    pub fn report(&self, tenant: &str, report: &StatusReport, address: Option<IpAddr>) {
        let mut moved: Vec<(String, Counters)> = Vec::new();
        self.reporting(
            tenant,
            &report.agent_id,
            report.resource.as_ref(),
            address,
            |agent| {
                agent.view.reported_hash = report.config_hash.clone();
                let views: Vec<TracepointStatusView> = report
                    .tracepoints
                    .iter()
                    .map(|s| TracepointStatusView {
                        id: s.tracepoint_id.clone(),
                        state: match TracepointState::try_from(s.state) {
                            Ok(TracepointState::Bound) => "bound",
                            Ok(TracepointState::Unbound) => "unbound",
                            Ok(TracepointState::Error) => "error",
                            Ok(TracepointState::Disarmed) => "disarmed",
                            _ => "unspecified",
                        },
                        message: s.message.clone(),
                        sites: s.sites.clone(),
                        summary: s.summary.as_ref().map(Counters::from_wire),
                    })
                    .collect();
                let mut views = views;
                views.sort_by(|a, b| a.id.cmp(&b.id));
                let old = &agent.view.tracepoints;
                for view in &views {
                    let Some(now) = &view.summary else { continue };
                    let before = old
                        .binary_search_by(|t| t.id.as_str().cmp(&view.id))
                        .ok()
                        .and_then(|i| old[i].summary.as_ref());
                    moved.push((view.id.clone(), live::moved(before, now)));
                }
                agent.view.tracepoints = views.into();
            },
        );
        if !moved.is_empty() {
            self.live.add(tenant, moved);
        }
    }

    /// The recent rates of one tracepoint (see [`Live::rates`]).
    pub fn rates(&self, tenant: &str, tracepoint: &str) -> Vec<live::Rate> {
        self.live.rates(tenant, tracepoint)
    }

    /// The tenant's agents seen within the TTL or watching now, most recent first.
    pub fn list(&self, tenant: &str) -> Vec<AgentView> {
        let now = Instant::now();
        let agents = self.lock();
        let mut out: Vec<_> = agents
            .get(tenant)
            .into_iter()
            .flat_map(HashMap::values)
            .filter(|a| a.watches > 0 || now - a.last_seen <= self.ttl)
            .map(|a| a.view.clone())
            .collect();
        drop(agents);
        let local: HashSet<&str> = out.iter().map(|a| a.id.as_str()).collect();
        let remote = self.remote_of(tenant, |id| local.contains(id));
        drop(local);
        out.extend(remote);
        out.sort_by(|a, b| b.last_seen_ms.cmp(&a.last_seen_ms).then(a.id.cmp(&b.id)));
        out
    }

    /// The agents of every tenant this replica serves now, for sharing with other replicas.
    pub fn local_views(&self) -> Vec<(String, AgentView)> {
        let now = Instant::now();
        self.lock()
            .iter()
            .flat_map(|(tenant, agents)| {
                agents
                    .values()
                    .filter(move |a| a.watches > 0 || now - a.last_seen <= self.ttl)
                    .map(move |a| (tenant.clone(), a.view.clone()))
            })
            .collect()
    }

    /// Replaces what this replica knows of the agents other replicas serve, each with when its
    /// replica last wrote it (their catalogs stay with them). An agent this replica serves
    /// itself is shown as it sees it; one not rewritten within the TTL is not shown (its replica
    /// is gone, or the database is).
    pub fn set_remote(&self, remote: HashMap<String, Vec<(u64, AgentView)>>) {
        *self.remote.lock().unwrap_or_else(|p| p.into_inner()) = remote;
    }

    /// Another replica's live agents of `tenant` that `local` does not hold.
    fn remote_of(&self, tenant: &str, local: impl Fn(&str) -> bool) -> Vec<AgentView> {
        let horizon = unix_ms().saturating_sub(self.ttl.as_millis() as u64);
        let remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
        remote
            .get(tenant)
            .into_iter()
            .flatten()
            .filter(|(written, v)| *written >= horizon && !local(&v.id))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// How many agents are live over all tenants.
    pub fn live(&self) -> usize {
        let now = Instant::now();
        self.lock()
            .values()
            .flat_map(HashMap::values)
            .filter(|a| a.watches > 0 || now - a.last_seen <= self.ttl)
            .count()
    }

    /// Forgets agents not seen for ten TTLs (their memory is bounded by the live set).
    pub fn prune(&self) {
        let now = Instant::now();
        let horizon = self.ttl * 10;
        self.lock().retain(|_, tenant| {
            tenant.retain(|_, a| a.watches > 0 || now - a.last_seen <= horizon);
            !tenant.is_empty()
        });
        self.catalogs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, c| c.strong_count() > 0);
        self.live.prune();
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_proto::sonde::TracepointStatus;

    #[test]
    fn other_replicas_agents_are_listed_unless_served_here_or_stale() {
        let agents = Agents::new(Duration::from_secs(60));
        agents.seen(
            "t",
            "here",
            AgentKind::Watch,
            &Resource::default(),
            None,
            "h1",
        );
        let (_, mut here_elsewhere) = agents.local_views().remove(0);
        here_elsewhere.current_hash = "stale".into();
        let json = serde_json::to_string(&here_elsewhere).unwrap();
        let mut there: AgentView = serde_json::from_str(&json).unwrap();
        there.id = "there".into();
        there.tracepoints = vec![TracepointStatusView {
            id: "tp".into(),
            state: "bound",
            message: String::new(),
            sites: vec!["a.rs:1".into()],
            summary: Some(Counters {
                hits: 7,
                fires: 5,
                ..Counters::default()
            }),
        }]
        .into();
        let round_trip: AgentView =
            serde_json::from_str(&serde_json::to_string(&there).unwrap()).unwrap();
        assert_eq!(
            round_trip.tracepoints, there.tracepoints,
            "states survive JSON"
        );
        let mut gone = there.clone();
        gone.id = "gone".into();
        let now = unix_ms();
        agents.set_remote(HashMap::from([(
            "t".to_owned(),
            vec![(now, here_elsewhere), (now, there), (now - 61_000, gone)],
        )]));
        let list: Vec<_> = agents
            .list("t")
            .into_iter()
            .map(|a| (a.id, a.current_hash))
            .collect();
        assert_eq!(
            list,
            [
                ("here".into(), "h1".into()),
                ("there".into(), "stale".into())
            ],
            "this replica's view of its own agent wins; one not rewritten within the TTL is gone"
        );
        let live = agents.live_agents("t");
        assert!(live.iter().any(|a| a.view.id == "there" && a.reports));
        assert!(agents.list("other").is_empty());
    }

    #[test]
    fn agents_expire_after_the_ttl_unless_watching() {
        // A short TTL, with no fixed sleep: a listing counts only when it was taken within the
        // TTL of the agents' last sighting (a loaded machine may stall longer; then look again),
        // and the expiry is waited for, not slept on.
        let ttl = Duration::from_millis(30);
        let agents = Agents::new(ttl);
        let r = Resource::from_pairs([("service.name".into(), "shop".into())]);
        agents.seen("t", "b", AgentKind::Watch, &r, None, "h1");
        agents.watching("t", "b", true);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = Instant::now();
            agents.seen("t", "a", AgentKind::Poll, &r, None, "h1");
            let listed = agents.list("t").len();
            if seen.elapsed() < ttl {
                assert_eq!(listed, 2, "both are listed within the TTL");
                break;
            }
            assert!(Instant::now() < deadline, "never listed within {ttl:?}");
        }
        assert!(agents.list("other").is_empty(), "tenants are separate");
        let deadline = Instant::now() + Duration::from_secs(30);
        let live = loop {
            let live: Vec<_> = agents.list("t").into_iter().map(|a| a.id).collect();
            if live.len() < 2 || Instant::now() > deadline {
                break live;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(live, vec!["b"], "the poller expired, the watcher stays");
        assert_eq!(agents.live(), 1);
    }

    #[test]
    fn a_poller_with_an_instance_id_is_one_agent_with_its_reports() {
        let agents = Agents::new(Duration::from_secs(60));
        let r = Resource::from_pairs([
            ("service.name".into(), "shop".into()),
            ("service.instance.id".into(), "agent-9".into()),
        ]);
        let id = Agents::poller_id(&r, None);
        assert_eq!(id, "agent-9");
        agents.seen("t", &id, AgentKind::Poll, &r, None, "h1");
        let report = StatusReport {
            agent_id: "agent-9".into(),
            ..Default::default()
        };
        agents.report("t", &report, None);
        let list = agents.list("t");
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0].kind, AgentKind::Poll);

        let anonymous = Resource::from_pairs([("service.name".into(), "py".into())]);
        assert!(Agents::poller_id(&anonymous, None).starts_with("poll-"));
    }

    #[test]
    fn a_line_off_every_probe_warns_naming_the_nearest_ones() {
        use sonde_proto::{
            common::{AnyValue, KeyValue, any_value},
            sonde::{ProbeSite, SiteCatalog, SiteKind},
            tracepoint::TracePointConfig,
        };
        let agents = Agents::new(Duration::from_secs(60));
        let r = sonde_proto::resource::Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("shop".into())),
                }),
            }],
            dropped_attributes_count: 0,
        };
        let probe = |line| ProbeSite {
            file: "examples/shop.rs".into(),
            line,
            kind: SiteKind::Probe as i32,
            names: vec!["order".into()],
            module: String::new(),
            fields: Vec::new(),
        };
        let catalog = |native| {
            Catalog::from_wire(&SiteCatalog {
                sites: vec![probe(220), probe(228)],
                native,
                ..Default::default()
            })
            .unwrap()
        };
        agents.catalog("t", "a", Some(&r), None, catalog(false));
        let at = |line| TracePointConfig {
            path: "shop.rs".into(),
            line_number: line,
            ..Default::default()
        };
        agents.catalog("t", "b", Some(&r), None, catalog(false));
        let live = agents.live_agents("t");
        assert!(
            Arc::ptr_eq(
                live[0].catalog.as_ref().unwrap(),
                live[1].catalog.as_ref().unwrap()
            ),
            "equal catalogs are shared"
        );
        assert!(placement_warnings(&at(228), &live).is_empty());
        let warnings = placement_warnings(&at(229), &live);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("no probe site at shop.rs:229 in 2 of the 2 targeted agent")
                && warnings[0].ends_with(
                    "nearest probe lines in that file: examples/shop.rs:228 (order), \
                     examples/shop.rs:220 (order)"
                ),
            "{warnings:?}"
        );
        let mut elsewhere = at(229);
        elsewhere.targeting = vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("other".into())),
            }),
        }];
        assert!(
            placement_warnings(&elsewhere, &live).is_empty(),
            "not targeted"
        );
        agents.catalog("t", "a", Some(&r), None, catalog(true));
        agents.catalog("t", "b", Some(&r), None, catalog(true));
        let live = agents.live_agents("t");
        assert!(
            placement_warnings(&at(229), &live).is_empty(),
            "native may bind it"
        );
    }

    #[test]
    fn the_merged_counts_equal_the_bindings_counted() {
        use sonde_proto::{
            common::{AnyValue, KeyValue, any_value},
            resource::Resource as WireResource,
            sonde::TracepointSummary,
            tracepoint::TracePointConfig,
        };
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
        };
        let tp = |id: &str, service: Option<&str>| TracePointConfig {
            id: id.into(),
            path: "a.rs".into(),
            line_number: 1,
            targeting: service.map(|s| kv("service.name", s)).into_iter().collect(),
            ..Default::default()
        };
        let list = TenantList::of(vec![
            tp("a", None),
            tp("b", Some("shop")),
            tp("c", Some("other")),
            tp("d", None),
        ]);
        let agents = Agents::new(Duration::from_secs(60));
        let resource = |s: &str| WireResource {
            attributes: vec![kv("service.name", s)],
            dropped_attributes_count: 0,
        };
        let status = |id: &str, state: TracepointState, hits: u64| TracepointStatus {
            tracepoint_id: id.into(),
            state: state as i32,
            message: String::new(),
            sites: vec![],
            summary: Some(TracepointSummary {
                hits,
                ..Default::default()
            }),
        };
        // Statuses out of order: the server keeps them sorted.
        agents.report(
            "t",
            &StatusReport {
                agent_id: "one".into(),
                resource: Some(resource("shop")),
                tracepoints: vec![
                    status("d", TracepointState::Error, 0),
                    status("a", TracepointState::Bound, 5),
                    status("b", TracepointState::Unbound, 0),
                ],
                ..Default::default()
            },
            None,
        );
        agents.report(
            "t",
            &StatusReport {
                agent_id: "two".into(),
                resource: Some(resource("other")),
                tracepoints: vec![status("c", TracepointState::Bound, 7)],
                ..Default::default()
            },
            None,
        );
        let r = Resource::from_pairs([("service.name".into(), "py".into())]);
        agents.seen("t", "deep", AgentKind::Poll, &r, None, "h");
        let live = agents.live_agents("t");
        let judge = Judge::new(&list, &live);
        let merged = judge.summaries(&list);
        for (entry, merged) in list.iter().zip(&merged) {
            let counted = BindingSummary::of(&judge.binding(entry));
            assert_eq!(
                serde_json::to_value(merged).unwrap(),
                serde_json::to_value(&counted).unwrap(),
                "{}",
                entry.config.id
            );
        }
        assert_eq!(
            (merged[0].agents, merged[0].bound, merged[0].pending),
            (3, 1, 1)
        );
        assert_eq!(merged[0].silent + merged[0].hits as usize, 1 + 5);
        assert_eq!(
            (merged[2].agents, merged[2].bound, merged[2].hits),
            (1, 1, 7)
        );
        assert_eq!(merged[3].error, 1);
    }

    #[test]
    fn a_report_replaces_the_previous_status() {
        let agents = Agents::new(Duration::from_secs(60));
        let status = |id: &str, state: TracepointState| TracepointStatus {
            tracepoint_id: id.into(),
            state: state as i32,
            message: String::new(),
            sites: vec![],
            summary: None,
        };
        let mut report = StatusReport {
            agent_id: "a".into(),
            tracepoints: vec![
                status("1", TracepointState::Bound),
                status("2", TracepointState::Unbound),
            ],
            ..Default::default()
        };
        agents.report("t", &report, None);
        report.tracepoints = vec![status("2", TracepointState::Error)];
        agents.report("t", &report, None);
        let list = agents.list("t");
        assert_eq!(list[0].tracepoints.len(), 1);
        assert_eq!(list[0].tracepoints[0].state, "error");
    }
}
