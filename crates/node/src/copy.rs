//! Moving bytes both ways between the two sides of a proxied connection.
//!
//! Each direction runs a read → write loop; both run concurrently on the connection's task.
//! When one side ends its stream (TCP FIN, or HTTP/2 END_STREAM) the other side's write half
//! is shut down, and the opposite direction keeps going until it ends too (half-close, as TCP
//! applications expect). An error in either direction ends both, and so does a connection idle
//! in both directions for the idle timeout.
//!
//! Buffers: each TCP read half owns one [`BytesMut`] (16 KiB) for the connection's life. A read
//! fills its spare capacity and hands the filled part on as a [`Bytes`] view of the same
//! allocation; once the writer has dropped it, the next `reserve` reclaims the space, so a
//! steady connection allocates once per direction. (A view still queued inside HTTP/2 when the
//! buffer runs out forces a fresh allocation: memory is never shared with a pending frame.)

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use crate::hbone::stream::{H2Reader, H2Stream, H2Writer};

/// Size of a TCP read buffer.
const BUFFER: usize = 16 * 1024;
/// Below this much spare capacity the buffer is renewed (reclaimed, or reallocated).
const MIN_READ: usize = 2 * 1024;

/// One side of a proxied connection, read half.
#[derive(Debug)]
pub(crate) enum Reader {
    Tcp { half: OwnedReadHalf, buf: BytesMut },
    H2(H2Reader),
}

/// One side of a proxied connection, write half.
#[derive(Debug)]
pub(crate) enum Writer {
    Tcp(OwnedWriteHalf),
    H2(H2Writer),
}

/// Bytes moved so far, per direction (readable while the copy runs).
#[derive(Debug, Default)]
pub(crate) struct Transferred {
    /// From the side that opened the connection toward the other.
    pub(crate) downstream_to_upstream: AtomicU64,
    pub(crate) upstream_to_downstream: AtomicU64,
}

/// Why a copy ended badly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CopyError {
    #[error("{direction}")]
    Io {
        direction: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("idle for {0:?} in both directions")]
    Idle(Duration),
}

// === impl Reader, Writer ===

impl Reader {
    pub(crate) fn tcp(half: OwnedReadHalf) -> Self {
        Self::Tcp {
            half,
            buf: BytesMut::with_capacity(BUFFER),
        }
    }

    async fn read(&mut self) -> io::Result<Option<Bytes>> {
        match self {
            Self::Tcp { half, buf } => {
                if buf.capacity() - buf.len() < MIN_READ {
                    buf.reserve(BUFFER);
                }
                if half.read_buf(buf).await? == 0 {
                    return Ok(None);
                }
                Ok(Some(buf.split().freeze()))
            }
            Self::H2(reader) => reader.read().await,
        }
    }

    fn release(&mut self, n: usize) {
        if let Self::H2(reader) = self {
            reader.release(n);
        }
    }
}

impl Writer {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            Self::Tcp(half) => half.write_all(&data).await,
            Self::H2(writer) => writer.write(data).await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            // A peer that already closed both ways leaves nothing to half-close.
            Self::Tcp(half) => match half.shutdown().await {
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                other => other,
            },
            Self::H2(writer) => writer.shutdown().await,
        }
    }
}

/// Splits a TCP stream into its two copy halves.
pub(crate) fn tcp(stream: TcpStream) -> (Reader, Writer) {
    let (read, write) = stream.into_split();
    (Reader::tcp(read), Writer::Tcp(write))
}

/// Splits a tunnel into its two copy halves.
pub(crate) fn h2(stream: H2Stream) -> (Reader, Writer) {
    (Reader::H2(stream.reader), Writer::H2(stream.writer))
}

// === copying ===

/// Copies between `downstream` (the side that opened the connection) and `upstream` until both
/// directions have ended, one fails, or nothing moved for `idle`. Counts into `moved`.
pub(crate) async fn bidirectional(
    downstream: (Reader, Writer),
    upstream: (Reader, Writer),
    idle: Duration,
    moved: &Transferred,
) -> Result<(), CopyError> {
    let (mut down_r, mut down_w) = downstream;
    let (mut up_r, mut up_w) = upstream;
    let activity = Activity::new();
    let request = one_way(
        &mut down_r,
        &mut up_w,
        &moved.downstream_to_upstream,
        &activity,
    );
    let response = one_way(
        &mut up_r,
        &mut down_w,
        &moved.upstream_to_downstream,
        &activity,
    );
    let both = async {
        tokio::try_join!(
            async {
                request.await.map_err(|source| CopyError::Io {
                    direction: "downstream to upstream",
                    source,
                })
            },
            async {
                response.await.map_err(|source| CopyError::Io {
                    direction: "upstream to downstream",
                    source,
                })
            },
        )
    };
    let result = tokio::select! {
        result = both => result.map(|_| ()),
        () = activity.idle(idle) => Err(CopyError::Idle(idle)),
    };
    if result.is_err() {
        // Make the failure visible to an HBONE peer instead of a clean end of stream.
        for w in [&mut up_w, &mut down_w] {
            if let Writer::H2(h2) = w {
                h2.reset();
            }
        }
    }
    result
}

async fn one_way(
    from: &mut Reader,
    to: &mut Writer,
    counter: &AtomicU64,
    activity: &Activity,
) -> io::Result<()> {
    while let Some(chunk) = from.read().await? {
        let n = chunk.len();
        to.write(chunk).await?;
        from.release(n);
        counter.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
    }
    to.shutdown().await
}

/// When bytes last moved, for the idle timeout.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    async fn idle(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = last + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

#[cfg(test)]
mod tests;
