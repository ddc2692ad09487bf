//! When a role stops: SIGTERM (the kubelet deleting the pod) and SIGINT (Ctrl-C) alike, or a
//! request from inside the process (the node proxy's `POST /quitquitquit`).
//!
//! A role is handed one [`Shutdown`] and calls [`Shutdown::watch`] first thing, so a signal is
//! never lost nor ends the process, even while the role starts; it hands [`Shutdown::trigger`]
//! to whatever may ask for shutdown, starts under [`Watching::or_stop`] (a signal while starting
//! ends the start), and once up awaits [`Watching::wait`]; what it does next (drain, stop) is
//! its own.

use std::fmt;
use std::sync::Arc;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::Notify;

/// Why a role is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// SIGTERM.
    Terminated,
    /// SIGINT (Ctrl-C).
    Interrupted,
    /// Asked for from inside the process, through [`Shutdown::trigger`].
    Requested,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Terminated => "SIGTERM",
            Self::Interrupted => "interrupted",
            Self::Requested => "shutdown requested",
        })
    }
}

/// The shutdown of one role.
#[derive(Debug, Default)]
pub struct Shutdown {
    requested: Arc<Notify>,
}

impl Shutdown {
    /// A shutdown that nothing has asked for yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `notify_one()` on it asks for shutdown; the request is kept until [`Shutdown::wait`]
    /// takes it, so one made before anyone waits is not lost.
    pub fn trigger(&self) -> Arc<Notify> {
        self.requested.clone()
    }

    /// Starts watching SIGTERM and SIGINT: from now on they no longer end the process but
    /// [`Watching::wait`] (one that comes before is kept until then).
    ///
    /// # Errors
    /// When the signals cannot be watched (no signal driver in this runtime).
    pub fn watch(&self) -> std::io::Result<Watching<'_>> {
        Ok(Watching {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            requested: &self.requested,
        })
    }

    /// Returns at the first SIGTERM, SIGINT or request, saying which ([`Shutdown::watch`]
    /// then [`Watching::wait`]).
    ///
    /// # Errors
    /// When the signals cannot be watched (no signal driver in this runtime).
    pub async fn wait(&self) -> std::io::Result<Reason> {
        Ok(self.watch()?.wait().await)
    }
}

/// SIGTERM and SIGINT being watched for one [`Shutdown`].
#[derive(Debug)]
pub struct Watching<'a> {
    terminate: Signal,
    interrupt: Signal,
    requested: &'a Notify,
}

impl Watching<'_> {
    /// Runs `work` unless a SIGTERM, SIGINT or request comes first: `Ok` with what `work`
    /// returned, or `Err` with why it was given up (and `work` dropped).
    pub async fn or_stop<T>(&mut self, work: impl Future<Output = T>) -> Result<T, Reason> {
        tokio::select! {
            done = work => Ok(done),
            reason = self.wait() => Err(reason),
        }
    }

    /// Returns at the first SIGTERM, SIGINT or request since [`Shutdown::watch`], saying which.
    pub async fn wait(&mut self) -> Reason {
        tokio::select! {
            _ = self.terminate.recv() => Reason::Terminated,
            _ = self.interrupt.recv() => Reason::Interrupted,
            () = self.requested.notified() => Reason::Requested,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use rustix::process::{Signal, getpid, kill_process};

    use super::*;

    #[tokio::test]
    async fn a_request_made_before_waiting_is_kept() {
        let shutdown = Shutdown::new();
        shutdown.trigger().notify_one();
        let reason = tokio::time::timeout(Duration::from_secs(5), shutdown.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reason, Reason::Requested);
    }

    /// One test, so no other test of this process sees its signals.
    #[tokio::test]
    async fn sigterm_and_sigint_alike_end_the_wait_and_give_up_a_start() {
        for (kind, expected) in [
            (Signal::TERM, Reason::Terminated),
            (Signal::INT, Reason::Interrupted),
        ] {
            let shutdown = Shutdown::new();
            // Sent before anyone waits: kept, and the process lives on.
            let mut watching = shutdown.watch().unwrap();
            kill_process(getpid(), kind).unwrap();
            let reason = tokio::time::timeout(Duration::from_secs(5), watching.wait())
                .await
                .unwrap();
            assert_eq!(reason, expected);

            // Sent while starting: the start is given up.
            let start = std::future::pending::<()>();
            kill_process(getpid(), kind).unwrap();
            let given_up = tokio::time::timeout(Duration::from_secs(5), watching.or_stop(start))
                .await
                .unwrap();
            assert_eq!(given_up, Err(expected));
        }
        let shutdown = Shutdown::new();
        let mut watching = shutdown.watch().unwrap();
        assert_eq!(watching.or_stop(async { 7 }).await, Ok(7));
    }
}
