//! The outbound HBONE connection pool.
//!
//! Connections are keyed by (source identity, expected destination identities, destination
//! address, source network namespace, source address): a tunnel only ever rides a connection whose TLS
//! handshake proved exactly what this tunnel needs, dialed from the namespace the tunnel's
//! connection came from (in in-pod mode, the source pod's: two pods with one service account
//! never share a connection, and a pod's connections leave the pool with it). One connection carries up to `max_streams` concurrent tunnels; beyond that a
//! new one is opened. Dialing is serialized per key, so a burst of new tunnels to one
//! destination opens one connection, not a hundred.
//!
//! A connection leaves the pool when its driver task sees it end (peer closed, GOAWAY, I/O
//! error), when a readiness check finds it dead or going away, or when it has had no stream for
//! the idle timeout. A dead connection is never handed out: every checkout polls it for
//! readiness first, and a tunnel refused by a connection that turned out to be going away is
//! retried once on a new one.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ambit_identity::SpiffeId;
use bytes::Bytes;
use h2::client::{Connection, SendRequest};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::HboneError;
use super::client::{ConnectRequest, send_connect};
use super::stream::{H2Stream, Lease};

/// What a pooled connection proved in its handshake.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub(crate) src: SpiffeId,
    pub(crate) dst: Vec<SpiffeId>,
    pub(crate) addr: SocketAddr,
    /// The inode of the pod network namespace the connection was dialed from; `None` for the
    /// proxy's own.
    pub(crate) netns: Option<u64>,
    /// The source address it was dialed from, when one was chosen (shared mode).
    pub(crate) local: Option<IpAddr>,
}

/// Shared HBONE connections. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conns: Mutex<HashMap<PoolKey, Vec<Arc<Pooled>>>>,
    dialing: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
    max_streams: usize,
    idle_timeout: Duration,
    shutdown: CancellationToken,
    epoch: Instant,
    next_id: AtomicU64,
}

/// One connection in the pool.
#[derive(Debug)]
struct Pooled {
    id: u64,
    sender: SendRequest<Bytes>,
    active: AtomicUsize,
    /// Milliseconds after the pool's epoch when the last stream ended.
    idle_since_ms: AtomicU64,
    closed: Arc<AtomicBool>,
    inner: Weak<Inner>,
}

/// One tunnel's claim on a pooled connection; dropping it frees the stream slot.
#[derive(Debug)]
pub(crate) struct StreamLease {
    conn: Arc<Pooled>,
}

impl Pool {
    /// An empty pool; its connections end when `shutdown` is cancelled.
    pub(crate) fn new(
        max_streams: usize,
        idle_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                conns: Mutex::default(),
                dialing: Mutex::default(),
                max_streams: max_streams.max(1),
                idle_timeout,
                shutdown,
                epoch: Instant::now(),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// Opens a tunnel for `request` on a connection of `key`, reusing one when possible and
    /// calling `dial` otherwise.
    pub(crate) async fn open<F, Fut, T>(
        &self,
        key: &PoolKey,
        request: &ConnectRequest,
        timeout: Duration,
        dial: F,
    ) -> Result<H2Stream, HboneError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(SendRequest<Bytes>, Connection<T, Bytes>), HboneError>>,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if let Some((mut sender, lease)) = self.checkout(key) {
            match send_connect(&mut sender, request, timeout, Some(lease as Lease)).await {
                Err(e) if e.is_retryable() => {
                    debug!(error = %e, "pooled HBONE connection refused the stream; dialing anew");
                }
                other => return other,
            }
        }
        let lock = self.dial_lock(key);
        let guard = lock.lock().await;
        if let Some((mut sender, lease)) = self.checkout(key) {
            drop(guard);
            self.release_dial_lock(key, lock);
            return send_connect(&mut sender, request, timeout, Some(lease as Lease)).await;
        }
        let dialed = dial().await;
        let leased = dialed.map(|(sender, connection)| {
            let (pooled, lease) = self.insert(key, sender);
            self.spawn_driver(key.clone(), &pooled, connection);
            (pooled.sender.clone(), lease)
        });
        drop(guard);
        self.release_dial_lock(key, lock);
        let (mut sender, lease) = leased?;
        send_connect(&mut sender, request, timeout, Some(lease as Lease)).await
    }

    /// Takes every connection dialed from network namespace `netns` out of the pool (its pod
    /// left); each closes when its last tunnel ends.
    pub(crate) fn evict_netns(&self, netns: u64) {
        self.inner
            .lock_conns()
            .retain(|key, _| key.netns != Some(netns));
    }

    /// Open connections and the tunnels they carry, for `/config_dump`.
    pub(crate) fn stats(&self) -> (usize, usize) {
        let conns = self.inner.lock_conns();
        let all = conns.values().flatten();
        let streams = all.clone().map(|c| c.active.load(Ordering::Relaxed)).sum();
        (all.count(), streams)
    }

    /// A live connection of `key` with a free stream slot, claimed.
    fn checkout(&self, key: &PoolKey) -> Option<(SendRequest<Bytes>, Arc<StreamLease>)> {
        let mut conns = self.inner.lock_conns();
        let list = conns.get_mut(key)?;
        let mut chosen = None;
        for conn in list.iter() {
            if conn.closed.load(Ordering::Acquire)
                || conn.active.load(Ordering::Acquire) >= self.inner.max_streams
            {
                continue;
            }
            let mut sender = conn.sender.clone();
            // A fresh handle is Ready unless the connection failed or received GOAWAY.
            match sender.poll_ready(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(Ok(())) => {
                    chosen = Some((sender, conn.clone()));
                    break;
                }
                Poll::Ready(Err(_)) => conn.closed.store(true, Ordering::Release),
                Poll::Pending => {}
            }
        }
        list.retain(|c| !c.closed.load(Ordering::Acquire));
        if list.is_empty() {
            conns.remove(key);
        }
        let (sender, conn) = chosen?;
        conn.active.fetch_add(1, Ordering::AcqRel);
        Some((sender, Arc::new(StreamLease { conn })))
    }

    fn insert(&self, key: &PoolKey, sender: SendRequest<Bytes>) -> (Arc<Pooled>, Arc<StreamLease>) {
        let pooled = Arc::new(Pooled {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            sender,
            active: AtomicUsize::new(1),
            idle_since_ms: AtomicU64::new(0),
            closed: Arc::new(AtomicBool::new(false)),
            inner: Arc::downgrade(&self.inner),
        });
        self.inner
            .lock_conns()
            .entry(key.clone())
            .or_default()
            .push(pooled.clone());
        let lease = Arc::new(StreamLease {
            conn: pooled.clone(),
        });
        (pooled, lease)
    }

    /// Drives `connection` until it ends, the pool shuts down, or it idles out of the pool.
    fn spawn_driver<T>(&self, key: PoolKey, pooled: &Arc<Pooled>, connection: Connection<T, Bytes>)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (id, closed) = (pooled.id, pooled.closed.clone());
        let inner = Arc::downgrade(&self.inner);
        let shutdown = self.inner.shutdown.clone();
        let period = (self.inner.idle_timeout / 2).max(Duration::from_millis(50));
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let mut ticks = tokio::time::interval(period);
            loop {
                tokio::select! {
                    result = &mut connection => {
                        if let Err(e) = result {
                            debug!(error = %e, addr = %key.addr, "HBONE connection ended");
                        }
                        break;
                    }
                    _ = ticks.tick() => {
                        // Once out of the pool, the connection closes when its last stream ends.
                        if let Some(inner) = inner.upgrade() {
                            inner.reap_if_idle(&key, id);
                        }
                    }
                    () = shutdown.cancelled() => break,
                }
            }
            closed.store(true, Ordering::Release);
            if let Some(inner) = inner.upgrade() {
                inner.remove(&key, id);
            }
        });
    }

    fn dial_lock(&self, key: &PoolKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut dialing = self
            .inner
            .dialing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        dialing.entry(key.clone()).or_default().clone()
    }

    fn release_dial_lock(&self, key: &PoolKey, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut dialing = self
            .inner
            .dialing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Ours and the map's: nobody else is waiting to dial this key.
        if Arc::strong_count(&lock) <= 2 {
            dialing.remove(key);
        }
    }
}

impl Inner {
    fn lock_conns(&self) -> MutexGuard<'_, HashMap<PoolKey, Vec<Arc<Pooled>>>> {
        // Nothing panics under this lock; a poisoned map is still consistent.
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn remove(&self, key: &PoolKey, id: u64) {
        let mut conns = self.lock_conns();
        if let Some(list) = conns.get_mut(key) {
            list.retain(|c| c.id != id);
            if list.is_empty() {
                conns.remove(key);
            }
        }
    }

    /// Takes connection `id` out of the pool if it has had no stream for the idle timeout.
    fn reap_if_idle(&self, key: &PoolKey, id: u64) {
        let idle_ms = u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let now = self.now_ms();
        let mut conns = self.lock_conns();
        let Some(list) = conns.get_mut(key) else {
            return;
        };
        list.retain(|c| {
            let idle = c.id == id
                && c.active.load(Ordering::Acquire) == 0
                && now.saturating_sub(c.idle_since_ms.load(Ordering::Acquire)) >= idle_ms;
            if idle {
                debug!(addr = %key.addr, "closing idle HBONE connection");
            }
            !idle
        });
        if list.is_empty() {
            conns.remove(key);
        }
    }
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        if self.conn.active.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(inner) = self.conn.inner.upgrade()
        {
            self.conn
                .idle_since_ms
                .store(inner.now_ms(), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests;
