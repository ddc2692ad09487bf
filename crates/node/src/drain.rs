//! Graceful shutdown: stop accepting, let open connections finish until a deadline, then abort
//! what is left.
//!
//! Every listener's accept loop watches [`Drain::stop_accepting`]; every proxied connection
//! runs as a task of [`Drain::tracker`] and watches [`Drain::force`]. A drain therefore
//! closes the listeners at once (so a new process bound beside this one with `SO_REUSEPORT`
//! gets every new connection), waits for the tracked tasks, and cancels `force` at the deadline.
//!
//! Invariant: after [`Drain::run`] returns, no listener of this proxy accepts and no connection
//! task of this proxy is left running.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// The shutdown signals shared by every listener and connection of one proxy.
#[derive(Debug, Clone, Default)]
pub(crate) struct Drain {
    /// Cancelled when listeners must close (drain started).
    pub(crate) stop_accepting: CancellationToken,
    /// Cancelled when connections must end now (deadline reached, or shutdown).
    pub(crate) force: CancellationToken,
    /// Connection tasks.
    pub(crate) tracker: TaskTracker,
    /// Accept loops: a drain waits for them, so its first step ends with every listener
    /// closed.
    pub(crate) listeners: TaskTracker,
}

/// Counts of proxied connections in flight, by listener; read by `/config_dump`.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    outbound: AtomicUsize,
    inbound: AtomicUsize,
    passthrough: AtomicUsize,
}

/// Which counter a connection counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Outbound,
    Inbound,
    Passthrough,
}

/// One open connection in [`ConnectionCounts`]; uncounted when dropped.
#[derive(Debug)]
pub(crate) struct Counted {
    counts: Arc<ConnectionCounts>,
    kind: Kind,
}

// === impl Drain ===

impl Drain {
    /// The signals of a listener set that can also stop on its own (one pod's, in in-pod
    /// mode): it stops accepting and aborts its connections when this drain does or when
    /// [`Drain::abort`] is called on it. Its connections are tracked here, and this drain's
    /// first step waits for its accept loops too.
    pub(crate) fn child(&self) -> Self {
        let child = Self {
            stop_accepting: self.stop_accepting.child_token(),
            force: self.force.child_token(),
            tracker: self.tracker.clone(),
            listeners: TaskTracker::new(),
        };
        let (stop, loops) = (child.stop_accepting.clone(), child.listeners.clone());
        self.listeners.spawn(async move {
            stop.cancelled().await;
            loops.close();
            loops.wait().await;
        });
        child
    }

    /// Closes a [`Drain::child`]'s listeners and aborts its connections now; returns once
    /// every listener is closed.
    pub(crate) async fn abort(&self) {
        self.stop_accepting.cancel();
        self.force.cancel();
        self.listeners.close();
        self.listeners.wait().await;
    }

    /// Stops accepting, waits up to `deadline` for connections, then aborts the rest. Logs
    /// both steps. Returns how many connections had to be aborted.
    pub(crate) async fn run(&self, deadline: Duration, counts: &ConnectionCounts) -> usize {
        self.stop_accepting.cancel();
        self.listeners.close();
        self.listeners.wait().await;
        self.tracker.close();
        info!(
            open_connections = counts.total(),
            deadline = ?deadline,
            "draining: listeners closed, waiting for open connections to finish"
        );
        let aborted = if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
        {
            info!("drained: every connection finished before the deadline");
            0
        } else {
            let left = counts.total();
            warn!(
                open_connections = left,
                "drain deadline reached: aborting the remaining connections"
            );
            self.force.cancel();
            self.tracker.wait().await;
            left
        };
        self.force.cancel();
        aborted
    }
}

// === impl ConnectionCounts ===

impl ConnectionCounts {
    pub fn outbound(&self) -> usize {
        self.outbound.load(Ordering::Relaxed)
    }

    pub fn inbound(&self) -> usize {
        self.inbound.load(Ordering::Relaxed)
    }

    pub fn passthrough(&self) -> usize {
        self.passthrough.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> usize {
        self.outbound() + self.inbound() + self.passthrough()
    }

    pub(crate) fn open(self: &Arc<Self>, kind: Kind) -> Counted {
        self.counter(kind).fetch_add(1, Ordering::Relaxed);
        Counted {
            counts: self.clone(),
            kind,
        }
    }

    fn counter(&self, kind: Kind) -> &AtomicUsize {
        match kind {
            Kind::Outbound => &self.outbound,
            Kind::Inbound => &self.inbound,
            Kind::Passthrough => &self.passthrough,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.counts
            .counter(self.kind)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_deadline_aborts_what_is_left() {
        let drain = Drain::default();
        let counts = Arc::new(ConnectionCounts::default());
        let (quick, slow) = (drain.clone(), drain.clone());
        let c = counts.clone();
        drain.tracker.spawn(async move {
            let _open = c.open(Kind::Inbound);
            quick.force.cancelled().await;
        });
        let c = counts.clone();
        drain.tracker.spawn(async move {
            let _open = c.open(Kind::Outbound);
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(slow);
        });
        tokio::task::yield_now().await;
        assert_eq!(counts.total(), 2);
        let aborted = drain.run(Duration::from_millis(200), &counts).await;
        assert_eq!(aborted, 1, "the connection that never ends is aborted");
        assert_eq!(counts.total(), 0);
        assert!(drain.stop_accepting.is_cancelled());
    }
}
