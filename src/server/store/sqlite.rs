//! [`SqliteStore`]: the default store, one SQLite file in WAL mode under the data directory.
//!
//! Schema versions (`PRAGMA user_version`), each a migration step in [`migrate`]:
//! 1. `tracepoints`;
//! 2. `audit`, the audit log (`seq` is `AUTOINCREMENT`, so numbers are never reused after a
//!    prune and page cursors stay valid);
//! 3. `tenant_versions`, each tenant's version number, bumped by every change.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use rusqlite::{Connection, OptionalExtension as _, Transaction, TransactionBehavior, params};

use super::{AuditEntry, AuditQuery, AuditRecord, Store, StoreError, StoredRecord, Written};

/// Schema versions this build can read; bump with a migration step in [`migrate`].
const SCHEMA_VERSION: i64 = 3;

/// Tracepoints in one SQLite file (`sonde.db`), written with `synchronous=FULL` so that an
/// acknowledged write survives `kill -9` and power loss.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) `sonde.db` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
            context: format!("creating data directory {}", data_dir.display()),
            source,
        })?;
        let path = data_dir.join("sonde.db");
        let mut conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Self {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll back
        // on drop), so a poisoned lock is still usable.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    let tx = conn.transaction()?;
    if version < 1 {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS tracepoints (
                tenant     TEXT    NOT NULL,
                id         TEXT    NOT NULL,
                config     BLOB    NOT NULL,
                created_ms INTEGER NOT NULL,
                updated_ms INTEGER NOT NULL,
                PRIMARY KEY (tenant, id)
            ) WITHOUT ROWID;",
        )?;
    }
    if version < 2 {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS audit (
                seq        INTEGER PRIMARY KEY AUTOINCREMENT,
                at_ms      INTEGER NOT NULL,
                tenant     TEXT    NOT NULL,
                who        TEXT    NOT NULL,
                via        TEXT    NOT NULL,
                address    TEXT,
                action     TEXT    NOT NULL,
                tracepoint TEXT,
                before     TEXT,
                after      TEXT,
                detail     TEXT
            );
            CREATE INDEX IF NOT EXISTS audit_tenant_seq ON audit (tenant, seq);
            CREATE INDEX IF NOT EXISTS audit_at ON audit (at_ms);",
        )?;
    }
    if version < 3 {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS tenant_versions (
                tenant  TEXT    PRIMARY KEY,
                version INTEGER NOT NULL
            ) WITHOUT ROWID;
            INSERT OR IGNORE INTO tenant_versions (tenant, version)
                SELECT DISTINCT tenant, 1 FROM tracepoints;",
        )?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

impl Store for SqliteStore {
    fn load_all(&self) -> Result<Vec<StoredRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT tenant, id, config, created_ms, updated_ms FROM tracepoints ORDER BY tenant, id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(StoredRecord {
                tenant: row.get(0)?,
                id: row.get(1)?,
                config: row.get(2)?,
                created_ms: row.get(3)?,
                updated_ms: row.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn versions(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT tenant, version FROM tenant_versions")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn load_tenant(&self, tenant: &str) -> Result<(i64, Vec<StoredRecord>), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let version = tx
            .query_row(
                "SELECT version FROM tenant_versions WHERE tenant = ?1",
                params![tenant],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let records = {
            let mut stmt = tx.prepare(
                "SELECT tenant, id, config, created_ms, updated_ms FROM tracepoints
                 WHERE tenant = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![tenant], |row| {
                Ok(StoredRecord {
                    tenant: row.get(0)?,
                    id: row.get(1)?,
                    config: row.get(2)?,
                    created_ms: row.get(3)?,
                    updated_ms: row.get(4)?,
                })
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok((version, records))
    }

    fn insert(
        &self,
        record: &StoredRecord,
        audit: &AuditRecord,
        max_per_tenant: usize,
    ) -> Result<Written, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let count: i64 = tx.query_row(
            "SELECT count(*) FROM tracepoints WHERE tenant = ?1",
            params![record.tenant],
            |row| row.get(0),
        )?;
        if usize::try_from(count).unwrap_or(usize::MAX) >= max_per_tenant {
            return Ok(Written::TenantFull);
        }
        tx.execute(
            "INSERT INTO tracepoints (tenant, id, config, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                record.tenant,
                record.id,
                record.config,
                record.created_ms,
                record.updated_ms
            ],
        )?;
        insert_audit(&tx, audit)?;
        let version = bump(&tx, &record.tenant)?;
        tx.commit()?;
        Ok(Written::Done { version })
    }

    fn update(&self, record: &StoredRecord, audit: &AuditRecord) -> Result<Written, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            "UPDATE tracepoints SET config = ?3, updated_ms = ?4 WHERE tenant = ?1 AND id = ?2",
            params![record.tenant, record.id, record.config, record.updated_ms],
        )?;
        if changed == 0 {
            return Ok(Written::NotFound);
        }
        insert_audit(&tx, audit)?;
        let version = bump(&tx, &record.tenant)?;
        tx.commit()?;
        Ok(Written::Done { version })
    }

    fn delete(&self, tenant: &str, id: &str, audit: &AuditRecord) -> Result<Written, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existed = tx
            .query_row(
                "DELETE FROM tracepoints WHERE tenant = ?1 AND id = ?2 RETURNING id",
                params![tenant, id],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !existed {
            return Ok(Written::NotFound);
        }
        insert_audit(&tx, audit)?;
        let version = bump(&tx, tenant)?;
        tx.commit()?;
        Ok(Written::Done { version })
    }

    fn append_audit(&self, audit: &AuditRecord) -> Result<(), StoreError> {
        let conn = self.conn();
        insert_audit(&conn, audit)?;
        Ok(())
    }

    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, at_ms, tenant, who, via, address, action, tracepoint, before, after, detail
             FROM audit
             WHERE (?1 IS NULL OR tenant = ?1)
               AND (?2 IS NULL OR at_ms >= ?2)
               AND (?3 IS NULL OR tracepoint = ?3)
               AND (?4 IS NULL OR who = ?4)
               AND seq > ?5
             ORDER BY seq
             LIMIT ?6",
        )?;
        let rows = stmt.query_map(
            params![
                query.tenant,
                query.since_ms,
                query.tracepoint,
                query.who,
                query.after_seq.unwrap_or(0),
                i64::try_from(query.limit).unwrap_or(i64::MAX),
            ],
            |row| {
                Ok(AuditEntry {
                    seq: row.get(0)?,
                    record: AuditRecord {
                        at_ms: row.get(1)?,
                        tenant: row.get(2)?,
                        who: row.get(3)?,
                        via: row.get(4)?,
                        address: row.get(5)?,
                        action: row.get(6)?,
                        tracepoint: row.get(7)?,
                        before: row.get(8)?,
                        after: row.get(9)?,
                        detail: row.get(10)?,
                    },
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn prune_audit(&self, before_ms: i64) -> Result<usize, StoreError> {
        let conn = self.conn();
        Ok(conn.execute("DELETE FROM audit WHERE at_ms < ?1", params![before_ms])?)
    }
}

/// Increments the tenant's version inside the write's transaction.
fn bump(tx: &Transaction<'_>, tenant: &str) -> Result<i64, StoreError> {
    Ok(tx.query_row(
        "INSERT INTO tenant_versions (tenant, version) VALUES (?1, 1)
         ON CONFLICT (tenant) DO UPDATE SET version = version + 1
         RETURNING version",
        params![tenant],
        |row| row.get(0),
    )?)
}

fn insert_audit(conn: &Connection, a: &AuditRecord) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO audit (at_ms, tenant, who, via, address, action, tracepoint, before, after, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        a.at_ms,
        a.tenant,
        a.who,
        a.via,
        a.address,
        a.action,
        a.tracepoint,
        a.before,
        a.after,
        a.detail
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tenant: &str, id: &str, config: &[u8]) -> StoredRecord {
        StoredRecord {
            tenant: tenant.into(),
            id: id.into(),
            config: config.to_vec(),
            created_ms: 1,
            updated_ms: 2,
        }
    }

    fn audit(tenant: &str, action: &str, id: &str) -> AuditRecord {
        AuditRecord {
            at_ms: 10,
            tenant: tenant.into(),
            who: "tester".into(),
            via: "http".into(),
            action: action.into(),
            tracepoint: Some(id.into()),
            ..Default::default()
        }
    }

    #[test]
    fn put_load_replace_delete_round_trip_through_a_reopened_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            let done = |version| Written::Done { version };
            let insert = |r: StoredRecord, a| store.insert(&r, &a, 2).unwrap();
            assert_eq!(
                insert(record("a", "1", b"one"), audit("a", "create", "1")),
                done(1)
            );
            assert_eq!(
                insert(record("b", "1", b"other tenant"), audit("b", "create", "1")),
                done(1)
            );
            assert_eq!(
                store
                    .update(&record("a", "1", b"edited"), &audit("a", "edit", "1"))
                    .unwrap(),
                done(2)
            );
            assert_eq!(
                store
                    .update(&record("a", "9", b"none"), &audit("a", "edit", "9"))
                    .unwrap(),
                Written::NotFound
            );
            assert_eq!(
                insert(record("a", "2", b"two"), audit("a", "create", "2")),
                done(3)
            );
            assert_eq!(
                insert(record("a", "3", b"three"), audit("a", "create", "3")),
                Written::TenantFull,
                "the limit of 2 holds"
            );
            assert_eq!(
                store.delete("a", "2", &audit("a", "delete", "2")).unwrap(),
                done(4)
            );
            assert_eq!(
                store.delete("a", "2", &audit("a", "delete", "2")).unwrap(),
                Written::NotFound,
                "second delete finds nothing"
            );
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        let mut versions = store.versions().unwrap();
        versions.sort();
        assert_eq!(versions, [("a".to_owned(), 4), ("b".to_owned(), 1)]);
        assert_eq!(
            store.load_tenant("a").unwrap(),
            (4, vec![record("a", "1", b"edited")])
        );
        let all = store.load_all().unwrap();
        assert_eq!(
            all,
            vec![
                record("a", "1", b"edited"),
                record("b", "1", b"other tenant")
            ]
        );
        let entries = store
            .audit(&AuditQuery {
                tenant: Some("a".into()),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        let actions: Vec<_> = entries
            .iter()
            .map(|e| (e.record.action.as_str(), e.record.tracepoint.as_deref()))
            .collect();
        assert_eq!(
            actions,
            [
                ("create", Some("1")),
                ("edit", Some("1")),
                ("create", Some("2")),
                ("delete", Some("2"))
            ],
            "one entry per change, none for the delete that found nothing"
        );
        assert!(entries.windows(2).all(|w| w[0].seq < w[1].seq));
    }

    #[test]
    fn audit_queries_filter_page_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        for i in 0..5 {
            let mut a = audit("t", "denied", &i.to_string());
            a.at_ms = i * 100;
            a.who = if i % 2 == 0 { "even" } else { "odd" }.into();
            store.append_audit(&a).unwrap();
        }
        let q = |query: AuditQuery| {
            let limit = if query.limit == 0 { 2 } else { query.limit };
            store.audit(&AuditQuery { limit, ..query }).unwrap()
        };
        let first = q(AuditQuery::default());
        assert_eq!(first.len(), 2);
        let second = q(AuditQuery {
            after_seq: Some(first[1].seq),
            ..Default::default()
        });
        assert_eq!(second[0].record.tracepoint.as_deref(), Some("2"));
        let odd = q(AuditQuery {
            who: Some("odd".into()),
            limit: 10,
            ..Default::default()
        });
        assert_eq!(odd.len(), 2);
        let late = q(AuditQuery {
            since_ms: Some(300),
            ..Default::default()
        });
        assert_eq!(late.len(), 2);
        assert_eq!(store.prune_audit(200).unwrap(), 2);
        assert_eq!(
            q(AuditQuery {
                limit: 10,
                ..Default::default()
            })
            .len(),
            3
        );
    }

    #[test]
    fn a_version_1_database_upgrades_and_keeps_its_tracepoints() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What Sonde before the audit log wrote.
            let conn = Connection::open(dir.path().join("sonde.db")).unwrap();
            conn.execute_batch(
                "CREATE TABLE tracepoints (
                    tenant TEXT NOT NULL, id TEXT NOT NULL, config BLOB NOT NULL,
                    created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
                    PRIMARY KEY (tenant, id)) WITHOUT ROWID;
                 INSERT INTO tracepoints VALUES ('a', '1', x'0102', 1, 2);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.load_all().unwrap(), vec![record("a", "1", &[1, 2])]);
        assert_eq!(store.versions().unwrap(), [("a".to_owned(), 1)]);
        store
            .insert(&record("a", "2", b"x"), &audit("a", "create", "2"), 10)
            .unwrap();
        let version: i64 = store
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(
            store
                .audit(&AuditQuery {
                    limit: 10,
                    ..Default::default()
                })
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join("sonde.db")).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = SqliteStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
    }
}
