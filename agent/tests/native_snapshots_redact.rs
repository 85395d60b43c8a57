//! Native snapshots: a tracepoint without metrics on a line with no probe site takes a snapshot
//! of every variable readable there, and redaction holds natively too: a `token` argument and a
//! local whose type is on the list (`SecretKey`) are kept by name and never read, a struct's
//! `password` field is scrubbed before the snapshot is built, and none of their values is
//! anywhere in the snapshot's bytes. A label over `login.password` is refused at bind time, as at
//! a probe site.
//!
//! This binary is built with `debug = 2` (`[profile.dev.package.sonde-agent]` in the root
//! Cargo.toml). One agent per process, so the tests take turns (`serial`).
#![cfg(all(feature = "native", target_os = "linux", target_arch = "x86_64"))]

mod markers;
mod native_agent;

use std::hint::black_box;

use native_agent::{serial, status, wait_for};
use prost::Message as _;
use sonde_agent::{Agent, Budgets, TracepointState, native::NativeBudget};
use sonde_proto::tracepoint::{LabelExpression, Metric, TracePointConfig, label_expression};

const FILE: &str = "tests/native_snapshots_redact.rs";
const PASSWORD: &str = "native-hunter2-77";
const TOKEN: &str = "native-tok-9e1f";
const KEY: u64 = 0x5EC2_E7C0_FFEE_1234;

struct Login {
    user: String,
    password: String,
}

struct SecretKey {
    bits: u64,
}

#[inline(never)]
fn login(user: &str, token: &str, attempt: u64) -> u64 {
    let login = Login {
        user: user.to_owned(),
        password: PASSWORD.to_owned(),
    };
    let key = SecretKey {
        bits: black_box(KEY),
    };
    let tries = black_box(attempt + 1);
    let out = black_box(tries + login.user.len() as u64); // @snap
    black_box(&login.password);
    black_box(key.bits);
    out + token.len() as u64
}

fn line_of(marker: &str) -> u32 {
    markers::line(include_str!("native_snapshots_redact.rs"), marker)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn native_snapshots_hold_no_redacted_value() {
    let _turn = serial();
    let agent = Agent::builder()
        .offline()
        .budgets(Budgets::unlimited_cpu())
        .native_breakpoints(NativeBudget::default())
        .start()
        .expect("agent starts");
    let line = line_of("// @snap");
    let tracepoint = |id: &str| TracePointConfig {
        id: id.into(),
        path: FILE.into(),
        line_number: line,
        ..Default::default()
    };

    // A label over a redacted field: refused before anything is armed.
    let mut refused = tracepoint("tp-label");
    refused.metrics.push(Metric {
        name: "logins".into(),
        label_expressions: vec![LabelExpression {
            key: "pw".into(),
            value: Some(label_expression::Value::Expression("login.password".into())),
        }],
        ..Default::default()
    });
    agent.apply(vec![refused]);
    let s = status(&agent, "tp-label");
    assert_eq!(s.state, TracepointState::Error, "{s:?}");
    assert!(
        s.message
            .contains("reads `login.password`, which is redacted"),
        "{s:?}"
    );

    agent.apply(vec![tracepoint("tp-snap")]);
    wait_for("the native line to arm", || {
        status(&agent, "tp-snap").state == TracepointState::Bound
    });
    assert_eq!(login("ann", TOKEN, 1), 2 + 3 + TOKEN.len() as u64);
    wait_for("the snapshot", || agent.snapshots_queued() > 0);
    let snap = agent.take_pending_snapshot().expect("a snapshot").finish();
    let bytes = snap.encode_to_vec();
    assert!(
        !contains(&bytes, PASSWORD.as_bytes()),
        "the password was sent"
    );
    assert!(!contains(&bytes, TOKEN.as_bytes()), "the token was sent");
    assert!(
        !contains(&bytes, KEY.to_string().as_bytes()),
        "the key's value was sent"
    );

    let top = &snap.frames[0];
    assert_eq!((top.file_name.as_str(), top.line_number), (FILE, line));
    let var = |name: &str| {
        let id = top
            .variables
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("{name} in {:?}", top.variables));
        &snap.var_lookup[&id.id]
    };
    assert_eq!(var("token").r#type, "redacted");
    assert_eq!(
        var("key").r#type,
        "redacted",
        "SecretKey is a redacted type"
    );
    assert_eq!(var("tries").value, "2");
    assert_eq!(var("user").value, "ann");
    let login_var = var("login");
    let password = login_var
        .children
        .iter()
        .find(|c| c.name == "password")
        .expect("the field is kept by name");
    assert_eq!(snap.var_lookup[&password.id].r#type, "redacted");
    agent.shutdown();
}
