//! [`Tracepoints`]: the live tracepoint lists of every tenant, in memory, backed by the [`Store`].
//!
//! Each tenant's list is an immutable [`TenantList`] published through a `tokio::sync::watch`
//! channel: a poll reads the current `Arc` (no lock held while it works), a watch stream awaits the
//! next one, and a write builds a new list and publishes it after the store has committed. Writes
//! are serialized by one mutex (they are rare); reads never wait for them.
//!
//! # Several replicas
//! Each tenant's list carries the version number the store gave its last change. A write here
//! that moves the version by exactly one publishes its change on top of the current list; any
//! other step means another replica wrote in between, so the tenant is read back from the store
//! instead. Changes made elsewhere arrive through [`Tracepoints::refresh`] (on an announcement
//! from the store) and [`Tracepoints::resync`] (on reconnecting, and periodically): both read a
//! tenant whose stored version differs from the one in memory and publish its list only when
//! the content differs, so watchers wake for real changes only.
//!
//! # The hash an agent sees
//! Each tracepoint carries a 64-bit digest of its protobuf encoding (deterministic: maps are
//! ordered). The hash of a client's list is FNV-1a over the digests of the tracepoints that match
//! the client, in ID order. An edit changes the digest, so it changes the hash of every client that
//! sees the tracepoint, and only theirs.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicI64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use prost::Message as _;
use sonde_proto::{
    common::{KeyValue, any_value},
    tracepoint::TracePointConfig,
};
use tokio::sync::watch;

use super::{
    audit::Actor,
    store::{Store, StoreError, StoredRecord, Written},
    validate::{Limits, ValidationError, validate},
};

/// The tenant used when a request names none.
pub const DEFAULT_TENANT: &str = "single-tenant";

/// A tracepoint as the server holds it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The configuration, exactly as served to agents.
    pub config: TracePointConfig,
    /// FNV-1a 64 of the encoded configuration.
    pub digest: u64,
    /// Creation time, Unix milliseconds.
    pub created_ms: i64,
}

/// One tenant's tracepoints at one moment, ordered by ID.
#[derive(Debug, Default)]
pub struct TenantList {
    entries: BTreeMap<String, Arc<Entry>>,
    /// Answers made from this list, by the hash of the client's list: every watcher whose
    /// targeting selects the same tracepoints shares one (see [`TenantList::shared_answer`]).
    answers: Mutex<HashMap<u64, Arc<OnceLock<Bytes>>>>,
}

impl TenantList {
    /// A list of these tracepoints (for tests elsewhere in the server).
    #[cfg(test)]
    pub(crate) fn of(configs: Vec<TracePointConfig>) -> Self {
        Self {
            entries: configs
                .into_iter()
                .map(|config| {
                    let digest = digest(&config.encode_to_vec());
                    let entry = Entry {
                        config,
                        digest,
                        created_ms: 0,
                    };
                    (entry.config.id.clone(), Arc::new(entry))
                })
                .collect(),
            answers: Mutex::default(),
        }
    }

    fn new(entries: BTreeMap<String, Arc<Entry>>) -> Self {
        Self {
            entries,
            answers: Mutex::default(),
        }
    }

    /// All tracepoints, in ID order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.entries.values()
    }

    /// How many tracepoints the tenant has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// One tracepoint by ID.
    pub fn get(&self, id: &str) -> Option<&Arc<Entry>> {
        self.entries.get(id)
    }

    /// The tracepoints that apply to a client with these resource attributes, and the hash of
    /// that list.
    pub fn for_client<'a>(&'a self, resource: &Resource) -> (Vec<&'a Arc<Entry>>, String) {
        let mut hash = Fnv64::new();
        let matching: Vec<_> = self
            .entries
            .values()
            .filter(|e| resource.matches(&e.config.targeting))
            .inspect(|e| hash.write(&e.digest.to_le_bytes()))
            .collect();
        (matching, format!("{:016x}", hash.finish()))
    }

    /// Only the hash of [`TenantList::for_client`].
    pub fn hash_for_client(&self, resource: &Resource) -> String {
        format!("{:016x}", self.client_hash(resource))
    }

    /// The hash of [`TenantList::for_client`] as a number.
    pub fn client_hash(&self, resource: &Resource) -> u64 {
        let mut hash = Fnv64::new();
        for e in self.entries.values() {
            if resource.matches(&e.config.targeting) {
                hash.write(&e.digest.to_le_bytes());
            }
        }
        hash.finish()
    }

    /// The answer (an encoded message) for clients whose list from this one has hash `hash`
    /// ([`TenantList::client_hash`]): made by `make` for the first client that asks, then the
    /// same bytes for every other, so a change fanned out to many watchers is encoded once per
    /// distinct list rather than once per watcher. Clients asking while it is being made wait
    /// for it instead of making their own. The answers go away with the list.
    pub fn shared_answer(&self, hash: u64, make: impl FnOnce() -> Bytes) -> Bytes {
        let slot = self
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(hash)
            .or_default()
            .clone();
        slot.get_or_init(make).clone()
    }

    /// How many distinct answers [`TenantList::shared_answer`] has made from this list.
    #[cfg(test)]
    pub(crate) fn shared_answers(&self) -> usize {
        self.answers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A client's resource attributes, as strings, for targeting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Resource {
    attrs: Vec<(String, String)>,
}

impl Resource {
    /// From protobuf attributes; scalar values are compared by their string form, other kinds are
    /// ignored.
    pub fn from_attributes(attrs: &[KeyValue]) -> Self {
        let mut attrs: Vec<_> = attrs
            .iter()
            .filter_map(|kv| {
                let value = match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => s.clone(),
                    any_value::Value::BoolValue(b) => b.to_string(),
                    any_value::Value::IntValue(i) => i.to_string(),
                    any_value::Value::DoubleValue(d) => d.to_string(),
                    _ => return None,
                };
                Some((kv.key.clone(), value))
            })
            .collect();
        attrs.sort();
        Self { attrs }
    }

    /// From `(key, value)` pairs.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut attrs: Vec<_> = pairs.into_iter().collect();
        attrs.sort();
        Self { attrs }
    }

    /// The attributes, sorted by key.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.attrs
    }

    /// The value of one attribute.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Deep's rule: every targeting key present with an equal string value. No targeting, or a
    /// client with no attributes, matches everything.
    pub fn matches(&self, targeting: &[KeyValue]) -> bool {
        if self.attrs.is_empty() {
            return true;
        }
        targeting.iter().all(|kv| {
            let want = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.as_str(),
                _ => return false,
            };
            self.get(&kv.key) == Some(want)
        })
    }
}

/// Why a change to the tracepoints was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The tracepoint is not acceptable; nothing was stored.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No tracepoint with that ID in this tenant.
    #[error("no tracepoint with ID {0}")]
    NotFound(String),
    /// The tenant already holds the most tracepoints allowed.
    #[error("the tenant already holds {limit} tracepoints, the limit; delete some first")]
    TenantFull {
        /// The limit.
        limit: usize,
    },
    /// The store failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
struct Tenant {
    tx: watch::Sender<Arc<TenantList>>,
    /// The store's version of the published list (changed only under the write mutex).
    version: AtomicI64,
}

impl Tenant {
    fn new(list: TenantList, version: i64) -> Self {
        let (tx, _) = watch::channel(Arc::new(list));
        Self {
            tx,
            version: AtomicI64::new(version),
        }
    }
}

/// Every tenant's tracepoints, kept in memory and written through to the store.
#[derive(Debug)]
pub struct Tracepoints {
    store: Arc<dyn Store>,
    limits: Limits,
    tenants: RwLock<HashMap<String, Arc<Tenant>>>,
    write: Mutex<()>,
}

impl Tracepoints {
    /// Loads every tenant's tracepoints from the store.
    pub fn load(store: Arc<dyn Store>, limits: Limits) -> Result<Self, StoreError> {
        // Versions first: a write between the two reads then shows as a version behind the
        // content, which the next resync reads again; never as content behind its version.
        let versions: HashMap<String, i64> = store.versions()?.into_iter().collect();
        let mut by_tenant: HashMap<String, BTreeMap<String, Arc<Entry>>> = HashMap::new();
        for record in store.load_all()? {
            let tenant = record.tenant.clone();
            if let Some((id, entry)) = decode(record) {
                by_tenant.entry(tenant).or_default().insert(id, entry);
            }
        }
        let tenants = by_tenant
            .into_iter()
            .map(|(name, entries)| {
                let version = versions.get(&name).copied().unwrap_or(0);
                (
                    name,
                    Arc::new(Tenant::new(TenantList::new(entries), version)),
                )
            })
            .collect();
        Ok(Self {
            store,
            limits,
            tenants: RwLock::new(tenants),
            write: Mutex::new(()),
        })
    }

    /// The tenant's current list (empty for a tenant never written to).
    pub fn list(&self, tenant: &str) -> Arc<TenantList> {
        let tenants = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        match tenants.get(tenant) {
            Some(t) => t.tx.borrow().clone(),
            None => Arc::default(),
        }
    }

    /// A receiver that sees every new list of the tenant (creating the tenant's channel).
    pub fn subscribe(&self, tenant: &str) -> watch::Receiver<Arc<TenantList>> {
        self.tenant(tenant).tx.subscribe()
    }

    /// The store behind the lists (the audit log is read from it directly).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Total tracepoints over all tenants.
    pub fn total(&self) -> usize {
        let tenants = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        tenants.values().map(|t| t.tx.borrow().len()).sum()
    }

    fn tenant(&self, tenant: &str) -> Arc<Tenant> {
        if let Some(t) = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
        {
            return t.clone();
        }
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(Tenant::new(TenantList::default(), 0)))
            .clone()
    }

    /// Brings the tenant's list up to the store's `version` (announced by the store), reading it
    /// back unless memory already holds that version or a newer one. Blocking.
    pub fn refresh(&self, tenant: &str, version: i64) -> Result<(), StoreError> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let t = self.tenant(tenant);
        if t.version.load(Ordering::Relaxed) >= version {
            return Ok(());
        }
        self.reload(tenant, &t)
    }

    /// Compares every tenant's version in the store with memory's and reads back those that
    /// differ (after a reconnection, and periodically, in case an announcement was lost).
    /// Returns how many tenants were read. Blocking.
    pub fn resync(&self) -> Result<usize, StoreError> {
        let mut read = 0;
        for (tenant, version) in self.store.versions()? {
            let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
            let t = self.tenant(&tenant);
            if t.version.load(Ordering::Relaxed) != version {
                self.reload(&tenant, &t)?;
                read += 1;
            }
        }
        Ok(read)
    }

    /// Reads the tenant from the store and publishes it if its content differs. Called with the
    /// write mutex held.
    fn reload(&self, tenant: &str, t: &Tenant) -> Result<(), StoreError> {
        let (version, records) = self.store.load_tenant(tenant)?;
        let entries: BTreeMap<String, Arc<Entry>> =
            records.into_iter().filter_map(decode).collect();
        let current = t.tx.borrow().clone();
        let same = current.entries.len() == entries.len()
            && current
                .entries
                .iter()
                .zip(&entries)
                .all(|((a, x), (b, y))| a == b && x.digest == y.digest);
        if !same {
            t.tx.send_replace(Arc::new(TenantList::new(entries)));
        }
        t.version.store(version, Ordering::Relaxed);
        Ok(())
    }

    /// After this replica's write moved the tenant to `version`: publishes `change` on top of
    /// the current list when nothing else was written in between, else reads the tenant back.
    /// Called with the write mutex held.
    fn apply(
        &self,
        tenant: &str,
        t: &Tenant,
        version: i64,
        change: impl FnOnce(&mut BTreeMap<String, Arc<Entry>>),
    ) {
        let current = t.tx.borrow().clone();
        if t.version.load(Ordering::Relaxed) + 1 == version {
            publish(t, &current, change);
            t.version.store(version, Ordering::Relaxed);
            return;
        }
        if let Err(err) = self.reload(tenant, t) {
            // The write is stored; show it now, and leave the version behind so that the next
            // resync reads the tenant again.
            tracing::warn!(%err, tenant, "cannot read back the tenant after a write");
            publish(t, &current, change);
        }
    }

    /// Runs every check [`Tracepoints::create`] makes (the ID left empty, validation, room in
    /// the tenant) and stores nothing: a dry run.
    pub fn check_create(&self, tenant: &str, config: &TracePointConfig) -> Result<(), ChangeError> {
        if !config.id.is_empty() {
            return Err(ValidationError::new(
                "ID",
                "is assigned by the server: leave it empty (edit an existing tracepoint with PUT /api/tracepoints/{id})",
            )
            .into());
        }
        validate(config, &self.limits)?;
        if self.list(tenant).len() >= self.limits.max_tracepoints_per_tenant {
            return Err(ChangeError::TenantFull {
                limit: self.limits.max_tracepoints_per_tenant,
            });
        }
        Ok(())
    }

    /// Validates and stores a new tracepoint under a fresh ID, with its audit entry by `actor`;
    /// returns it as stored. Blocking (it writes to the store).
    pub fn create(
        &self,
        tenant: &str,
        mut config: TracePointConfig,
        actor: &Actor,
    ) -> Result<Arc<Entry>, ChangeError> {
        self.check_create(tenant, &config)?;
        config.id = uuid::Uuid::new_v4().to_string();
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let t = self.tenant(tenant);
        // The store counts, not memory: with several replicas memory may lag behind a delete.
        let now = now_ms();
        let audit = actor.record(tenant, "create", Some(&config.id), None, Some(&config));
        let (entry, record) = prepare(tenant, config, now, now);
        let limit = self.limits.max_tracepoints_per_tenant;
        let version = match self.store.insert(&record, &audit, limit)? {
            Written::Done { version } => version,
            Written::TenantFull | Written::NotFound => {
                // Another replica filled the tenant: show its list here too.
                self.reload(tenant, &t)?;
                return Err(ChangeError::TenantFull { limit });
            }
        };
        self.apply(tenant, &t, version, |entries| {
            entries.insert(entry.config.id.clone(), entry.clone());
        });
        Ok(entry)
    }

    /// Runs every check [`Tracepoints::update`] makes (the body's ID, validation, that `id`
    /// exists) and stores nothing: a dry run.
    pub fn check_update(
        &self,
        tenant: &str,
        id: &str,
        config: &TracePointConfig,
    ) -> Result<(), ChangeError> {
        if !config.id.is_empty() && config.id != id {
            return Err(ValidationError::new(
                "ID",
                format!(
                    "is {:?} but the request edits {id:?}: leave it empty or make them equal",
                    config.id
                ),
            )
            .into());
        }
        validate(config, &self.limits)?;
        if self.list(tenant).get(id).is_none() {
            return Err(ChangeError::NotFound(id.to_owned()));
        }
        Ok(())
    }

    /// Validates and replaces the tracepoint `id`; the body's ID must be empty or equal `id`.
    /// The audit entry by `actor` holds the tracepoint before and after. Blocking.
    pub fn update(
        &self,
        tenant: &str,
        id: &str,
        mut config: TracePointConfig,
        actor: &Actor,
    ) -> Result<Arc<Entry>, ChangeError> {
        self.check_update(tenant, id, &config)?;
        config.id = id.to_owned();
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let t = self.tenant(tenant);
        let current = t.tx.borrow().clone();
        let Some(old) = current.get(id) else {
            return Err(ChangeError::NotFound(id.to_owned()));
        };
        let audit = actor.record(tenant, "edit", Some(id), Some(&old.config), Some(&config));
        let (entry, record) = prepare(tenant, config, old.created_ms, now_ms());
        let version = match self.store.update(&record, &audit)? {
            Written::Done { version } => version,
            Written::TenantFull | Written::NotFound => {
                // Another replica deleted it.
                self.reload(tenant, &t)?;
                return Err(ChangeError::NotFound(id.to_owned()));
            }
        };
        self.apply(tenant, &t, version, |entries| {
            entries.insert(id.to_owned(), entry.clone());
        });
        Ok(entry)
    }

    /// Removes the tracepoint `id`, with its audit entry by `actor`; returns what it was.
    /// Blocking.
    pub fn delete(&self, tenant: &str, id: &str, actor: &Actor) -> Result<Arc<Entry>, ChangeError> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let t = self.tenant(tenant);
        let current = t.tx.borrow().clone();
        let Some(old) = current.get(id).cloned() else {
            return Err(ChangeError::NotFound(id.to_owned()));
        };
        let audit = actor.record(tenant, "delete", Some(id), Some(&old.config), None);
        let version = match self.store.delete(tenant, id, &audit)? {
            Written::Done { version } => version,
            Written::TenantFull | Written::NotFound => {
                self.reload(tenant, &t)?;
                return Err(ChangeError::NotFound(id.to_owned()));
            }
        };
        self.apply(tenant, &t, version, |entries| {
            entries.remove(id);
        });
        Ok(old)
    }
}

/// The entry to publish and the record to store for `config`.
fn prepare(
    tenant: &str,
    config: TracePointConfig,
    created_ms: i64,
    updated_ms: i64,
) -> (Arc<Entry>, StoredRecord) {
    let encoded = config.encode_to_vec();
    let entry = Arc::new(Entry {
        digest: digest(&encoded),
        created_ms,
        config,
    });
    let record = StoredRecord {
        tenant: tenant.to_owned(),
        id: entry.config.id.clone(),
        config: encoded,
        created_ms,
        updated_ms,
    };
    (entry, record)
}

/// A stored record as an entry; `None` (logged) when it does not decode.
fn decode(record: StoredRecord) -> Option<(String, Arc<Entry>)> {
    match TracePointConfig::decode(record.config.as_slice()) {
        Ok(config) => Some((
            record.id,
            Arc::new(Entry {
                digest: digest(&record.config),
                config,
                created_ms: record.created_ms,
            }),
        )),
        Err(err) => {
            tracing::error!(tenant = %record.tenant, id = %record.id, %err,
                "skipping a stored tracepoint that does not decode");
            None
        }
    }
}

fn publish(
    t: &Tenant,
    current: &TenantList,
    change: impl FnOnce(&mut BTreeMap<String, Arc<Entry>>),
) {
    let mut entries = current.entries.clone();
    change(&mut entries);
    t.tx.send_replace(Arc::new(TenantList::new(entries)));
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = Fnv64::new();
    h.write(bytes);
    h.finish()
}

/// FNV-1a, 64-bit: stable across builds and platforms (unlike `DefaultHasher`), which matters
/// because agents keep the hash across server restarts.
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::SqliteStore;
    use sonde_proto::common::AnyValue;

    fn target(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
        }
    }

    fn tp(path: &str, targeting: Vec<KeyValue>) -> TracePointConfig {
        TracePointConfig {
            path: path.into(),
            line_number: 7,
            targeting,
            ..Default::default()
        }
    }

    fn open() -> (tempfile::TempDir, Tracepoints) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        (dir, Tracepoints::load(store, Limits::default()).unwrap())
    }

    #[test]
    fn targeting_follows_deeps_rule() {
        let client = Resource::from_pairs([("service.name".into(), "shop".into())]);
        assert!(client.matches(&[]));
        assert!(client.matches(&[target("service.name", "shop")]));
        assert!(!client.matches(&[target("service.name", "billing")]));
        assert!(!client.matches(&[target("service.name", "shop"), target("env", "prod")]));
        assert!(Resource::default().matches(&[target("service.name", "billing")]));
    }

    #[test]
    fn an_edit_changes_the_hash_only_for_clients_that_see_it() {
        let (_dir, tps) = open();
        let shop = Resource::from_pairs([("service.name".into(), "shop".into())]);
        let billing = Resource::from_pairs([("service.name".into(), "billing".into())]);
        let a = tps
            .create(
                "t",
                tp("a.rs", vec![target("service.name", "shop")]),
                &Actor::named("t"),
            )
            .unwrap();
        let shop_before = tps.list("t").hash_for_client(&shop);
        let billing_before = tps.list("t").hash_for_client(&billing);

        let mut edited = a.config.clone();
        edited.line_number = 8;
        tps.update("t", &a.config.id, edited, &Actor::named("t"))
            .unwrap();
        assert_ne!(tps.list("t").hash_for_client(&shop), shop_before);
        assert_eq!(tps.list("t").hash_for_client(&billing), billing_before);
        let current = tps.list("t");
        let (list, hash) = current.for_client(&shop);
        assert_eq!(list.len(), 1);
        assert_eq!(hash, tps.list("t").hash_for_client(&shop));
    }

    #[test]
    fn an_answer_is_made_once_per_list_and_client_hash() {
        let list = TenantList::of(vec![
            tp("a.rs", vec![]),
            tp("b.rs", vec![target("service.name", "shop")]),
        ]);
        let shop = |i: &str| {
            Resource::from_pairs([
                ("service.name".into(), "shop".into()),
                ("service.instance.id".into(), i.into()),
            ])
        };
        let billing = Resource::from_pairs([("service.name".into(), "billing".into())]);
        let made = std::cell::Cell::new(0);
        let answer = |resource: &Resource| {
            list.shared_answer(list.client_hash(resource), || {
                made.set(made.get() + 1);
                Bytes::from(list.hash_for_client(resource))
            })
        };
        let one = answer(&shop("1"));
        let two = answer(&shop("2"));
        assert_eq!(one, two);
        assert_eq!(
            made.get(),
            1,
            "the second shop client shares the first one's answer"
        );
        let other = answer(&billing);
        assert_ne!(other, one);
        assert_eq!(made.get(), 2, "billing's list is another answer");
        assert_eq!(list.shared_answers(), 2);
        // A new list starts with no answers.
        assert_eq!(TenantList::of(vec![]).shared_answers(), 0);
    }

    #[test]
    fn tenants_do_not_see_each_other() {
        let (_dir, tps) = open();
        let a = tps
            .create("a", tp("x.rs", vec![]), &Actor::named("t"))
            .unwrap();
        assert_eq!(tps.list("b").len(), 0);
        assert!(matches!(
            tps.delete("b", &a.config.id, &Actor::named("t")),
            Err(ChangeError::NotFound(_))
        ));
        assert!(matches!(
            tps.update("b", &a.config.id, tp("x.rs", vec![]), &Actor::named("t")),
            Err(ChangeError::NotFound(_))
        ));
        assert_eq!(tps.list("a").len(), 1);
    }

    #[test]
    fn the_tenant_limit_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let limits = Limits {
            max_tracepoints_per_tenant: 2,
            ..Limits::default()
        };
        let tps = Tracepoints::load(store, limits).unwrap();
        tps.create("t", tp("a.rs", vec![]), &Actor::named("t"))
            .unwrap();
        tps.create("t", tp("b.rs", vec![]), &Actor::named("t"))
            .unwrap();
        assert!(matches!(
            tps.create("t", tp("c.rs", vec![]), &Actor::named("t")),
            Err(ChangeError::TenantFull { limit: 2 })
        ));
        tps.create("other", tp("c.rs", vec![]), &Actor::named("t"))
            .unwrap();
    }

    #[test]
    fn two_replicas_on_one_store_converge_through_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let a = Tracepoints::load(store.clone(), Limits::default()).unwrap();
        let b = Tracepoints::load(store, Limits::default()).unwrap();
        let everyone = Resource::default();
        let mut watcher = b.subscribe("t");
        watcher.mark_unchanged();

        let first = a
            .create("t", tp("a.rs", vec![]), &Actor::named("t"))
            .unwrap();
        assert_eq!(b.list("t").len(), 0, "B has not heard of it yet");
        // B writes with A's write unseen: the version moves by two, so B reads the tenant back.
        b.create("t", tp("b.rs", vec![]), &Actor::named("t"))
            .unwrap();
        assert_eq!(b.list("t").len(), 2);
        assert!(b.list("t").get(&first.config.id).is_some());

        // A hears of B's write (version 2) and reads it back; an old announcement does nothing.
        a.refresh("t", 2).unwrap();
        assert_eq!(a.list("t").len(), 2);
        assert_eq!(
            a.list("t").hash_for_client(&everyone),
            b.list("t").hash_for_client(&everyone)
        );
        assert_eq!(a.resync().unwrap(), 0, "nothing differs");

        // An announcement lost: the resync finds the version behind and reads the tenant.
        b.delete("t", &first.config.id, &Actor::named("t")).unwrap();
        watcher.mark_unchanged();
        assert_eq!(a.resync().unwrap(), 1);
        assert_eq!(a.list("t").len(), 1);
        // Reading back an unchanged list does not wake watchers.
        b.refresh("t", 99).unwrap();
        assert!(!watcher.has_changed().unwrap(), "no change, no wake-up");

        // An edit of what the other deleted is NotFound, not a resurrection.
        let second = a.list("t").iter().next().unwrap().config.id.clone();
        b.delete("t", &second, &Actor::named("t")).unwrap();
        assert!(matches!(
            a.update("t", &second, tp("x.rs", vec![]), &Actor::named("t")),
            Err(ChangeError::NotFound(_))
        ));
        assert_eq!(a.list("t").len(), 0, "and A now knows it is gone");
    }

    #[test]
    fn a_reload_gives_the_same_lists_and_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let everyone = Resource::default();
        let (ids, hash) = {
            let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
            let tps = Tracepoints::load(store, Limits::default()).unwrap();
            let a = tps
                .create("t", tp("a.rs", vec![]), &Actor::named("t"))
                .unwrap();
            let b = tps
                .create("t", tp("b.rs", vec![]), &Actor::named("t"))
                .unwrap();
            tps.delete("t", &b.config.id, &Actor::named("t")).unwrap();
            (
                vec![a.config.id.clone()],
                tps.list("t").hash_for_client(&everyone),
            )
        };
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let tps = Tracepoints::load(store, Limits::default()).unwrap();
        let list = tps.list("t");
        assert_eq!(
            list.iter().map(|e| e.config.id.clone()).collect::<Vec<_>>(),
            ids
        );
        assert_eq!(list.hash_for_client(&everyone), hash);
    }
}
