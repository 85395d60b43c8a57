//! [`Store`]: where tracepoints are kept durably. SQLite today; the trait leaves room for
//! PostgreSQL when several servers share one database.

mod sqlite;

pub use sqlite::SqliteStore;

/// One stored tracepoint: its tenant, ID, the encoded `TracePointConfig` (protobuf) and times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The tenant that owns it.
    pub tenant: String,
    /// The tracepoint's ID (also inside `config`).
    pub id: String,
    /// The `TracePointConfig`, protobuf-encoded.
    pub config: Vec<u8>,
    /// Creation time, Unix milliseconds.
    pub created_ms: i64,
    /// Last edit, Unix milliseconds.
    pub updated_ms: i64,
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("store: {0}")]
    Database(#[from] rusqlite::Error),
    /// The data directory or database file could not be prepared.
    #[error("store: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying failure.
        source: std::io::Error,
    },
    /// The database was written by a newer Sonde.
    #[error("store: schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
}

/// Durable storage of tracepoints. Calls are blocking; the server runs them off the async
/// runtime. Every call that returns `Ok` is durable: it survives a crash of the process.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Every stored tracepoint of every tenant.
    fn load_all(&self) -> Result<Vec<StoredRecord>, StoreError>;
    /// Inserts a new record, or replaces the one with the same tenant and ID.
    fn put(&self, record: &StoredRecord) -> Result<(), StoreError>;
    /// Removes a record; `false` when there was none.
    fn delete(&self, tenant: &str, id: &str) -> Result<bool, StoreError>;
}
