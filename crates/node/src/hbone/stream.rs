//! One HBONE tunnel: an HTTP/2 CONNECT stream as a reader and a writer of [`Bytes`].
//!
//! Flow control is respected both ways: the writer sends only as much as the peer's window
//! grants (`reserve_capacity` / `poll_capacity`), and the reader gives window back only after
//! the bytes it handed out were written onward ([`H2Reader::release`]), so a slow destination
//! slows its source instead of filling memory. Data moves as [`Bytes`] handles: what the copy
//! read is sent as DATA frames without another copy (`Bytes::split_to` only moves pointers).

use std::future::poll_fn;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};

use super::pool::StreamLease;

/// The receiving half of a tunnel.
#[derive(Debug)]
pub(crate) struct H2Reader {
    recv: RecvStream,
    _lease: Option<Arc<StreamLease>>,
}

/// The sending half of a tunnel.
#[derive(Debug)]
pub(crate) struct H2Writer {
    send: SendStream<Bytes>,
    _lease: Option<Arc<StreamLease>>,
}

/// Both halves of one tunnel.
#[derive(Debug)]
pub(crate) struct H2Stream {
    pub(crate) reader: H2Reader,
    pub(crate) writer: H2Writer,
}

impl H2Stream {
    /// A tunnel over `send`/`recv`. `lease` is held until both halves are dropped (a pooled
    /// connection counts its streams with it).
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        lease: Option<Arc<StreamLease>>,
    ) -> Self {
        Self {
            reader: H2Reader {
                recv,
                _lease: lease.clone(),
            },
            writer: H2Writer {
                send,
                _lease: lease,
            },
        }
    }
}

impl H2Reader {
    /// The next chunk of data, `None` at the end of the stream. A reset with `NO_ERROR` or
    /// `CANCEL` is the peer closing, read as the end.
    pub(crate) async fn read(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            match self.recv.data().await {
                None => return Ok(None),
                Some(Ok(chunk)) if chunk.is_empty() => {
                    if self.recv.is_end_stream() {
                        return Ok(None);
                    }
                }
                Some(Ok(chunk)) => return Ok(Some(chunk)),
                Some(Err(e)) => {
                    return match e.reason() {
                        Some(Reason::NO_ERROR | Reason::CANCEL) => Ok(None),
                        _ => Err(h2_to_io(e)),
                    };
                }
            }
        }
    }

    /// Gives `n` bytes of window back to the peer, once they have been written onward.
    pub(crate) fn release(&mut self, n: usize) {
        // Fails only when the stream is gone, which the next read reports.
        let _ = self.recv.flow_control().release_capacity(n);
    }
}

impl H2Writer {
    /// Sends `data`, waiting for window as needed.
    pub(crate) async fn write(&mut self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            self.send.reserve_capacity(data.len());
            let granted = match poll_fn(|cx| self.send.poll_capacity(cx)).await {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(self.reset_error(e).await),
                None => return Err(self.closed().await),
            };
            let chunk = data.split_to(granted.min(data.len()));
            if let Err(e) = self.send.send_data(chunk, false) {
                return Err(self.reset_error(e).await);
            }
        }
        Ok(())
    }

    /// Half-closes the tunnel: END_STREAM, the TCP FIN of HBONE.
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        match self.send.send_data(Bytes::new(), true) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.reset_error(e).await),
        }
    }

    /// Resets the stream (the peer sees the tunnel fail rather than end).
    pub(crate) fn reset(&mut self) {
        self.send.send_reset(Reason::CANCEL);
    }

    /// The error to report after a failed send: the peer's reset reason if it sent one.
    async fn reset_error(&mut self, e: h2::Error) -> io::Error {
        if e.is_io() || e.is_go_away() {
            return h2_to_io(e);
        }
        self.closed().await
    }

    async fn closed(&mut self) -> io::Error {
        match poll_fn(|cx| self.send.poll_reset(cx)).await {
            Ok(Reason::NO_ERROR | Reason::CANCEL | Reason::STREAM_CLOSED) => {
                io::ErrorKind::BrokenPipe.into()
            }
            Ok(reason) => io::Error::other(h2::Error::from(reason)),
            Err(e) => h2_to_io(e),
        }
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
