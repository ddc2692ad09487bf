//! The cluster state shared between sources (writers) and the translator (reader).

use std::sync::{Arc, Mutex, PoisonError};

use ambit_model::ClusterState;
use tokio::sync::watch;

/// A [`ClusterState`] behind a lock, with a generation counter that moves on every change.
///
/// The lock is a plain mutex held only for in-memory updates and one translation pass, never
/// across an `.await`.
#[derive(Debug, Clone)]
pub struct SharedState {
    state: Arc<Mutex<ClusterState>>,
    generation: watch::Sender<u64>,
}

impl SharedState {
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            generation: watch::Sender::new(0),
        }
    }

    /// Runs `f` on the state; if it reports a change, the generation moves and readers wake.
    pub fn update(&self, f: impl FnOnce(&mut ClusterState) -> bool) -> bool {
        let changed = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut state)
        };
        if changed {
            self.generation.send_modify(|g| *g += 1);
        }
        changed
    }

    /// Runs `f` on the state without announcing a change (for bookkeeping such as taking the
    /// dirty set, which readers need not hear about).
    pub fn update_quietly<T>(&self, f: impl FnOnce(&mut ClusterState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut state)
    }

    /// Reads the state.
    pub fn read<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&state)
    }

    /// A receiver that sees the generation move on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }
}

impl Default for SharedState {
    fn default() -> Self {
        Self::new()
    }
}
