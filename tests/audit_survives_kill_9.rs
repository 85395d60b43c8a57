//! `kill -9` of the real server during concurrent writes by four named tokens: after a restart
//! every acknowledged create, edit and delete has its audit entry with the right author, and every
//! tracepoint in the store matches the `after` of its last entry (a change and its entry are one
//! transaction: neither exists without the other).

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::ServerProcess;
use serde_json::Value;

const WRITERS: usize = 4;

/// One request that may fail (the server is killed under it): `None` when there was no answer.
fn try_request(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<String>,
    secret: &str,
) -> Option<(u16, Value)> {
    let builder = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {secret}"))
        .header("content-type", "application/json");
    let result = match body {
        Some(b) => agent.run(builder.body(b).ok()?),
        None => agent.run(builder.body(()).ok()?),
    };
    let mut resp = result.ok()?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// What the server acknowledged: (action, tracepoint ID) -> who.
type Acks = BTreeMap<(String, String), String>;

fn writer(http: String, who: String, stop: Arc<AtomicBool>) -> Acks {
    let agent = common::http_agent();
    let secret = format!("{who}-secret");
    let mut acks = Acks::new();
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let body = format!(r#"{{"tracepoint": {{"path": "{who}.rs", "line_number": {n}}}}}"#);
        let Some((200, json)) = try_request(
            &agent,
            "POST",
            &format!("{http}/api/tracepoints"),
            Some(body),
            &secret,
        ) else {
            break;
        };
        let id = json["tracepoint"]["ID"]
            .as_str()
            .expect("a created tracepoint has an ID")
            .to_owned();
        acks.insert(("create".into(), id.clone()), who.clone());
        let edit = format!(
            r#"{{"tracepoint": {{"path": "{who}.rs", "line_number": {}}}}}"#,
            n + 10_000
        );
        let url = format!("{http}/api/tracepoints/{id}");
        let Some((200, _)) = try_request(&agent, "PUT", &url, Some(edit), &secret) else {
            break;
        };
        acks.insert(("edit".into(), id.clone()), who.clone());
        if n.is_multiple_of(2) {
            let Some((200, _)) = try_request(&agent, "DELETE", &url, None, &secret) else {
                break;
            };
            acks.insert(("delete".into(), id), who.clone());
        }
    }
    acks
}

#[cfg(test)] // a test, run on each store by `on_both_stores!` below
fn every_acknowledged_change_has_its_audit_entry_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = (0..WRITERS)
        .flat_map(|i| ["--token".into(), format!("w{i}:write:w{i}-secret")])
        .collect();
    args.extend(["--token".into(), "ops:admin:ops-secret".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ServerProcess::spawn(dir.path(), &args);

    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (http, stop) = (server.http.clone(), stop.clone());
            std::thread::spawn(move || writer(http, format!("w{i}"), stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    server.kill_9(); // writers are mid-request: their next answer never comes
    stop.store(true, Ordering::Relaxed);
    let mut acks = Acks::new();
    for t in threads {
        acks.extend(t.join().unwrap());
    }
    let creates = acks.keys().filter(|(a, _)| a == "create").count();
    assert!(
        creates >= WRITERS * 3,
        "enough writes to mean something: {creates}"
    );

    let restarted = ServerProcess::spawn(dir.path(), &args);
    let admin = [("authorization", "Bearer ops-secret")];
    let mut entries: Vec<Value> = Vec::new();
    let mut query = "?limit=1000".to_owned();
    loop {
        let (status, page) =
            restarted.request_with("GET", &format!("/api/audit{query}"), None, &admin);
        assert_eq!(status, 200, "{page}");
        entries.extend(page["entries"].as_array().unwrap().iter().cloned());
        match page["next"].as_i64() {
            Some(next) => query = format!("?limit=1000&after={next}"),
            None => break,
        }
    }
    let logged: HashMap<(String, String), String> = entries
        .iter()
        .map(|e| {
            (
                (
                    e["action"].as_str().unwrap().to_owned(),
                    e["tracepoint"].as_str().unwrap().to_owned(),
                ),
                e["who"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (key, who) in &acks {
        assert_eq!(
            logged.get(key),
            Some(who),
            "acknowledged {key:?} by {who} has its audit entry"
        );
    }

    // The other way round: what the store holds is what the last entry of each says.
    let (status, list) = restarted.request_with("GET", "/api/tracepoints", None, &admin);
    assert_eq!(status, 200);
    let stored: HashMap<String, i64> = list["response"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|tp| {
                    (
                        tp["ID"].as_str().unwrap().to_owned(),
                        tp["lineNumber"].as_i64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut last: HashMap<String, &Value> = HashMap::new();
    for e in &entries {
        last.insert(e["tracepoint"].as_str().unwrap().to_owned(), e);
    }
    for (id, line) in &stored {
        let entry = last
            .get(id)
            .unwrap_or_else(|| panic!("{id} is stored without an entry"));
        assert_eq!(
            entry["after"]["lineNumber"].as_i64(),
            Some(*line),
            "{id}: {entry}"
        );
    }
    for (id, entry) in &last {
        assert_eq!(
            entry["action"] == "delete",
            !stored.contains_key(id),
            "{id}: deleted in the log exactly when gone from the store"
        );
    }
    eprintln!(
        "{} acknowledged changes, {} audit entries, {} tracepoints after restart",
        acks.len(),
        entries.len(),
        stored.len()
    );
}

on_both_stores!(every_acknowledged_change_has_its_audit_entry_after_kill_9);
