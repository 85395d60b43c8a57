//! [`Store`]: where tracepoints and the audit log are kept durably. SQLite today; the trait
//! leaves room for PostgreSQL when several servers share one database.
//!
//! A change and its [`AuditRecord`] are written in one transaction ([`Store::put`],
//! [`Store::delete`]), so no acknowledged change exists without its audit entry, and no entry
//! without its change.

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

/// One entry of the audit log, as written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditRecord {
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// The tenant acted in (or asked for, when refused).
    pub tenant: String,
    /// The token's name; `anonymous` when the API has no tokens.
    pub who: String,
    /// `http`, `grpc` or `cli`.
    pub via: String,
    /// The peer's IP address.
    pub address: Option<String>,
    /// `create`, `edit`, `delete` or `denied`.
    pub action: String,
    /// The tracepoint's ID, when the action names one.
    pub tracepoint: Option<String>,
    /// The tracepoint before the change (proto3 JSON), for edits and deletes.
    pub before: Option<String>,
    /// The tracepoint after the change (proto3 JSON), for creates and edits.
    pub after: Option<String>,
    /// For refusals: the request and why it was refused.
    pub detail: Option<String>,
}

/// An audit entry as read back: its sequence number (increasing in commit order, never reused)
/// and the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the log.
    pub seq: i64,
    /// What was written.
    pub record: AuditRecord,
}

/// Which audit entries to read: all filters optional, oldest first, after `after_seq`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditQuery {
    /// One tenant, or every tenant (`None`).
    pub tenant: Option<String>,
    /// Entries at or after this time, Unix milliseconds.
    pub since_ms: Option<i64>,
    /// Entries about this tracepoint ID.
    pub tracepoint: Option<String>,
    /// Entries by this token name.
    pub who: Option<String>,
    /// Entries after this sequence number (the previous page's last).
    pub after_seq: Option<i64>,
    /// At most this many.
    pub limit: usize,
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

/// Durable storage of tracepoints and the audit log. Calls are blocking; the server runs them off
/// the async runtime. Every call that returns `Ok` is durable: it survives a crash of the process.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Every stored tracepoint of every tenant.
    fn load_all(&self) -> Result<Vec<StoredRecord>, StoreError>;
    /// Inserts a new record, or replaces the one with the same tenant and ID, and appends `audit`
    /// in the same transaction.
    fn put(&self, record: &StoredRecord, audit: &AuditRecord) -> Result<(), StoreError>;
    /// Removes a record and appends `audit` in the same transaction; `false` (and no entry) when
    /// there was no record.
    fn delete(&self, tenant: &str, id: &str, audit: &AuditRecord) -> Result<bool, StoreError>;
    /// Appends an entry that goes with no change (a refused request).
    fn append_audit(&self, audit: &AuditRecord) -> Result<(), StoreError>;
    /// Reads audit entries, oldest first.
    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
    /// Removes audit entries older than `before_ms`; returns how many.
    fn prune_audit(&self, before_ms: i64) -> Result<usize, StoreError>;
}
