//! Pointing a component at the other port gets an error naming the mix-up and the right default
//! port: the agent (the shop example, a real child process) pointed at the server's HTTP API port,
//! where its gRPC calls get plain HTTP answers without a `grpc-status`, and at an HTTP/1-only
//! server, which answers its HTTP/2 preface with an HTTP/1 response; the CLI pointed at the gRPC
//! port, whose answers carry `content-type: application/grpc`.

mod common;
#[path = "common/shop.rs"]
mod shop;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use common::TestServer;

/// Starts the shop with its agent following `server`; returns the first stderr line containing
/// `wanted` and every line read before it, or panics after 60 s.
fn shop_log_line(server: &str, wanted: &str) -> (String, Vec<String>) {
    let exe = std::env::current_exe().expect("the test's path");
    let shop = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .join("examples")
        .join("shop");
    let mut child = Command::new(shop)
        .args(["--listen", "127.0.0.1:0"])
        .env("SONDE_AGENT_SERVER", server)
        .env("SONDE_SERVICE_NAME", "shop-mixup")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the shop");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains(wanted) => break Some(line),
            Ok(line) => seen.push(line),
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    match found {
        Some(line) => (line, seen),
        None => panic!(
            "the shop never logged {wanted:?}; it logged:\n{}",
            seen.join("\n")
        ),
    }
}

const AGENT_HINT: &str = "An agent connects to the control plane's gRPC port, default 43315";

#[test]
fn an_agent_pointed_at_the_http_port_is_told_to_use_the_grpc_port() {
    let server = TestServer::start();
    let (line, before) = shop_log_line(&server.http, AGENT_HINT);
    assert!(line.contains("HTTP API port (default 3300)"), "{line}");
    assert!(
        line.contains(&server.http),
        "the log names the server: {line}"
    );
    assert!(
        !before.iter().any(|l| l.contains("no watch stream")),
        "it fell back to polling an HTTP port: {before:?}"
    );
}

#[test]
fn an_agent_pointed_at_an_http1_server_is_told_to_use_the_grpc_port() {
    // An HTTP/1-only server: whatever arrives, it answers 400 as HTTP/1.1 and closes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 1024];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    let (line, _) = shop_log_line(&format!("http://{addr}"), AGENT_HINT);
    assert!(line.contains("HTTP API port (default 3300)"), "{line}");
}

#[test]
fn the_cli_pointed_at_the_grpc_port_is_told_to_use_the_http_port() {
    let server = TestServer::start();
    for args in [&["tracepoint", "list"][..], &["agents"][..]] {
        let (code, out, err) = shop::sonde(&server.grpc, None, args);
        assert_eq!(code, 2, "sonde {args:?}: {out}{err}");
        assert!(
            err.contains("gRPC port (default 43315)")
                && err.contains("HTTP API (default port 3300)"),
            "sonde {args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}
