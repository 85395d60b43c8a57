//! A request of tenant B never sees, edits or deletes tenant A's tracepoints or sees A's
//! snapshots, over HTTP and gRPC.

mod common;

use common::TestServer;
use sonde_proto::{
    sonde::{
        DeleteTracepointRequest, GetTracepointRequest,
        tracepoint_service_client::TracepointServiceClient,
    },
    tracepoint::{Snapshot, TracePointConfig, snapshot_service_client::SnapshotServiceClient},
};

const A: &[(&str, &str)] = &[("X-Scope-OrgID", "tenant-a")];
const B: &[(&str, &str)] = &[("X-Scope-OrgID", "tenant-b")];
const BODY: &str = r#"{"tracepoint": {"path": "a.rs", "line_number": 1}}"#;

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn tenant_b_cannot_reach_tenant_a() {
    let server = TestServer::start();
    let (status, json) = server.request("POST", "/api/tracepoints", Some(BODY), A);
    assert_eq!(status, 200);
    let id = json["tracepoint"]["ID"].as_str().unwrap().to_owned();

    assert!(server.ids(B).is_empty(), "B lists nothing");
    assert!(
        server.ids(&[]).is_empty(),
        "the default tenant lists nothing"
    );
    for (method, body) in [("GET", None), ("PUT", Some(BODY)), ("DELETE", None)] {
        let (status, json) = server.request(method, &format!("/api/tracepoints/{id}"), body, B);
        assert_eq!(status, 404, "{method} by B: {json}");
    }
    server.rt.block_on(async {
        // An agent of tenant A sends a snapshot for A's tracepoint; A sees it, B does not.
        let mut send = tonic::Request::new(Snapshot {
            tracepoint: Some(TracePointConfig {
                id: id.clone(),
                ..Default::default()
            }),
            log_msg: Some("taken in tenant A".into()),
            ..Default::default()
        });
        send.metadata_mut()
            .insert("x-scope-orgid", "tenant-a".parse().unwrap());
        SnapshotServiceClient::new(server.channel().await)
            .send(send)
            .await
            .expect("snapshot stored");
    });
    let snapshots = format!("/api/tracepoints/{id}/snapshots");
    let (status, json) = server.request("GET", &snapshots, None, A);
    assert_eq!(status, 200);
    assert_eq!(
        json["snapshots"][0]["logMsg"], "taken in tenant A",
        "A sees its snapshot: {json}"
    );
    let (status, json) = server.request("GET", &snapshots, None, B);
    assert_eq!(status, 200);
    assert_eq!(
        json["snapshots"],
        serde_json::json!([]),
        "B sees none: {json}"
    );

    server.rt.block_on(async {
        let mut client = TracepointServiceClient::new(server.channel().await);
        let mut get = tonic::Request::new(GetTracepointRequest { id: id.clone() });
        get.metadata_mut()
            .insert("x-scope-orgid", "tenant-b".parse().unwrap());
        assert_eq!(
            client.get(get).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
        let mut del = tonic::Request::new(DeleteTracepointRequest { id: id.clone() });
        del.metadata_mut()
            .insert("x-scope-orgid", "tenant-b".parse().unwrap());
        assert_eq!(
            client.delete(del).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
    });

    assert_eq!(server.ids(A), vec![id], "A still has its tracepoint");
}

on_both_stores!(tenant_b_cannot_reach_tenant_a);
