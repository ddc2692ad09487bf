//! What one stream asked for of one type URL, what its client holds, and the diff between that
//! and the store.
//!
//! This is Envoy's incremental xDS state machine for a single (stream, type) pair, free of I/O
//! so it can be tested exhaustively. The stream calls [`TypeSubscription::diff`] only when it
//! can send, with the latest store state, so a client that is behind gets one coalesced diff.
//!
//! # Invariants
//!
//! - `sent` is what the client holds as far as this server knows: seeded from the client's
//!   `initial_resource_versions`, updated by every diff. A resource is sent again only when its
//!   version, or the set of subscribed aliases it answers, differs from `sent`.
//! - A subscribed name that resolves to nothing is answered once in `removed_resources` (a
//!   definite "not found"), and again only after it has resolved in between or was
//!   re-subscribed.
//! - Unsubscribing never produces a removal: by protocol the client forgets what it dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use ambit_proto::envoy::service::discovery::v3 as xds;

use super::store::{Entry, TypeState};
use crate::resource::{WILDCARD, format_version, parse_version};

/// One stream's subscription to one type URL.
#[derive(Debug)]
pub(crate) struct TypeSubscription {
    wildcard: bool,
    /// Explicitly subscribed names: canonical names or aliases.
    names: BTreeSet<Arc<str>>,
    /// Canonical name → what the client holds.
    sent: HashMap<Arc<str>, Sent>,
    /// Alias → canonical name it was last sent under.
    sent_aliases: HashMap<Arc<str>, Arc<str>>,
    /// Subscribed names already answered as "not found".
    answered_missing: HashSet<Arc<str>>,
    /// Type generation this subscription was last diffed at.
    seen: u64,
    /// The next diff compares the whole type (first request, wildcard added).
    full: bool,
    /// Names subscribed since the last diff; `true` when re-subscribed (answer again).
    pending: BTreeMap<Arc<str>, bool>,
    /// A response is owed even if empty: the client's first request of this type waits for it.
    respond: bool,
}

/// What the client holds of one resource.
#[derive(Debug)]
struct Sent {
    /// `None`: reported by the client in a form this server never produces.
    version: Option<u64>,
    /// `None`: unknown (seeded from `initial_resource_versions`); taken to be up to date.
    aliases: Option<Vec<String>>,
}

/// A diff ready to become a `DeltaDiscoveryResponse`.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    pub(crate) resources: Vec<xds::Resource>,
    pub(crate) removed: Vec<String>,
}

// === impl TypeSubscription ===

impl TypeSubscription {
    /// The state after a client's first request of a type on a stream.
    ///
    /// An empty `resource_names_subscribe` (legacy wildcard) or one containing `*` subscribes
    /// to everything; named subscriptions may be added either way.
    pub(crate) fn new(request: &xds::DeltaDiscoveryRequest) -> Self {
        let mut this = Self {
            wildcard: request.resource_names_subscribe.is_empty(),
            names: BTreeSet::new(),
            sent: HashMap::new(),
            sent_aliases: HashMap::new(),
            answered_missing: HashSet::new(),
            seen: 0,
            full: true,
            pending: BTreeMap::new(),
            respond: true,
        };
        for (name, version) in &request.initial_resource_versions {
            let sent = Sent {
                version: parse_version(version),
                aliases: None,
            };
            this.sent.insert(Arc::from(name.as_str()), sent);
        }
        this.update(
            &request.resource_names_subscribe,
            &request.resource_names_unsubscribe,
        );
        // The first request is answered by a full diff; nothing is "re-subscribed" yet.
        this.pending.clear();
        this
    }

    /// Applies a later request's subscription changes.
    pub(crate) fn update(&mut self, subscribe: &[String], unsubscribe: &[String]) {
        for name in unsubscribe {
            self.unsubscribe(name);
        }
        for name in subscribe {
            if name == WILDCARD {
                if !self.wildcard {
                    self.wildcard = true;
                    self.full = true;
                }
                continue;
            }
            let name: Arc<str> = Arc::from(name.as_str());
            let again = !self.names.insert(name.clone());
            *self.pending.entry(name).or_default() |= again;
        }
    }

    /// How many names this subscription tracks (for per-stream memory limits).
    pub(crate) fn tracked(&self) -> usize {
        self.names.len() + self.sent.len()
    }

    /// Whether a diff against `current` could produce a response.
    pub(crate) fn has_work(&self, current: &TypeState) -> bool {
        self.respond || self.full || !self.pending.is_empty() || current.generation > self.seen
    }

    /// Computes what the client lacks of `current` and records it as sent. `None`: nothing to
    /// send.
    pub(crate) fn diff(&mut self, current: &TypeState) -> Option<Delta> {
        let again: Vec<Arc<str>> = self
            .pending
            .iter()
            .filter(|(_, again)| **again)
            .map(|(n, _)| n.clone())
            .collect();
        for name in again {
            // Re-subscribed: the client wants a fresh answer, so forget what it was given.
            self.answered_missing.remove(&name);
            if let Some(canonical) = self.sent_aliases.get(&name).cloned() {
                self.forget(&canonical);
            }
            self.forget(&name);
        }
        let keys = self.keys_to_check(current);

        let mut canonical: BTreeSet<Arc<str>> = BTreeSet::new();
        let mut asked: Vec<Arc<str>> = Vec::new();
        for key in &keys {
            canonical.extend(current.resolve(key).cloned());
            canonical.extend(self.sent_aliases.get(key).cloned());
            if self.sent.contains_key(key) {
                canonical.insert(key.clone());
            }
            if self.names.contains(key) {
                asked.push(key.clone());
            }
        }

        let mut delta = Delta::default();
        let mut removed: BTreeSet<Arc<str>> = BTreeSet::new();
        for name in canonical {
            self.reconcile(current, name, &mut delta, &mut removed);
        }
        for name in asked {
            if current.resolve(&name).is_some() {
                self.answered_missing.remove(&name);
            } else if self.answered_missing.insert(name.clone()) {
                removed.insert(name);
            }
        }
        delta.removed = removed.iter().map(|name| name.to_string()).collect();

        self.seen = current.generation;
        self.full = false;
        self.pending.clear();
        let respond = std::mem::take(&mut self.respond);
        (respond || !delta.resources.is_empty() || !delta.removed.is_empty()).then_some(delta)
    }

    /// The names and aliases whose state may differ from what the client holds.
    fn keys_to_check(&self, current: &TypeState) -> BTreeSet<Arc<str>> {
        let mut keys: BTreeSet<Arc<str>> = self.pending.keys().cloned().collect();
        match current.changes_since(self.seen).filter(|_| !self.full) {
            Some(changed) => keys.extend(changed.cloned()),
            None => {
                keys.extend(self.names.iter().cloned());
                keys.extend(self.sent.keys().cloned());
                if self.wildcard {
                    keys.extend(current.resources.keys().cloned());
                }
            }
        }
        keys
    }

    /// Brings the client's copy of one canonical resource up to date.
    fn reconcile(
        &mut self,
        current: &TypeState,
        name: Arc<str>,
        delta: &mut Delta,
        removed: &mut BTreeSet<Arc<str>>,
    ) {
        let entry = current.resources.get(&name);
        let matched: Vec<String> = entry
            .map(|entry| {
                let answers = |alias: &&String| {
                    self.names.contains(alias.as_str())
                        && current.resolve(alias).is_some_and(|owner| *owner == name)
                };
                entry
                    .resource
                    .aliases
                    .iter()
                    .filter(answers)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let wanted = self.wildcard || self.names.contains(&name) || !matched.is_empty();
        match entry.filter(|_| wanted) {
            Some(entry) => {
                let up_to_date = self.sent.get(&name).is_some_and(|sent| {
                    sent.version == Some(entry.version)
                        && sent
                            .aliases
                            .as_ref()
                            .is_none_or(|aliases| *aliases == matched)
                });
                if !up_to_date {
                    delta.resources.push(wire_resource(&name, entry, &matched));
                    self.remember(name, entry.version, matched);
                }
            }
            None => {
                if self.sent.contains_key(&name) {
                    self.forget(&name);
                    removed.insert(name);
                }
            }
        }
    }

    fn unsubscribe(&mut self, name: &str) {
        if name == WILDCARD {
            self.wildcard = false;
            let dropped: Vec<Arc<str>> = self
                .sent
                .iter()
                .filter(|(canonical, sent)| !self.still_wanted(canonical, sent))
                .map(|(canonical, _)| canonical.clone())
                .collect();
            for canonical in dropped {
                self.forget(&canonical);
            }
            return;
        }
        self.names.remove(name);
        self.pending.remove(name);
        self.answered_missing.remove(name);
        let mut candidates = Vec::with_capacity(2);
        if let Some(canonical) = self.sent_aliases.remove(name) {
            if let Some(aliases) = self
                .sent
                .get_mut(&canonical)
                .and_then(|s| s.aliases.as_mut())
            {
                aliases.retain(|alias| alias != name);
            }
            candidates.push(canonical);
        }
        candidates.extend(
            self.sent
                .get_key_value(name)
                .map(|(canonical, _)| canonical.clone()),
        );
        for canonical in candidates {
            if self
                .sent
                .get(&canonical)
                .is_some_and(|sent| !self.still_wanted(&canonical, sent))
            {
                self.forget(&canonical);
            }
        }
    }

    /// Whether the client still subscribes to a resource it holds, judging by what it was told.
    fn still_wanted(&self, canonical: &str, sent: &Sent) -> bool {
        self.wildcard
            || self.names.contains(canonical)
            || sent
                .aliases
                .as_ref()
                .is_some_and(|aliases| !aliases.is_empty())
    }

    fn remember(&mut self, name: Arc<str>, version: u64, aliases: Vec<String>) {
        self.forget(&name);
        for alias in &aliases {
            self.sent_aliases
                .insert(Arc::from(alias.as_str()), name.clone());
        }
        self.sent.insert(
            name,
            Sent {
                version: Some(version),
                aliases: Some(aliases),
            },
        );
    }

    fn forget(&mut self, name: &str) {
        if let Some(Sent {
            aliases: Some(aliases),
            ..
        }) = self.sent.remove(name)
        {
            for alias in aliases {
                if self
                    .sent_aliases
                    .get(alias.as_str())
                    .is_some_and(|owner| &**owner == name)
                {
                    self.sent_aliases.remove(alias.as_str());
                }
            }
        }
    }
}

/// The wire form of a stored resource, carrying only the aliases the client subscribed by.
fn wire_resource(name: &str, entry: &Entry, aliases: &[String]) -> xds::Resource {
    xds::Resource {
        name: name.to_owned(),
        aliases: aliases.to_vec(),
        version: format_version(entry.version),
        resource: Some(entry.resource.body.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
#[path = "subscription_tests.rs"]
mod tests;
