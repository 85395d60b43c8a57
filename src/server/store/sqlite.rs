//! [`SqliteStore`]: the default store, one SQLite file in WAL mode under the data directory.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{Store, StoreError, StoredRecord};

/// Schema versions this build can read; bump with a migration step in [`migrate`].
const SCHEMA_VERSION: i64 = 1;

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

    fn put(&self, record: &StoredRecord) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO tracepoints (tenant, id, config, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (tenant, id) DO UPDATE SET config = excluded.config,
                                                   updated_ms = excluded.updated_ms",
            params![
                record.tenant,
                record.id,
                record.config,
                record.created_ms,
                record.updated_ms
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn delete(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let existed = tx
            .query_row(
                "DELETE FROM tracepoints WHERE tenant = ?1 AND id = ?2 RETURNING id",
                params![tenant, id],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        tx.commit()?;
        Ok(existed)
    }
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

    #[test]
    fn put_load_replace_delete_round_trip_through_a_reopened_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            store.put(&record("a", "1", b"one")).unwrap();
            store.put(&record("b", "1", b"other tenant")).unwrap();
            store.put(&record("a", "1", b"edited")).unwrap();
            store.put(&record("a", "2", b"two")).unwrap();
            assert!(store.delete("a", "2").unwrap());
            assert!(
                !store.delete("a", "2").unwrap(),
                "second delete finds nothing"
            );
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        let all = store.load_all().unwrap();
        assert_eq!(
            all,
            vec![
                record("a", "1", b"edited"),
                record("b", "1", b"other tenant")
            ]
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
