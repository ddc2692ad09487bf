//! On-demand names: what a client was asked for at run time, bounded and forgotten when unused.
//!
//! Every name asked for through [`ClientHandle::subscribe`](super::ClientHandle::subscribe) is
//! kept with the time it was last asked for, and
//! - at most `max` are kept: one more forgets the one asked for longest ago;
//! - one not asked for within `ttl` is forgotten;
//! - one the server reported absent is forgotten at once (the asker caches that answer).
//!
//! A forgotten name is unsubscribed on the live stream and left out of the next stream's first
//! request, so that request never grows past `max` names, however many addresses a pod
//! connects to (the server refuses a request above its size limit, which would freeze the
//! node's updates for good).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The names asked for at run time of one type. See the [module docs](self).
#[derive(Debug)]
pub(super) struct OnDemand {
    max: usize,
    ttl: Duration,
    /// Name → when it was last asked for.
    asked: HashMap<String, Instant>,
}

impl OnDemand {
    pub(super) fn new(max: usize, ttl: Duration) -> Self {
        Self {
            max: max.max(1),
            ttl,
            asked: HashMap::new(),
        }
    }

    /// Records that `name` was asked for at `now`: whether it is new, and the name forgotten to
    /// make room for it.
    pub(super) fn ask(&mut self, name: &str, now: Instant) -> (bool, Option<String>) {
        if let Some(at) = self.asked.get_mut(name) {
            *at = now;
            return (false, None);
        }
        let evicted = if self.asked.len() >= self.max {
            let oldest = self
                .asked
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(name, _)| name.clone());
            oldest.inspect(|name| {
                self.asked.remove(name);
            })
        } else {
            None
        };
        self.asked.insert(name.to_owned(), now);
        (true, evicted)
    }

    /// Forgets the names not asked for within the time to live, as of `now`; returns them.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<String> {
        let ttl = self.ttl;
        let mut expired = Vec::new();
        self.asked.retain(|name, at| {
            let keep = now.saturating_duration_since(*at) < ttl;
            if !keep {
                expired.push(name.clone());
            }
            keep
        });
        expired.sort_unstable();
        expired
    }

    /// Forgets `name`; whether it was kept.
    pub(super) fn forget(&mut self, name: &str) -> bool {
        self.asked.remove(name).is_some()
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.asked.contains_key(name)
    }

    /// The names kept, sorted.
    pub(super) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.asked.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// How often expiry should run: a quarter of the time to live, at least every 10 ms.
    pub(super) fn sweep_every(&self) -> Duration {
        (self.ttl / 4).max(Duration::from_millis(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_stays_within_its_cap_forgetting_the_oldest() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut names = OnDemand::new(2, Duration::from_secs(60));
        assert_eq!(names.ask("/a", at(0)), (true, None));
        assert_eq!(names.ask("/b", at(1)), (true, None));
        // Asking again refreshes: `/a` is now the newest.
        assert_eq!(names.ask("/a", at(2)), (false, None));
        assert_eq!(names.ask("/c", at(3)), (true, Some("/b".to_owned())));
        assert_eq!(names.names(), ["/a", "/c"]);
        for i in 0..1000 {
            names.ask(&format!("/x{i}"), at(10 + i));
        }
        assert_eq!(names.names(), ["/x998", "/x999"]);
    }

    #[test]
    fn names_not_asked_for_within_the_ttl_are_forgotten() {
        let start = Instant::now();
        let at = |s| start + Duration::from_secs(s);
        let mut names = OnDemand::new(10, Duration::from_secs(60));
        names.ask("/old", at(0));
        names.ask("/kept", at(0));
        names.ask("/new", at(30));
        names.ask("/kept", at(50));
        assert_eq!(names.expire(at(59)), Vec::<String>::new());
        assert_eq!(names.expire(at(60)), ["/old"]);
        assert_eq!(names.names(), ["/kept", "/new"]);
        assert!(names.forget("/new"));
        assert!(!names.forget("/new"));
        assert_eq!(names.expire(at(200)), ["/kept"]);
        assert!(names.names().is_empty());
    }
}
