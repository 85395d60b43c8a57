//! Sonde's gRPC `TracepointService` behind tokens: without a token nothing works
//! (UNAUTHENTICATED), the read token lists and gets but cannot create or update
//! (PERMISSION_DENIED), the admin token does everything; a bad expression is INVALID_ARGUMENT
//! naming the field and its position, and changes nothing.

mod common;

use std::collections::BTreeMap;

use common::TestServer;
use sonde_proto::{
    sonde::{
        CreateTracepointRequest, GetTracepointRequest, ListTracepointsRequest,
        UpdateTracepointRequest, tracepoint_service_client::TracepointServiceClient,
    },
    tracepoint::{LabelExpression, Metric, TracePointConfig, label_expression},
};
use tonic::{Code, Request, transport::Channel};

const ADMIN: Option<&str> = Some("Bearer admin-secret");
const READ: Option<&str> = Some("Bearer read-secret");

fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.admin_token = Some("admin-secret".into());
        c.read_token = Some("read-secret".into());
        c.agent_token = Some("agent-secret".into());
    })
}

fn with_auth<T>(message: T, auth: Option<&str>) -> Request<T> {
    let mut req = Request::new(message);
    if let Some(auth) = auth {
        req.metadata_mut()
            .insert("authorization", auth.parse().expect("ascii"));
    }
    req
}

fn tracepoint(id: &str, line: u32, condition: Option<&str>) -> TracePointConfig {
    TracePointConfig {
        id: id.into(),
        path: "src/checkout.rs".into(),
        line_number: line,
        args: condition
            .map(|c| BTreeMap::from([("condition".to_owned(), c.to_owned())]))
            .unwrap_or_default(),
        ..Default::default()
    }
}

async fn create(
    ch: &Channel,
    tp: TracePointConfig,
    auth: Option<&str>,
) -> Result<TracePointConfig, tonic::Status> {
    TracepointServiceClient::new(ch.clone())
        .create(with_auth(
            CreateTracepointRequest {
                tracepoint: Some(tp),
            },
            auth,
        ))
        .await
        .map(|r| r.into_inner().tracepoint.expect("a tracepoint"))
}

async fn update(
    ch: &Channel,
    tp: TracePointConfig,
    auth: Option<&str>,
) -> Result<TracePointConfig, tonic::Status> {
    TracepointServiceClient::new(ch.clone())
        .update(with_auth(
            UpdateTracepointRequest {
                tracepoint: Some(tp),
            },
            auth,
        ))
        .await
        .map(|r| r.into_inner().tracepoint.expect("a tracepoint"))
}

async fn list(ch: &Channel, auth: Option<&str>) -> Result<Vec<TracePointConfig>, tonic::Status> {
    TracepointServiceClient::new(ch.clone())
        .list(with_auth(ListTracepointsRequest {}, auth))
        .await
        .map(|r| r.into_inner().tracepoints)
}

#[test]
fn create_update_and_list_follow_the_tokens() {
    let server = server();
    server.rt.block_on(async {
        let ch = server.channel().await;

        // Create: no token, a wrong one or the agent's is unauthenticated; read is denied.
        for auth in [None, Some("Bearer wrong"), Some("Bearer agent-secret")] {
            let err = create(&ch, tracepoint("", 42, None), auth)
                .await
                .expect_err("refused");
            assert_eq!(err.code(), Code::Unauthenticated, "{auth:?}: {err:?}");
        }
        let err = create(&ch, tracepoint("", 42, None), READ)
            .await
            .expect_err("a read token cannot create");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(
            list(&ch, ADMIN).await.expect("list").is_empty(),
            "refused creates stored nothing"
        );

        let created = create(&ch, tracepoint("", 42, Some("order.total > 1")), ADMIN)
            .await
            .expect("the admin token creates");
        assert!(!created.id.is_empty());
        assert_eq!(created.line_number, 42);
        assert_eq!(created.args["condition"], "order.total > 1");

        // List: read and admin see it; no token does not.
        for auth in [None, Some("Bearer wrong")] {
            let err = list(&ch, auth).await.expect_err("refused");
            assert_eq!(err.code(), Code::Unauthenticated, "{auth:?}: {err:?}");
        }
        for auth in [READ, ADMIN] {
            let listed = list(&ch, auth).await.expect("list");
            assert_eq!(listed.len(), 1, "{auth:?}");
            assert_eq!(listed[0].id, created.id);
        }
        let got = TracepointServiceClient::new(ch.clone())
            .get(with_auth(
                GetTracepointRequest {
                    id: created.id.clone(),
                },
                READ,
            ))
            .await
            .expect("a read token gets")
            .into_inner();
        assert_eq!(got.tracepoint.expect("tracepoint").id, created.id);

        // Update: as create.
        let edit = tracepoint(&created.id, 43, Some("order.total > 2"));
        let err = update(&ch, edit.clone(), None).await.expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        let err = update(&ch, edit.clone(), READ)
            .await
            .expect_err("a read token cannot update");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        let listed = list(&ch, READ).await.expect("list");
        assert_eq!(listed[0].line_number, 42, "refused updates changed nothing");

        let updated = update(&ch, edit, ADMIN)
            .await
            .expect("the admin token updates");
        assert_eq!(updated.id, created.id);
        assert_eq!(updated.line_number, 43);
        let listed = list(&ch, READ).await.expect("list");
        assert_eq!(listed[0].line_number, 43);
        assert_eq!(listed[0].args["condition"], "order.total > 2");
    });
}

#[test]
fn a_bad_expression_is_invalid_argument_naming_the_field() {
    let server = server();
    server.rt.block_on(async {
        let ch = server.channel().await;
        let err = create(&ch, tracepoint("", 1, Some("order.total >")), ADMIN)
            .await
            .expect_err("a bad condition");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().starts_with("args.condition: "),
            "{}",
            err.message()
        );
        assert!(err.message().contains("column"), "{}", err.message());

        let mut bad_label = tracepoint("", 1, None);
        bad_label.metrics = vec![Metric {
            name: "orders".into(),
            label_expressions: vec![
                LabelExpression {
                    key: "country".into(),
                    value: Some(label_expression::Value::Expression("order.country".into())),
                },
                LabelExpression {
                    key: "tier".into(),
                    value: Some(label_expression::Value::Expression("order.(tier".into())),
                },
            ],
            ..Default::default()
        }];
        let err = create(&ch, bad_label, ADMIN)
            .await
            .expect_err("a bad label expression");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message()
                .starts_with("metrics[0].labelExpressions[1].expression: "),
            "{}",
            err.message()
        );

        // An update with a bad expression leaves the stored tracepoint as it was.
        let good = create(&ch, tracepoint("", 1, Some("true")), ADMIN)
            .await
            .expect("create");
        let err = update(&ch, tracepoint(&good.id, 1, Some("(")), ADMIN)
            .await
            .expect_err("a bad condition");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().starts_with("args.condition: "),
            "{}",
            err.message()
        );
        let listed = list(&ch, ADMIN).await.expect("list");
        assert_eq!(listed.len(), 1, "the bad creates stored nothing");
        assert_eq!(listed[0].args["condition"], "true");
    });
}
