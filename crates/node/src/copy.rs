//! Moving bytes both ways between the two sides of a proxied connection.
//!
//! Each direction runs a read → write loop; both run concurrently on the connection's task.
//! When one side ends its stream (TCP FIN, or HTTP/2 END_STREAM) the other side's write half
//! is shut down, and the opposite direction keeps going until it ends too (half-close, as TCP
//! applications expect). An error in either direction ends both, and so does a connection idle
//! in both directions for the idle timeout.
//!
//! Memory: the copy lives as long as its connection, so it is one small hand-written state
//! machine ([`Copying`]) rather than nested `async` loops: both sides, each direction's state
//! (reading, writing a pending [`Bytes`], shutting down, done), the byte counters and one idle
//! timer, polled by hand. A TCP side is one unsplit [`TcpStream`] serving both directions (its
//! read and write readiness wake the task separately). A unit test bounds the whole future's
//! size.
//!
//! Buffers: a TCP side holds a [`BytesMut`] only while its socket has data. It waits for
//! readiness with no buffer, then takes one sized by recent reads (4 KiB at first, four times
//! larger after a read that filled it, up to 256 KiB; half after a read that used less than a
//! quarter of it), and lets it go as soon as the socket has nothing more to read, keeping only
//! the size. An idle connection therefore holds no read buffer at all. While data keeps
//! coming, a read fills the buffer's spare capacity and hands the filled part on as a [`Bytes`]
//! view of the same allocation; once the writer has dropped it, the next `reserve` reclaims
//! the space, so a steady connection does not allocate per read. (A view still queued inside
//! HTTP/2 when the buffer runs out forces a fresh allocation: memory is never shared with a
//! pending frame.)

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::hbone::stream::H2Stream;

/// Size of a socket's first read buffer, and the smallest one.
const MIN_BUFFER: usize = 4 * 1024;
/// The largest read buffer.
const MAX_BUFFER: usize = 256 * 1024;

/// One side of a proxied connection, both ways.
#[derive(Debug)]
pub(crate) enum Side {
    Tcp(TcpSide),
    H2(H2Stream),
}

/// A TCP connection that holds a read buffer only while its socket has data (see the
/// [module docs](self)).
#[derive(Debug)]
pub(crate) struct TcpSide {
    stream: TcpStream,
    /// The buffer being read into; `None` while the socket has nothing to read.
    buf: Option<BytesMut>,
    /// The capacity `buf` was allocated with.
    allocated: usize,
    /// The capacity of the next buffer, from recent reads.
    size: usize,
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

/// A TCP stream as a side of the copy.
pub(crate) fn tcp(stream: TcpStream) -> Side {
    Side::Tcp(TcpSide {
        stream,
        buf: None,
        allocated: 0,
        size: MIN_BUFFER,
    })
}

/// A tunnel as a side of the copy.
pub(crate) fn h2(stream: H2Stream) -> Side {
    Side::H2(stream)
}

/// Copies between `downstream` (the side that opened the connection) and `upstream` until both
/// directions have ended, one fails, or nothing moved for `idle`. Counts into `moved`.
pub(crate) fn bidirectional(
    downstream: Side,
    upstream: Side,
    idle: Duration,
    moved: &Transferred,
) -> impl Future<Output = Result<(), CopyError>> + '_ {
    // Built here and moved into the block, not passed to an `async fn`: a future keeps its
    // arguments apart from its locals, which would hold the sides twice.
    let mut copying = Copying::new(downstream, upstream, idle, moved);
    async move { copying.run().await }
}

// === impl Copying ===

/// Both sides of a connection and where each direction stands.
struct Copying<'a> {
    downstream: Side,
    upstream: Side,
    /// Downstream to upstream.
    request: State,
    /// Upstream to downstream.
    response: State,
    idle: Duration,
    /// When bytes last moved either way.
    last: Instant,
    moved: &'a Transferred,
    /// Which direction the last poll drove first.
    response_first: bool,
}

/// One of the two directions.
#[derive(Clone, Copy)]
enum Way {
    /// Downstream to upstream.
    Request,
    /// Upstream to downstream.
    Response,
}

/// Where one direction stands.
enum State {
    Reading,
    /// Read, not yet all written: what is left.
    Writing(Bytes),
    /// The source ended; the destination's write half is being shut down.
    ShuttingDown,
    Done,
}

impl<'a> Copying<'a> {
    fn new(downstream: Side, upstream: Side, idle: Duration, moved: &'a Transferred) -> Self {
        Self {
            downstream,
            upstream,
            request: State::Reading,
            response: State::Reading,
            idle,
            last: Instant::now(),
            moved,
            response_first: true,
        }
    }

    /// Runs the copy to its end. The timer lives in this future, pinned beside the state (a
    /// `Sleep` cannot move, and boxing it would cost an allocation per connection).
    async fn run(&mut self) -> Result<(), CopyError> {
        // Set once; moved forward only when it fires (bytes moving never touch the timer).
        let mut timer = pin!(tokio::time::sleep_until(self.last + self.idle));
        poll_fn(|cx| self.poll(cx, timer.as_mut())).await
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        timer: Pin<&mut Sleep>,
    ) -> Poll<Result<(), CopyError>> {
        let result = match self.poll_both(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => {
                ready!(self.poll_idle(cx, timer));
                Err(CopyError::Idle(self.idle))
            }
        };
        if result.is_err() {
            // Make the failure visible to an HBONE peer instead of a clean end of stream.
            self.downstream.reset();
            self.upstream.reset();
        }
        Poll::Ready(result)
    }

    /// Drives both directions: ready once both are done or one has failed.
    fn poll_both(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CopyError>> {
        // Take turns going first: a busy direction runs until the task's scheduling budget is
        // spent, and going first every time would starve the other.
        self.response_first = !self.response_first;
        let order = if self.response_first {
            [Way::Response, Way::Request]
        } else {
            [Way::Request, Way::Response]
        };
        let mut done = true;
        for way in order {
            match self.poll_way(cx, way) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => done = false,
            }
        }
        if done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn poll_way(&mut self, cx: &mut Context<'_>, way: Way) -> Poll<Result<(), CopyError>> {
        let (state, from, to, counter, direction) = match way {
            Way::Request => (
                &mut self.request,
                &mut self.downstream,
                &mut self.upstream,
                &self.moved.downstream_to_upstream,
                "downstream to upstream",
            ),
            Way::Response => (
                &mut self.response,
                &mut self.upstream,
                &mut self.downstream,
                &self.moved.upstream_to_downstream,
                "upstream to downstream",
            ),
        };
        one_way(cx, state, (from, to), counter, &mut self.last)
            .map_err(|source| CopyError::Io { direction, source })
    }

    /// Ready once nothing has moved for the idle timeout.
    fn poll_idle(&self, cx: &mut Context<'_>, mut timer: Pin<&mut Sleep>) -> Poll<()> {
        loop {
            ready!(timer.as_mut().poll(cx));
            let due = self.last + self.idle;
            if Instant::now() >= due {
                return Poll::Ready(());
            }
            timer.as_mut().reset(due);
        }
    }
}

/// Moves what `from` reads to `to` until `from` ends and `to` is shut down.
fn one_way(
    cx: &mut Context<'_>,
    state: &mut State,
    (from, to): (&mut Side, &mut Side),
    counter: &AtomicU64,
    last: &mut Instant,
) -> Poll<io::Result<()>> {
    loop {
        match state {
            State::Reading => {
                *state = match ready!(from.poll_read(cx))? {
                    Some(chunk) => State::Writing(chunk),
                    None => State::ShuttingDown,
                };
            }
            State::Writing(data) => {
                // Counted (and window given back) as each part goes, not once per chunk.
                let n = ready!(to.poll_write(cx, data))?;
                from.release(n);
                counter.fetch_add(n as u64, Ordering::Relaxed);
                *last = Instant::now();
                if data.is_empty() {
                    // Drops the view, so the reader's next `reserve` can reclaim its buffer.
                    *state = State::Reading;
                }
            }
            State::ShuttingDown => {
                ready!(to.poll_shutdown(cx))?;
                *state = State::Done;
            }
            State::Done => return Poll::Ready(Ok(())),
        }
    }
}

// === impl Side ===

impl Side {
    /// The next chunk read, `None` at the end of the stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        match self {
            Self::Tcp(tcp) => tcp.poll_read(cx),
            Self::H2(h2) => h2.reader.poll_read(cx),
        }
    }

    /// Tells the reading half that `n` bytes it read were written onward.
    fn release(&mut self, n: usize) {
        if let Self::H2(h2) = self {
            h2.reader.release(n);
        }
    }

    /// Writes the front of `data` and advances it past what went.
    fn poll_write(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<usize>> {
        match self {
            Self::Tcp(tcp) => {
                let n = ready!(Pin::new(&mut tcp.stream).poll_write(cx, data))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                data.advance(n);
                Poll::Ready(Ok(n))
            }
            Self::H2(h2) => h2.writer.poll_write(cx, data),
        }
    }

    /// Half-closes the writing half.
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            // A peer that already closed both ways leaves nothing to half-close.
            Self::Tcp(tcp) => match ready!(Pin::new(&mut tcp.stream).poll_shutdown(cx)) {
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
                other => Poll::Ready(other),
            },
            Self::H2(h2) => h2.writer.poll_shutdown(cx),
        }
    }

    /// Fails the side visibly where the protocol can (an HTTP/2 reset).
    fn reset(&mut self) {
        if let Self::H2(h2) = self {
            h2.writer.reset();
        }
    }

    /// The read buffer capacity this side holds right now (none for a tunnel, whose buffers
    /// belong to HTTP/2).
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

impl TcpSide {
    /// The next chunk read from the socket, `None` at its end.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            // Ready at once while the socket is known to have data (and keeps the task's
            // scheduling budget honest); the buffer was let go before any real wait.
            ready!(self.stream.poll_read_ready(cx))?;
            let buf = Self::room(&mut self.buf, &mut self.allocated, self.size);
            let room = buf.capacity() - buf.len();
            match self.stream.try_read_buf(buf) {
                Ok(0) => {
                    self.buf = None;
                    return Poll::Ready(Ok(None));
                }
                Ok(n) => {
                    let chunk = buf.split().freeze();
                    self.size = next_size(self.size, room, n);
                    return Poll::Ready(Ok(Some(chunk)));
                }
                // Ran dry (or the readiness was stale): hold nothing while waiting.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.buf = None,
                Err(e) => {
                    self.buf = None;
                    return Poll::Ready(Err(e));
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

#[cfg(test)]
mod tests;
