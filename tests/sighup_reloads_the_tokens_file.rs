//! SIGHUP re-reads `--tokens-file` in the real `sonde server`: a token taken out of the file is
//! refused from then on while a connected agent's watch stream carries on (agents have their own
//! credential); a bad file keeps the tokens in force and the log says which line is wrong.

mod common;

use std::time::{Duration, Instant};

use common::ServerProcess;
use sonde_proto::sonde::{WatchRequest, watch_service_client::WatchServiceClient};

fn hash(secret: &str) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(["token", "hash"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run sonde token hash");
    writeln!(child.stdin.take().expect("stdin"), "{secret}").expect("write the secret");
    let out = child.wait_with_output().expect("sonde token hash ends");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn create_as(server: &ServerProcess, secret: &str, line: u32) -> (u16, serde_json::Value) {
    server.request_with(
        "POST",
        "/api/tracepoints",
        Some(&format!(
            r#"{{"tracepoint": {{"path": "hup.rs", "line_number": {line}}}}}"#
        )),
        &[("authorization", &format!("Bearer {secret}"))],
    )
}

/// Polls until `check` holds, for up to 10 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

#[test]
fn sighup_revokes_a_token_without_dropping_a_connected_agent() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let log = dir.path().join("server.log");
    std::fs::write(
        &tokens,
        format!(
            "# people\nalice:write:alice-secret\nbob:write:{}\n",
            hash("bob-secret")
        ),
    )
    .unwrap();
    let server = ServerProcess::spawn_logging(
        &dir.path().join("data"),
        &[
            "--tokens-file",
            tokens.to_str().unwrap(),
            "--agent-token",
            "agent-secret",
        ],
        Some(&log),
    );

    // An agent holds a watch stream.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let grpc = server.grpc.clone();
    let mut stream = rt.block_on(async move {
        let mut client = WatchServiceClient::connect(grpc).await.expect("connect");
        let mut req = tonic::Request::new(WatchRequest {
            agent_id: "agent-1".into(),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("authorization", "Bearer agent-secret".parse().unwrap());
        let mut stream = client.watch(req).await.expect("watch").into_inner();
        stream.message().await.expect("first").expect("open");
        stream
    });
    let mut next_list = |want: usize| {
        rt.block_on(async {
            loop {
                let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
                    .await
                    .expect("the watch stream delivers")
                    .expect("the stream is healthy")
                    .expect("the stream is open");
                if msg.response.len() == want {
                    return msg;
                }
            }
        })
    };

    assert_eq!(
        create_as(&server, "bob-secret", 1).0,
        200,
        "bob's hashed secret works"
    );
    assert_eq!(next_list(1).response[0].line_number, 1);

    // Bob leaves the file; SIGHUP.
    std::fs::write(&tokens, "alice:write:alice-secret\n").unwrap();
    server.signal("HUP");
    eventually("bob's token is refused", || {
        let bob = [("authorization", "Bearer bob-secret")];
        server.request_with("GET", "/api/tracepoints", None, &bob).0 == 401
    });
    assert_eq!(create_as(&server, "bob-secret", 2).0, 401);
    let (status, json) = create_as(&server, "alice-secret", 3);
    assert_eq!(status, 200, "{json}");
    let list = next_list(2);
    assert!(
        list.response.iter().any(|tp| tp.line_number == 3),
        "the agent connected before the reload still receives changes"
    );

    // A bad file: the old tokens stay, and the log names the line.
    std::fs::write(
        &tokens,
        "alice:write:alice-secret\ncarol:boss:carol-secret\n",
    )
    .unwrap();
    server.signal("HUP");
    eventually("the log says why the reload failed", || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("line 2: role: unknown role \"boss\""))
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("SIGHUP: API tokens reloaded"), "{text}");
    assert!(
        !text.contains("carol-secret"),
        "no secret in the log: {text}"
    );
    assert_eq!(create_as(&server, "alice-secret", 4).0, 200, "alice kept");
    assert_eq!(
        create_as(&server, "carol-secret", 5).0,
        401,
        "carol never added"
    );
    assert_eq!(
        create_as(&server, "bob-secret", 6).0,
        401,
        "bob stays revoked"
    );
    assert_eq!(next_list(3).response.len(), 3, "the agent is still there");
}
