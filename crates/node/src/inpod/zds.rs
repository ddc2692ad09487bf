//! The ZDS client: the node proxy's side of the capture agent's seqpacket socket.
//!
//! The agent listens; the proxy connects (retrying from 100 ms up to every 5 s while the socket
//! is absent, warning once per outage), sends `ZdsHello{V1}`, then answers every
//! `WorkloadRequest` datagram with exactly one `WorkloadResponse{Ack}`, in order:
//!
//! | request | effect | `Ack.error` |
//! |---|---|---|
//! | `AddWorkload{uid}` + one netns fd | serve the pod (same netns again: no-op; new netns: replace) | why binding failed |
//! | `KeepWorkload{uid}` | confirm a served pod during the replay | unknown uid |
//! | `DelWorkload{uid}` | stop serving the pod (unknown uid: nothing to do) | — |
//! | `SnapshotSent` | stop serving every pod not added or kept on this connection | — |
//!
//! A datagram that is not a valid request (undecodable, empty payload, wrong number of
//! descriptors, a descriptor that is not a network namespace) gets an `Ack` naming the
//! problem, and the stream goes on.
//!
//! Invariants:
//! - Losing the connection never stops a pod: pods keep being served until a later connection's
//!   `SnapshotSent` or `DelWorkload` says otherwise.
//! - Descriptors never leak: every one received is either owned by a served pod's `Netns` or
//!   closed before the request is answered.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use ambit_netns::seqpacket::SeqpacketStream;
use ambit_netns::{Netns, NetnsError};
use ambit_proto::zds::{
    Ack, AddWorkload, Version, WorkloadRequest, WorkloadResponse, ZdsHello, workload_request,
    workload_response,
};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::pods::{Added, InPod, PodError};
use crate::config::InPodConfig;
use crate::conn::error_chain;
use crate::proxy::inputs::Inputs;
use crate::state::PodInfo;

/// First wait before reconnecting; doubled after each failure up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A request is a uid and three names: far below this. Longer datagrams are refused whole.
const RECV_BUFFER: usize = 16 * 1024;

/// Why one request was refused: the text of its `Ack.error`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("unreadable ZDS datagram")]
    Datagram(#[source] io::Error),
    #[error("undecodable WorkloadRequest ({len} bytes)")]
    Decode {
        len: usize,
        #[source]
        source: prost::DecodeError,
    },
    #[error("a WorkloadRequest without a payload")]
    NoPayload,
    #[error("AddWorkload without a uid")]
    NoUid,
    #[error(
        "AddWorkload {uid:?} carries {count} file descriptors; expected exactly one, the pod's network namespace"
    )]
    Descriptors { uid: String, count: usize },
    #[error("AddWorkload {uid:?}")]
    Netns {
        uid: String,
        #[source]
        source: NetnsError,
    },
    #[error("{request} {uid:?}")]
    Pod {
        request: &'static str,
        uid: String,
        #[source]
        source: PodError,
    },
}

/// Why a ZDS connection ended other than by the agent closing it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
enum SessionError {
    #[error("cannot send to the capture agent")]
    Send(#[source] io::Error),
    #[error("cannot receive from the capture agent")]
    Recv(#[source] io::Error),
}

/// Starts the client; it runs until the proxy stops accepting.
pub(crate) fn spawn(inputs: Arc<Inputs>, pods: Arc<InPod>, config: InPodConfig) {
    let client = Client {
        inputs,
        pods,
        config,
    };
    tokio::spawn(client.run());
}

#[derive(Debug)]
struct Client {
    inputs: Arc<Inputs>,
    pods: Arc<InPod>,
    config: InPodConfig,
}

impl Client {
    /// Connects, serves the connection, and reconnects, until the proxy stops accepting.
    async fn run(self) {
        let stop = self.inputs.drain.stop_accepting.clone();
        let path = self.config.zds_socket.display().to_string();
        let mut backoff = BACKOFF_MIN;
        let mut warned = false;
        loop {
            let connected = tokio::select! {
                () = stop.cancelled() => break,
                connected = SeqpacketStream::connect(&self.config.zds_socket) => connected,
            };
            match connected {
                Ok(stream) => {
                    info!(%path, "connected to the capture agent (ZDS)");
                    let ended = self.session(&stream, &stop).await;
                    self.pods.set_connected(false);
                    if stop.is_cancelled() {
                        break;
                    }
                    match ended {
                        Ok(()) => info!(%path, "the capture agent closed ZDS; pods stay served"),
                        Err(e) => {
                            warn!(%path, error = error_chain(&e), "ZDS connection lost; pods stay served");
                        }
                    }
                    backoff = BACKOFF_MIN;
                    warned = false;
                }
                Err(e) if !warned => {
                    warn!(%path, error = %e, "cannot reach the capture agent (ZDS); retrying");
                    warned = true;
                }
                Err(e) => debug!(%path, error = %e, "capture agent still unreachable"),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        // The pods' listeners close with the proxy's drain; their connections drain with it.
        self.pods.set_connected(false);
    }

    /// Says hello, then answers requests until the agent closes or the proxy stops.
    async fn session(
        &self,
        stream: &SeqpacketStream,
        stop: &CancellationToken,
    ) -> Result<(), SessionError> {
        let hello = ZdsHello {
            version: Version::V1 as i32,
        };
        stream
            .send(&hello.encode_to_vec(), &[])
            .await
            .map_err(SessionError::Send)?;
        self.pods.set_connected(true);
        self.pods.begin_replay();
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            let received = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                received = stream.recv(&mut buf) => received,
            };
            let outcome = match received {
                Ok((0, fds)) if fds.is_empty() => return Ok(()),
                Ok((len, fds)) => self.handle(&buf[..len], fds).await,
                // Too long, or too many descriptors: the datagram was consumed whole (and its
                // descriptors closed), so it is answered like any bad request.
                Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(RequestError::Datagram(e)),
                Err(e) => return Err(SessionError::Recv(e)),
            };
            let error = match outcome {
                Ok(()) => String::new(),
                Err(e) => {
                    let error = error_chain(&e);
                    warn!(%error, "ZDS request refused");
                    error
                }
            };
            let ack = WorkloadResponse {
                payload: Some(workload_response::Payload::Ack(Ack { error })),
            };
            stream
                .send(&ack.encode_to_vec(), &[])
                .await
                .map_err(SessionError::Send)?;
        }
    }

    /// Decodes and carries out one request.
    async fn handle(&self, datagram: &[u8], fds: Vec<OwnedFd>) -> Result<(), RequestError> {
        match Request::decode(datagram, fds)? {
            Request::Add { uid, info, netns } => self.add(uid, info, netns).await,
            Request::Keep { uid } => {
                self.pods.keep(&uid).map_err(|source| RequestError::Pod {
                    request: "KeepWorkload",
                    uid: uid.clone(),
                    source,
                })?;
                debug!(%uid, "pod kept");
                Ok(())
            }
            Request::Del { uid } => {
                if !self.pods.remove(&self.inputs, &uid).await {
                    debug!(%uid, "DelWorkload for a pod not served: nothing to do");
                }
                Ok(())
            }
            Request::SnapshotSent => {
                let forgotten = self.pods.forget_unconfirmed(&self.inputs).await;
                info!(
                    forgotten,
                    served = self.pods.statuses().len(),
                    "ZDS snapshot complete"
                );
                Ok(())
            }
        }
    }

    async fn add(&self, uid: String, info: PodInfo, fd: OwnedFd) -> Result<(), RequestError> {
        let netns = Netns::from_fd(fd, &format!("the descriptor of AddWorkload {uid:?}")).map_err(
            |source| RequestError::Netns {
                uid: uid.clone(),
                source,
            },
        )?;
        let added = self
            .pods
            .add(&self.inputs, &self.config, &uid, info, netns)
            .await
            .map_err(|source| RequestError::Pod {
                request: "AddWorkload",
                uid: uid.clone(),
                source,
            })?;
        if added != Added::New {
            debug!(%uid, ?added, "pod added again");
        }
        Ok(())
    }
}

/// One valid request from the agent: a datagram decoded, with the descriptors it may carry.
#[derive(Debug)]
pub(crate) enum Request {
    /// `AddWorkload`: the pod and its network namespace (not yet checked to be one).
    Add {
        uid: String,
        info: PodInfo,
        netns: OwnedFd,
    },
    Keep {
        uid: String,
    },
    Del {
        uid: String,
    },
    SnapshotSent,
}

impl Request {
    /// Decodes one datagram. Descriptors on anything but `AddWorkload` are closed (and
    /// logged); an `AddWorkload` needs a uid and exactly one descriptor.
    pub(crate) fn decode(datagram: &[u8], fds: Vec<OwnedFd>) -> Result<Self, RequestError> {
        let request = WorkloadRequest::decode(datagram).map_err(|source| RequestError::Decode {
            len: datagram.len(),
            source,
        })?;
        let payload = request.payload.ok_or(RequestError::NoPayload)?;
        let request = match payload {
            workload_request::Payload::Add(add) => return Self::add(add, fds),
            workload_request::Payload::Keep(keep) => Self::Keep { uid: keep.uid },
            workload_request::Payload::Del(del) => Self::Del { uid: del.uid },
            workload_request::Payload::SnapshotSent(_) => Self::SnapshotSent,
        };
        if !fds.is_empty() {
            warn!(
                count = fds.len(),
                "descriptors on a ZDS request other than AddWorkload: closed"
            );
        }
        Ok(request)
    }

    fn add(add: AddWorkload, mut fds: Vec<OwnedFd>) -> Result<Self, RequestError> {
        let AddWorkload { uid, workload_info } = add;
        if uid.is_empty() {
            return Err(RequestError::NoUid);
        }
        let netns = match (fds.pop(), fds.len()) {
            (Some(fd), 0) => fd,
            (fd, rest) => {
                let count = rest + usize::from(fd.is_some());
                return Err(RequestError::Descriptors { uid, count });
            }
        };
        let info = workload_info
            .map(|w| PodInfo {
                name: w.name,
                namespace: w.namespace,
                service_account: w.service_account,
            })
            .unwrap_or_default();
        Ok(Self::Add { uid, info, netns })
    }
}
