//! One HBONE tunnel: an HTTP/2 CONNECT stream as a reader and a writer of [`Bytes`].
//!
//! Flow control is respected both ways: the writer sends only as much as the peer's window
//! grants (`reserve_capacity` / `poll_capacity`), and the reader gives window back only after
//! the bytes it handed out were written onward ([`H2Reader::release`]), so a slow destination
//! slows its source instead of filling memory. Data moves as [`Bytes`] handles: what the copy
//! read is sent as DATA frames without another copy (`Bytes::slice` only moves pointers).
//!
//! The methods are poll-based so that the copy (`crate::copy`) can drive both halves from one
//! small hand-written state instead of holding an `async` future per operation.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};

/// What a tunnel holds for as long as it lives: the pool's claim on its connection's stream
/// slot, released on drop. Opaque here, so streams do not depend on the pool.
pub(crate) type Lease = Arc<dyn fmt::Debug + Send + Sync>;

/// The receiving half of a tunnel.
#[derive(Debug)]
pub(crate) struct H2Reader {
    recv: RecvStream,
}

/// The sending half of a tunnel.
#[derive(Debug)]
pub(crate) struct H2Writer {
    send: SendStream<Bytes>,
}

/// Both halves of one tunnel.
#[derive(Debug)]
pub(crate) struct H2Stream {
    pub(crate) reader: H2Reader,
    pub(crate) writer: H2Writer,
    _lease: Option<Lease>,
}

impl H2Stream {
    /// A tunnel over `send`/`recv`. `lease` is held until the tunnel is dropped (a pooled
    /// connection counts its streams with it).
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream, lease: Option<Lease>) -> Self {
        Self {
            reader: H2Reader { recv },
            writer: H2Writer { send },
            _lease: lease,
        }
    }
}

impl H2Reader {
    /// The next chunk of data, `None` at the end of the stream. A reset with `NO_ERROR` or
    /// `CANCEL` is the peer closing, read as the end.
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            return Poll::Ready(match ready!(self.recv.poll_data(cx)) {
                None => Ok(None),
                Some(Ok(chunk)) if chunk.is_empty() => {
                    if self.recv.is_end_stream() {
                        Ok(None)
                    } else {
                        continue;
                    }
                }
                Some(Ok(chunk)) => Ok(Some(chunk)),
                Some(Err(e)) => match e.reason() {
                    Some(Reason::NO_ERROR | Reason::CANCEL) => Ok(None),
                    _ => Err(h2_to_io(e)),
                },
            });
        }
    }

    /// Gives `n` bytes of window back to the peer, once they have been written onward.
    pub(crate) fn release(&mut self, n: usize) {
        // Fails only when the stream is gone, which the next read reports.
        let _ = self.recv.flow_control().release_capacity(n);
    }
}

impl H2Writer {
    /// Sends the front of `data`, as much as the peer's window grants (waiting for some), and
    /// returns how many bytes went; `data` keeps the rest.
    ///
    /// A failed send leaves `data` as it was, so polling again after `Pending` (while the
    /// peer's reset reason is awaited) repeats the same failure.
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        loop {
            self.send.reserve_capacity(data.len());
            let granted = match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => n.min(data.len()),
                Some(Err(e)) => return self.poll_reset_error(cx, e).map(Err),
                None => return self.poll_closed(cx).map(Err),
            };
            // A view of the front; `data` gives it up only once h2 has taken it.
            return match self.send.send_data(data.slice(..granted), false) {
                Ok(()) => {
                    data.advance(granted);
                    Poll::Ready(Ok(granted))
                }
                Err(e) => self.poll_reset_error(cx, e).map(Err),
            };
        }
    }

    /// Half-closes the tunnel: END_STREAM, the TCP FIN of HBONE.
    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.send.send_data(Bytes::new(), true) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => self.poll_reset_error(cx, e).map(Err),
        }
    }

    /// Resets the stream (the peer sees the tunnel fail rather than end).
    pub(crate) fn reset(&mut self) {
        self.send.send_reset(Reason::CANCEL);
    }

    /// The error to report after a failed send: the peer's reset reason if it sent one.
    fn poll_reset_error(&mut self, cx: &mut Context<'_>, e: h2::Error) -> Poll<io::Error> {
        if e.is_io() || e.is_go_away() {
            return Poll::Ready(h2_to_io(e));
        }
        self.poll_closed(cx)
    }

    fn poll_closed(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        Poll::Ready(match ready!(self.send.poll_reset(cx)) {
            Ok(Reason::NO_ERROR | Reason::CANCEL | Reason::STREAM_CLOSED) => {
                io::ErrorKind::BrokenPipe.into()
            }
            Ok(reason) => io::Error::other(h2::Error::from(reason)),
            Err(e) => h2_to_io(e),
        })
    }
}

/// An h2 error as an `io::Error`, keeping the underlying I/O error when there is one.
pub(crate) fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"))
    } else {
        io::Error::other(e)
    }
}
