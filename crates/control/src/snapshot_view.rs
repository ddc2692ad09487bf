//! The latest translation, as the translation loop keeps it and as readers see it.
//!
//! The loop updates its snapshot in place on every change. Readers that only need a figure
//! (`/metrics`) compute it in place ([`SnapshotView::read`]); readers that need the snapshot
//! for longer (`/debug`) get an immutable copy made on demand ([`SnapshotView::get`]), shared by
//! readers of the same generation while any of them holds it and freed after. So a change never
//! pays for copying the whole mesh on its way to the node proxies, and an idle control plane
//! keeps no second copy of it.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use ambit_model::MeshSnapshot;

/// Shared handle; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotView {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    current: MeshSnapshot,
    generation: u64,
    copy: Option<(u64, Weak<MeshSnapshot>)>,
}

impl SnapshotView {
    pub(crate) fn new(snapshot: MeshSnapshot) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                current: snapshot,
                generation: 0,
                copy: None,
            })),
        }
    }

    /// Changes the snapshot in place; readers see the result from their next [`get`](Self::get).
    pub(crate) fn update<T>(&self, f: impl FnOnce(&mut MeshSnapshot) -> T) -> T {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.generation += 1;
        f(&mut inner.current)
    }

    /// Runs `f` on the snapshot as of the last update, holding off updates meanwhile: keep it
    /// short.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&MeshSnapshot) -> T) -> T {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(&inner.current)
    }

    /// A copy of the snapshot as of the last update.
    pub(crate) fn get(&self) -> Arc<MeshSnapshot> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let shared = inner
            .copy
            .as_ref()
            .filter(|(generation, _)| *generation == inner.generation)
            .and_then(|(_, copy)| copy.upgrade());
        match shared {
            Some(copy) => copy,
            None => {
                let copy = Arc::new(inner.current.clone());
                inner.copy = Some((inner.generation, Arc::downgrade(&copy)));
                copy
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_once_per_change_and_keeps_none_nobody_holds() {
        let view = SnapshotView::new(MeshSnapshot::default());
        let first = view.get();
        assert!(Arc::ptr_eq(&first, &view.get()), "no change, same copy");
        view.update(|s| s.policy_issues.clear());
        assert!(
            !Arc::ptr_eq(&first, &view.get()),
            "a change makes a new copy"
        );
        let weak = Arc::downgrade(&view.get());
        assert!(weak.upgrade().is_none(), "the view keeps no copy itself");
        assert_eq!(view.read(|s| s.workloads.len()), 0);
    }
}
