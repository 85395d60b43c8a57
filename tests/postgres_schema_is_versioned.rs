//! The PostgreSQL store migrates a fresh database once however many replicas start together,
//! refuses a database whose schema is newer than it knows (naming both versions), and `sonde
//! server` with an unreachable `--database-url` stops with an error saying so.

mod common;

use sonde::server::{PgStore, StoreError};

#[test]
fn replicas_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let Some(cluster) = common::postgres::own_cluster(
        "replicas_starting_together_migrate_once_and_a_newer_schema_is_refused",
    ) else {
        return;
    };
    let url = cluster.create_database().expect("a database");
    let db = url.rsplit('/').next().expect("a name").to_owned();
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PgStore::open(&url).map(drop))
        })
        .collect();
    for o in opened {
        o.join().expect("the thread").expect("the store opens");
    }
    assert_eq!(
        cluster
            .psql(&db, "SELECT version FROM sonde_schema")
            .unwrap(),
        "1"
    );

    cluster
        .psql(&db, "UPDATE sonde_schema SET version = 99")
        .unwrap();
    let err = PgStore::open(&url).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 99,
                supported: 1
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn an_unreachable_database_stops_the_server_naming_the_flag() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args([
            "server",
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--data-dir",
        ])
        .arg(dir.path())
        .arg(format!(
            "--database-url=postgres://sonde:secret@127.0.0.1:{port}/sonde"
        ))
        .env("SONDE_LOG", "warn")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--database-url"), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(
        !stderr.contains("secret"),
        "the password is not printed: {stderr}"
    );
    assert!(
        !dir.path().join("sonde.db").exists(),
        "no SQLite file made on the side"
    );
}
