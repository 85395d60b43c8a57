//! [`Store`]: where tracepoints and the audit log are kept durably: [`SqliteStore`], one file
//! for one server (the default), or [`PgStore`], one PostgreSQL database shared by several
//! replicas.
//!
//! A change and its [`AuditRecord`] are written in one transaction ([`Store::insert`],
//! [`Store::update`], [`Store::delete`]), so no acknowledged change exists without its audit
//! entry, and no entry without its change. The same transaction bumps the tenant's version
//! number, which replicas compare to know whether their in-memory list is current
//! ([`Store::versions`]); a shared store also announces each change ([`Store::changes`]).

mod postgres;
mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Committed; the tenant's version is now this.
    Done {
        /// The tenant's new version number (one more than before the write).
        version: i64,
    },
    /// Nothing written: the tenant already holds the most tracepoints allowed.
    TenantFull,
    /// Nothing written: no tracepoint with that tenant and ID.
    NotFound,
}

/// A change announced by a shared store (see [`Store::changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The tenant's tracepoints changed; its version is now `version`.
    Tenant {
        /// Whose.
        tenant: String,
        /// Its version after the change.
        version: i64,
    },
    /// The announcement channel was (re)connected: announcements may have been lost before it, so
    /// every tenant's version must be checked.
    Resync,
}

/// One agent as a replica shares it with the others (see [`Store::put_agents`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedAgent {
    /// The agent's tenant.
    pub tenant: String,
    /// The agent's ID.
    pub id: String,
    /// The replica that serves it.
    pub replica: String,
    /// When the replica last wrote it, Unix milliseconds.
    pub written_ms: i64,
    /// The agent as `GET /api/agents` shows it (JSON).
    pub view: String,
}

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
    /// PostgreSQL refused or failed, or cannot be reached.
    #[error("store: PostgreSQL: {0}")]
    Postgres(String),
    /// The data directory or database file could not be prepared.
    #[error("store: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying failure.
        source: std::io::Error,
    },
    /// `--database-url` is not a PostgreSQL URL this build can use.
    #[error("store: --database-url: {0}")]
    BadUrl(String),
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
    /// Every tenant's version number (tenants never written have none: version 0).
    fn versions(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// One tenant's version and tracepoints, read consistently (one snapshot).
    fn load_tenant(&self, tenant: &str) -> Result<(i64, Vec<StoredRecord>), StoreError>;
    /// Inserts a new record and appends `audit` in the same transaction, unless the tenant
    /// already holds `max_per_tenant` records ([`Written::TenantFull`]). Concurrent inserts to
    /// one tenant, from any replica, are serialized, so the limit holds.
    fn insert(
        &self,
        record: &StoredRecord,
        audit: &AuditRecord,
        max_per_tenant: usize,
    ) -> Result<Written, StoreError>;
    /// Replaces the configuration of an existing record (keeping its creation time) and appends
    /// `audit`; [`Written::NotFound`] (and no entry) when there is no such record.
    fn update(&self, record: &StoredRecord, audit: &AuditRecord) -> Result<Written, StoreError>;
    /// Removes a record and appends `audit` in the same transaction; [`Written::NotFound`] (and
    /// no entry) when there was no record.
    fn delete(&self, tenant: &str, id: &str, audit: &AuditRecord) -> Result<Written, StoreError>;
    /// Appends an entry that goes with no change (a refused request).
    fn append_audit(&self, audit: &AuditRecord) -> Result<(), StoreError>;
    /// Reads audit entries, oldest first.
    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
    /// Removes audit entries older than `before_ms`; returns how many.
    fn prune_audit(&self, before_ms: i64) -> Result<usize, StoreError>;
    /// For a store shared by several replicas: the announcements of changes made by any of them
    /// (taken once; later calls get `None`). `None` for a store only this process writes.
    fn changes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Change>> {
        None
    }
    /// For a shared store: replaces what `replica` shares of these agents (the others' rows stay).
    fn put_agents(&self, _replica: &str, _agents: &[SharedAgent]) -> Result<(), StoreError> {
        Ok(())
    }
    /// For a shared store: the agents other replicas than `replica` wrote at or after
    /// `since_ms`.
    fn agents(&self, _replica: &str, _since_ms: i64) -> Result<Vec<SharedAgent>, StoreError> {
        Ok(Vec::new())
    }
    /// For a shared store: forgets agents written before `before_ms`; returns how many.
    fn prune_agents(&self, _before_ms: i64) -> Result<usize, StoreError> {
        Ok(0)
    }
}
