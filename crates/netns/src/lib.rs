//! Linux network namespaces, and the Unix seqpacket transport ZDS runs on.
//!
//! The capture agent and the node proxy meet pods through their network namespaces: the agent
//! installs redirection rules inside one, hands it to the node proxy as a file descriptor
//! ([`seqpacket`], `SCM_RIGHTS`), and the node proxy opens the pod's listeners and upstream
//! sockets inside it.
//!
//! A [`Netns`] is an open namespace file (`/proc/<pid>/ns/net` or one passed over ZDS). Work is
//! done inside it by a worker thread that entered it once ([`Netns::run`]); only the `socket()`
//! call has to happen there: a socket stays in the namespace it was created in, whichever
//! thread binds, connects or polls it afterwards. Commands spawned through [`Netns::command`]
//! start inside the namespace, because a child inherits the namespaces of the thread that forks
//! it.
//!
//! Invariants:
//! - No thread of the caller's runtime ever changes namespace: only the namespace's own worker
//!   thread does, and it never leaves.
//! - A [`Netns`] keeps its namespace alive while any clone exists, even when every process
//!   in it is gone.

pub mod seqpacket;

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Output};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use rustix::fs::{FsWord, fstat, fstatfs};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

/// `NSFS_MAGIC`: the file system of namespace files.
const NSFS_MAGIC: FsWord = 0x6e73_6673;

/// Why a namespace could not be opened or entered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    #[error("cannot open the network namespace {path}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} is not a namespace file")]
    NotNamespace { what: String },
    #[error("cannot enter the network namespace (inode {inode})")]
    Enter {
        inode: u64,
        #[source]
        source: io::Error,
    },
    #[error("cannot create a network namespace")]
    Create(#[source] io::Error),
    #[error("the worker thread of network namespace {inode} is gone")]
    WorkerGone { inode: u64 },
}

/// An open network namespace. Cheap to clone; see the [crate docs](crate).
#[derive(Clone)]
pub struct Netns {
    inner: Arc<Inner>,
}

struct Inner {
    fd: OwnedFd,
    inode: u64,
    /// The worker thread living inside the namespace, started on first use.
    worker: Mutex<Option<mpsc::Sender<Job>>>,
}

type Job = Box<dyn FnOnce() + Send>;

impl Netns {
    /// The namespace the calling thread is in.
    pub fn current() -> Result<Self, NetnsError> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// Opens a namespace file such as `/proc/<pid>/ns/net` or `/var/run/netns/<name>`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_fd(file.into(), &path.display().to_string())
    }

    /// Takes ownership of a namespace descriptor (for example one received over ZDS), checking
    /// that it is one. `what` names it in the error.
    pub fn from_fd(fd: OwnedFd, what: &str) -> Result<Self, NetnsError> {
        let not_namespace = || NetnsError::NotNamespace {
            what: what.to_owned(),
        };
        let fs = fstatfs(&fd).map_err(|_| not_namespace())?;
        if fs.f_type as FsWord != NSFS_MAGIC {
            return Err(not_namespace());
        }
        let inode = fstat(&fd).map_err(|_| not_namespace())?.st_ino;
        Ok(Self {
            inner: Arc::new(Inner {
                fd,
                inode,
                worker: Mutex::new(None),
            }),
        })
    }

    /// Creates a new, empty network namespace (only a loopback interface, down). Needs
    /// `CAP_SYS_ADMIN` in the current user namespace: root, or inside `unshare --user`.
    pub fn create() -> Result<Self, NetnsError> {
        std::thread::spawn(|| {
            // Only the network namespace is unshared, and only for this short-lived thread,
            // which exits right after opening it: no other thread sees the change.
            #[allow(deprecated)]
            rustix::thread::unshare(rustix::thread::UnshareFlags::NEWNET)
                .map_err(|e| NetnsError::Create(e.into()))?;
            Self::current()
        })
        .join()
        .map_err(|_| NetnsError::Create(io::Error::other("the creating thread panicked")))?
    }

    /// The namespace's inode number: equal inodes mean the same namespace.
    pub fn inode(&self) -> u64 {
        self.inner.inode
    }

    /// Runs `f` on this namespace's worker thread, inside the namespace, and returns its
    /// result. Keep `f` short (create a socket, run a command): every caller shares the thread.
    pub fn run<R, F>(&self, f: F) -> Result<R, NetnsError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let gone = || NetnsError::WorkerGone {
            inode: self.inner.inode,
        };
        let (reply, result) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = reply.send(f());
        });
        self.worker()?.send(job).map_err(|_| gone())?;
        result.recv().map_err(|_| gone())
    }

    /// Like [`Netns::run`] for an io-returning closure, folding the errors into one.
    pub fn run_io<R, F>(&self, f: F) -> io::Result<R>
    where
        F: FnOnce() -> io::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.run(f).map_err(io::Error::other)?
    }

    /// Spawns `command` inside the namespace.
    pub fn spawn(&self, mut command: Command) -> io::Result<Child> {
        self.run_io(move || command.spawn())
    }

    /// Runs `command` inside the namespace to completion, collecting its output.
    pub fn output(&self, mut command: Command) -> io::Result<Output> {
        self.run_io(move || command.output())
    }

    /// The sender of the worker thread, starting it (and entering the namespace) on first use.
    fn worker(&self) -> Result<mpsc::Sender<Job>, NetnsError> {
        let mut worker = self
            .inner
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = worker.as_ref() {
            return Ok(sender.clone());
        }
        let fd = self
            .inner
            .fd
            .try_clone()
            .map_err(|source| NetnsError::Enter {
                inode: self.inner.inode,
                source,
            })?;
        let (entered_tx, entered_rx) = mpsc::sync_channel(1);
        let (sender, jobs) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(format!("netns-{}", self.inner.inode))
            .spawn(move || {
                let entered =
                    move_into_link_name_space(fd.as_fd(), Some(LinkNameSpaceType::Network));
                drop(fd);
                let ok = entered.is_ok();
                let _ = entered_tx.send(entered);
                if ok {
                    // Ends when every sender (every clone of the Netns) is gone.
                    for job in jobs {
                        job();
                    }
                }
            })
            .map_err(|source| NetnsError::Enter {
                inode: self.inner.inode,
                source,
            })?;
        let entered = entered_rx.recv().map_err(|_| NetnsError::WorkerGone {
            inode: self.inner.inode,
        })?;
        entered.map_err(|e| NetnsError::Enter {
            inode: self.inner.inode,
            source: e.into(),
        })?;
        *worker = Some(sender.clone());
        Ok(sender)
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.fd.as_fd()
    }
}

impl PartialEq for Netns {
    fn eq(&self, other: &Self) -> bool {
        self.inner.inode == other.inner.inode
    }
}

impl Eq for Netns {}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netns")
            .field("inode", &self.inner.inode)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
