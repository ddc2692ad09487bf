//! The latest translation, as the translation loop keeps it and as readers see it.
//!
//! The loop updates its snapshot in place on every change; readers (`/debug`, `/metrics`) get
//! an immutable copy made on demand and cached until the next change. So a change never pays
//! for copying the whole mesh on its way to the node proxies: only a reader who asks does,
//! at most once per change.

use std::sync::{Arc, Mutex, PoisonError};

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
    copy: Option<(u64, Arc<MeshSnapshot>)>,
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

    /// The snapshot as of the last update.
    pub(crate) fn get(&self) -> Arc<MeshSnapshot> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match &inner.copy {
            Some((generation, copy)) if *generation == inner.generation => copy.clone(),
            _ => {
                let copy = Arc::new(inner.current.clone());
                inner.copy = Some((inner.generation, copy.clone()));
                copy
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_once_per_change() {
        let view = SnapshotView::new(MeshSnapshot::default());
        let first = view.get();
        assert!(Arc::ptr_eq(&first, &view.get()), "no change, same copy");
        view.update(|s| s.policy_issues.clear());
        assert!(
            !Arc::ptr_eq(&first, &view.get()),
            "a change makes a new copy"
        );
    }
}
