//! The change log of one type URL: which names and aliases each store generation touched, and
//! what version each touched name had before.
//!
//! The log is a chain of positions, one per generation, each linked to the next by the
//! [`Change`] between them. The store holds only the newest position; each stream holds a
//! [`Cursor`] at the position it last diffed against. Reference counting does the bookkeeping:
//! a change is kept exactly as long as some stream stands before it, so a stream can always
//! replay what happened since its cursor, and once every stream has moved past a change it is
//! freed. The newest position carries no change of its own, so an idle or fully synced server
//! keeps no log at all.
//!
//! # Invariants
//!
//! - Changes are linked in generation order, each exactly once, under the store's write lock.
//! - A cursor sees every change after it: nothing is dropped while a cursor precedes it. What a
//!   slow stream pins is bounded by the stream itself ([`Cursor::lag`]): past a limit it
//!   releases its cursor (see `TypeSubscription::release_if_behind`).
//! - Dropping a long chain frees it iteratively, never by recursion.

use std::fmt;
use std::sync::{Arc, OnceLock};

/// A position in the log: after generation `generation`.
struct Position {
    generation: u64,
    /// Keys recorded by every change up to this position.
    keys_through: u64,
    /// The change leading to the next position, once there is one.
    next: OnceLock<Box<Change>>,
}

/// What one store generation changed in one type.
pub(crate) struct Change {
    /// Canonical names upserted or removed, each with the version it had before the change
    /// (`None`: it did not exist).
    names: Vec<(Arc<str>, Option<u64>)>,
    /// Aliases gained or lost by the changed resources.
    aliases: Vec<Arc<str>>,
    /// The position after this change.
    to: Arc<Position>,
}

/// A position in a type's change log, held by a stream.
#[derive(Clone)]
pub(crate) struct Cursor(Arc<Position>);

/// The writing end of a type's change log.
pub(crate) struct Log {
    latest: Cursor,
}

// === impl Log ===

impl Log {
    /// Appends the changes of `generation`.
    pub(crate) fn push(
        &mut self,
        generation: u64,
        mut names: Vec<(Arc<str>, Option<u64>)>,
        mut aliases: Vec<Arc<str>>,
    ) {
        names.shrink_to_fit();
        aliases.shrink_to_fit();
        let previous = &self.latest.0;
        let keys = u64::try_from(names.len() + aliases.len()).unwrap_or(u64::MAX);
        let position = Arc::new(Position {
            generation,
            keys_through: previous.keys_through.saturating_add(keys),
            next: OnceLock::new(),
        });
        let change = Change {
            names,
            aliases,
            to: position.clone(),
        };
        // Only the store's writer links changes, under its write lock, and always onto the
        // newest position, which therefore has no next change yet.
        let _ = previous.next.set(Box::new(change));
        self.latest = Cursor(position);
    }

    /// The newest position.
    pub(crate) fn latest(&self) -> &Cursor {
        &self.latest
    }
}

impl Default for Log {
    fn default() -> Self {
        Self {
            latest: Cursor(Arc::new(Position {
                generation: 0,
                keys_through: 0,
                next: OnceLock::new(),
            })),
        }
    }
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log").field("latest", &self.latest).finish()
    }
}

// === impl Cursor ===

impl Cursor {
    /// The store generation this cursor stands after.
    pub(crate) fn generation(&self) -> u64 {
        self.0.generation
    }

    /// Every change after this cursor, oldest first.
    pub(crate) fn since(&self) -> impl Iterator<Item = &Change> {
        std::iter::successors(self.0.next.get().map(|c| &**c), |change| {
            change.to.next.get().map(|c| &**c)
        })
    }

    /// How many keys the changes between this cursor and `latest` hold: what keeping this
    /// cursor costs the log.
    pub(crate) fn lag(&self, latest: &Cursor) -> u64 {
        latest.0.keys_through.saturating_sub(self.0.keys_through)
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cursor")
            .field("generation", &self.0.generation)
            .finish()
    }
}

// === impl Change ===

impl Change {
    /// Canonical names changed, with their versions before the change.
    pub(crate) fn names(&self) -> &[(Arc<str>, Option<u64>)] {
        &self.names
    }

    /// Every key (canonical name or alias) the change touched.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.names.iter().map(|(name, _)| name).chain(&self.aliases)
    }
}

// === impl Position ===

impl Drop for Position {
    fn drop(&mut self) {
        // Unlink the chain one position at a time: dropping `next` directly would recurse once
        // per position nobody else holds, and a long log would overflow the stack.
        let mut next = self.next.take();
        while let Some(change) = next {
            let Change { to, .. } = *change;
            next = match Arc::try_unwrap(to) {
                Ok(mut position) => position.next.take(),
                Err(_shared) => None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str, before: Option<u64>) -> (Arc<str>, Option<u64>) {
        (Arc::from(n), before)
    }

    #[test]
    fn a_cursor_sees_every_later_change_and_measures_its_lag() {
        let mut log = Log::default();
        let start = log.latest().clone();
        log.push(1, vec![name("a", None)], vec![Arc::from("ip")]);
        let middle = log.latest().clone();
        log.push(2, vec![name("a", Some(7)), name("b", None)], vec![]);

        let seen: Vec<u64> = start.since().map(|c| c.to.generation).collect();
        assert_eq!(seen, [1, 2]);
        let keys: Vec<&str> = start.since().flat_map(|c| c.keys()).map(|k| &**k).collect();
        assert_eq!(keys, ["a", "ip", "a", "b"]);
        assert_eq!(start.lag(log.latest()), 4);
        assert_eq!(middle.lag(log.latest()), 2);
        assert_eq!(log.latest().since().count(), 0);
        assert_eq!(log.latest().lag(log.latest()), 0);
    }

    #[test]
    fn changes_live_as_long_as_a_cursor_stands_before_them() {
        let mut log = Log::default();
        let early = log.latest().clone();
        let a: Arc<str> = Arc::from("a");
        log.push(1, vec![(a.clone(), None)], vec![]);
        log.push(2, vec![(a.clone(), Some(1))], vec![]);
        assert_eq!(
            Arc::strong_count(&a),
            3,
            "both changes kept for the early cursor"
        );
        let later = Cursor(early.0.next.get().map(|c| c.to.clone()).expect("linked"));
        drop(early);
        assert_eq!(Arc::strong_count(&a), 2, "the first change is gone");
        drop(later);
        assert_eq!(
            Arc::strong_count(&a),
            1,
            "the newest position carries no change"
        );
    }

    #[test]
    fn a_long_chain_drops_without_recursion() {
        let mut log = Log::default();
        let start = log.latest().clone();
        for generation in 1..=1_000_000 {
            log.push(generation, vec![name("a", Some(generation))], vec![]);
        }
        assert_eq!(start.lag(log.latest()), 1_000_000);
        drop(start);
    }
}
