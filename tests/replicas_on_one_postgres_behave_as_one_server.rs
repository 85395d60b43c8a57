//! Two `sonde server` replicas on one PostgreSQL database behave as one server: a POST on A
//! reaches a watcher on B, a PUT on B changes the hash an agent polling A sees (and both give the
//! same hash), B lists an agent watching A, a restart of PostgreSQL is survived (writes answer
//! 503 while it is down, watchers keep their streams, and a change made after it reaches every
//! watcher), and concurrent writers on both replicas lose nothing acknowledged while the
//! per-tenant limit holds across them.
//!
//! Every wait is on the condition itself with a generous deadline (the latency is measured by
//! `examples/poll_load.rs`, not asserted here).

mod common;

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{TestServer, resource};
use sonde_proto::{
    poll::{PollResponse, ResponseType},
    sonde::{WatchRequest, watch_service_client::WatchServiceClient},
};

/// How long anything that must happen may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

/// Two in-process replicas on the database at `url`.
fn replicas(url: &str, configure: impl Fn(&mut sonde::server::ServerConfig)) -> [TestServer; 2] {
    let start = || {
        TestServer::start_with(|c| {
            c.database_url = Some(url.to_owned());
            configure(c);
        })
    };
    [start(), start()]
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ok() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A watch stream on `server` as agent `agent_id` of service `shop`.
async fn watch(server: &TestServer, agent_id: &str) -> tonic::Streaming<PollResponse> {
    WatchServiceClient::new(server.channel().await)
        .watch(WatchRequest {
            resource: resource(&[("service.name", "shop")]),
            current_hash: String::new(),
            agent_id: agent_id.into(),
        })
        .await
        .expect("watch")
        .into_inner()
}

/// The next message on a stream that is not a heartbeat.
async fn next_update(stream: &mut tonic::Streaming<PollResponse>) -> PollResponse {
    loop {
        let message = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("a message in time")
            .expect("the stream is healthy")
            .expect("the stream is open");
        if message.response_type == ResponseType::Update as i32 {
            return message;
        }
    }
}

fn ids(message: &PollResponse) -> Vec<String> {
    message.response.iter().map(|tp| tp.id.clone()).collect()
}

/// The hash a poller of service `shop` gets from `server` (HTTP poll).
fn hash(server: &TestServer) -> String {
    let (status, json) = server.request("GET", "/api/tracepoints?service.name=shop", None, &[]);
    assert_eq!(status, 200, "{json}");
    json["currentHash"].as_str().expect("a hash").to_owned()
}

#[test]
fn a_change_on_either_replica_reaches_the_other_and_hashes_agree() {
    let Some(url) =
        common::postgres::database("a_change_on_either_replica_reaches_the_other_and_hashes_agree")
    else {
        return;
    };
    let [a, b] = replicas(&url, |_| {});
    let mut stream = b.rt.block_on(async {
        let mut stream = watch(&b, "agent-on-b").await;
        let first = next_update(&mut stream).await;
        assert!(first.response.is_empty(), "nothing yet");
        stream
    });

    let id = a.create(r#"{"tracepoint": {"path": "a.rs", "line_number": 1}}"#);
    let update = b.rt.block_on(next_update(&mut stream));
    assert_eq!(
        ids(&update),
        [id.as_str()],
        "the POST on A reached B's watcher"
    );
    wait_for("equal hashes after the create", || hash(&a) == hash(&b));
    assert_eq!(hash(&a), update.current_hash);

    let before = hash(&a);
    let (status, json) = b.request(
        "PUT",
        &format!("/api/tracepoints/{id}"),
        Some(r#"{"tracepoint": {"path": "a.rs", "line_number": 2}}"#),
        &[],
    );
    assert_eq!(status, 200, "{json}");
    wait_for("A to see B's edit", || hash(&a) != before);
    assert_eq!(hash(&a), hash(&b), "the hash is the same on both replicas");
    let update = b.rt.block_on(next_update(&mut stream));
    assert_eq!(update.response[0].line_number, 2);

    let (status, _) = a.request("DELETE", &format!("/api/tracepoints/{id}"), None, &[]);
    assert_eq!(status, 200);
    let update = b.rt.block_on(next_update(&mut stream));
    assert!(update.response.is_empty(), "the DELETE on A reached B");

    // An edit of a tracepoint the other replica deleted is a 404, not a resurrection.
    let id = a.create(r#"{"tracepoint": {"path": "c.rs", "line_number": 1}}"#);
    wait_for("B to see the new one", || b.ids(&[]) == [id.clone()]);
    let (status, _) = a.request("DELETE", &format!("/api/tracepoints/{id}"), None, &[]);
    assert_eq!(status, 200);
    let (status, json) = b.request(
        "PUT",
        &format!("/api/tracepoints/{id}"),
        Some(r#"{"tracepoint": {"path": "c.rs", "line_number": 9}}"#),
        &[],
    );
    assert_eq!(status, 404, "{json}");
    wait_for("both empty", || {
        a.ids(&[]).is_empty() && b.ids(&[]).is_empty()
    });
}

#[test]
fn each_replica_lists_the_agents_watching_the_other() {
    let Some(url) = common::postgres::database("each_replica_lists_the_agents_watching_the_other")
    else {
        return;
    };
    let [a, b] = replicas(&url, |_| {});
    let _stream = a.rt.block_on(async {
        let mut stream = watch(&a, "agent-on-a").await;
        next_update(&mut stream).await;
        stream
    });
    let listed = |server: &TestServer| -> Vec<(String, bool)> {
        let (status, json) = server.get("/api/agents");
        assert_eq!(status, 200, "{json}");
        json["agents"]
            .as_array()
            .expect("agents")
            .iter()
            .map(|a| {
                (
                    a["id"].as_str().unwrap_or_default().to_owned(),
                    a["watching"].as_bool().unwrap_or_default(),
                )
            })
            .collect()
    };
    assert_eq!(listed(&a), [("agent-on-a".to_owned(), true)]);
    wait_for("B to list the agent watching A", || {
        listed(&b) == [("agent-on-a".to_owned(), true)]
    });
}

#[test]
fn replicas_come_through_a_postgres_restart() {
    let Some(mut cluster) =
        common::postgres::own_cluster("replicas_come_through_a_postgres_restart")
    else {
        return;
    };
    let url = cluster.create_database().expect("a database");
    let [a, b] = replicas(&url, |_| {});
    let first = a.create(r#"{"tracepoint": {"path": "a.rs", "line_number": 1}}"#);
    wait_for("B to have it", || b.ids(&[]) == [first.clone()]);
    let mut stream = b.rt.block_on(async {
        let mut stream = watch(&b, "agent-on-b").await;
        let initial = next_update(&mut stream).await;
        assert_eq!(ids(&initial), [first.as_str()]);
        stream
    });

    cluster.stop();
    let (status, json) = a.post(
        "/api/tracepoints",
        r#"{"tracepoint": {"path": "b.rs", "line_number": 1}}"#,
    );
    assert_eq!(status, 503, "a write with the database gone: {json}");
    assert_eq!(b.ids(&[]), [first.as_str()], "reads go on from memory");

    cluster.start_again().expect("PostgreSQL starts again");
    // The pool replaces its broken connections; the first writes may still meet one.
    let mut second = None;
    wait_for("a write to succeed after the restart", || {
        let (status, json) = a.post(
            "/api/tracepoints",
            r#"{"tracepoint": {"path": "b.rs", "line_number": 1}}"#,
        );
        if status == 200 {
            second = json["tracepoint"]["ID"].as_str().map(str::to_owned);
        }
        status == 200
    });
    let second = second.expect("an ID");
    let update = b.rt.block_on(next_update(&mut stream));
    let mut expected = vec![first.clone(), second.clone()];
    expected.sort();
    let mut got = ids(&update);
    got.sort();
    assert_eq!(
        got, expected,
        "the change after the restart reached B's watcher"
    );
    wait_for("equal hashes after the restart", || hash(&a) == hash(&b));
}

#[test]
fn concurrent_writers_on_both_replicas_lose_nothing_and_the_limit_holds() {
    const LIMIT: usize = 20;
    let Some(url) = common::postgres::database(
        "concurrent_writers_on_both_replicas_lose_nothing_and_the_limit_holds",
    ) else {
        return;
    };
    let [a, b] = replicas(&url, |c| c.max_tracepoints_per_tenant = LIMIT);
    let servers = [a.http.clone(), b.http.clone()];

    /// What the writers were told: IDs created and not deleted, IDs deleted, last acked line.
    #[derive(Default)]
    struct Acks {
        alive: BTreeSet<String>,
        lines: std::collections::BTreeMap<String, u32>,
        full: usize,
    }
    let acks = Arc::new(Mutex::new(Acks::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let http = servers[w % 2].clone();
            let acks = acks.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let agent = common::http_agent();
                let mut mine: Vec<String> = Vec::new();
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    match n % 4 {
                        // Create (twice as often as delete, so the tenant fills up).
                        0 | 1 => {
                            let body = format!(
                                r#"{{"tracepoint": {{"path": "w{w}.rs", "line_number": {n}}}}}"#
                            );
                            let (status, bytes) = common::send(
                                &agent,
                                "POST",
                                &format!("{http}/api/tracepoints"),
                                Some(body.into_bytes()),
                                &[],
                            );
                            let json: serde_json::Value =
                                serde_json::from_slice(&bytes).unwrap_or_default();
                            match status {
                                200 => {
                                    let id = json["tracepoint"]["ID"]
                                        .as_str()
                                        .expect("an ID")
                                        .to_owned();
                                    let mut acks = acks.lock().unwrap();
                                    acks.alive.insert(id.clone());
                                    acks.lines.insert(id.clone(), n);
                                    mine.push(id);
                                }
                                409 => acks.lock().unwrap().full += 1,
                                other => panic!("create answered {other}: {json}"),
                            }
                        }
                        // Edit one of mine.
                        2 => {
                            let Some(id) = mine.last().cloned() else {
                                continue;
                            };
                            let body = format!(
                                r#"{{"tracepoint": {{"path": "w{w}.rs", "line_number": {n}}}}}"#
                            );
                            let (status, _) = common::send(
                                &agent,
                                "PUT",
                                &format!("{http}/api/tracepoints/{id}"),
                                Some(body.into_bytes()),
                                &[],
                            );
                            assert_eq!(status, 200, "editing my own {id}");
                            acks.lock().unwrap().lines.insert(id, n);
                        }
                        // Delete the oldest of mine.
                        _ => {
                            if mine.is_empty() {
                                continue;
                            }
                            let id = mine.remove(0);
                            let (status, _) = common::send(
                                &agent,
                                "DELETE",
                                &format!("{http}/api/tracepoints/{id}"),
                                None,
                                &[],
                            );
                            assert_eq!(status, 200, "deleting my own {id}");
                            let mut acks = acks.lock().unwrap();
                            acks.alive.remove(&id);
                            acks.lines.remove(&id);
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("a writer panicked");
    }

    let acks = acks.lock().unwrap();
    assert!(acks.full > 0, "the writers reached the limit");
    assert!(
        acks.alive.len() <= LIMIT,
        "{} acknowledged",
        acks.alive.len()
    );
    let lines = |server: &TestServer| -> std::collections::BTreeMap<String, u32> {
        let (status, json) = server.get("/api/tracepoints");
        assert_eq!(status, 200);
        json["response"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|tp| {
                (
                    tp["ID"].as_str().unwrap_or_default().to_owned(),
                    tp["lineNumber"].as_u64().unwrap_or_default() as u32,
                )
            })
            .collect()
    };
    wait_for("both replicas to hold what was acknowledged", || {
        lines(&a) == acks.lines && lines(&b) == acks.lines
    });
    assert_eq!(hash(&a), hash(&b));

    // One place left, and creates arriving on both replicas at once (each replica's memory says
    // there is room): exactly one is accepted.
    for id in acks.alive.iter().skip(LIMIT - 1) {
        let (status, _) = a.request("DELETE", &format!("/api/tracepoints/{id}"), None, &[]);
        assert_eq!(status, 200);
    }
    while a.ids(&[]).len() < LIMIT - 1 {
        a.create(r#"{"tracepoint": {"path": "fill.rs", "line_number": 1}}"#);
    }
    for round in 0..5 {
        wait_for("B to see one place left", || b.ids(&[]).len() == LIMIT - 1);
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let racers: Vec<_> = (0..8)
            .map(|i| {
                let http = servers[i % 2].clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let agent = common::http_agent();
                    barrier.wait();
                    let body = format!(
                        r#"{{"tracepoint": {{"path": "race{round}.rs", "line_number": {}}}}}"#,
                        i + 1
                    );
                    let (status, bytes) = common::send(
                        &agent,
                        "POST",
                        &format!("{http}/api/tracepoints"),
                        Some(body.into_bytes()),
                        &[],
                    );
                    let json: serde_json::Value =
                        serde_json::from_slice(&bytes).unwrap_or_default();
                    (status, json["tracepoint"]["ID"].as_str().map(str::to_owned))
                })
            })
            .collect();
        let results: Vec<_> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        let won: Vec<_> = results.iter().filter(|(s, _)| *s == 200).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        assert!(
            results.iter().all(|(s, _)| *s == 200 || *s == 409),
            "{results:?}"
        );
        wait_for("both replicas at the limit", || {
            a.ids(&[]).len() == LIMIT && b.ids(&[]).len() == LIMIT
        });
        let id = won[0].1.clone().expect("an ID");
        let (status, _) = b.request("DELETE", &format!("/api/tracepoints/{id}"), None, &[]);
        assert_eq!(status, 200);
    }
}

#[test]
fn a_change_whose_announcement_was_lost_arrives_by_the_periodic_check() {
    use prost::Message as _;

    let Some(mut cluster) = common::postgres::own_cluster(
        "a_change_whose_announcement_was_lost_arrives_by_the_periodic_check",
    ) else {
        return;
    };
    let url = cluster.create_database().expect("a database");
    let db = url.rsplit('/').next().expect("a database name").to_owned();
    let [a, _b] = replicas(&url, |_| {});
    let mut stream = a.rt.block_on(async {
        let mut stream = watch(&a, "agent-on-a").await;
        next_update(&mut stream).await;
        stream
    });
    // A write that announces nothing: what a notification lost on the way looks like.
    let config = sonde_proto::tracepoint::TracePointConfig {
        id: "written-behind-the-back".into(),
        path: "lost.rs".into(),
        line_number: 7,
        ..Default::default()
    };
    let hex: String = config
        .encode_to_vec()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    cluster
        .psql(
            &db,
            &format!(
                "BEGIN;
                 INSERT INTO tracepoints VALUES ('single-tenant', 'written-behind-the-back',
                     '\\x{hex}', 1, 1);
                 INSERT INTO tenant_versions VALUES ('single-tenant', 1)
                     ON CONFLICT (tenant) DO UPDATE SET version = tenant_versions.version + 1;
                 COMMIT;"
            ),
        )
        .expect("the silent write");
    let update = a.rt.block_on(next_update(&mut stream));
    assert_eq!(ids(&update), ["written-behind-the-back"]);
    cluster.stop();
}
