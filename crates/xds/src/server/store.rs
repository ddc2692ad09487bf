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
//! - Per type, a bounded change log records which names and aliases each generation touched,
//!   so a stream finds what changed since it last looked in time proportional to the change.
//!   When a stream has fallen further behind than the log reaches, it compares the whole type
//!   instead (slower, equally correct).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, LazyLock, PoisonError, RwLock, RwLockReadGuard};

use tokio::sync::watch;

use crate::Resource;

/// The change log of a type keeps at least this many keys, and at most as many as the type has
/// resources: beyond that, comparing the whole type is no slower than replaying the log.
const LOG_MIN_KEYS: usize = 1024;

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
    /// Alias → canonical names claiming it. The first (smallest) name wins a shared alias.
    aliases: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
    log: VecDeque<Change>,
    log_keys: usize,
    /// Every change after this generation is still in `log`.
    floor: u64,
}

/// A stored resource and its version.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) version: u64,
    pub(crate) resource: Resource,
}

/// The names and aliases one generation touched (before and after the change).
#[derive(Debug)]
struct Change {
    generation: u64,
    keys: Vec<Arc<str>>,
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
        self.mutate(type_url, |resources, keys| {
            for resource in upserts {
                resources.upsert(resource, keys);
            }
            for name in &removals {
                resources.remove(name, keys);
            }
        });
    }

    /// Makes `resources` the whole content of a type, as one generation: changed resources are
    /// upserted, resources missing from `resources` are removed, identical ones are untouched.
    pub fn replace_all(&self, type_url: &str, resources: Vec<Resource>) {
        self.mutate(type_url, |current, keys| {
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
                current.remove(name, keys);
            }
            for resource in resources {
                current.upsert(resource, keys);
            }
        });
    }

    /// A copy of one resource, looked up by canonical name.
    pub fn get(&self, type_url: &str, name: &str) -> Option<Resource> {
        self.read()
            .get(type_url)
            .resources
            .get(name)
            .map(|e| e.resource.clone())
    }

    /// A copy of every resource of a type, ordered by name (for config dumps and debugging).
    pub fn resources(&self, type_url: &str) -> Vec<Resource> {
        self.read()
            .get(type_url)
            .resources
            .values()
            .map(|e| e.resource.clone())
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

    fn mutate(&self, type_url: &str, change: impl FnOnce(&mut TypeState, &mut Vec<Arc<str>>)) {
        let generation = {
            let mut state = self
                .inner
                .state
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let next = state.generation + 1;
            let resources = state.types.entry(type_url.to_owned()).or_default();
            let mut keys = Vec::new();
            change(resources, &mut keys);
            if keys.is_empty() {
                return;
            }
            resources.record(next, keys);
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
            None => self.aliases.get(key).and_then(BTreeSet::first),
        }
    }

    /// The names and aliases changed after generation `seen`, or `None` when the log no longer
    /// reaches back that far.
    pub(crate) fn changes_since(&self, seen: u64) -> Option<impl Iterator<Item = &Arc<str>>> {
        if seen < self.floor {
            return None;
        }
        let recent = self
            .log
            .iter()
            .rev()
            .take_while(move |change| change.generation > seen);
        Some(recent.flat_map(|change| change.keys.iter()))
    }

    fn upsert(&mut self, resource: Resource, keys: &mut Vec<Arc<str>>) {
        let version = resource.version();
        let (name, old_aliases) = match self.resources.get_key_value(resource.name.as_str()) {
            Some((_, old))
                if old.version == version && old.resource.aliases == resource.aliases =>
            {
                return;
            }
            Some((name, old)) => (name.clone(), old.resource.aliases.clone()),
            None => (Arc::from(resource.name.as_str()), Vec::new()),
        };
        self.unindex(&name, &old_aliases);
        self.index(&name, &resource.aliases);
        keys.push(name.clone());
        keys.extend(
            old_aliases
                .iter()
                .chain(&resource.aliases)
                .map(|a| Arc::from(a.as_str())),
        );
        self.resources.insert(name, Entry { version, resource });
    }

    fn remove(&mut self, name: &str, keys: &mut Vec<Arc<str>>) {
        if let Some((name, old)) = self.resources.remove_entry(name) {
            self.unindex(&name, &old.resource.aliases);
            keys.extend(old.resource.aliases.iter().map(|a| Arc::from(a.as_str())));
            keys.push(name);
        }
    }

    fn index(&mut self, name: &Arc<str>, aliases: &[String]) {
        for alias in aliases {
            self.aliases
                .entry(Arc::from(alias.as_str()))
                .or_default()
                .insert(name.clone());
        }
    }

    fn unindex(&mut self, name: &Arc<str>, aliases: &[String]) {
        for alias in aliases {
            if let Some(owners) = self.aliases.get_mut(alias.as_str()) {
                owners.remove(name);
                if owners.is_empty() {
                    self.aliases.remove(alias.as_str());
                }
            }
        }
    }

    fn record(&mut self, generation: u64, keys: Vec<Arc<str>>) {
        self.generation = generation;
        self.log_keys += keys.len();
        self.log.push_back(Change { generation, keys });
        let cap = LOG_MIN_KEYS.max(self.resources.len());
        while self.log_keys > cap {
            let Some(oldest) = self.log.pop_front() else {
                break;
            };
            self.log_keys -= oldest.keys.len();
            self.floor = oldest.generation;
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

    fn changed_since(store: &Store, seen: u64) -> Option<Vec<String>> {
        let state = store.read();
        let changes = state.get(T).changes_since(seen)?;
        let mut keys: Vec<String> = changes.map(|k| k.to_string()).collect();
        keys.sort();
        keys.dedup();
        Some(keys)
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
    fn replace_all_is_one_generation() {
        let store = Store::new();
        store.apply(
            T,
            vec![res("a", b"1"), res("b", b"1"), res("c", b"1")],
            vec![],
        );
        store.replace_all(T, vec![res("a", b"1"), res("b", b"2"), res("d", b"1")]);
        assert_eq!(store.generation(), 2);
        assert_eq!(store.len(T), 3);
        assert_eq!(
            changed_since(&store, 1),
            Some(vec!["b".into(), "c".into(), "d".into()])
        );
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
        store.apply(T, vec![res("a", b"1")], vec![]);
        assert_eq!(resolve("ip").as_deref(), Some("b"));
        assert_eq!(
            changed_since(&store, 2),
            Some(vec!["a".into(), "ip".into()])
        );
        store.apply(T, vec![], vec!["b".into()]);
        assert_eq!(resolve("ip"), None);
    }

    #[test]
    fn the_log_is_bounded_and_says_when_it_no_longer_reaches() {
        let store = Store::new();
        for i in 0..(LOG_MIN_KEYS + 10) {
            store.apply(T, vec![res("a", i.to_string().as_bytes())], vec![]);
        }
        assert_eq!(changed_since(&store, 0), None);
        let now = store.generation();
        assert_eq!(changed_since(&store, now - 1), Some(vec!["a".into()]));
        assert_eq!(changed_since(&store, now), Some(vec![]));
    }

    #[test]
    fn unknown_types_are_empty() {
        let store = Store::new();
        assert_eq!(store.len("type.test/Unknown"), 0);
        assert!(store.get("type.test/Unknown", "x").is_none());
        assert!(store.resources("type.test/Unknown").is_empty());
    }
}
