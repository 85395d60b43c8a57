//! With tokens configured: the admin token writes, the read token only reads, nothing works
//! without one; agents need their token or Deep's basic credential (`Basic%20<base64>`).

mod common;

use common::{TestServer, resource};
use sonde_proto::poll::{PollRequest, poll_config_client::PollConfigClient};

const BODY: &str = r#"{"tracepoint": {"path": "a.rs", "line_number": 1}}"#;

fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.admin_token = Some("admin-secret".into());
        c.read_token = Some("read-secret".into());
        c.agent_token = Some("agent-secret".into());
        c.agent_basic = Some("deep:pass".into());
    })
}

#[test]
fn api_tokens() {
    let server = server();
    let admin = [("authorization", "Bearer admin-secret")];
    let read = [("authorization", "Bearer read-secret")];

    let (status, json) = server.request("POST", "/api/tracepoints", Some(BODY), &[]);
    assert_eq!(status, 401, "{json}");
    assert_eq!(json["error"]["code"], "unauthenticated");
    let (status, _) = server.request("POST", "/api/tracepoints", Some(BODY), &read);
    assert_eq!(status, 403, "a read token cannot write");
    let (status, _) = server.request(
        "POST",
        "/api/tracepoints",
        Some(BODY),
        &[("authorization", "Bearer wrong")],
    );
    assert_eq!(status, 401);
    let (status, json) = server.request("POST", "/api/tracepoints", Some(BODY), &admin);
    assert_eq!(status, 200, "{json}");

    let (status, _) = server.request("GET", "/api/tracepoints", None, &[]);
    assert_eq!(status, 401, "reads need a token once tokens are configured");
    assert_eq!(server.ids(&read).len(), 1);
    assert_eq!(server.ids(&admin).len(), 1);
    let (status, _) = server.request("GET", "/api/agents", None, &read);
    assert_eq!(status, 200);
    let (status, _) = server.get("/healthz");
    assert_eq!(status, 200, "health stays open");
}

#[test]
fn agent_credentials() {
    let server = server();
    server.rt.block_on(async {
        let ch = server.channel().await;
        let poll_with = |auth: Option<&'static str>| {
            let ch = ch.clone();
            async move {
                let mut req = tonic::Request::new(PollRequest {
                    ts_nanos: 1,
                    current_hash: String::new(),
                    resource: resource(&[("service.name", "x")]),
                });
                if let Some(a) = auth {
                    req.metadata_mut()
                        .insert("authorization", a.parse().unwrap());
                }
                PollConfigClient::new(ch).poll(req).await
            }
        };
        assert_eq!(
            poll_with(None).await.unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            poll_with(Some("Bearer nope")).await.unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        poll_with(Some("Bearer agent-secret"))
            .await
            .expect("agent token");
        // base64("deep:pass") = ZGVlcDpwYXNz, in the forms Deep's Python and Java agents send.
        poll_with(Some("Basic%20ZGVlcDpwYXNz"))
            .await
            .expect("Deep's Python form");
        poll_with(Some("basic%20ZGVlcDpwYXNz"))
            .await
            .expect("Deep's Java form");
        poll_with(Some("Basic ZGVlcDpwYXNz"))
            .await
            .expect("standard basic");
        assert_eq!(
            poll_with(Some("Basic%20ZGVlcDpwYXNzCg=="))
                .await
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
    });
}
