//! [`run`]: what keeps a replica in step with the others on a shared store. Changes announced by
//! the store are read back as they come; every tenant's version is compared on each
//! reconnection and every [`RESYNC`], so a lost announcement delays a change by that much at
//! most; and the agents this replica serves are shared through the store every [`SHARE`], so
//! every replica lists every agent.
//!
//! Agents go through the database rather than through announcements: a replica that starts, or
//! comes back from a partition, reads the others' agents at once, and an agent whose replica died
//! disappears by itself when its row is older than the agent TTL. Each replica writes its agents
//! in one statement every [`SHARE`]; an agent whose view did not change (apart from when it
//! was last seen and how many answers it had) is written again only once per third of the TTL,
//! so idle watchers cost little. Catalogs stay with the replica that
//! received them.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::{mpsc, watch};

use super::{
    App,
    agents::AgentView,
    net,
    store::{Change, SharedAgent},
};

/// Period of the version comparison that catches lost announcements.
pub(crate) const RESYNC: Duration = Duration::from_secs(2);

/// Period of agent sharing.
pub(crate) const SHARE: Duration = Duration::from_secs(2);

/// Runs until shutdown: applies announced changes, resyncs, shares agents.
pub(crate) async fn run(
    app: Arc<App>,
    mut changes: mpsc::UnboundedReceiver<Change>,
    mut shutdown: watch::Receiver<bool>,
) {
    let replica = uuid::Uuid::new_v4().to_string();
    tracing::info!(%replica, "sharing changes and agents with the other replicas");
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut share = tokio::time::interval(SHARE);
    share.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written: HashMap<(String, String), (u64, i64)> = HashMap::new();
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Some(Change::Tenant { tenant, version }) => {
                    let app = app.clone();
                    blocking("applying a change", move || {
                        app.tracepoints.refresh(&tenant, version).map(drop)
                    }).await;
                }
                Some(Change::Resync) => resync_now(&app).await,
                None => break,
            },
            _ = resync.tick() => resync_now(&app).await,
            _ = share.tick() => share_agents(&app, &replica, &mut written).await,
            () = net::stopped(&mut shutdown) => break,
        }
    }
}

async fn resync_now(app: &Arc<App>) {
    let app = app.clone();
    blocking("checking tenant versions", move || {
        let read = app.tracepoints.resync()?;
        if read > 0 {
            tracing::debug!(tenants = read, "tenants read back after a version check");
        }
        Ok(())
    })
    .await;
}

/// Writes this replica's changed (or aging) agents and reads the other replicas'. All the work
/// per agent (comparing, serializing, parsing) runs on a blocking thread, so that with
/// thousands of agents a tick does not hold up the watchers' tasks.
async fn share_agents(
    app: &Arc<App>,
    replica: &str,
    written: &mut HashMap<(String, String), (u64, i64)>,
) {
    let app2 = app.clone();
    let replica = replica.to_owned();
    let mut last = std::mem::take(written);
    let shared = blocking("sharing agents", move || {
        let ttl_ms = i64::try_from(app2.config.agent_ttl().as_millis()).unwrap_or(i64::MAX);
        let now = now_ms();
        let mut batch = Vec::new();
        let mut seen = HashMap::new();
        for (tenant, view) in app2.agents.local_views() {
            let fingerprint = fingerprint(&view);
            let key = (tenant, view.id.clone());
            let stale = match last.get(&key) {
                Some((last, at)) => *last != fingerprint || now - at >= ttl_ms / 3,
                None => true,
            };
            if stale {
                let Ok(json) = serde_json::to_string(&view) else {
                    continue;
                };
                batch.push(SharedAgent {
                    tenant: key.0.clone(),
                    id: key.1.clone(),
                    replica: replica.clone(),
                    written_ms: now,
                    view: json,
                });
                seen.insert(key, (fingerprint, now));
            } else if let Some(old) = last.remove(&key) {
                seen.insert(key, old);
            }
        }
        let store = app2.tracepoints.store();
        if let Err(err) = store.put_agents(&replica, &batch) {
            // All written again next time.
            seen.clear();
            tracing::warn!(%err, "sharing agents failed");
        }
        let rows = store.agents(&replica, now - ttl_ms)?;
        // Rows ten TTLs old belong to replicas long gone.
        store.prune_agents(now - ttl_ms.saturating_mul(10))?;
        let mut by_tenant: HashMap<String, Vec<(u64, AgentView)>> = HashMap::new();
        for row in rows {
            match serde_json::from_str::<AgentView>(&row.view) {
                Ok(view) => by_tenant
                    .entry(row.tenant)
                    .or_default()
                    .push((u64::try_from(row.written_ms).unwrap_or_default(), view)),
                Err(err) => {
                    tracing::debug!(%err, id = %row.id, "skipping an unreadable shared agent");
                }
            }
        }
        app2.agents.set_remote(by_tenant);
        Ok(seen)
    })
    .await;
    // On a failure everything is written again next time.
    *written = shared.unwrap_or_default();
}

/// What decides whether an agent's row is written again before it ages: its view without the
/// fields every message moves (when it was last seen, how many answers it had). An agent that
/// only keeps watching is rewritten once per third of the TTL, not on every heartbeat. Its
/// statuses count as changed when a report replaced them (a new shared list; should the new one
/// reuse the old one's address and length, the row is still rewritten within a third of the TTL).
fn fingerprint(view: &AgentView) -> u64 {
    let mut h = DefaultHasher::new();
    view.id.hash(&mut h);
    std::mem::discriminant(&view.kind).hash(&mut h);
    view.address.hash(&mut h);
    view.resource.hash(&mut h);
    view.first_seen_ms.hash(&mut h);
    view.watching.hash(&mut h);
    view.current_hash.hash(&mut h);
    (Arc::as_ptr(&view.tracepoints) as *const () as usize).hash(&mut h);
    view.tracepoints.len().hash(&mut h);
    view.reported_hash.hash(&mut h);
    view.sites.hash(&mut h);
    h.finish()
}

/// Runs `f` on a blocking thread; a failure is logged (the next tick tries again).
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, super::StoreError> + Send + 'static,
) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(err)) => {
            tracing::warn!(%err, "{what} failed");
            None
        }
        Err(err) => {
            tracing::error!(%err, "{what}: the task failed");
            None
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
