//! Moving bytes both ways between the two sides of a proxied connection.
//!
//! Each direction runs a read → write loop; both run concurrently on the connection's task.
//! When one side ends its stream (TCP FIN, or HTTP/2 END_STREAM) the other side's write half
//! is shut down, and the opposite direction keeps going until it ends too (half-close, as TCP
//! applications expect). An error in either direction ends both, and so does a connection idle
//! in both directions for the idle timeout.
//!
//! Buffers: a TCP read half holds a [`BytesMut`] only while its socket has data. It waits for
//! readiness with no buffer, then takes one sized by recent reads (4 KiB at first, four times
//! larger after a read that filled it, up to 256 KiB; half after a read that used less than a
//! quarter of it), and lets it go as soon as the socket has nothing more to read, keeping only
//! the size. An idle connection therefore holds no read buffer at all. While data keeps
//! coming, a read fills the buffer's spare capacity and hands the filled part on as a [`Bytes`]
//! view of the same allocation; once the writer has dropped it, the next `reserve` reclaims
//! the space, so a steady connection does not allocate per read. (A view still queued inside
//! HTTP/2 when the buffer runs out forces a fresh allocation: memory is never shared with a
//! pending frame.)

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use crate::hbone::stream::{H2Reader, H2Stream, H2Writer};

/// Size of a socket's first read buffer, and the smallest one.
const MIN_BUFFER: usize = 4 * 1024;
/// The largest read buffer.
const MAX_BUFFER: usize = 256 * 1024;

/// One side of a proxied connection, read half.
#[derive(Debug)]
pub(crate) enum Reader {
    Tcp(TcpReader),
    H2(H2Reader),
}

/// A TCP read half that holds a buffer only while its socket has data (see the
/// [module docs](self)).
#[derive(Debug)]
pub(crate) struct TcpReader {
    half: OwnedReadHalf,
    /// The buffer being read into; `None` while the socket has nothing to read.
    buf: Option<BytesMut>,
    /// The capacity `buf` was allocated with.
    allocated: usize,
    /// The capacity of the next buffer, from recent reads.
    size: usize,
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
        Self::Tcp(TcpReader {
            half,
            buf: None,
            allocated: 0,
            size: MIN_BUFFER,
        })
    }

    async fn read(&mut self) -> io::Result<Option<Bytes>> {
        match self {
            Self::Tcp(tcp) => tcp.read().await,
            Self::H2(reader) => reader.read().await,
        }
    }

    fn release(&mut self, n: usize) {
        if let Self::H2(reader) = self {
            reader.release(n);
        }
    }

    /// The read buffer capacity this reader holds right now (none for a tunnel's, whose
    /// buffers belong to HTTP/2).
    #[cfg(test)]
    pub(crate) fn held_capacity(&self) -> usize {
        match self {
            Self::Tcp(tcp) => tcp.buf.as_ref().map_or(0, BytesMut::capacity),
            Self::H2(_) => 0,
        }
    }

    /// The capacity the next TCP read buffer will get.
    #[cfg(test)]
    pub(crate) fn next_buffer_size(&self) -> Option<usize> {
        match self {
            Self::Tcp(tcp) => Some(tcp.size),
            Self::H2(_) => None,
        }
    }
}

impl TcpReader {
    /// The next chunk read from the socket, `None` at its end.
    async fn read(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            // Returns at once while the socket is known to have data (and keeps the task's
            // scheduling budget honest); the buffer was let go before any real wait.
            self.half.readable().await?;
            let buf = Self::room(&mut self.buf, &mut self.allocated, self.size);
            let room = buf.capacity() - buf.len();
            match self.half.try_read_buf(buf) {
                Ok(0) => {
                    self.buf = None;
                    return Ok(None);
                }
                Ok(n) => {
                    let chunk = buf.split().freeze();
                    self.size = next_size(self.size, room, n);
                    return Ok(Some(chunk));
                }
                // Ran dry (or the readiness was stale): hold nothing while waiting.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.buf = None,
                Err(e) => {
                    self.buf = None;
                    return Err(e);
                }
            }
        }
    }

    /// A buffer with room for at least half of `size`: the current one, reclaimed or renewed
    /// in place while `size` has not changed, else a fresh one of `size`.
    fn room<'a>(
        buf: &'a mut Option<BytesMut>,
        allocated: &mut usize,
        size: usize,
    ) -> &'a mut BytesMut {
        match buf {
            Some(b) if b.capacity() - b.len() >= size / 2 => {}
            Some(b) if *allocated == size => b.reserve(size),
            _ => {
                *buf = Some(BytesMut::with_capacity(size));
                *allocated = size;
            }
        }
        // Always `Some` by now; this only proves it to the compiler.
        buf.get_or_insert_with(|| BytesMut::with_capacity(size))
    }
}

/// The next buffer size after a read of `n` bytes into `room` bytes of a `size` buffer: four
/// times larger if the read filled it, half if it used less than a quarter, within
/// [`MIN_BUFFER`]..=[`MAX_BUFFER`].
fn next_size(size: usize, room: usize, n: usize) -> usize {
    if n >= room {
        (size * 4).min(MAX_BUFFER)
    } else if n < room / 4 {
        (size / 2).max(MIN_BUFFER)
    } else {
        size
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
