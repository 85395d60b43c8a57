//! `sonde mcp` over stdio, driven by a JSON-RPC script as an MCP client would (initialize,
//! `tools/list`, `tools/call`), against a real server and the shop example: the tools are listed;
//! `list_lines` finds the checkout probe line of `examples/shop.rs`; `create_tracepoint` puts a
//! counter there and says the agent bound it; after N checkouts `read_tracepoint` reads exactly N
//! fires back; `list_session_tracepoints` lists it with its expiry; `delete_tracepoint` removes it
//! and the audit log names the token that did each. With `--read-only` no writing tool is
//! offered, and with a `read` token a create comes back as a readable tool error.

mod common;
#[path = "common/shop.rs"]
mod shop;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use common::TestServer;
use serde_json::{Value, json};

/// A `sonde mcp` child and its JSON-RPC conversation.
struct Mcp {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next: u64,
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mcp {
    fn start(http: &str, token: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sonde"))
            .arg("mcp")
            .args(extra)
            .env("SONDE_SERVER", http)
            .env("SONDE_TOKEN", token)
            .env_remove("SONDE_TENANT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sonde mcp");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut mcp = Self {
            child,
            stdin,
            stdout,
            next: 1,
        };
        let init = mcp.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "sonde-test", "version": "0"}}),
        );
        assert_eq!(init["result"]["serverInfo"]["name"], "sonde", "{init}");
        assert!(
            init["result"]["capabilities"]["tools"].is_object(),
            "{init}"
        );
        mcp.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        mcp
    }

    fn send(&mut self, message: &Value) {
        writeln!(self.stdin, "{message}").expect("write to sonde mcp");
        self.stdin.flush().expect("flush to sonde mcp");
    }

    /// Sends a request and reads lines until its answer (skipping notifications).
    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("read sonde mcp");
            assert!(
                n > 0,
                "sonde mcp closed its stdout before answering {method}"
            );
            let message: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("a JSON-RPC line: {e}: {line}"));
            if message["id"] == id {
                return message;
            }
        }
    }

    fn tools(&mut self) -> Vec<String> {
        let listed = self.request("tools/list", json!({}));
        listed["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("{listed}"))
            .iter()
            .map(|t| {
                assert!(
                    t["description"].as_str().is_some_and(|d| d.len() > 40),
                    "every tool is described: {t}"
                );
                assert_eq!(t["inputSchema"]["type"], "object", "{t}");
                t["name"].as_str().expect("a tool name").to_owned()
            })
            .collect()
    }

    /// Calls a tool: `Ok(answer JSON)` or `Err(the tool error's text)`.
    fn call(&mut self, tool: &str, arguments: Value) -> Result<Value, String> {
        let answer = self.request("tools/call", json!({"name": tool, "arguments": arguments}));
        let result = &answer["result"];
        assert!(
            result.is_object(),
            "{tool}: a result, not a protocol error: {answer}"
        );
        let text = result["content"][0]["text"].as_str().unwrap_or_default();
        if result["isError"] == true {
            Err(text.to_owned())
        } else {
            Ok(serde_json::from_str(text).unwrap_or_else(|e| panic!("{tool}: JSON: {e}: {text}")))
        }
    }
}

fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.tokens = vec![
            "claude:write:w-secret".into(),
            "reader:read:r-secret".into(),
        ];
    })
}

fn checkout(shop: &shop::Shop, agent: &ureq::Agent) {
    let body = br#"{"country":"NZ","items":[{"sku":"tea","qty":2}],"total":100,"user":{"id":"u1","tier":"gold"}}"#;
    let (status, _) = common::send(
        agent,
        "POST",
        &format!("http://{}/checkout", shop.addr),
        Some(body.to_vec()),
        &[],
    );
    assert_eq!(status, 200);
}

#[test]
fn an_assistant_places_reads_and_removes_a_counter() {
    let server = server();
    let service = format!("shop-mcp-{}", std::process::id());
    let shop = shop::start(&server.grpc, &service);
    let mut mcp = Mcp::start(&server.http, "w-secret", &[]);

    let tools = mcp.tools();
    for tool in [
        "list_services",
        "list_sites",
        "list_files",
        "list_lines",
        "create_tracepoint",
        "read_tracepoint",
        "read_snapshots",
        "delete_tracepoint",
        "list_session_tracepoints",
    ] {
        assert!(tools.contains(&tool.to_owned()), "{tool} in {tools:?}");
    }

    // The agent is there once its catalog is.
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = shop::checkout_line();
    let lines = loop {
        let lines = mcp
            .call(
                "list_lines",
                json!({"service": service, "file": "examples/shop.rs"}),
            )
            .expect("list_lines");
        if lines["lines"].as_array().is_some_and(|l| !l.is_empty()) {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "the shop never reported: {lines}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let probe = lines["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["line"] == line)
        .unwrap_or_else(|| panic!("the checkout line {line}: {lines}"));
    assert_eq!(
        probe["probe"]["names"],
        json!(["order", "discount", "charged", "took"])
    );
    let services = mcp.call("list_services", json!({})).unwrap();
    assert!(
        services["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == service.as_str()),
        "{services}"
    );

    let created = mcp
        .call(
            "create_tracepoint",
            json!({"service": service, "file": "examples/shop.rs", "line": line,
                   "metric": {"type": "counter", "name": "mcp_checkouts"}}),
        )
        .expect("create");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["summary"]["bound"], 1, "{created}");
    let expires: u64 = created["expires_at_unix"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 14 * 60..=now + 15 * 60 + 5).contains(&expires),
        "the default TTL is 15 minutes: {expires} vs {now}"
    );
    let (_, stored) = server.request(
        "GET",
        &format!("/api/tracepoints/{id}"),
        None,
        &[("authorization", "Bearer r-secret")],
    );
    assert!(
        stored["tracepoint"]["args"]["tag"]
            .as_str()
            .is_some_and(|t| t.starts_with("mcp:")),
        "tagged with the session: {stored}"
    );

    let http = common::http_agent();
    for _ in 0..9 {
        checkout(&shop, &http);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let read = loop {
        let read = mcp.call("read_tracepoint", json!({"id": id})).unwrap();
        if read["status"]["live"]["fires"] == 9 {
            break read;
        }
        assert!(Instant::now() < deadline, "9 fires never read: {read}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(read["status"]["live"]["hits"], 9, "{read}");
    assert_eq!(read["tracepoint"]["ID"], id.as_str(), "{read}");

    let mine = mcp.call("list_session_tracepoints", json!({})).unwrap();
    assert_eq!(mine["tracepoints"][0]["id"], id.as_str(), "{mine}");

    let deleted = mcp.call("delete_tracepoint", json!({"id": id})).unwrap();
    assert_eq!(deleted["deleted"], id.as_str());
    let gone = mcp.call("read_tracepoint", json!({"id": id})).unwrap_err();
    assert!(
        gone.contains("404") || gone.contains("no tracepoint"),
        "{gone}"
    );
    let mine = mcp.call("list_session_tracepoints", json!({})).unwrap();
    assert_eq!(mine["tracepoints"], json!([]), "{mine}");

    // Bad input is a tool error naming the field, and the session goes on.
    let bad = mcp
        .call(
            "create_tracepoint",
            json!({"service": service, "file": "examples/shop.rs", "line": line,
                   "metric": {"type": "counter", "name": "bad", "value": "order.total +"}}),
        )
        .unwrap_err();
    assert!(bad.contains("metrics[0].expression"), "{bad}");
    assert!(mcp.call("list_services", json!({})).is_ok());

    // The audit log names the token for the create and the delete.
    let (_, audit) = server.request(
        "GET",
        &format!("/api/audit?tracepoint={id}"),
        None,
        &[("authorization", "Bearer r-secret")],
    );
    let entries = audit["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{audit}"));
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["who"].as_str().unwrap()))
        .collect();
    assert!(actions.contains(&("create", "claude")), "{audit}");
    assert!(actions.contains(&("delete", "claude")), "{audit}");
}

#[test]
fn read_only_offers_no_writing_tool_and_a_read_token_cannot_create() {
    let server = server();
    let mut reading = Mcp::start(&server.http, "w-secret", &["--read-only"]);
    let tools = reading.tools();
    assert!(tools.contains(&"list_lines".to_owned()), "{tools:?}");
    assert!(
        !tools.contains(&"create_tracepoint".to_owned()),
        "{tools:?}"
    );
    assert!(
        !tools.contains(&"delete_tracepoint".to_owned()),
        "{tools:?}"
    );

    let mut read_token = Mcp::start(&server.http, "r-secret", &[]);
    let refused = read_token
        .call(
            "create_tracepoint",
            json!({"service": "shop", "file": "examples/shop.rs", "line": 1,
                   "metric": {"type": "counter", "name": "nope"}}),
        )
        .unwrap_err();
    assert!(
        refused.contains("role read") && refused.contains("role write"),
        "a readable refusal: {refused}"
    );
    let (_, list) = server.request(
        "GET",
        "/api/tracepoints",
        None,
        &[("authorization", "Bearer r-secret")],
    );
    assert_eq!(list["response"], Value::Null, "nothing stored: {list}");
}
