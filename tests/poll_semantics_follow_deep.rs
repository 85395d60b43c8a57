//! Deep's poll semantics over real gRPC: UPDATE with the list on first contact, NO_CHANGE for the
//! current hash, a new hash after an edit or a delete, targeting, and tenants.

mod common;

use common::{TestServer, poll};
use sonde_proto::poll::ResponseType;

const UPDATE: i32 = ResponseType::Update as i32;
const NO_CHANGE: i32 = ResponseType::NoChange as i32;

#[test]
fn first_poll_updates_then_the_same_hash_is_no_change() {
    let server = TestServer::start();
    let id = server.create(r#"{"tracepoint": {"path": "src/checkout.rs", "line_number": 42}}"#);
    server.rt.block_on(async {
        let ch = server.channel().await;
        let first = poll(&ch, "", &[("service.name", "shop")], None).await;
        assert_eq!(first.response_type, UPDATE);
        assert_eq!(first.response.len(), 1);
        assert_eq!(first.response[0].id, id);
        assert!(!first.current_hash.is_empty());
        assert!(first.ts_nanos > 0);

        let again = poll(&ch, &first.current_hash, &[("service.name", "shop")], None).await;
        assert_eq!(again.response_type, NO_CHANGE);
        assert!(again.response.is_empty(), "NO_CHANGE carries no list");
        assert_eq!(again.current_hash, first.current_hash);

        let stale = poll(&ch, "not-the-hash", &[("service.name", "shop")], None).await;
        assert_eq!(stale.response_type, UPDATE);
        assert_eq!(stale.response.len(), 1);
    });
}

#[test]
fn an_edit_changes_the_hash_and_delivers_the_new_content() {
    let server = TestServer::start();
    let id = server.create(r#"{"tracepoint": {"path": "src/checkout.rs", "line_number": 42}}"#);
    let before = server
        .rt
        .block_on(async { poll(&server.channel().await, "", &[], None).await });

    let (status, json) = server.request(
        "PUT",
        &format!("/api/tracepoints/{id}"),
        Some(r#"{"tracepoint": {"path": "src/checkout.rs", "line_number": 43, "args": {"condition": "order.total > 100"}}}"#),
        &[],
    );
    assert_eq!(status, 200, "{json}");
    assert_eq!(
        json["tracepoint"]["ID"],
        id.as_str(),
        "the ID survives an edit"
    );

    server.rt.block_on(async {
        let ch = server.channel().await;
        let after = poll(&ch, &before.current_hash, &[], None).await;
        assert_eq!(
            after.response_type, UPDATE,
            "an edit with the same ID must change the hash"
        );
        assert_ne!(after.current_hash, before.current_hash);
        assert_eq!(after.response[0].line_number, 43);
        assert_eq!(after.response[0].args["condition"], "order.total > 100");

        let (status, _) = server.request("DELETE", &format!("/api/tracepoints/{id}"), None, &[]);
        assert_eq!(status, 200);
        let gone = poll(&ch, &after.current_hash, &[], None).await;
        assert_eq!(gone.response_type, UPDATE);
        assert!(gone.response.is_empty());
    });
}

#[test]
fn targeting_selects_by_resource_attributes() {
    let server = TestServer::start();
    let shop = server.create(
        r#"{"tracepoint": {"path": "a.rs", "line_number": 1,
            "targeting": [{"key": "service.name", "value": {"stringValue": "shop"}}]}}"#,
    );
    let billing_prod = server.create(
        r#"{"tracepoint": {"path": "b.rs", "line_number": 2,
            "targeting": [{"key": "service.name", "value": {"stringValue": "billing"}},
                          {"key": "env", "value": {"stringValue": "prod"}}]}}"#,
    );
    let everyone = server.create(r#"{"tracepoint": {"path": "c.rs", "line_number": 3}}"#);
    server.rt.block_on(async {
        let ch = server.channel().await;
        let ids = |resp: sonde_proto::poll::PollResponse| {
            let mut ids: Vec<_> = resp.response.into_iter().map(|tp| tp.id).collect();
            ids.sort();
            ids
        };
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(
            ids(poll(&ch, "", &[("service.name", "shop")], None).await),
            sorted(vec![shop.clone(), everyone.clone()])
        );
        assert_eq!(
            ids(poll(&ch, "", &[("service.name", "billing")], None).await),
            sorted(vec![everyone.clone()]),
            "every targeting key must match"
        );
        assert_eq!(
            ids(poll(
                &ch,
                "",
                &[("service.name", "billing"), ("env", "prod")],
                None
            )
            .await),
            sorted(vec![billing_prod.clone(), everyone.clone()])
        );
        assert_eq!(
            ids(poll(&ch, "", &[], None).await).len(),
            3,
            "a client with no attributes matches everything"
        );
    });
}

#[test]
fn tenants_come_from_x_scope_orgid() {
    let server = TestServer::start();
    let default_id = server.create(r#"{"tracepoint": {"path": "a.rs", "line_number": 1}}"#);
    let (status, json) = server.request(
        "POST",
        "/api/tracepoints",
        Some(r#"{"tracepoint": {"path": "b.rs", "line_number": 2}}"#),
        &[("X-Scope-OrgID", "team-b")],
    );
    assert_eq!(status, 200, "{json}");
    let b_id = json["tracepoint"]["ID"].as_str().unwrap().to_owned();
    server.rt.block_on(async {
        let ch = server.channel().await;
        let default = poll(&ch, "", &[], None).await;
        assert_eq!(
            default
                .response
                .iter()
                .map(|t| t.id.clone())
                .collect::<Vec<_>>(),
            vec![default_id.clone()]
        );
        let named = poll(&ch, "", &[], Some("single-tenant")).await;
        assert_eq!(
            named.current_hash, default.current_hash,
            "no header means single-tenant"
        );
        let b = poll(&ch, "", &[], Some("team-b")).await;
        assert_eq!(
            b.response.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
            vec![b_id]
        );
        let empty = poll(&ch, "", &[], Some("team-c")).await;
        assert!(empty.response.is_empty());
    });
}
