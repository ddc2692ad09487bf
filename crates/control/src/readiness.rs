//! What the control plane still waits for before it serves, and why.
//!
//! Start-up registers every precondition (each watched kind's first full list, the certificate
//! authority); sources and the CA bootstrap mark them done or record why they are not yet. Only
//! once every one is done does the control plane serve WDS or the CA, and `/ready` answer 200:
//! a partial view (say, pods without their policies) is never served, however long it takes.
//!
//! Invariant: once every precondition is met, readiness never goes back — later watch failures
//! keep the last synced view served, as istiod does.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// Shared handle; cheap to clone.
#[derive(Debug, Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Precondition → the last reason it is not met yet (empty: no error, just not done).
    pending: Mutex<BTreeMap<String, String>>,
    ready: watch::Sender<bool>,
}

impl Readiness {
    /// Waiting for each of `preconditions` (none: ready at once).
    pub fn waiting_for<I, S>(preconditions: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let pending: BTreeMap<String, String> = preconditions
            .into_iter()
            .map(|p| (p.into(), String::new()))
            .collect();
        let ready = watch::Sender::new(pending.is_empty());
        Self {
            inner: Arc::new(Inner {
                pending: Mutex::new(pending),
                ready,
            }),
        }
    }

    /// `precondition` is met. Unknown names are ignored (a re-list after readiness, say).
    pub fn done(&self, precondition: &str) {
        let now_ready = {
            let mut pending = self.lock();
            pending.remove(precondition).is_some() && pending.is_empty()
        };
        if now_ready {
            self.inner.ready.send_replace(true);
        }
    }

    /// Records why `precondition` is not met yet, for `/ready` and the start-up log.
    pub fn failing(&self, precondition: &str, reason: impl Into<String>) {
        if let Some(slot) = self.lock().get_mut(precondition) {
            *slot = reason.into();
        }
    }

    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Resolves once every precondition is met.
    pub async fn wait(&self) {
        let mut ready = self.inner.ready.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = ready.wait_for(|r| *r).await;
    }

    /// What is still pending, with the last reason of each.
    pub fn pending(&self) -> Vec<(String, String)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// One line per pending precondition, as `/ready` shows it.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (what, why) in self.pending() {
            if why.is_empty() {
                let _ = writeln!(out, "waiting for {what}");
            } else {
                let _ = writeln!(out, "waiting for {what}: {why}");
            }
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_only_when_every_precondition_is_met() {
        let r = Readiness::waiting_for(["pods", "namespaces"]);
        assert!(!r.is_ready());
        r.failing("pods", "403 forbidden");
        assert_eq!(
            r.describe(),
            "waiting for namespaces\nwaiting for pods: 403 forbidden\n"
        );
        r.done("pods");
        assert!(!r.is_ready());
        r.done("pods");
        r.done("unknown");
        assert!(!r.is_ready(), "repeats and unknown names do not count");
        let waiter = tokio::spawn({
            let r = r.clone();
            async move { r.wait().await }
        });
        r.done("namespaces");
        assert!(r.is_ready());
        waiter.await.unwrap();
        r.failing("pods", "watch failed later");
        assert!(r.is_ready() && r.describe().is_empty(), "never goes back");
        assert!(Readiness::waiting_for(Vec::<String>::new()).is_ready());
    }
}
