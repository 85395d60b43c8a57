//! The body Deep's Grafana data source sends creates a tracepoint that a poll returns with every
//! field intact, in proto3 JSON and in binary protobuf, under `/api/tracepoints` and `/tracepoints`.

mod common;

use common::{TestServer, poll, string};
use prost::Message as _;
use sonde_proto::{
    common::KeyValue,
    poll::{PollResponse, ResponseType},
    sonde::TracepointResponse,
    tracepoint::{LabelExpression, Metric, MetricType, TracePointConfig, label_expression},
};

const GRAFANA_BODY: &str = r#"{"tracepoint": {"path": "simple_test.py", "line_number": 31,
  "args": {"fire_count": "1", "log_msg": "basket {len(basket.items)}"},
  "watches": ["user.id"],
  "targeting": [{"key": "service.name", "value": {"stringValue": "myapp"}}],
  "metrics": [{"name": "basket_size", "expression": "len(basket.items)", "type": "COUNTER",
               "labelExpressions": [{"key": "user", "expression": "user.id"},
                                    {"key": "shop", "static": {"stringValue": "main"}}],
               "namespace": "shop", "help": "Items in the basket", "unit": "items"},
              {"name": "basket_value", "expression": "basket.total", "type": "HISTOGRAM"}]}}"#;

fn expected(id: &str) -> TracePointConfig {
    TracePointConfig {
        id: id.into(),
        path: "simple_test.py".into(),
        line_number: 31,
        args: [
            ("fire_count".to_owned(), "1".to_owned()),
            (
                "log_msg".to_owned(),
                "basket {len(basket.items)}".to_owned(),
            ),
        ]
        .into_iter()
        .collect(),
        watches: vec!["user.id".into()],
        targeting: vec![KeyValue {
            key: "service.name".into(),
            value: string("myapp"),
        }],
        metrics: vec![
            Metric {
                name: "basket_size".into(),
                label_expressions: vec![
                    LabelExpression {
                        key: "user".into(),
                        value: Some(label_expression::Value::Expression("user.id".into())),
                    },
                    LabelExpression {
                        key: "shop".into(),
                        value: Some(label_expression::Value::Static(
                            string("main").expect("a value"),
                        )),
                    },
                ],
                r#type: MetricType::Counter as i32,
                expression: Some("len(basket.items)".into()),
                namespace: Some("shop".into()),
                help: Some("Items in the basket".into()),
                unit: Some("items".into()),
            },
            Metric {
                name: "basket_value".into(),
                r#type: MetricType::Histogram as i32,
                expression: Some("basket.total".into()),
                ..Default::default()
            },
        ],
    }
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn the_grafana_body_survives_create_and_poll_field_for_field() {
    let server = TestServer::start();
    let id = server.create(GRAFANA_BODY);
    assert!(uuid_like(&id), "the server assigns a UUID, got {id}");

    let polled = server.rt.block_on(async {
        poll(
            &server.channel().await,
            "",
            &[("service.name", "myapp")],
            None,
        )
        .await
    });
    assert_eq!(polled.response_type, ResponseType::Update as i32);
    assert_eq!(polled.response, vec![expected(&id)]);
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn http_answers_decode_as_json_and_as_protobuf() {
    let server = TestServer::start();
    let id = server.create(GRAFANA_BODY);

    // Deep's GET: resource attributes as query parameters, proto3 JSON back.
    let (status, json) = server.get("/api/tracepoints?service.name=myapp&ts=1");
    assert_eq!(status, 200);
    assert_eq!(json["responseType"], "UPDATE");
    assert_eq!(json["response"][0]["ID"], id.as_str());
    assert_eq!(json["response"][0]["lineNumber"], 31);
    assert_eq!(json["response"][0]["metrics"][1]["type"], "HISTOGRAM");
    assert_eq!(
        json["response"][0]["metrics"][0]["labelExpressions"][1]["static"]["stringValue"],
        "main"
    );
    let as_proto: PollResponse = serde_json::from_value(json.clone()).expect("proto3 JSON decodes");
    assert_eq!(as_proto.response, vec![expected(&id)]);

    // The same with Accept: application/protobuf.
    let (status, bytes) = server.request_raw(
        "GET",
        "/api/tracepoints?service.name=myapp",
        None,
        &[("accept", "application/protobuf")],
    );
    assert_eq!(status, 200);
    let decoded = PollResponse::decode(bytes.as_slice()).expect("protobuf decodes");
    assert_eq!(decoded.response, vec![expected(&id)]);
    assert_eq!(decoded.current_hash, as_proto.current_hash);

    // A matching hash gives NO_CHANGE over HTTP too: a 200 that says so, with the same hash and
    // no list (a 500 with an error body would also lack `response`).
    let (status, json) = server.get(&format!(
        "/api/tracepoints?service.name=myapp&hash={}",
        as_proto.current_hash
    ));
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["responseType"], "NO_CHANGE", "{json}");
    assert_eq!(
        json["currentHash"],
        as_proto.current_hash.as_str(),
        "{json}"
    );
    assert_eq!(json["response"], serde_json::Value::Null, "{json}");

    // Deep's routes without the /api prefix; one tracepoint as protobuf.
    let (status, json) = server.get(&format!("/tracepoints/{id}"));
    assert_eq!(status, 200);
    assert_eq!(json["tracepoint"]["path"], "simple_test.py");
    let (status, bytes) = server.request_raw(
        "GET",
        &format!("/api/tracepoints/{id}"),
        None,
        &[("accept", "application/protobuf")],
    );
    assert_eq!(status, 200);
    let one = TracepointResponse::decode(bytes.as_slice()).unwrap();
    assert_eq!(one.tracepoint, Some(expected(&id)));
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn a_protobuf_body_creates_too_and_delete_works_under_both_prefixes() {
    let server = TestServer::start();
    let body = sonde_proto::sonde::CreateTracepointRequest {
        tracepoint: Some(TracePointConfig {
            path: "a.rs".into(),
            line_number: 9,
            ..Default::default()
        }),
    }
    .encode_to_vec();
    let (status, bytes) = server.request_raw(
        "POST",
        "/tracepoints",
        Some(body),
        &[
            ("content-type", "application/protobuf"),
            ("accept", "application/protobuf"),
        ],
    );
    assert_eq!(status, 200);
    let created = TracepointResponse::decode(bytes.as_slice())
        .unwrap()
        .tracepoint
        .unwrap();
    assert_eq!(created.line_number, 9);
    let (status, _) = server.request("DELETE", &format!("/tracepoints/{}", created.id), None, &[]);
    assert_eq!(status, 200);
    assert!(server.ids(&[]).is_empty());
    let (status, json) = server.request(
        "DELETE",
        &format!("/api/tracepoints/{}", created.id),
        None,
        &[],
    );
    assert_eq!(status, 404, "{json}");
}

fn uuid_like(id: &str) -> bool {
    id.len() == 36 && id.chars().filter(|c| *c == '-').count() == 4
}

on_both_stores!(
    the_grafana_body_survives_create_and_poll_field_for_field,
    http_answers_decode_as_json_and_as_protobuf,
    a_protobuf_body_creates_too_and_delete_works_under_both_prefixes
);
