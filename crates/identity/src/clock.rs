//! Wall-clock time as a dependency.
//!
//! Certificate validity is wall-clock time, so the CA (issuing) and the certificate manager
//! (deciding when to refresh and whether a certificate has expired) take "now" from a [`Clock`]
//! instead of calling [`SystemTime::now`] directly. Production code uses [`SystemClock`]; tests
//! use [`ManualClock`] to issue certificates in the past or to jump to a refresh point without
//! waiting. TLS verification deliberately keeps rustls' own system time: a peer is judged by the
//! real clock, whatever a test did to ours.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> SystemTime;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Clone)]
pub struct ManualClock {
    now: Arc<Mutex<SystemTime>>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// A clock stopped at the current system time.
    pub fn starting_now() -> Self {
        Self::new(SystemTime::now())
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }

    /// Sets the clock to `to`, which may be in the past.
    pub fn set(&self, to: SystemTime) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ManualClock").field(&self.now()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_is_shared_between_clones() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let clock = ManualClock::new(start);
        let other = clock.clone();
        clock.advance(Duration::from_secs(5));
        assert_eq!(other.now(), start + Duration::from_secs(5));
        other.set(start);
        assert_eq!(clock.now(), start);
    }

    #[test]
    fn system_clock_moves() {
        let before = SystemTime::now();
        assert!(SystemClock.now() >= before);
    }
}
