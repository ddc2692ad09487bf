//! What one stream asked for of one type URL, what its client holds, and the diff between that
//! and the store.
//!
//! This is Envoy's incremental xDS state machine for a single (stream, type) pair, free of I/O
//! so it can be tested exhaustively. The stream calls [`TypeSubscription::diff`] only when it
//! can send, with the latest store state, so a client that is behind gets one coalesced diff.
//!
//! # What the client holds
//!
//! A wildcard subscriber that got the whole type holds, most of the time, exactly what the
//! store held at the subscription's cursor in the change log. Rather than a per-stream copy of
//! every name and version, such a subscription keeps a *baseline*: "every resource as of the
//! cursor, without aliases", and `sent` records only where the client's copy differs (resources
//! it was sent with the aliases it subscribed by). What a name was at the cursor is the store's
//! current version, unless the name changed since: then it is the version the log recorded
//! before its first change after the cursor. Every other subscription (named, or before its
//! first full answer) records in `sent` each resource the client holds.
//!
//! # Invariants
//!
//! - The client holds `sent[name]` if present, else, with a baseline, the name as of the
//!   cursor, else nothing. A resource is sent again only when its version, or the set of
//!   subscribed aliases it answers, differs from that.
//! - A baseline implies a wildcard subscription and a cursor.
//! - A subscribed name that resolves to nothing is answered once in `removed_resources` (a
//!   definite "not found"), and again only after it has resolved in between or was
//!   re-subscribed.
//! - A re-subscribed name is answered afresh: its resource is sent even if the client holds it
//!   already, and removed if it is no longer selected (the client still holds it).
//! - Unsubscribing never produces a removal: by protocol the client forgets what it dropped.
//! - Within one request, subscriptions apply before unsubscriptions (as istiod does), so
//!   ztunnel's "subscribe and unsubscribe `*`" means "nothing yet", for on-demand lookups.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use ambit_proto::envoy::service::discovery::v3 as xds;
use bytes::Bytes;

use super::log::{Change, Cursor};
use super::store::TypeState;
use super::wire::{self, Resources};
use crate::resource::{WILDCARD, parse_version};

/// One stream's subscription to one type URL.
#[derive(Debug)]
pub(crate) struct TypeSubscription {
    wildcard: bool,
    /// Explicitly subscribed names: canonical names or aliases.
    names: BTreeSet<Arc<str>>,
    /// Canonical name → what the client holds, where the baseline does not say it.
    sent: HashMap<Arc<str>, Sent>,
    /// Alias → canonical name it was last sent under.
    sent_aliases: HashMap<Arc<str>, Arc<str>>,
    /// Subscribed names already answered as "not found".
    answered_missing: HashSet<Arc<str>>,
    /// Type generation this subscription was last diffed at.
    seen: u64,
    /// The newest change the last diff covered; `None`: the next diff compares the whole type.
    cursor: Option<Cursor>,
    /// The client holds every resource as of `cursor`, without aliases, except as `sent` says.
    baseline: bool,
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
    /// Encoded `Resource` messages, shared with the store unless they carry aliases.
    pub(crate) resources: Resources,
    pub(crate) removed: Vec<String>,
}

/// For each name changed after a cursor, its version at the cursor (`None`: absent).
type Before = HashMap<Arc<str>, Option<u64>>;

/// What one resource needs.
enum Outcome {
    UpToDate,
    /// This wire form (already recorded as held).
    Send(Bytes),
    /// A removal (already recorded).
    Remove,
}

// === impl TypeSubscription ===

impl TypeSubscription {
    /// The state after a client's first request of a type on a stream.
    ///
    /// An empty `resource_names_subscribe` (legacy wildcard) or one containing `*` subscribes
    /// to everything; named subscriptions may be added either way.
    pub(crate) fn new(request: &xds::DeltaDiscoveryRequest, current: &TypeState) -> Self {
        let mut this = Self {
            wildcard: request.resource_names_subscribe.is_empty(),
            names: BTreeSet::new(),
            sent: HashMap::new(),
            sent_aliases: HashMap::new(),
            answered_missing: HashSet::new(),
            seen: 0,
            cursor: None,
            baseline: false,
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
            current,
            &request.resource_names_subscribe,
            &request.resource_names_unsubscribe,
        );
        // The first request is answered by a full diff; nothing is "re-subscribed" yet.
        this.pending.clear();
        this
    }

    /// Applies a later request's subscription changes.
    pub(crate) fn update(
        &mut self,
        current: &TypeState,
        subscribe: &[String],
        unsubscribe: &[String],
    ) {
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
        for name in unsubscribe {
            self.unsubscribe(current, name);
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

    /// Lets go of the change log once this subscription lags further behind it than the type's
    /// limit, so a stream that cannot send keeps no more than that alive: what the baseline
    /// says the client holds is written down name by name, and the next diff compares the
    /// whole type.
    /// Returns whether it let go.
    pub(crate) fn release_if_behind(&mut self, current: &TypeState) -> bool {
        let Some(cursor) = &self.cursor else {
            return false;
        };
        if cursor.lag(current.latest()) <= current.lag_limit() {
            return false;
        }
        if self.baseline {
            let all: Vec<Arc<str>> = current.resources.keys().cloned().collect();
            self.leave_baseline(current, all);
        }
        self.cursor = None;
        true
    }

    /// Computes what the client lacks of `current` and records it as sent. `None`: nothing to
    /// send.
    pub(crate) fn diff(&mut self, current: &TypeState) -> Option<Delta> {
        let compare_all = self.full || self.cursor.is_none();
        if compare_all && self.baseline {
            let all: Vec<Arc<str>> = current.resources.keys().cloned().collect();
            self.leave_baseline(current, all);
        }
        let delta = match self.whole_answer(current, compare_all) {
            Some(delta) => delta,
            None => self.listed_answer(current, compare_all),
        };
        self.seen = current.generation;
        // A cursor at generation 0 would not tell a type never written from one written later
        // (an unknown type is served from a shared empty state): compare everything next time.
        self.cursor = Some(current.latest().clone()).filter(|c| c.generation() > 0);
        if self.wildcard && compare_all && self.cursor.is_some() {
            self.enter_baseline(current);
        }
        self.full = false;
        self.pending.clear();
        let respond = std::mem::take(&mut self.respond);
        (respond || !delta.resources.is_empty() || !delta.removed.is_empty()).then_some(delta)
    }

    /// The common case of a full answer, taken without looking at resources one by one: a plain
    /// wildcard client (no names) that holds no resource at its current version is sent the
    /// whole type (the list shared by all such clients) and told what else it holds is gone.
    /// `None` when the case does not apply.
    fn whole_answer(&mut self, current: &TypeState, compare_all: bool) -> Option<Delta> {
        let plain = compare_all && self.wildcard && self.names.is_empty();
        if !plain || current.latest().generation() == 0 {
            return None;
        }
        let holds_current = self.sent.iter().any(|(name, sent)| {
            sent.version.is_some()
                && sent.version == current.resources.get(name).map(|entry| entry.version)
        });
        if holds_current {
            return None;
        }
        let mut removed: Vec<String> = self
            .sent
            .keys()
            .filter(|name| !current.resources.contains_key(*name))
            .map(|name| name.to_string())
            .collect();
        removed.sort_unstable();
        self.sent = HashMap::new();
        self.sent_aliases = HashMap::new();
        Some(Delta {
            resources: Resources::Whole(current.whole()),
            removed,
        })
    }

    /// A diff worked out name by name.
    fn listed_answer(&mut self, current: &TypeState, compare_all: bool) -> Delta {
        let forced = self.resubscribed();
        let before = match &self.cursor {
            Some(cursor) if self.baseline => before(cursor),
            _ => Before::new(),
        };
        let keys = self.keys_to_check(current, compare_all);
        // After a full wildcard diff the client holds the whole type: plain copies of the
        // newest versions need no record, now or afterwards.
        let plain_is_baseline =
            self.baseline || (self.wildcard && compare_all && current.latest().generation() > 0);

        let mut canonical: BTreeSet<Arc<str>> = BTreeSet::new();
        let mut asked: Vec<Arc<str>> = Vec::new();
        for key in &keys {
            canonical.extend(current.resolve(key).cloned());
            canonical.extend(self.sent_aliases.get(key).cloned());
            if self.sent.contains_key(key) || before.contains_key(key) {
                canonical.insert(key.clone());
            }
            if self.names.contains(key) {
                asked.push(key.clone());
            }
        }

        let mut resources = Vec::new();
        let mut removed: BTreeSet<Arc<str>> = BTreeSet::new();
        for name in canonical {
            let held = self.held(&name, current, &before);
            let force = forced.contains(&name);
            match self.reconcile(current, &name, held, force, plain_is_baseline) {
                Outcome::UpToDate => {}
                Outcome::Send(wire) => resources.push(wire),
                Outcome::Remove => {
                    removed.insert(name);
                }
            }
        }
        for name in asked {
            if current.resolve(&name).is_some() {
                self.answered_missing.remove(&name);
            } else if self.answered_missing.insert(name.clone()) {
                removed.insert(name);
            }
        }
        Delta {
            resources: Resources::Listed(resources),
            removed: removed.iter().map(|name| name.to_string()).collect(),
        }
    }

    /// The names the client subscribed to again, and what they were last sent under: it wants
    /// a fresh answer for them, even if what it holds is up to date.
    fn resubscribed(&mut self) -> HashSet<Arc<str>> {
        let again: Vec<Arc<str>> = self
            .pending
            .iter()
            .filter(|(_, again)| **again)
            .map(|(n, _)| n.clone())
            .collect();
        let mut forced = HashSet::new();
        for name in again {
            self.answered_missing.remove(&name);
            forced.extend(self.sent_aliases.get(&name).cloned());
            forced.insert(name);
        }
        forced
    }

    /// The names and aliases whose state may differ from what the client holds.
    fn keys_to_check(&self, current: &TypeState, compare_all: bool) -> BTreeSet<Arc<str>> {
        let mut keys: BTreeSet<Arc<str>> = self.pending.keys().cloned().collect();
        match self.cursor.as_ref().filter(|_| !compare_all) {
            Some(cursor) => keys.extend(cursor.since().flat_map(Change::keys).cloned()),
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

    /// What the client holds of canonical `name`: version and aliases (`None`: unknown).
    fn held(
        &self,
        name: &str,
        current: &TypeState,
        before: &Before,
    ) -> Option<(Option<u64>, Option<Vec<String>>)> {
        if let Some(sent) = self.sent.get(name) {
            return Some((sent.version, sent.aliases.clone()));
        }
        if !self.baseline {
            return None;
        }
        let version = match before.get(name) {
            Some(version) => *version,
            None => current.resources.get(name).map(|entry| entry.version),
        }?;
        Some((Some(version), Some(Vec::new())))
    }

    /// Brings the client's copy of one canonical resource up to date (`force`: resend it even
    /// if it is). With `plain_is_baseline`, a plain copy of the newest version is what the
    /// baseline will say the client holds once this diff ends, so it is not recorded.
    fn reconcile(
        &mut self,
        current: &TypeState,
        name: &Arc<str>,
        held: Option<(Option<u64>, Option<Vec<String>>)>,
        force: bool,
        plain_is_baseline: bool,
    ) -> Outcome {
        let entry = current.resources.get(name);
        let matched: Vec<String> = entry
            .map(|entry| {
                let answers = |alias: &&String| {
                    self.names.contains(alias.as_str())
                        && current.resolve(alias).is_some_and(|owner| owner == name)
                };
                entry.aliases.iter().filter(answers).cloned().collect()
            })
            .unwrap_or_default();
        let wanted = self.wildcard || self.names.contains(name) || !matched.is_empty();
        match entry.filter(|_| wanted) {
            Some(entry) => {
                let up_to_date = !force
                    && held.is_some_and(|(version, aliases)| {
                        version == Some(entry.version)
                            && aliases.is_none_or(|aliases| aliases == matched)
                    });
                if up_to_date {
                    return Outcome::UpToDate;
                }
                let wire = wire::with_aliases(&entry.wire, &matched);
                self.forget(name);
                if !(plain_is_baseline && matched.is_empty()) {
                    self.remember(name.clone(), entry.version, matched);
                }
                Outcome::Send(wire)
            }
            None if held.is_some() => {
                self.forget(name);
                Outcome::Remove
            }
            None => Outcome::UpToDate,
        }
    }

    fn unsubscribe(&mut self, current: &TypeState, name: &str) {
        if name == WILDCARD {
            if self.baseline {
                // What the client subscribed to by name it keeps; write that down before the
                // baseline goes.
                let named: Vec<Arc<str>> = self.names.iter().cloned().collect();
                self.leave_baseline(current, named);
            }
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

    /// After a full wildcard diff the client holds the whole type: only what differs from that
    /// (resources sent with aliases) stays in `sent`.
    fn enter_baseline(&mut self, current: &TypeState) {
        self.sent.retain(|name, sent| {
            let plain = sent.aliases.as_ref().is_none_or(Vec::is_empty);
            let latest = current.resources.get(name).map(|entry| entry.version);
            !(plain && sent.version.is_some() && sent.version == latest)
        });
        // A reconnecting client may have listed the whole type; give that memory back.
        self.sent.shrink_to_fit();
        self.baseline = true;
    }

    /// Writes down what the baseline says the client holds of `names`, then drops the baseline.
    /// Names removed since the cursor that the client still held are written down too.
    fn leave_baseline(&mut self, current: &TypeState, names: Vec<Arc<str>>) {
        let before = self.cursor.as_ref().map(before).unwrap_or_default();
        let gone = before
            .keys()
            .filter(|name| !current.resources.contains_key(*name))
            .cloned();
        let candidates: Vec<Arc<str>> = names.into_iter().chain(gone).collect();
        let held: Vec<(Arc<str>, u64)> = candidates
            .into_iter()
            .filter(|name| !self.sent.contains_key(name))
            .filter_map(|name| {
                let (version, _) = self.held(&name, current, &before)?;
                Some((name, version?))
            })
            .collect();
        for (name, version) in held {
            let sent = Sent {
                version: Some(version),
                aliases: Some(Vec::new()),
            };
            self.sent.insert(name, sent);
        }
        self.baseline = false;
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

/// For each canonical name changed after `cursor`, its version at the cursor.
fn before(cursor: &Cursor) -> Before {
    let mut before = Before::new();
    for change in cursor.since() {
        for (name, version) in change.names() {
            before.entry(name.clone()).or_insert(*version);
        }
    }
    before
}

#[cfg(test)]
#[path = "subscription_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "subscription_props.rs"]
mod props;
