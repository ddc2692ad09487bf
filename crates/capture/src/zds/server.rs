//! The ZDS server task: accepts node proxy connections, replays, and carries requests.
//!
//! One task owns the listener, the active connection and the writes to the registry; see the
//! [parent module](super) for the protocol and its invariants.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex, PoisonError};

use ambit_netns::seqpacket::{SeqpacketListener, SeqpacketStream};
use ambit_proto::zds::{
    AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, Version, WorkloadInfo, WorkloadRequest,
    WorkloadResponse, ZdsHello, workload_request, workload_response,
};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{AckState, Op, Registered, Registry, ZdsConfig, ZdsError, ZdsPod};

/// Room for any message the node proxy sends (hellos and acks are a few bytes; an ack's error
/// text is short).
const RECV_BUFFER: usize = 16 * 1024;

pub(super) struct Server {
    config: ZdsConfig,
    listener: SeqpacketListener,
    registry: Arc<Mutex<Registry>>,
    connected: watch::Sender<bool>,
    conn: Option<SeqpacketStream>,
}

impl Server {
    pub(super) fn new(
        config: ZdsConfig,
        listener: SeqpacketListener,
        registry: Arc<Mutex<Registry>>,
        connected: watch::Sender<bool>,
    ) -> Self {
        Self {
            config,
            listener,
            registry,
            connected,
            conn: None,
        }
    }

    /// Serves until told to stop or every handle is gone.
    pub(super) async fn run(mut self, mut ops: mpsc::UnboundedReceiver<Op>) {
        info!(path = %self.config.path.display(), "ZDS: waiting for the node proxy");
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(stream) => self.on_connection(stream).await,
                    Err(e) => {
                        warn!(error = %e, "ZDS: accept failed");
                        // Accept errors (fd exhaustion) tend to repeat; do not spin on them.
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                op = ops.recv() => match op {
                    None | Some(Op::Shutdown) => break,
                    Some(Op::Add(pod, reply)) => {
                        let _ = reply.send(self.add(pod).await);
                    }
                    Some(Op::Del(uid, reply)) => {
                        let _ = reply.send(self.del(uid).await);
                    }
                },
                reason = idle(self.conn.as_ref()) => self.disconnect(&reason),
            }
        }
        self.disconnect("the agent is stopping");
    }

    async fn on_connection(&mut self, stream: SeqpacketStream) {
        match tokio::time::timeout(self.config.hello_timeout, read_hello(&stream)).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                warn!(%reason, "ZDS: closing a connection that did not start with ZdsHello");
                return;
            }
            Err(_) => {
                warn!(
                    timeout = ?self.config.hello_timeout,
                    "ZDS: closing a connection that sent no ZdsHello"
                );
                return;
            }
        }
        if self.conn.is_some() {
            self.disconnect("a new node proxy connection replaces it");
        }
        info!("ZDS: node proxy connected; replaying captured pods");
        self.conn = Some(stream);
        self.replay().await;
    }

    /// Sends every registered pod, then `SnapshotSent`.
    async fn replay(&mut self) {
        let pods: Vec<ZdsPod> = self
            .registry()
            .pods
            .values()
            .map(|r| r.pod.clone())
            .collect();
        let count = pods.len();
        for pod in pods {
            let (request, fd, what) = match &pod.netns {
                Some(netns) => (add_request(&pod), Some(netns.as_fd()), "AddWorkload"),
                None => (keep_request(&pod), None, "KeepWorkload"),
            };
            let what = format!("{what} for pod {}/{}", pod.namespace, pod.name);
            match self.request(&request, fd, &what).await {
                Ok(()) => self.set_ack(&pod.uid, AckState::Acked),
                Err(ZdsError::Rejected { error, .. }) => {
                    warn!(pod = %format!("{}/{}", pod.namespace, pod.name), %error, "ZDS: the node proxy rejected a replayed pod");
                    self.set_ack(&pod.uid, AckState::Rejected(error));
                }
                // The connection is gone: the next one gets the whole replay.
                Err(_) => return,
            }
        }
        let snapshot = WorkloadRequest {
            payload: Some(workload_request::Payload::SnapshotSent(SnapshotSent {})),
        };
        match self.request(&snapshot, None, "SnapshotSent").await {
            Ok(()) | Err(ZdsError::Rejected { .. }) => {
                info!(pods = count, "ZDS: snapshot sent");
                self.connected.send_replace(true);
            }
            Err(_) => {}
        }
    }

    async fn add(&mut self, pod: ZdsPod) -> Result<(), ZdsError> {
        let uid = pod.uid.clone();
        let request = add_request(&pod);
        let what = format!("AddWorkload for pod {}/{}", pod.namespace, pod.name);
        let netns = pod.netns.clone();
        self.registry().pods.insert(
            uid.clone(),
            Registered {
                pod,
                ack: AckState::Pending,
            },
        );
        if self.conn.is_none() {
            return Err(ZdsError::NotConnected);
        }
        // KeepWorkload is only meaningful inside a replay: a pod without a netns waits for one.
        let Some(netns) = netns else { return Ok(()) };
        let result = self.request(&request, Some(netns.as_fd()), &what).await;
        match &result {
            Ok(()) => self.set_ack(&uid, AckState::Acked),
            Err(ZdsError::Rejected { error, .. }) => {
                self.set_ack(&uid, AckState::Rejected(error.clone()))
            }
            Err(_) => {}
        }
        result
    }

    async fn del(&mut self, uid: String) -> Result<(), ZdsError> {
        let Some(registered) = self.registry().pods.remove(&uid) else {
            return Ok(());
        };
        if self.conn.is_none() {
            return Ok(());
        }
        let pod = &registered.pod;
        let request = WorkloadRequest {
            payload: Some(workload_request::Payload::Del(DelWorkload { uid })),
        };
        let what = format!("DelWorkload for pod {}/{}", pod.namespace, pod.name);
        self.request(&request, None, &what).await
    }

    /// Sends one request on the active connection and waits for its `Ack`. Anything but an
    /// `Ack` in time ends the connection.
    async fn request(
        &mut self,
        request: &WorkloadRequest,
        fd: Option<BorrowedFd<'_>>,
        what: &str,
    ) -> Result<(), ZdsError> {
        let Some(conn) = &self.conn else {
            return Err(ZdsError::NotConnected);
        };
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        let exchange = async {
            conn.send(&request.encode_to_vec(), &fds).await?;
            let mut buf = vec![0; RECV_BUFFER];
            // Descriptors the node proxy should not have sent are closed on drop.
            let (len, _fds) = conn.recv(&mut buf).await?;
            if len == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the node proxy closed the connection",
                ));
            }
            Ok(decode_reply(&buf[..len]))
        };
        let io_error = |source| ZdsError::Io {
            what: what.to_owned(),
            source,
        };
        let result = match tokio::time::timeout(self.config.ack_timeout, exchange).await {
            Err(_) => Err(ZdsError::Timeout {
                what: what.to_owned(),
                timeout: self.config.ack_timeout,
            }),
            Ok(Err(e)) => Err(io_error(e)),
            Ok(Ok(Reply::Acked)) => {
                debug!(what, "ZDS: acknowledged");
                return Ok(());
            }
            Ok(Ok(Reply::Rejected(error))) => Err(ZdsError::Rejected {
                what: what.to_owned(),
                error,
            }),
            Ok(Ok(Reply::NotAnAck)) => Err(ZdsError::Protocol {
                what: what.to_owned(),
            }),
        };
        if let Err(e) = &result {
            self.disconnect(&e.to_string());
        }
        result
    }

    fn disconnect(&mut self, reason: &str) {
        if self.conn.take().is_some() {
            warn!(reason, "ZDS: node proxy connection closed");
        }
        self.connected.send_replace(false);
    }

    fn set_ack(&self, uid: &str, ack: AckState) {
        if let Some(registered) = self.registry().pods.get_mut(uid) {
            registered.ack = ack;
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads the first datagram of a connection; it must be `ZdsHello{V1}`.
async fn read_hello(stream: &SeqpacketStream) -> Result<(), String> {
    let mut buf = vec![0; RECV_BUFFER];
    let (len, fds) = stream.recv(&mut buf).await.map_err(|e| e.to_string())?;
    if len == 0 && fds.is_empty() {
        return Err("the peer closed the connection".into());
    }
    if !fds.is_empty() {
        return Err(format!(
            "the first message carried {} descriptors",
            fds.len()
        ));
    }
    decode_hello(&buf[..len])
}

/// Whether the first datagram is `ZdsHello{V1}`, or why not.
pub(crate) fn decode_hello(datagram: &[u8]) -> Result<(), String> {
    let hello = ZdsHello::decode(datagram).map_err(|e| format!("not a ZdsHello: {e}"))?;
    if hello.version != Version::V1 as i32 {
        return Err(format!("unsupported ZDS version {}", hello.version));
    }
    Ok(())
}

/// What the node proxy answered to a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    Acked,
    /// `Ack` with this error.
    Rejected(String),
    /// Anything but an `Ack`, or no valid message at all.
    NotAnAck,
}

pub(crate) fn decode_reply(datagram: &[u8]) -> Reply {
    match WorkloadResponse::decode(datagram) {
        Ok(WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(ack)),
        }) if ack.error.is_empty() => Reply::Acked,
        Ok(WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(ack)),
        }) => Reply::Rejected(ack.error),
        _ => Reply::NotAnAck,
    }
}

/// Resolves when the idle connection closes or says something unasked; never without one.
async fn idle(conn: Option<&SeqpacketStream>) -> String {
    let Some(conn) = conn else {
        return std::future::pending().await;
    };
    let mut buf = vec![0; RECV_BUFFER];
    match conn.recv(&mut buf).await {
        Ok((0, fds)) if fds.is_empty() => "the node proxy closed the connection".into(),
        Ok(_) => "the node proxy sent a message nobody asked for".into(),
        Err(e) => format!("receive failed: {e}"),
    }
}

fn add_request(pod: &ZdsPod) -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(workload_request::Payload::Add(AddWorkload {
            uid: pod.uid.clone(),
            workload_info: Some(WorkloadInfo {
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                service_account: pod.service_account.clone(),
                windows_namespace: None,
            }),
        })),
    }
}

fn keep_request(pod: &ZdsPod) -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(workload_request::Payload::Keep(KeepWorkload {
            uid: pod.uid.clone(),
        })),
    }
}
