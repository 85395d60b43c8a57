//! With --tls-cert/--tls-key, both ports speak TLS: the CLI reaches the HTTP API over https with
//! the CA given by --ca-cert, an agent polls over gRPC with TLS, and plaintext is refused.

mod common;

use std::process::Command;

use common::ServerProcess;
use sonde_proto::poll::{PollRequest, poll_config_client::PollConfigClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[test]
fn tls_on_http_and_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = cert.cert.pem();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let data = dir.path().join("data");
    let server = ServerProcess::spawn(
        &data,
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
    );
    let https = server.http.replace("http://127.0.0.1", "https://localhost");
    let grpcs = server.grpc.replace("http://127.0.0.1", "https://localhost");

    let add = Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args([
            "tracepoint",
            "add",
            "src/a.rs:7",
            "--server",
            &https,
            "--ca-cert",
        ])
        .arg(&cert_path)
        .output()
        .unwrap();
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let id = String::from_utf8(add.stdout).unwrap().trim().to_owned();

    let untrusted = Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(["tracepoint", "list", "--server", &https])
        .output()
        .unwrap();
    assert_eq!(untrusted.status.code(), Some(3), "an unknown CA is refused");

    let plain = Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(["tracepoint", "list", "--server", &server.http])
        .output()
        .unwrap();
    assert_eq!(
        plain.status.code(),
        Some(3),
        "plaintext gets no answer from a TLS port"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&cert_pem))
            .domain_name("localhost");
        let channel = Channel::from_shared(grpcs)
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .expect("TLS connect");
        let resp = PollConfigClient::new(channel)
            .poll(PollRequest::default())
            .await
            .expect("poll over TLS")
            .into_inner();
        assert_eq!(resp.response.len(), 1);
        assert_eq!(resp.response[0].id, id);
    });
}
