//! The server's resource store: what every stream serves, per type URL.
//!
//! The control plane writes here ([`Store::apply`], [`Store::replace_all`]); each ADS stream
//! reads the latest state when it is ready to send and works out what its client lacks.
//!
//! # Invariants
//!
//! - Every effective change bumps the store generation exactly once and wakes all streams; a
//!   write that changes nothing (same bytes, same aliases) bumps nothing and wakes no one.
//! - The lock is a plain `std` lock held only for in-memory work, never across an `.await`.
//! - Each resource is held once, in its wire form ([`Entry::wire`]), which every stream's
//!   responses share.
//! - Per type, a change log ([`Log`]) records which names and aliases each generation touched
//!   and what version each name had before, so a stream finds what changed since it last
//!   looked in time proportional to the change, and can tell what its client held then.

use std::collections::{BTreeMap, HashMap, HashSet, hash_map};
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock, RwLockReadGuard, Weak};

use ambit_proto::envoy::service::discovery::v3 as xds;
use bytes::Bytes;
use prost::Message as _;
use tokio::sync::watch;

use super::log::{Cursor, Log};
use super::wire;
use crate::Resource;

/// A stream that cannot send may lag this many changed keys behind a type's newest change, or
/// [`LOG_PER_RESOURCE`] times as many as the type has resources if more, before it lets go of
/// the log (see [`TypeState::lag_limit`]). Tests use a small value, so short sequences of
/// changes reach it.
const LOG_MIN_KEYS: usize = if cfg!(test) { 4 } else { 1024 };

/// See [`LOG_MIN_KEYS`]. A logged key costs about 40 bytes, shared by every stream behind it;
/// letting go costs a stream about 100 bytes per resource of its own. So streams stuck together
/// (say, behind one big change) share the log for a while rather than each writing down the
/// whole type.
const LOG_PER_RESOURCE: usize = 4;

/// Resources served by an [`AdsServer`](super::AdsServer), grouped by type URL.
///
/// Cheap to clone: clones share one store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    state: RwLock<State>,
    /// The current generation, for waking streams.
    generation: watch::Sender<u64>,
}

/// Everything behind the store's lock.
#[derive(Debug, Default)]
pub(crate) struct State {
    generation: u64,
    types: HashMap<String, TypeState>,
}

/// The resources of one type URL.
#[derive(Debug, Default)]
pub(crate) struct TypeState {
    /// Store generation of the last change to this type (0: never changed).
    pub(crate) generation: u64,
    pub(crate) resources: BTreeMap<Arc<str>, Entry>,
    /// Alias → canonical names claiming it, sorted (nearly always just one). The first
    /// (smallest) name wins a shared alias.
    aliases: HashMap<Arc<str>, Vec<Arc<str>>>,
    log: Log,
    /// The list of every resource's wire form at some generation, while responses hold it.
    whole: Mutex<Option<(u64, Weak<[Bytes]>)>>,
}

/// A stored resource.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) version: u64,
    pub(crate) aliases: Vec<String>,
    /// The encoded `envoy.service.discovery.v3.Resource` (name, version, body; no aliases).
    pub(crate) wire: Bytes,
}

/// What one write changed, for the log.
#[derive(Debug, Default)]
struct Changed {
    names: Vec<(Arc<str>, Option<u64>)>,
    aliases: Vec<Arc<str>>,
}

/// What a stream of an unknown (or not yet written) type URL sees: nothing.
static EMPTY: LazyLock<TypeState> = LazyLock::new(TypeState::default);

// === impl Store ===

impl Store {
    /// An empty store at generation 0.
    pub fn new() -> Self {
        let (generation, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                state: RwLock::default(),
                generation,
            }),
        }
    }

    /// Upserts and removes resources of one type, as one generation.
    ///
    /// An upsert whose body bytes and aliases are unchanged is a no-op. Removals are applied
    /// after upserts, so a name in both ends up removed; removing an absent name is a no-op.
    pub fn apply(&self, type_url: &str, upserts: Vec<Resource>, removals: Vec<String>) {
        self.mutate(type_url, |resources, changed| {
            for resource in upserts {
                resources.upsert(resource, changed);
            }
            for name in &removals {
                resources.remove(name, changed);
            }
        });
    }

    /// Makes `resources` the whole content of a type, as one generation: changed resources are
    /// upserted, resources missing from `resources` are removed, identical ones are untouched.
    pub fn replace_all(&self, type_url: &str, resources: Vec<Resource>) {
        self.mutate(type_url, |current, changed| {
            let stale: Vec<Arc<str>> = {
                let wanted: HashSet<&str> = resources.iter().map(|r| r.name.as_str()).collect();
                current
                    .resources
                    .keys()
                    .filter(|name| !wanted.contains(&***name))
                    .cloned()
                    .collect()
            };
            for name in &stale {
                current.remove(name, changed);
            }
            for resource in resources {
                current.upsert(resource, changed);
            }
        });
    }

    /// A copy of one resource, looked up by canonical name.
    pub fn get(&self, type_url: &str, name: &str) -> Option<Resource> {
        self.read()
            .get(type_url)
            .resources
            .get_key_value(name)
            .map(|(name, entry)| entry.to_resource(name))
    }

    /// A copy of every resource of a type, ordered by name (for config dumps and debugging).
    pub fn resources(&self, type_url: &str) -> Vec<Resource> {
        self.read()
            .get(type_url)
            .resources
            .iter()
            .map(|(name, entry)| entry.to_resource(name))
            .collect()
    }

    /// How many resources a type holds.
    pub fn len(&self, type_url: &str) -> usize {
        self.read().get(type_url).resources.len()
    }

    /// The current generation: how many effective changes the store has seen.
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Read access for streams. Never hold the guard across an `.await`.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied change visible to readers
        // in a way that breaks the protocol (each stream re-derives its diff), so serving the
        // poisoned state beats taking every stream down.
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes on every generation change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    fn mutate(&self, type_url: &str, change: impl FnOnce(&mut TypeState, &mut Changed)) {
        let generation = {
            let mut state = self
                .inner
                .state
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let next = state.generation + 1;
            let resources = state.types.entry(type_url.to_owned()).or_default();
            let mut changed = Changed::default();
            change(resources, &mut changed);
            if changed.names.is_empty() {
                return;
            }
            resources.generation = next;
            resources.log.push(next, changed.names, changed.aliases);
            state.generation = next;
            next
        };
        self.inner.generation.send_replace(generation);
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.read();
        let mut types: Vec<(&str, usize)> = state
            .types
            .iter()
            .map(|(t, r)| (t.as_str(), r.resources.len()))
            .collect();
        types.sort_unstable();
        f.debug_struct("Store")
            .field("generation", &state.generation)
            .field("types", &types)
            .finish()
    }
}

// === impl State ===

impl State {
    /// The resources of a type; empty for a type never written.
    pub(crate) fn get(&self, type_url: &str) -> &TypeState {
        self.types.get(type_url).unwrap_or(&EMPTY)
    }
}

// === impl TypeState ===

impl TypeState {
    /// The canonical name `key` designates: a resource of that name, else the first resource
    /// claiming `key` as an alias.
    pub(crate) fn resolve(&self, key: &str) -> Option<&Arc<str>> {
        match self.resources.get_key_value(key) {
            Some((name, _)) => Some(name),
            None => self.aliases.get(key).and_then(|owners| owners.first()),
        }
    }

    /// The newest change to this type, where a stream that is up to date stands.
    pub(crate) fn latest(&self) -> &Cursor {
        self.log.latest()
    }

    /// Every resource's wire form in name order: what a client that holds nothing is sent.
    /// Built once per generation and shared while any response being sent holds it.
    pub(crate) fn whole(&self) -> Arc<[Bytes]> {
        let mut cached = self.whole.lock().unwrap_or_else(PoisonError::into_inner);
        let shared = cached
            .as_ref()
            .filter(|(generation, _)| *generation == self.generation)
            .and_then(|(_, whole)| whole.upgrade());
        if let Some(whole) = shared {
            return whole;
        }
        let whole: Arc<[Bytes]> = self.resources.values().map(|e| e.wire.clone()).collect();
        *cached = Some((self.generation, Arc::downgrade(&whole)));
        whole
    }

    /// How many changed keys a stream that cannot send may keep in the log behind it before
    /// it lets go (see [`LOG_MIN_KEYS`]).
    pub(crate) fn lag_limit(&self) -> u64 {
        let keys = LOG_MIN_KEYS.max(LOG_PER_RESOURCE.saturating_mul(self.resources.len()));
        u64::try_from(keys).unwrap_or(u64::MAX)
    }

    fn upsert(&mut self, resource: Resource, changed: &mut Changed) {
        let version = resource.version();
        let Resource {
            name,
            mut aliases,
            body,
        } = resource;
        // Kept for the life of the resource: no spare capacity.
        aliases.shrink_to_fit();
        let (key, before, old_aliases) = match self.resources.get_key_value(name.as_str()) {
            Some((_, old)) if old.version == version && old.aliases == aliases => return,
            Some((key, old)) => (key.clone(), Some(old.version), old.aliases.clone()),
            None => (Arc::from(name.as_str()), None, Vec::new()),
        };
        self.unindex(&key, &old_aliases, changed);
        self.index(&key, &aliases, changed);
        changed.names.push((key.clone(), before));
        let wire = wire::encode_resource(name, version, body);
        self.resources.insert(
            key,
            Entry {
                version,
                aliases,
                wire,
            },
        );
    }

    fn remove(&mut self, name: &str, changed: &mut Changed) {
        if let Some((name, old)) = self.resources.remove_entry(name) {
            self.unindex(&name, &old.aliases, changed);
            changed.names.push((name, Some(old.version)));
        }
    }

    /// Records `name` as an owner of `aliases` (and the aliases as changed).
    fn index(&mut self, name: &Arc<str>, aliases: &[String], changed: &mut Changed) {
        for alias in aliases {
            let key = match self.aliases.get_key_value(alias.as_str()) {
                Some((key, _)) => key.clone(),
                None => Arc::from(alias.as_str()),
            };
            match self.aliases.entry(key.clone()) {
                hash_map::Entry::Occupied(mut owners) => {
                    let owners = owners.get_mut();
                    if let Err(at) = owners.binary_search(name) {
                        owners.insert(at, name.clone());
                    }
                }
                // Exactly one slot: most aliases never get a second owner.
                hash_map::Entry::Vacant(owners) => {
                    owners.insert(vec![name.clone()]);
                }
            }
            changed.aliases.push(key);
        }
    }

    /// Drops `name` as an owner of `aliases` (and records the aliases as changed).
    fn unindex(&mut self, name: &Arc<str>, aliases: &[String], changed: &mut Changed) {
        for alias in aliases {
            let Some((key, owners)) = self.aliases.get_key_value(alias.as_str()) else {
                continue;
            };
            changed.aliases.push(key.clone());
            if let Ok(at) = owners.binary_search(name) {
                let last = owners.len() == 1;
                if last {
                    self.aliases.remove(alias.as_str());
                } else if let Some(owners) = self.aliases.get_mut(alias.as_str()) {
                    owners.remove(at);
                }
            }
        }
    }
}

// === impl Entry ===

impl Entry {
    /// The resource as it was stored.
    fn to_resource(&self, name: &str) -> Resource {
        // `wire` is this store's own encoding of a `Resource` with a body, so decoding cannot
        // fail; an empty body would only stand in for a broken invariant.
        let body = xds::Resource::decode(self.wire.clone())
            .ok()
            .and_then(|resource| resource.resource)
            .unwrap_or_default();
        Resource {
            name: name.to_owned(),
            aliases: self.aliases.clone(),
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "type.test/Thing";

    fn res(name: &str, body: &[u8]) -> Resource {
        Resource::new(
            name,
            prost_types::Any {
                type_url: T.into(),
                value: body.to_vec(),
            },
        )
    }

    fn cursor(store: &Store) -> Cursor {
        store.read().get(T).latest().clone()
    }

    /// The keys changed after `cursor`, sorted and deduplicated.
    fn changed_since(cursor: &Cursor) -> Vec<String> {
        let mut keys: Vec<String> = cursor
            .since()
            .flat_map(|change| change.keys())
            .map(|k| k.to_string())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    #[test]
    fn unchanged_bytes_are_a_no_op() {
        let store = Store::new();
        store.apply(T, vec![res("a", b"1")], vec![]);
        assert_eq!(store.generation(), 1);
        store.apply(T, vec![res("a", b"1")], vec!["absent".into()]);
        assert_eq!(store.generation(), 1, "nothing changed");
        store.apply(T, vec![res("a", b"2")], vec![]);
        assert_eq!(store.generation(), 2);
        assert_eq!(store.get(T, "a").map(|r| r.body.value), Some(b"2".to_vec()));
    }

    #[test]
    fn resources_read_back_as_written() {
        let store = Store::new();
        let written = res("a", b"body").with_aliases(["ip", "other"]);
        store.apply(T, vec![written.clone()], vec![]);
        assert_eq!(store.get(T, "a"), Some(written.clone()));
        assert_eq!(store.resources(T), vec![written]);
    }

    #[test]
    fn replace_all_is_one_generation() {
        let store = Store::new();
        store.apply(
            T,
            vec![res("a", b"1"), res("b", b"1"), res("c", b"1")],
            vec![],
        );
        let before = cursor(&store);
        store.replace_all(T, vec![res("a", b"1"), res("b", b"2"), res("d", b"1")]);
        assert_eq!(store.generation(), 2);
        assert_eq!(store.len(T), 3);
        assert_eq!(changed_since(&before), ["b", "c", "d"]);
    }

    #[test]
    fn aliases_resolve_and_fall_back_when_released() {
        let store = Store::new();
        store.apply(T, vec![res("b", b"1").with_aliases(["ip"])], vec![]);
        store.apply(T, vec![res("a", b"1").with_aliases(["ip"])], vec![]);
        let resolve = |key: &str| store.read().get(T).resolve(key).map(|n| n.to_string());
        assert_eq!(
            resolve("ip").as_deref(),
            Some("a"),
            "smallest name wins a shared alias"
        );
        assert_eq!(resolve("b").as_deref(), Some("b"));
        let before = cursor(&store);
        store.apply(T, vec![res("a", b"1")], vec![]);
        assert_eq!(resolve("ip").as_deref(), Some("b"));
        assert_eq!(changed_since(&before), ["a", "ip"]);
        store.apply(T, vec![], vec!["b".into()]);
        assert_eq!(resolve("ip"), None);
    }

    #[test]
    fn the_log_records_what_each_name_was_before() {
        let store = Store::new();
        store.apply(T, vec![res("a", b"1")], vec![]);
        let v1 = store.read().get(T).resources["a"].version;
        let before = cursor(&store);
        store.apply(T, vec![res("a", b"2"), res("b", b"1")], vec![]);
        let v2 = store.read().get(T).resources["a"].version;
        store.apply(T, vec![], vec!["a".into()]);
        let names: Vec<(String, Option<u64>)> = before
            .since()
            .flat_map(|change| change.names())
            .map(|(name, version)| (name.to_string(), *version))
            .collect();
        assert_eq!(
            names,
            [
                ("a".to_string(), Some(v1)),
                ("b".to_string(), None),
                ("a".to_string(), Some(v2))
            ]
        );
        assert_eq!(before.lag(store.read().get(T).latest()), 3);
        assert_eq!(store.read().get(T).lag_limit(), LOG_MIN_KEYS as u64);
    }

    #[test]
    fn the_whole_list_is_shared_within_a_generation() {
        let store = Store::new();
        store.apply(T, vec![res("b", b"1"), res("a", b"1")], vec![]);
        let first = store.read().get(T).whole();
        assert!(Arc::ptr_eq(&first, &store.read().get(T).whole()));
        let names: Vec<String> = first
            .iter()
            .map(|wire| {
                xds::Resource::decode(wire.clone())
                    .map(|r| r.name)
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(names, ["a", "b"]);
        store.apply(T, vec![res("c", b"1")], vec![]);
        let second = store.read().get(T).whole();
        assert_eq!(second.len(), 3);
        drop((first, second));
        let dead = store
            .read()
            .get(T)
            .whole
            .lock()
            .ok()
            .and_then(|w| w.clone());
        assert!(
            dead.is_some_and(|(_, whole)| whole.upgrade().is_none()),
            "kept only while held"
        );
    }

    #[test]
    fn unknown_types_are_empty() {
        let store = Store::new();
        assert_eq!(store.len("type.test/Unknown"), 0);
        assert!(store.get("type.test/Unknown", "x").is_none());
        assert!(store.resources("type.test/Unknown").is_empty());
        assert_eq!(
            store.read().get("type.test/Unknown").latest().generation(),
            0
        );
    }
}
