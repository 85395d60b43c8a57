//! [`WatchServer`]: Sonde's `WatchService/Watch`, served with answers encoded once and shared.
//!
//! A change wakes every watcher of the tenant at once, and with thousands of them the cost that
//! matters is making each one's answer: cloning the matching tracepoints into a `PollResponse`
//! and encoding it. Watchers whose targeting selects the same tracepoints get the same answer,
//! so each new list makes one answer per distinct client hash
//! ([`TenantList::shared_answer`](crate::server::state::TenantList::shared_answer)) and every
//! watcher sends those bytes (a reference-counted [`Bytes`], copied only into its own HTTP/2
//! frame). The generated `WatchServiceServer` encodes a `PollResponse` per message, so this
//! service stands in for it with a codec whose messages are already encoded ([`Encoded`]);
//! on the wire nothing changes: the same path, the same `PollResponse` messages, and the request
//! decoded as before.
//!
//! Each stream is one task that waits on the tenant's `watch` channel: a write wakes the tasks
//! and returns (no work per watcher on the writer's thread, no lock held across the fan-out).

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{BufMut as _, Bytes};
use futures_util::Stream;
use prost::Message as _;
use sonde_proto::{
    poll::{PollResponse, ResponseType},
    sonde::WatchRequest,
};
use tokio::sync::mpsc;
use tonic::{
    Request, Response, Status,
    body::Body,
    codec::{
        Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf,
        Encoder,
    },
    server::{Grpc as GrpcServer, NamedService, ServerStreamingService},
};

use super::{Grpc, now_nanos};
use crate::server::{
    agents::AgentKind,
    state::{Resource, TenantList},
};

/// The full path of the method.
const WATCH: &str = "/sonde.v1.WatchService/Watch";

/// One `PollResponse`, already encoded.
#[derive(Debug, Clone)]
pub(crate) struct Encoded(Bytes);

impl Encoded {
    fn of(response: &PollResponse) -> Self {
        Self(response.encode_to_vec().into())
    }
}

/// The codec of the watch method: requests decoded with prost, answers written as they are.
#[derive(Debug, Clone, Copy, Default)]
struct SharedCodec;

impl Codec for SharedCodec {
    type Encode = Encoded;
    type Decode = WatchRequest;
    type Encoder = SharedCodec;
    type Decoder = SharedCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for SharedCodec {
    type Item = Encoded;
    type Error = Status;

    fn encode(&mut self, item: Encoded, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item.0);
        Ok(())
    }
}

impl Decoder for SharedCodec {
    type Item = WatchRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<WatchRequest>, Status> {
        WatchRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding the watch request: {e}")))
    }
}

/// `sonde.v1.WatchService` (see the module doc).
#[derive(Debug, Clone)]
pub(crate) struct WatchServer {
    grpc: Grpc,
}

impl WatchServer {
    pub(crate) fn new(grpc: Grpc) -> Self {
        Self { grpc }
    }
}

impl NamedService for WatchServer {
    const NAME: &'static str = "sonde.v1.WatchService";
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

impl tower::Service<http::Request<Body>> for WatchServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != WATCH {
            let status = Status::unimplemented(format!("no method {}", req.uri().path()));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let method = WatchMethod(self.grpc.clone());
        Box::pin(async move {
            // Requests may come gzipped (as the generated server was configured); answers are
            // sent as they are.
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            let mut server = GrpcServer::new(SharedCodec)
                .apply_compression_config(accept, EnabledCompressionEncodings::default());
            Ok(server.server_streaming(method, req).await)
        })
    }
}

type AnswerStream = Pin<Box<dyn Stream<Item = Result<Encoded, Status>> + Send + 'static>>;

struct WatchMethod(Grpc);

impl ServerStreamingService<WatchRequest> for WatchMethod {
    type Response = Encoded;
    type ResponseStream = AnswerStream;
    type Future = BoxFuture<Response<AnswerStream>, Status>;

    fn call(&mut self, req: Request<WatchRequest>) -> Self::Future {
        let grpc = self.0.clone();
        Box::pin(async move { grpc.watch(req) })
    }
}

/// The UPDATE answer for `resource` from `list`, whose hash for it is `hash`: shared with every
/// other client of that list with the same hash.
fn update(list: &TenantList, resource: &Resource, hash: u64) -> Encoded {
    Encoded(list.shared_answer(hash, || {
        let (matching, current_hash) = list.for_client(resource);
        PollResponse {
            ts_nanos: now_nanos(),
            current_hash,
            response: matching.into_iter().map(|e| e.config.clone()).collect(),
            response_type: ResponseType::Update as i32,
        }
        .encode_to_vec()
        .into()
    }))
}

/// A NO_CHANGE answer naming `hash` (a stream that opens with the hash the agent holds, and
/// the heartbeat).
fn no_change(hash: &str) -> Encoded {
    Encoded::of(&PollResponse {
        ts_nanos: now_nanos(),
        current_hash: hash.to_owned(),
        response: Vec::new(),
        response_type: ResponseType::NoChange as i32,
    })
}

impl Grpc {
    /// Opens a watch stream: the first message answers the agent's hash like a poll, then every
    /// list that changes the agent's hash is sent as an UPDATE, with a NO_CHANGE heartbeat
    /// while nothing changes.
    fn watch(&self, req: Request<WatchRequest>) -> Result<Response<AnswerStream>, Status> {
        let (tenant, peer) = self.agent_context(&req)?;
        let req = req.into_inner();
        if req.agent_id.is_empty() || req.agent_id.len() > 128 {
            return Err(Status::invalid_argument(
                "agent_id: required, at most 128 characters (a UUID made at agent start-up)",
            ));
        }
        let resource = req
            .resource
            .as_ref()
            .map(|r| Resource::from_attributes(&r.attributes))
            .unwrap_or_default();
        let mut lists = self.app.tracepoints.subscribe(&tenant);
        let mut shutdown = self.app.shutdown.clone();
        let app = self.app.clone();
        let heartbeat = std::time::Duration::from_secs(app.config.watch_heartbeat_secs.max(1));
        let (tx, rx) = mpsc::channel::<Result<Encoded, Status>>(4);
        let sent_update = app.metrics.polls.with_label_values(&["watch", "update"]);
        let sent_no_change = app.metrics.polls.with_label_values(&["watch", "no_change"]);

        app.agents.seen(
            &tenant,
            &req.agent_id,
            AgentKind::Watch,
            &resource,
            peer,
            &req.current_hash,
        );
        app.agents.watching(&tenant, &req.agent_id, true);
        app.metrics.watchers.inc();

        tokio::spawn(async move {
            let mut last_hash = req.current_hash;
            let mut first = true;
            loop {
                let list = lists.borrow_and_update().clone();
                let hash = list.client_hash(&resource);
                let hex = format!("{hash:016x}");
                if first || hex != last_hash {
                    let answer = if first && hex == last_hash {
                        sent_no_change.inc();
                        no_change(&hex)
                    } else {
                        sent_update.inc();
                        update(&list, &resource, hash)
                    };
                    app.agents.seen(
                        &tenant,
                        &req.agent_id,
                        AgentKind::Watch,
                        &resource,
                        peer,
                        &hex,
                    );
                    last_hash = hex;
                    if tx.send(Ok(answer)).await.is_err() {
                        break;
                    }
                    first = false;
                }
                drop(list);
                tokio::select! {
                    changed = lists.changed() => if changed.is_err() { break },
                    _ = shutdown.changed() => break,
                    _ = tx.closed() => break,
                    _ = tokio::time::sleep(heartbeat) => {
                        if tx.send(Ok(no_change(&last_hash))).await.is_err() { break }
                    }
                }
            }
            app.agents.watching(&tenant, &req.agent_id, false);
            app.metrics.watchers.dec();
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
