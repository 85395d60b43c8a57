//! The shop example (`examples/shop.rs`) as a child process whose agent follows a test server:
//! the binary `cargo test` builds beside the tests (`target/<profile>/examples/shop`).
#![allow(dead_code)] // each test binary uses a different subset

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

/// The shop, killed when dropped.
pub struct Shop {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shop_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    // target/<profile>/deps/<test> -> target/<profile>/examples/shop
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let shop = profile_dir.join("examples").join("shop");
    assert!(
        shop.exists(),
        "{} is missing: `cargo test` builds the examples (or run `cargo build --example shop`)",
        shop.display()
    );
    shop
}

/// Starts the shop on an ephemeral port with its agent following `grpc` as `service`, and waits
/// until it listens.
pub fn start(grpc: &str, service: &str) -> Shop {
    start_with(grpc, service, &[])
}

/// As [`start`], with more environment variables for the shop (`SONDE_AGENT_NATIVE=1`).
pub fn start_with(grpc: &str, service: &str, env: &[(&str, &str)]) -> Shop {
    let mut child = Command::new(shop_binary())
        .args(["--listen", "127.0.0.1:0"])
        .env("SONDE_AGENT_SERVER", grpc)
        .env("SONDE_SERVICE_NAME", service)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the shop");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the shop printed its address before exiting")
            .expect("read the shop's stdout");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            break addr.parse().expect("a socket address");
        }
    };
    // Keep draining its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Shop { child, addr }
}

/// The line of `examples/shop.rs` holding the probe whose macro call contains `needle`.
pub fn probe_line(needle: &str) -> u32 {
    let source = include_str!("../../examples/shop.rs");
    let index = source
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} in examples/shop.rs"));
    index as u32 + 1
}

/// The checkout probe's line.
pub fn checkout_line() -> u32 {
    probe_line("probe!(order, discount, charged, took)")
}

/// Runs the real `sonde` CLI against `http` with `args`; returns (exit code, stdout, stderr).
pub fn sonde(http: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sonde"));
    cmd.args(args)
        .env("SONDE_SERVER", http)
        .env_remove("SONDE_TOKEN")
        .env_remove("SONDE_TENANT")
        .stdin(Stdio::null());
    if let Some(token) = token {
        cmd.env("SONDE_TOKEN", token);
    }
    let out = cmd.output().expect("run sonde");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
