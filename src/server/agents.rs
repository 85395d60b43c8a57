//! [`Agents`]: the agents that polled or watch recently, with their resource and reported status.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use sonde_proto::sonde::{StatusReport, TracepointState};

use super::state::Resource;

/// How an agent talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

/// One agent as `GET /api/agents` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    /// The agent's ID (its own for Sonde agents; for pollers their `service.instance.id`, else
    /// derived from resource and address).
    pub id: String,
    /// How it talks to the server.
    pub kind: AgentKind,
    /// Its address as the server saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
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
    /// Per-tracepoint status, as last reported (Sonde agents only).
    pub tracepoints: Vec<TracepointStatusView>,
}

#[derive(Debug)]
struct Agent {
    view: AgentView,
    last_seen: Instant,
    watches: usize,
}

/// Agents by ID, per tenant: nested (not keyed by a `(tenant, id)` pair) so that looking up a
/// known agent, once per poll, borrows the request's strings instead of allocating a key.
type ByTenant = HashMap<String, HashMap<String, Agent>>;

/// The agents of every tenant.
#[derive(Debug)]
pub struct Agents {
    ttl: Duration,
    inner: Mutex<ByTenant>,
}

impl Agents {
    /// Agents are listed while seen within `ttl` or while they hold a watch.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(HashMap::new()),
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
                    tracepoints: Vec::new(),
                },
                last_seen: now,
                watches: 0,
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

    /// Stores an agent's status report (it replaces the previous one).
    pub fn report(&self, tenant: &str, report: &StatusReport, address: Option<IpAddr>) {
        let resource = report
            .resource
            .as_ref()
            .map(|r| Resource::from_attributes(&r.attributes))
            .unwrap_or_default();
        let id = report.agent_id.as_str();
        let mut agents = self.lock();
        if !agents.get(tenant).is_some_and(|t| t.contains_key(id)) {
            drop(agents);
            self.seen(
                tenant,
                &report.agent_id,
                AgentKind::Watch,
                &resource,
                address,
                "",
            );
            agents = self.lock();
        }
        if let Some(agent) = agents.get_mut(tenant).and_then(|t| t.get_mut(id)) {
            agent.last_seen = Instant::now();
            agent.view.last_seen_ms = unix_ms();
            agent.view.tracepoints = report
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
                })
                .collect();
        }
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
        out.sort_by(|a, b| b.last_seen_ms.cmp(&a.last_seen_ms).then(a.id.cmp(&b.id)));
        out
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
    fn a_report_replaces_the_previous_status() {
        let agents = Agents::new(Duration::from_secs(60));
        let status = |id: &str, state: TracepointState| TracepointStatus {
            tracepoint_id: id.into(),
            state: state as i32,
            message: String::new(),
            sites: vec![],
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
