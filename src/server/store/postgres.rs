//! [`PgStore`]: one PostgreSQL database shared by several `sonde server` replicas.
//!
//! # Design
//! The [`Store`] trait is blocking (the server calls it from blocking threads), PostgreSQL's
//! client is async: the store owns a small runtime of its own (one worker thread) that drives a
//! pool of connections (tokio-postgres through deadpool-postgres, which replaces a connection
//! that broke, e.g. after a database restart) and the connection that listens for changes, and
//! each call blocks on it. A call never waits long for a database that has gone away: taking a
//! connection from the pool gives up after [`WAIT`], and a whole call after [`CALL_TIMEOUT`], so
//! writes fail (the API answers 503) and reads of memory go on.
//!
//! Every write bumps the tenant's row in `tenant_versions` first. That row lock serializes the
//! writes to one tenant from every replica, so the per-tenant limit, counted after taking it,
//! holds across replicas; and the same transaction sends `NOTIFY sonde_changes, 'VERSION:TENANT'`,
//! delivered to every listening replica when (and only if) the write commits. The listener
//! announces [`Change::Resync`] whenever it (re)connects, since notifications sent while it was
//! away are lost.
//!
//! Schema versions (the one row of `sonde_schema`), each a step in [`migrate`], run at start
//! under an advisory lock so that replicas starting together do not race:
//! 1. `tracepoints`, `tenant_versions`, `audit` and `agents` (what each replica shares of the
//!    agents it serves).

use std::{sync::Mutex, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, IsolationLevel, NoTls, Row, types::ToSql};

use super::{
    AuditEntry, AuditQuery, AuditRecord, Change, SharedAgent, Store, StoreError, StoredRecord,
    Written,
};

/// Schema versions this build can read; bump with a step in [`migrate`].
const SCHEMA_VERSION: i32 = 1;

/// The channel of change announcements.
const CHANNEL: &str = "sonde_changes";

/// Longest wait for a pooled connection (or a new one) before a call fails.
const WAIT: Duration = Duration::from_secs(3);

/// Longest a call may take in all (a database that hangs rather than refuses).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between attempts to reconnect the listener.
const RELISTEN: Duration = Duration::from_millis(200);

/// Key of the advisory lock held while migrating ("sonde" in ASCII).
const MIGRATION_LOCK: i64 = 0x0073_6f6e_6465;

/// Tracepoints, versions, the audit log and shared agents in PostgreSQL.
pub struct PgStore {
    /// Where, without the password (for logs).
    target: String,
    pool: Pool,
    changes: Mutex<Option<mpsc::UnboundedReceiver<Change>>>,
    /// Drives the pool's connections and the listener; shut down in the background on drop, so
    /// dropping the store inside an async context is fine.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/dbname`, or the
    /// `key=value` form), runs the migrations and starts listening for changes. Blocking: call it
    /// outside async code (or in `block_in_place`). Fails when the database cannot be reached or
    /// holds a newer schema than this build knows.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|err| StoreError::BadUrl(format!("{err}")))?;
        let target = describe(&config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sonde-postgres")
            .enable_all()
            .build()
            .map_err(|source| StoreError::Io {
                context: "starting the PostgreSQL client's runtime".into(),
                source,
            })?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(WAIT))
            .create_timeout(Some(WAIT))
            .recycle_timeout(Some(WAIT))
            .build()
            .map_err(|err| StoreError::Postgres(format!("building the pool: {err}")))?;
        runtime.block_on(async {
            let mut client = pool.get().await.map_err(|err| {
                StoreError::Postgres(format!("cannot connect to {target}: {err}"))
            })?;
            migrate(&mut client).await
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        runtime.spawn(listen(config, tx));
        Ok(Self {
            target,
            pool,
            changes: Mutex::new(Some(rx)),
            runtime: Some(runtime),
        })
    }

    /// Where the store is (user, host, port and database; never the password).
    pub fn target(&self) -> &str {
        &self.target
    }

    fn block_on<T>(
        &self,
        f: impl AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let runtime = self
            .runtime
            .as_ref()
            .expect("the runtime lives as long as the store");
        let call = async {
            let mut client = self
                .pool
                .get()
                .await
                .map_err(|err| StoreError::Postgres(format!("{}: {err}", self.target)))?;
            f(&mut client).await
        };
        runtime.block_on(async {
            tokio::time::timeout(CALL_TIMEOUT, call)
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Postgres(format!(
                        "{}: no answer within {CALL_TIMEOUT:?}",
                        self.target
                    )))
                })
        })
    }
}

/// `user@host:port/dbname` of a configuration.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or_default(),
        config.get_dbname().unwrap_or_default()
    )
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        match err.as_db_error() {
            Some(db) => Self::Postgres(format!("{} ({})", db.message(), db.code().code())),
            None => match std::error::Error::source(&err) {
                Some(source) => Self::Postgres(format!("{err}: {source}")),
                None => Self::Postgres(err.to_string()),
            },
        }
    }
}

async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS sonde_schema (
            id      INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL
        )",
    )
    .await?;
    let version: i32 = tx
        .query_opt("SELECT version FROM sonde_schema WHERE id = 1", &[])
        .await?
        .map_or(0, |row| row.get(0));
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: version.into(),
            supported: SCHEMA_VERSION.into(),
        });
    }
    if version < 1 {
        tx.batch_execute(
            "CREATE TABLE tracepoints (
                tenant     TEXT   NOT NULL,
                id         TEXT   NOT NULL,
                config     BYTEA  NOT NULL,
                created_ms BIGINT NOT NULL,
                updated_ms BIGINT NOT NULL,
                PRIMARY KEY (tenant, id)
            );
            CREATE TABLE tenant_versions (
                tenant  TEXT   PRIMARY KEY,
                version BIGINT NOT NULL
            );
            CREATE TABLE audit (
                seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                at_ms      BIGINT NOT NULL,
                tenant     TEXT   NOT NULL,
                who        TEXT   NOT NULL,
                via        TEXT   NOT NULL,
                address    TEXT,
                action     TEXT   NOT NULL,
                tracepoint TEXT,
                before     TEXT,
                after      TEXT,
                detail     TEXT
            );
            CREATE INDEX audit_tenant_seq ON audit (tenant, seq);
            CREATE INDEX audit_at ON audit (at_ms);
            CREATE TABLE agents (
                tenant     TEXT   NOT NULL,
                id         TEXT   NOT NULL,
                replica    TEXT   NOT NULL,
                written_ms BIGINT NOT NULL,
                view       TEXT   NOT NULL,
                PRIMARY KEY (tenant, id)
            );
            CREATE INDEX agents_written ON agents (written_ms);",
        )
        .await?;
    }
    tx.execute(
        "INSERT INTO sonde_schema (id, version) VALUES (1, $1)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version",
        &[&SCHEMA_VERSION],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Keeps a connection that listens on [`CHANNEL`], forwarding its notifications; reconnects
/// whenever it breaks and then announces [`Change::Resync`]. Ends when nobody receives.
async fn listen(config: tokio_postgres::Config, tx: mpsc::UnboundedSender<Change>) {
    let mut failures = 0u32;
    while !tx.is_closed() {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let forward = tx.clone();
                let pump = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                if let Some(change) = parse_payload(n.payload())
                                    && forward.send(change).is_err()
                                {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(err) => {
                                tracing::warn!(%err, "the PostgreSQL change listener lost its connection");
                                return;
                            }
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    Ok(()) => {
                        if failures > 0 {
                            tracing::info!("the PostgreSQL change listener reconnected");
                        }
                        failures = 0;
                        let _ = tx.send(Change::Resync);
                        let _ = pump.await;
                    }
                    Err(err) => {
                        tracing::warn!(%err, "LISTEN failed");
                        pump.abort();
                    }
                }
                drop(client);
            }
            Err(err) => {
                // Once, then every 50 attempts (10 s), so a long outage does not flood the log.
                if failures.is_multiple_of(50) {
                    tracing::warn!(%err, "cannot connect the PostgreSQL change listener; retrying");
                }
                failures += 1;
            }
        }
        tokio::time::sleep(RELISTEN).await;
    }
}

/// `VERSION:TENANT` as sent by the writes.
fn parse_payload(payload: &str) -> Option<Change> {
    let (version, tenant) = payload.split_once(':')?;
    Some(Change::Tenant {
        tenant: tenant.to_owned(),
        version: version.parse().ok()?,
    })
}

fn record(row: &Row) -> StoredRecord {
    StoredRecord {
        tenant: row.get(0),
        id: row.get(1),
        config: row.get(2),
        created_ms: row.get(3),
        updated_ms: row.get(4),
    }
}

/// Bumps the tenant's version (taking its row lock until commit) inside `tx`.
async fn bump(tx: &deadpool_postgres::Transaction<'_>, tenant: &str) -> Result<i64, StoreError> {
    let row = tx
        .query_one(
            "INSERT INTO tenant_versions (tenant, version) VALUES ($1, 1)
             ON CONFLICT (tenant) DO UPDATE SET version = tenant_versions.version + 1
             RETURNING version",
            &[&tenant],
        )
        .await?;
    Ok(row.get(0))
}

/// Announces the change; delivered when `tx` commits.
async fn notify(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    version: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &format!("{version}:{tenant}")],
    )
    .await?;
    Ok(())
}

async fn insert_audit(
    client: &impl deadpool_postgres::GenericClient,
    a: &AuditRecord,
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached(
            "INSERT INTO audit (at_ms, tenant, who, via, address, action, tracepoint, before, after, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .await?;
    let params: [&(dyn ToSql + Sync); 10] = [
        &a.at_ms,
        &a.tenant,
        &a.who,
        &a.via,
        &a.address,
        &a.action,
        &a.tracepoint,
        &a.before,
        &a.after,
        &a.detail,
    ];
    client.execute(&statement, &params).await?;
    Ok(())
}

impl Store for PgStore {
    fn load_all(&self) -> Result<Vec<StoredRecord>, StoreError> {
        self.block_on(async |client| {
            let rows = client
                .query(
                    "SELECT tenant, id, config, created_ms, updated_ms FROM tracepoints
                     ORDER BY tenant, id",
                    &[],
                )
                .await?;
            Ok(rows.iter().map(record).collect())
        })
    }

    fn versions(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.block_on(async |client| {
            let statement = client
                .prepare_cached("SELECT tenant, version FROM tenant_versions")
                .await?;
            let rows = client.query(&statement, &[]).await?;
            Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
        })
    }

    fn load_tenant(&self, tenant: &str) -> Result<(i64, Vec<StoredRecord>), StoreError> {
        self.block_on(async |client| {
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let version = tx
                .query_opt(
                    "SELECT version FROM tenant_versions WHERE tenant = $1",
                    &[&tenant],
                )
                .await?
                .map_or(0, |row| row.get(0));
            let rows = tx
                .query(
                    "SELECT tenant, id, config, created_ms, updated_ms FROM tracepoints
                     WHERE tenant = $1 ORDER BY id",
                    &[&tenant],
                )
                .await?;
            tx.commit().await?;
            Ok((version, rows.iter().map(record).collect()))
        })
    }

    fn insert(
        &self,
        record: &StoredRecord,
        audit: &AuditRecord,
        max_per_tenant: usize,
    ) -> Result<Written, StoreError> {
        let max = i64::try_from(max_per_tenant).unwrap_or(i64::MAX);
        self.block_on(async |client| {
            let tx = client.transaction().await?;
            let version = bump(&tx, &record.tenant).await?;
            let count: i64 = tx
                .query_one(
                    "SELECT count(*) FROM tracepoints WHERE tenant = $1",
                    &[&record.tenant],
                )
                .await?
                .get(0);
            if count >= max {
                tx.rollback().await?;
                return Ok(Written::TenantFull);
            }
            tx.execute(
                "INSERT INTO tracepoints (tenant, id, config, created_ms, updated_ms)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &record.tenant,
                    &record.id,
                    &record.config,
                    &record.created_ms,
                    &record.updated_ms,
                ],
            )
            .await?;
            insert_audit(&tx, audit).await?;
            notify(&tx, &record.tenant, version).await?;
            tx.commit().await?;
            Ok(Written::Done { version })
        })
    }

    fn update(&self, record: &StoredRecord, audit: &AuditRecord) -> Result<Written, StoreError> {
        self.block_on(async |client| {
            let tx = client.transaction().await?;
            let version = bump(&tx, &record.tenant).await?;
            let changed = tx
                .execute(
                    "UPDATE tracepoints SET config = $3, updated_ms = $4
                     WHERE tenant = $1 AND id = $2",
                    &[
                        &record.tenant,
                        &record.id,
                        &record.config,
                        &record.updated_ms,
                    ],
                )
                .await?;
            if changed == 0 {
                tx.rollback().await?;
                return Ok(Written::NotFound);
            }
            insert_audit(&tx, audit).await?;
            notify(&tx, &record.tenant, version).await?;
            tx.commit().await?;
            Ok(Written::Done { version })
        })
    }

    fn delete(&self, tenant: &str, id: &str, audit: &AuditRecord) -> Result<Written, StoreError> {
        self.block_on(async |client| {
            let tx = client.transaction().await?;
            let version = bump(&tx, tenant).await?;
            let deleted = tx
                .execute(
                    "DELETE FROM tracepoints WHERE tenant = $1 AND id = $2",
                    &[&tenant, &id],
                )
                .await?;
            if deleted == 0 {
                tx.rollback().await?;
                return Ok(Written::NotFound);
            }
            insert_audit(&tx, audit).await?;
            notify(&tx, tenant, version).await?;
            tx.commit().await?;
            Ok(Written::Done { version })
        })
    }

    fn append_audit(&self, audit: &AuditRecord) -> Result<(), StoreError> {
        self.block_on(async |client| insert_audit(&*client, audit).await)
    }

    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let after = query.after_seq.unwrap_or(0);
        self.block_on(async |client| {
            let statement = client
                .prepare_cached(
                    "SELECT seq, at_ms, tenant, who, via, address, action, tracepoint, before,
                            after, detail
                     FROM audit
                     WHERE ($1::TEXT IS NULL OR tenant = $1)
                       AND ($2::BIGINT IS NULL OR at_ms >= $2)
                       AND ($3::TEXT IS NULL OR tracepoint = $3)
                       AND ($4::TEXT IS NULL OR who = $4)
                       AND seq > $5
                     ORDER BY seq
                     LIMIT $6",
                )
                .await?;
            let rows = client
                .query(
                    &statement,
                    &[
                        &query.tenant,
                        &query.since_ms,
                        &query.tracepoint,
                        &query.who,
                        &after,
                        &limit,
                    ],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| AuditEntry {
                    seq: row.get(0),
                    record: AuditRecord {
                        at_ms: row.get(1),
                        tenant: row.get(2),
                        who: row.get(3),
                        via: row.get(4),
                        address: row.get(5),
                        action: row.get(6),
                        tracepoint: row.get(7),
                        before: row.get(8),
                        after: row.get(9),
                        detail: row.get(10),
                    },
                })
                .collect())
        })
    }

    fn prune_audit(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.block_on(async |client| {
            let n = client
                .execute("DELETE FROM audit WHERE at_ms < $1", &[&before_ms])
                .await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn changes(&self) -> Option<mpsc::UnboundedReceiver<Change>> {
        self.changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn put_agents(&self, replica: &str, agents: &[SharedAgent]) -> Result<(), StoreError> {
        if agents.is_empty() {
            return Ok(());
        }
        let tenants: Vec<&str> = agents.iter().map(|a| a.tenant.as_str()).collect();
        let ids: Vec<&str> = agents.iter().map(|a| a.id.as_str()).collect();
        let written: Vec<i64> = agents.iter().map(|a| a.written_ms).collect();
        let views: Vec<&str> = agents.iter().map(|a| a.view.as_str()).collect();
        self.block_on(async |client| {
            client
                .execute(
                    "INSERT INTO agents (tenant, id, replica, written_ms, view)
                     SELECT t, i, $3, w, v
                     FROM unnest($1::TEXT[], $2::TEXT[], $4::BIGINT[], $5::TEXT[]) AS u(t, i, w, v)
                     ON CONFLICT (tenant, id) DO UPDATE
                        SET replica = excluded.replica, written_ms = excluded.written_ms,
                            view = excluded.view",
                    &[&tenants, &ids, &replica, &written, &views],
                )
                .await?;
            Ok(())
        })
    }

    fn agents(&self, replica: &str, since_ms: i64) -> Result<Vec<SharedAgent>, StoreError> {
        self.block_on(async |client| {
            let rows = client
                .query(
                    "SELECT tenant, id, replica, written_ms, view FROM agents
                     WHERE replica <> $1 AND written_ms >= $2",
                    &[&replica, &since_ms],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| SharedAgent {
                    tenant: row.get(0),
                    id: row.get(1),
                    replica: row.get(2),
                    written_ms: row.get(3),
                    view: row.get(4),
                })
                .collect())
        })
    }

    fn prune_agents(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.block_on(async |client| {
            let n = client
                .execute("DELETE FROM agents WHERE written_ms < $1", &[&before_ms])
                .await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_and_bad_ones_are_ignored() {
        assert_eq!(
            parse_payload("12:team-a"),
            Some(Change::Tenant {
                tenant: "team-a".into(),
                version: 12
            })
        );
        assert_eq!(parse_payload("x:team-a"), None);
        assert_eq!(parse_payload("nothing"), None);
    }

    #[test]
    fn a_bad_url_is_refused_naming_the_flag() {
        let err = PgStore::open("postgres://host:notaport/db").unwrap_err();
        assert!(matches!(err, StoreError::BadUrl(_)), "{err}");
        assert!(err.to_string().contains("--database-url"), "{err}");
    }
}
