//! The channel from the CNI plugin to the capture agent.
//!
//! A Unix stream socket (default `/var/run/istio-cni/pluginevent.sock`, the agent binds it). The
//! plugin opens one connection per event and writes one [`PodEvent`] as a line of JSON; the
//! agent answers with one line of JSON and closes:
//!
//! ```text
//! → {"command":"ADD","container_id":"…","netns":"/proc/42/ns/net","pod_namespace":"default",
//!    "pod_name":"web-0","pod_uid":"…","ips":["10.244.1.7"]}
//! ← {"result":"ok"}
//! ← {"result":"error","reason":"pod default/web-0: cannot open its network namespace"}
//! ```
//!
//! Invariants of [`EventServer`]: every connection is served on its own task, so a slow or
//! malformed client never holds up another; a request is at most [`MAX_REQUEST_BYTES`]; a bad
//! request gets an error reply and never stops the server; each exchange is bounded by the
//! request timeout, and the handler runs on its own task so that a client giving up never
//! cancels it half-way.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// The largest request the agent reads; a pod event is a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How long the agent gives one exchange (read, handle, reply) unless told otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest reply the plugin reads.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Which CNI command the runtime ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PodCommand {
    Add,
    Del,
    Check,
}

/// A Kubernetes pod the runtime is adding, deleting or checking, as the plugin reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEvent {
    pub command: PodCommand,
    /// `CNI_CONTAINERID`: the pod sandbox's id.
    pub container_id: String,
    /// `CNI_NETNS`: the pod's network namespace; DEL may come without one.
    pub netns: Option<PathBuf>,
    pub pod_namespace: String,
    pub pod_name: String,
    /// `K8S_POD_UID`, when the runtime passed it.
    pub pod_uid: Option<String>,
    /// The pod's addresses, from the previous plugin's result.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

/// What the agent does with a pod event. `Err(reason)` refuses it: the plugin fails the CNI
/// command with that reason, so the runtime does not start the pod.
///
/// The method returns `impl Future` rather than a boxed future: [`EventServer::serve`] is generic
/// over the handler, so no trait object is needed. A caller that wants one can wrap a
/// `Box<dyn Fn(PodEvent) -> Pin<Box<dyn Future<..> + Send>>>` in a small struct implementing this.
pub trait PodEventHandler: Send + Sync + 'static {
    fn handle(&self, event: PodEvent) -> impl Future<Output = Result<(), String>> + Send;
}

/// The agent's answer to one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
enum Reply {
    Ok,
    Error { reason: String },
}

/// Why the plugin could not deliver an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Nothing accepts connections at the socket (agent not running, or not yet listening).
    #[error("the capture agent is unreachable at {}", path.display())]
    Unreachable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The agent accepted the connection but did not answer in time.
    #[error("the capture agent did not answer within {0:?}")]
    TimedOut(Duration),
    /// The connection broke before the agent answered.
    #[error("the connection to the capture agent broke before it answered")]
    Connection(#[source] io::Error),
    /// The event cannot be written as JSON (a network namespace path that is not UTF-8).
    #[error("the pod event cannot be encoded")]
    Encode(#[source] serde_json::Error),
    /// The agent answered with something that is not a reply.
    #[error("the capture agent's reply is unreadable")]
    BadReply(#[source] serde_json::Error),
    /// The agent answered and refused the event.
    #[error("the capture agent refused: {reason}")]
    Refused { reason: String },
}

/// Delivers `event` to the agent at `path` and waits for its answer, all within `timeout`.
pub async fn send_event(path: &Path, event: &PodEvent, timeout: Duration) -> Result<(), SendError> {
    let exchange = async {
        let mut stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| SendError::Unreachable {
                    path: path.to_owned(),
                    source,
                })?;
        let mut request = serde_json::to_vec(event).map_err(SendError::Encode)?;
        request.push(b'\n');
        stream
            .write_all(&request)
            .await
            .map_err(SendError::Connection)?;
        let line = read_line(&mut stream, MAX_REPLY_BYTES)
            .await
            .map_err(SendError::Connection)?;
        if line.is_empty() {
            return Err(SendError::Connection(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the agent closed the connection without a reply",
            )));
        }
        match serde_json::from_slice(&line).map_err(SendError::BadReply)? {
            Reply::Ok => Ok(()),
            Reply::Error { reason } => Err(SendError::Refused { reason }),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(SendError::TimedOut(timeout)))
}

/// The agent's end of the channel: a bound socket, served by [`EventServer::serve`].
#[derive(Debug)]
pub struct EventServer {
    listener: UnixListener,
    path: PathBuf,
    request_timeout: Duration,
}

impl EventServer {
    /// Binds the socket at `path`, creating its directory. A socket file left by an agent that
    /// is gone is replaced; one with a live listener is not (`AddrInUse`). The socket is made
    /// accessible to its owner only: the plugin runs as root, like the agent.
    ///
    /// Must be called within a Tokio runtime, like [`UnixListener::bind`].
    pub fn bind(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        remove_stale_socket(path)?;
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// Bounds each exchange (reading the request, the handler, writing the reply).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves events until the returned future is dropped. Accept errors (such as running out
    /// of descriptors) are logged and retried after a pause; they never end the server.
    pub async fn serve<H: PodEventHandler>(self, handler: Arc<H>) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let handler = Arc::clone(&handler);
                    tokio::spawn(serve_connection(stream, handler, self.request_timeout));
                }
                Err(error) => {
                    tracing::warn!(%error, path = %self.path.display(), "cannot accept a plugin connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn serve_connection<H: PodEventHandler>(
    mut stream: UnixStream,
    handler: Arc<H>,
    timeout: Duration,
) {
    let reply = match tokio::time::timeout(timeout, exchange(&mut stream, handler)).await {
        Ok(reply) => reply,
        Err(_) => Reply::Error {
            reason: format!("the agent did not finish within {timeout:?}"),
        },
    };
    if let Reply::Error { reason } = &reply {
        tracing::warn!(%reason, "plugin event not accepted");
    }
    let Ok(mut line) = serde_json::to_vec(&reply) else {
        return; // a two-variant enum of strings always serializes
    };
    line.push(b'\n');
    // The client may be gone already; there is no one left to tell.
    let _ = tokio::time::timeout(timeout, async {
        stream.write_all(&line).await?;
        stream.shutdown().await
    })
    .await;
}

/// Reads one request and runs the handler on it.
async fn exchange<H: PodEventHandler>(stream: &mut UnixStream, handler: Arc<H>) -> Reply {
    let line = match read_line(stream, MAX_REQUEST_BYTES).await {
        Ok(line) => line,
        Err(error) => {
            return Reply::Error {
                reason: format!("cannot read the request: {error}"),
            };
        }
    };
    let event: PodEvent = match serde_json::from_slice(&line) {
        Ok(event) => event,
        Err(error) => {
            return Reply::Error {
                reason: format!("malformed request: {error}"),
            };
        }
    };
    tracing::debug!(?event, "plugin event");
    // On its own task: if this exchange times out, the handler still runs to completion
    // instead of being cancelled half-way through setting up a pod.
    let handled = tokio::spawn(async move { handler.handle(event).await });
    match handled.await {
        Ok(Ok(())) => Reply::Ok,
        Ok(Err(reason)) => Reply::Error { reason },
        Err(error) => Reply::Error {
            reason: format!("the agent's handler failed: {error}"),
        },
    }
}

/// Reads up to the first newline (or the end of the stream), at most `max` bytes. The newline
/// is not returned; an empty result means the peer sent nothing.
async fn read_line(stream: &mut UnixStream, max: usize) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    BufReader::new(stream.take(limit))
        .read_until(b'\n', &mut line)
        .await?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the message is larger than {max} bytes"),
        ));
    }
    Ok(line)
}

/// Removes a socket file nobody listens on any more; leaves anything else alone.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("an agent already listens at {}", path.display()),
                ));
            }
            std::fs::remove_file(path)
        }
        // Not a socket: let bind report the conflict.
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}
