//! The snapshot sender: takes the snapshots that firing hits queued, finishes them off the
//! application's threads (frames resolved, resource added) and sends each with Deep's
//! `SnapshotService/send` on the client's current connection.
//!
//! While there is no connection, or the server is unavailable, one snapshot waits in hand and
//! the rest in the bounded queue, which drops its oldest past the bound (counted in
//! `sonde_agent_snapshots_dropped_total`); a snapshot the server refuses for any other reason is
//! dropped and counted the same way.

use std::{sync::Arc, time::Duration};

use sonde_proto::{
    common::KeyValue,
    tracepoint::{Snapshot, snapshot_service_client::SnapshotServiceClient},
};
use tokio::sync::watch;
use tonic::{
    Code,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

use crate::{metrics::self_metrics::SelfMetrics, tracepoint::snapshot::SnapshotQueue};

/// How long a send may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait after the server was unavailable before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the sender needs from the client.
pub(super) struct Sender {
    pub queue: Arc<SnapshotQueue>,
    pub channel: watch::Receiver<Option<Channel>>,
    pub auth: Option<MetadataValue<Ascii>>,
    pub tenant: Option<MetadataValue<Ascii>>,
    pub resource: Vec<KeyValue>,
    pub own: Option<Arc<SelfMetrics>>,
}

impl Sender {
    /// Sends until shutdown.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut in_hand: Option<Snapshot> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let channel = self.channel.borrow().clone();
            let Some(channel) = channel else {
                tokio::select! {
                    changed = self.channel.changed() => if changed.is_err() { return },
                    _ = shutdown.changed() => return,
                }
                continue;
            };
            let snapshot = match in_hand.take() {
                Some(s) => s,
                None => match self.queue.pop() {
                    Some(pending) => {
                        let resource = self.resource.clone();
                        // Resolving symbols may read the binary's debug info: not on this
                        // runtime's only thread.
                        match tokio::task::spawn_blocking(move || pending.finish(&resource)).await {
                            Ok(s) => s,
                            Err(_) => continue,
                        }
                    }
                    None => {
                        tokio::select! {
                            _ = self.queue.notify.notified() => {}
                            _ = shutdown.changed() => return,
                        }
                        continue;
                    }
                },
            };
            let mut request = tonic::Request::new(snapshot.clone());
            request.set_timeout(SEND_TIMEOUT);
            if let Some(auth) = &self.auth {
                request.metadata_mut().insert("authorization", auth.clone());
            }
            if let Some(tenant) = &self.tenant {
                request
                    .metadata_mut()
                    .insert("x-scope-orgid", tenant.clone());
            }
            match SnapshotServiceClient::new(channel).send(request).await {
                Ok(_) => {
                    if let Some(own) = &self.own {
                        own.snapshots_sent.inc();
                    }
                }
                Err(status)
                    if matches!(
                        status.code(),
                        Code::Unavailable
                            | Code::DeadlineExceeded
                            | Code::Cancelled
                            | Code::Unknown
                    ) =>
                {
                    tracing::debug!(error = %status.message(), "sonde agent: snapshot not sent; retrying");
                    in_hand = Some(snapshot);
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_AFTER) => {}
                        _ = self.channel.changed() => {}
                        _ = shutdown.changed() => return,
                    }
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), error = %status.message(),
                        "sonde agent: the server refused a snapshot; dropped");
                    self.queue.count_dropped();
                }
            }
        }
    }
}
