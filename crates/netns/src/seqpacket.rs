//! Unix seqpacket sockets with file-descriptor passing: the transport of ZDS.
//!
//! Each [`SeqpacketStream::send`] is one datagram, delivered whole or not at all, optionally
//! with file descriptors as `SCM_RIGHTS`; [`SeqpacketStream::recv`] returns one datagram and the
//! descriptors that rode with it. A datagram longer than the receive buffer, or carrying more
//! descriptors than [`MAX_FDS`], is an error (never silently cut short), and any descriptor
//! received with it is closed.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Most descriptors one datagram may carry.
pub const MAX_FDS: usize = 4;

/// A listening seqpacket socket bound to a path. The path is removed again on drop.
#[derive(Debug)]
pub struct SeqpacketListener {
    fd: AsyncFd<OwnedFd>,
    path: PathBuf,
}

/// One connected seqpacket socket.
#[derive(Debug)]
pub struct SeqpacketStream {
    fd: AsyncFd<OwnedFd>,
}

impl SeqpacketListener {
    /// Binds `path`, replacing a stale socket file left by an earlier process.
    pub fn bind(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let fd = socket()?;
        rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
        rustix::net::listen(&fd, 16)?;
        Ok(Self {
            fd: register(fd)?,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<SeqpacketStream> {
        let fd = self
            .fd
            .async_io(Interest::READABLE, |fd| {
                rustix::net::accept_with(fd, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)
                    .map_err(io::Error::from)
            })
            .await?;
        Ok(SeqpacketStream { fd: register(fd)? })
    }
}

impl Drop for SeqpacketListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl SeqpacketStream {
    /// Connects to the listener at `path`.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<Self> {
        let fd = socket()?;
        let addr = SocketAddrUnix::new(path.as_ref())?;
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => {}
            Err(rustix::io::Errno::INPROGRESS | rustix::io::Errno::AGAIN) => {}
            Err(e) => return Err(e.into()),
        }
        let fd = register(fd)?;
        // A Unix connect completes at once unless the backlog is full; then wait for it.
        let _ = fd.writable().await?;
        if let Some(e) = rustix::net::sockopt::socket_error(fd.get_ref())?.err() {
            return Err(e.into());
        }
        Ok(Self { fd })
    }

    /// A connected pair, for tests and in-process wiring.
    pub fn pair() -> io::Result<(Self, Self)> {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((Self { fd: register(a)? }, Self { fd: register(b)? }))
    }

    /// Sends `data` as one datagram with `fds` attached.
    pub async fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} descriptors, at most {MAX_FDS} per datagram", fds.len()),
            ));
        }
        let sent = self
            .fd
            .async_io(Interest::WRITABLE, |fd| {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !fds.is_empty() {
                    control.push(SendAncillaryMessage::ScmRights(fds));
                }
                rustix::net::sendmsg(fd, &[IoSlice::new(data)], &mut control, SendFlags::NOSIGNAL)
                    .map_err(io::Error::from)
            })
            .await?;
        if sent != data.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes of a datagram", data.len()),
            ));
        }
        Ok(())
    }

    /// Receives one datagram into `buf`: its length and the descriptors it carried. A length
    /// of 0 with no descriptors means the peer closed the connection.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        self.fd
            .async_io(Interest::READABLE, |fd| recv_now(fd, buf))
            .await
    }
}

fn recv_now(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let len = buf.len();
    let msg = rustix::net::recvmsg(
        fd,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg.flags.contains(ReturnFlags::TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a datagram longer than the {len}-byte receive buffer"),
        ));
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a datagram carrying more than {MAX_FDS} descriptors"),
        ));
    }
    Ok((msg.bytes, fds))
}

/// Registers `fd` with the runtime's reactor.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // `AsyncFd::new` is deprecated because a generic `T` may close or swap its descriptor while
    // registered. An `OwnedFd` cannot: it owns one descriptor from creation to drop, which is
    // exactly the contract the deprecation asks for.
    #[allow(deprecated)]
    AsyncFd::new(fd)
}

fn socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?)
}

impl AsFd for SeqpacketStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}
