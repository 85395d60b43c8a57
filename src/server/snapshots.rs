//! [`Snapshots`]: the latest snapshots agents sent, per tenant and tracepoint, bounded.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use sonde_proto::tracepoint::Snapshot;

/// Keeps the latest `per_tracepoint` snapshots of each tracepoint, for at most `max_tracepoints`
/// tracepoints per tenant (the ones that reported most recently win).
#[derive(Debug)]
pub struct Snapshots {
    per_tracepoint: usize,
    max_tracepoints: usize,
    inner: Mutex<HashMap<String, Tenant>>,
}

#[derive(Debug, Default)]
struct Tenant {
    by_tracepoint: HashMap<String, VecDeque<Arc<Snapshot>>>,
    /// Tracepoint IDs, least recently written first.
    order: VecDeque<String>,
}

impl Snapshots {
    /// A bounded store.
    pub fn new(per_tracepoint: usize, max_tracepoints: usize) -> Self {
        Self {
            per_tracepoint: per_tracepoint.max(1),
            max_tracepoints: max_tracepoints.max(1),
            inner: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps a snapshot under the ID of the tracepoint it names.
    pub fn add(&self, tenant: &str, snapshot: Snapshot) {
        let tracepoint_id = snapshot
            .tracepoint
            .as_ref()
            .map(|tp| tp.id.clone())
            .unwrap_or_default();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let tenant = inner.entry(tenant.to_owned()).or_default();
        if let Some(pos) = tenant.order.iter().position(|id| *id == tracepoint_id) {
            tenant.order.remove(pos);
        }
        tenant.order.push_back(tracepoint_id.clone());
        while tenant.order.len() > self.max_tracepoints {
            if let Some(oldest) = tenant.order.pop_front() {
                tenant.by_tracepoint.remove(&oldest);
            }
        }
        let list = tenant.by_tracepoint.entry(tracepoint_id).or_default();
        list.push_back(Arc::new(snapshot));
        while list.len() > self.per_tracepoint {
            list.pop_front();
        }
    }

    /// The kept snapshots of one tracepoint, newest first.
    pub fn for_tracepoint(&self, tenant: &str, tracepoint_id: &str) -> Vec<Arc<Snapshot>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .get(tenant)
            .and_then(|t| t.by_tracepoint.get(tracepoint_id))
            .map(|list| list.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_proto::tracepoint::TracePointConfig;

    fn snap(tp: &str, ts: u64) -> Snapshot {
        Snapshot {
            tracepoint: Some(TracePointConfig {
                id: tp.into(),
                ..Default::default()
            }),
            ts_nanos: ts,
            ..Default::default()
        }
    }

    #[test]
    fn keeps_the_latest_per_tracepoint_and_tenant() {
        let s = Snapshots::new(2, 2);
        for ts in 1..=3 {
            s.add("t", snap("a", ts));
        }
        let ts: Vec<_> = s
            .for_tracepoint("t", "a")
            .iter()
            .map(|s| s.ts_nanos)
            .collect();
        assert_eq!(ts, vec![3, 2]);
        assert!(s.for_tracepoint("other", "a").is_empty());

        s.add("t", snap("b", 1));
        s.add("t", snap("c", 1));
        assert!(
            s.for_tracepoint("t", "a").is_empty(),
            "a was the least recent"
        );
        assert_eq!(s.for_tracepoint("t", "c").len(), 1);
    }
}
