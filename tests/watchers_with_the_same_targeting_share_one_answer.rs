//! A change is answered once per distinct list: watchers whose targeting selects the same
//! tracepoints receive the same answer (the same bytes, so the same `ts_nanos`), watchers whose
//! targeting differs receive their own list, and every one of them receives it.

mod common;

use std::time::Duration;

use common::{TestServer, resource};
use sonde_proto::{
    poll::{PollResponse, ResponseType},
    sonde::{WatchRequest, watch_service_client::WatchServiceClient},
};
use tonic::transport::Channel;

async fn next(stream: &mut tonic::Streaming<PollResponse>) -> PollResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message within 10 s")
        .expect("stream ok")
        .expect("stream open")
}

async fn watch(channel: &Channel, agent: &str, service: &str) -> tonic::Streaming<PollResponse> {
    WatchServiceClient::new(channel.clone())
        .watch(WatchRequest {
            resource: resource(&[("service.name", service), ("service.instance.id", agent)]),
            current_hash: String::new(),
            agent_id: agent.into(),
        })
        .await
        .expect("watch")
        .into_inner()
}

/// Sends `body` over HTTP from a blocking thread and asserts success.
async fn send(http: &str, method: &'static str, path: &str, body: &'static str) {
    let url = format!("{http}{path}");
    let (status, answer) = tokio::task::spawn_blocking(move || {
        common::send(
            &common::http_agent(),
            method,
            &url,
            Some(body.as_bytes().to_vec()),
            &[],
        )
    })
    .await
    .expect("the request thread");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
}

fn paths(answer: &PollResponse) -> Vec<String> {
    let mut paths: Vec<_> = answer.response.iter().map(|t| t.path.clone()).collect();
    paths.sort();
    paths
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn watchers_share_the_answer_of_their_list() {
    let server = TestServer::start();
    let all = server.create(r#"{"tracepoint": {"path": "all.rs", "line_number": 1}}"#);
    server.rt.block_on(async {
        // Two connections, so that sharing does not depend on sharing one.
        let (one, two) = (server.channel().await, server.channel().await);
        let mut shop_a = watch(&one, "shop-a", "shop").await;
        let mut shop_b = watch(&two, "shop-b", "shop").await;
        let mut billing = watch(&one, "billing-a", "billing").await;
        for stream in [&mut shop_a, &mut shop_b, &mut billing] {
            let initial = next(stream).await;
            assert_eq!(initial.response_type, ResponseType::Update as i32);
            assert_eq!(paths(&initial), ["all.rs"]);
        }

        let shop = r#"{"tracepoint": {"path": "shop.rs", "line_number": 2, "targeting": [{"key": "service.name", "value": {"stringValue": "shop"}}]}}"#;
        send(&server.http, "POST", "/api/tracepoints", shop).await;

        let (a, b) = (next(&mut shop_a).await, next(&mut shop_b).await);
        assert_eq!(a.response_type, ResponseType::Update as i32);
        assert_eq!(paths(&a), ["all.rs", "shop.rs"]);
        assert_eq!(a, b, "both shop watchers receive one answer, timestamp and all");

        // Billing's list did not change: it hears nothing of shop's tracepoint.
        let quiet = tokio::time::timeout(Duration::from_secs(1), billing.message()).await;
        assert!(quiet.is_err(), "shop's change reached billing: {quiet:?}");

        // An edit for everyone: billing gets its own list, the shop watchers still share theirs.
        let edit = r#"{"tracepoint": {"path": "all.rs", "line_number": 3}}"#;
        send(&server.http, "PUT", &format!("/api/tracepoints/{all}"), edit).await;
        let (a, b, c) = (
            next(&mut shop_a).await,
            next(&mut shop_b).await,
            next(&mut billing).await,
        );
        assert_eq!(a, b, "the shop watchers share the answer to the edit");
        assert_eq!(paths(&a), ["all.rs", "shop.rs"]);
        assert_eq!(paths(&c), ["all.rs"], "billing's list has no shop tracepoint");
        assert_eq!(c.response[0].line_number, 3);
        assert_ne!(a.current_hash, c.current_hash);
    });
}

on_both_stores!(watchers_share_the_answer_of_their_list);
