//! `POST /api/sessions/{id}/metrics` reports a number for a session (an agent the server lists);
//! it appears on the server's `/metrics` as gauge `sonde_adhoc_<name>` labelled by session,
//! tenant and tags. Bad reports get a 400 naming the field and change nothing; other tenants'
//! sessions are not found; series per tenant are capped; series go with their session.

mod common;

use std::time::Duration;

use common::{TestServer, resource};
use serde_json::{Value, json};
use sonde_proto::sonde::{StatusReport, status_service_client::StatusServiceClient};

/// Makes `agent_id` a session of `tenant`: a Sonde agent's status report, as a watcher sends.
fn session(server: &TestServer, agent_id: &str, tenant: Option<&str>, auth: Option<&str>) {
    server.rt.block_on(async {
        let mut req = tonic::Request::new(StatusReport {
            agent_id: agent_id.into(),
            resource: resource(&[("service.name", "cron")]),
            ts_nanos: 1,
            tracepoints: vec![],
            config_hash: String::new(),
        });
        if let Some(t) = tenant {
            req.metadata_mut()
                .insert("x-scope-orgid", t.parse().expect("ascii"));
        }
        if let Some(a) = auth {
            req.metadata_mut()
                .insert("authorization", a.parse().expect("ascii"));
        }
        StatusServiceClient::new(server.channel().await)
            .report(req)
            .await
            .expect("report");
    });
}

/// Posts a report for `id` with extra headers.
fn report(server: &TestServer, id: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    server.request(
        "POST",
        &format!("/api/sessions/{id}/metrics"),
        Some(&body.to_string()),
        headers,
    )
}

/// The ad-hoc lines of the server's `/metrics` (HELP, TYPE, samples, and the series count).
fn adhoc_lines(server: &TestServer) -> Vec<String> {
    let (status, body) = server.request_raw("GET", "/metrics", None, &[]);
    assert_eq!(status, 200);
    String::from_utf8(body)
        .expect("utf-8")
        .lines()
        .filter(|l| l.contains("sonde_adhoc_") || l.starts_with("sonde_server_adhoc_series"))
        .map(str::to_owned)
        .collect()
}

fn assert_has(lines: &[String], expected: &str) {
    assert!(
        lines.iter().any(|l| l == expected),
        "expected the line\n  {expected}\nin\n{}",
        lines.join("\n")
    );
}

#[test]
fn a_reported_number_is_a_gauge_labelled_by_session_tenant_and_tags() {
    let server = TestServer::start();
    session(&server, "nightly-job", None, None);
    // A poller's session ID is derived; GET /api/agents lists it.
    server.rt.block_on(async {
        common::poll(
            &server.channel().await,
            "",
            &[("service.name", "shop")],
            None,
        )
        .await;
    });
    let (_, agents) = server.get("/api/agents");
    let poller = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "poll")
        .expect("the poller")["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let body = json!({"name": "queue_depth", "value": 42,
                      "tags": ["region:eu", "urgent", "nightly", "urgent"]});
    let (status, answer) = report(&server, "nightly-job", &body, &[]);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"success": true}));
    // The same name from another session with other tag keys: one more series of the family.
    let (status, _) = report(
        &server,
        &poller,
        &json!({"name": "queue_depth", "value": 0.5}),
        &[],
    );
    assert_eq!(status, 200);
    // The same label set again: the gauge holds the last value.
    let body = json!({"name": "queue_depth", "value": -7.25,
                      "tags": ["nightly", "urgent", "region:eu"]});
    assert_eq!(report(&server, "nightly-job", &body, &[]).0, 200);

    let lines = adhoc_lines(&server);
    assert_has(
        &lines,
        r#"sonde_adhoc_queue_depth{region="eu",session="nightly-job",tags="nightly,urgent",tenant="single-tenant"} -7.25"#,
    );
    assert_has(
        &lines,
        &format!(r#"sonde_adhoc_queue_depth{{session="{poller}",tenant="single-tenant"}} 0.5"#),
    );
    assert_has(&lines, "# TYPE sonde_adhoc_queue_depth gauge");
    assert_has(&lines, "sonde_server_adhoc_series 2");
    let samples: Vec<_> = lines
        .iter()
        .filter(|l| l.starts_with("sonde_adhoc_"))
        .collect();
    assert_eq!(samples.len(), 2, "the first value was replaced: {lines:?}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("# TYPE sonde_adhoc_"))
            .count(),
        1,
        "one family: {lines:?}"
    );
}

#[test]
fn unknown_sessions_and_other_tenants_sessions_are_not_found() {
    let server = TestServer::start();
    let team_a = [("x-scope-orgid", "team-a")];
    let team_b = [("x-scope-orgid", "team-b")];
    session(&server, "job-a", Some("team-a"), None);
    let body = json!({"name": "rows", "value": 1});

    for (id, headers) in [
        ("job-a", &team_b[..]),
        ("job-a", &[][..]),
        ("no-such-agent", &team_a[..]),
    ] {
        let (status, answer) = report(&server, id, &body, headers);
        assert_eq!(status, 404, "{id} {headers:?}: {answer}");
        assert_eq!(answer["error"]["code"], "not_found");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("no session \"{id}\"")),
            "{answer}"
        );
    }
    assert!(
        adhoc_lines(&server)
            .iter()
            .all(|l| !l.starts_with("sonde_adhoc_")),
        "nothing was recorded"
    );

    assert_eq!(
        report(
            &server,
            "job-a",
            &json!({"name": "rows", "value": 5}),
            &team_a
        )
        .0,
        200
    );
    // Tenant B's own session with the same agent ID is another series.
    session(&server, "job-a", Some("team-b"), None);
    assert_eq!(
        report(
            &server,
            "job-a",
            &json!({"name": "rows", "value": 9}),
            &team_b
        )
        .0,
        200
    );
    let lines = adhoc_lines(&server);
    assert_has(
        &lines,
        r#"sonde_adhoc_rows{session="job-a",tenant="team-a"} 5"#,
    );
    assert_has(
        &lines,
        r#"sonde_adhoc_rows{session="job-a",tenant="team-b"} 9"#,
    );
}

#[test]
fn bad_reports_get_400_naming_the_field_and_change_nothing() {
    let server = TestServer::start_with(|c| c.max_body_bytes = 2048);
    session(&server, "job", None, None);
    assert_eq!(
        report(
            &server,
            "job",
            &json!({"name": "kept", "value": 3, "tags": ["a:1"]}),
            &[]
        )
        .0,
        200
    );
    let before = adhoc_lines(&server);
    assert_has(
        &before,
        r#"sonde_adhoc_kept{a="1",session="job",tenant="single-tenant"} 3"#,
    );

    let tags: Vec<String> = (0..17).map(|i| format!("k{i}:v")).collect();
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "body"),
        ("not json".into(), "body"),
        ("[1, 2]".into(), "body"),
        (r#"{"name": "x", "value": 1e999}"#.into(), "body"),
        (json!({"value": 1}).to_string(), "name"),
        (json!({"name": "", "value": 1}).to_string(), "name"),
        (json!({"name": 5, "value": 1}).to_string(), "name"),
        (
            json!({"name": "queue-depth", "value": 1}).to_string(),
            "name",
        ),
        (json!({"name": "1st", "value": 1}).to_string(), "name"),
        (
            json!({"name": "x".repeat(129), "value": 1}).to_string(),
            "name",
        ),
        (json!({"name": "x"}).to_string(), "value"),
        (json!({"name": "x", "value": null}).to_string(), "value"),
        (json!({"name": "x", "value": "3"}).to_string(), "value"),
        (json!({"name": "x", "value": true}).to_string(), "value"),
        (
            json!({"name": "x", "value": 1, "unit": "s"}).to_string(),
            "unit",
        ),
        (
            json!({"name": "x", "value": 1, "tags": "a:b"}).to_string(),
            "tags",
        ),
        (
            json!({"name": "x", "value": 1, "tags": tags}).to_string(),
            "tags",
        ),
        (
            json!({"name": "x", "value": 1, "tags": ["ok", 7]}).to_string(),
            "tags[1]",
        ),
        (
            json!({"name": "x", "value": 1, "tags": [""]}).to_string(),
            "tags[0]",
        ),
        (
            json!({"name": "x", "value": 1, "tags": [":v"]}).to_string(),
            "tags[0]",
        ),
        (
            json!({"name": "x", "value": 1, "tags": ["k:"]}).to_string(),
            "tags[0]",
        ),
        (
            json!({"name": "x", "value": 1, "tags": ["a b:v"]}).to_string(),
            "tags[0]",
        ),
        (
            json!({"name": "x", "value": 1, "tags": ["9k:v"]}).to_string(),
            "tags[0]",
        ),
        (
            json!({"name": "x", "value": 1, "tags": ["session:s"]}).to_string(),
            "tags[0]",
        ),
        (
            json!({"name": "x", "value": 1, "tags": ["ok", "tenant:t"]}).to_string(),
            "tags[1]",
        ),
        (
            json!({"name": "x", "value": 1, "tags": ["tags:t"]}).to_string(),
            "tags[0]",
        ),
        (
            json!({"name": "x", "value": 1, "tags": ["le:1"]}).to_string(),
            "tags[0]",
        ),
        (
            json!({"name": "x", "value": 1, "tags": ["quantile:1"]}).to_string(),
            "tags[0]",
        ),
        (
            json!({"name": "x", "value": 1, "tags": ["__name__:y"]}).to_string(),
            "tags[0]",
        ),
        (
            json!({"name": "x", "value": 1, "tags": ["a:1", "a:2"]}).to_string(),
            "tags[1]",
        ),
        (
            json!({"name": "x", "value": 1, "tags": ["a,b"]}).to_string(),
            "tags[0]",
        ),
        (
            json!({"name": "x", "value": 1, "tags": ["a:line\nbreak"]}).to_string(),
            "tags[0]",
        ),
        (
            json!({"name": "x", "value": 1, "tags": [format!("k:{}", "v".repeat(255))]})
                .to_string(),
            "tags[0]",
        ),
    ];
    for (body, field) in &cases {
        let (status, answer) = server.request("POST", "/api/sessions/job/metrics", Some(body), &[]);
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_argument", "{body}");
        assert_eq!(answer["error"]["field"], *field, "{body}: {answer}");
    }

    let (status, answer) = server.request(
        "POST",
        "/api/sessions/job/metrics",
        Some(r#"{"name": "x", "value": 1}"#),
        &[("content-type", "application/protobuf")],
    );
    assert_eq!(
        (status, answer["error"]["field"].clone()),
        (400, json!("body"))
    );
    let (status, answer) = report(
        &server,
        "job",
        &json!({"name": "x", "value": 1}),
        &[("x-scope-orgid", "a/b")],
    );
    assert_eq!(
        (status, answer["error"]["field"].clone()),
        (400, json!("X-Scope-OrgID"))
    );
    let (status, answer) = report(
        &server,
        "job",
        &json!({"name": "x", "value": 1, "tags": [format!("pad:{}", "p".repeat(3000))]}),
        &[],
    );
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "payload_too_large");
    let (status, _) = server.get("/api/sessions/job/metrics");
    assert_eq!(status, 405);

    assert_eq!(adhoc_lines(&server), before, "bad reports changed nothing");
}

#[test]
fn past_1000_series_a_tenant_gets_409_for_new_series_only() {
    let server = TestServer::start();
    session(&server, "job", None, None);
    session(&server, "job", Some("other"), None);
    for i in 0..1000 {
        let body = json!({"name": "shard_rows", "value": i, "tags": [format!("shard:{i}")]});
        let (status, answer) = report(&server, "job", &body, &[]);
        assert_eq!(status, 200, "series {i}: {answer}");
    }
    let body = json!({"name": "shard_rows", "value": 1, "tags": ["shard:1000"]});
    let (status, answer) = report(&server, "job", &body, &[]);
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["code"], "resource_exhausted");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1000"),
        "{answer}"
    );

    let body = json!({"name": "shard_rows", "value": -1, "tags": ["shard:999"]});
    assert_eq!(
        report(&server, "job", &body, &[]).0,
        200,
        "existing series still update"
    );
    let body = json!({"name": "shard_rows", "value": 1, "tags": ["shard:1000"]});
    let other = [("x-scope-orgid", "other")];
    assert_eq!(
        report(&server, "job", &body, &other).0,
        200,
        "the cap is per tenant"
    );

    let lines = adhoc_lines(&server);
    assert_has(&lines, "sonde_server_adhoc_series 1001");
    assert_has(
        &lines,
        r#"sonde_adhoc_shard_rows{session="job",shard="999",tenant="single-tenant"} -1"#,
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(r#"shard="1000""#) && l.contains("single-tenant")),
        "the refused series is not exposed"
    );
}

#[test]
fn either_an_api_write_token_or_an_agent_credential_may_report() {
    let server = TestServer::start_with(|c| {
        c.admin_token = Some("admin-secret".into());
        c.read_token = Some("read-secret".into());
        c.agent_token = Some("agent-secret".into());
        c.agent_basic = Some("deep:pass".into());
    });
    session(&server, "job", None, Some("Bearer agent-secret"));
    let body = |v: i32| json!({"name": "auth_check", "value": v});

    for (auth, status, code) in [
        (None, 401, "unauthenticated"),
        (Some("Bearer wrong"), 401, "unauthenticated"),
        (Some("Bearer read-secret"), 403, "permission_denied"),
    ] {
        let headers: Vec<_> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let (got, answer) = report(&server, "job", &body(-1), &headers);
        assert_eq!(got, status, "{auth:?}: {answer}");
        assert_eq!(answer["error"]["code"], code);
    }
    assert!(
        adhoc_lines(&server)
            .iter()
            .all(|l| !l.starts_with("sonde_adhoc_")),
        "refused reports record nothing"
    );

    // base64("deep:pass"), in Deep's `Basic%20<b64>` form.
    for (i, auth) in [
        "Bearer admin-secret",
        "Bearer agent-secret",
        "Basic%20ZGVlcDpwYXNz",
    ]
    .into_iter()
    .enumerate()
    {
        let (status, answer) = report(&server, "job", &body(i as i32), &[("authorization", auth)]);
        assert_eq!(status, 200, "{auth}: {answer}");
        let lines = adhoc_lines(&server);
        assert_has(
            &lines,
            &format!(r#"sonde_adhoc_auth_check{{session="job",tenant="single-tenant"}} {i}"#),
        );
    }
}

#[test]
fn series_go_when_their_session_does() {
    let server = TestServer::start_with(|c| c.agent_ttl_secs = 1);
    session(&server, "short-job", None, None);
    assert_eq!(
        report(
            &server,
            "short-job",
            &json!({"name": "done", "value": 1}),
            &[]
        )
        .0,
        200
    );
    assert_has(
        &adhoc_lines(&server),
        r#"sonde_adhoc_done{session="short-job",tenant="single-tenant"} 1"#,
    );

    // The session's TTL passes: waited for (a loaded machine may be late), not slept on.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, agents) = server.get("/api/agents");
        if agents["agents"] == json!([]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session never expired: {agents}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = adhoc_lines(&server);
    assert!(
        lines.iter().all(|l| !l.starts_with("sonde_adhoc_")),
        "{lines:?}"
    );
    assert_has(&lines, "sonde_server_adhoc_series 0");
    let (status, _) = report(
        &server,
        "short-job",
        &json!({"name": "done", "value": 2}),
        &[],
    );
    assert_eq!(status, 404);
}
