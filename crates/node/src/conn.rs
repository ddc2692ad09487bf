//! What the data path knows about one connection, in the shapes policy and telemetry take.

use std::error::Error;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_identity::SpiffeId;

use crate::state::{Service, Workload};
use crate::telemetry::{ConnectionInfo, Direction, PeerInfo, SecurityPolicy, ServiceInfo};

/// A connection arriving at a local workload, as authorization sees it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's verified SPIFFE id; `None` for plaintext from outside the mesh.
    pub src_identity: Option<SpiffeId>,
    /// The source address as the kernel saw it: the TCP peer (never a header's claim).
    pub src_ip: IpAddr,
    /// The destination address and port the connection asked for.
    pub dst: SocketAddr,
    /// The local workload owning `dst`.
    pub dst_workload: Arc<Workload>,
}

/// A workload as telemetry labels it.
pub(crate) fn peer_info(w: &Workload) -> PeerInfo {
    PeerInfo {
        workload: w.workload_name.clone(),
        namespace: w.namespace.clone(),
        identity: w.identity.to_string(),
        app: w.canonical_name.clone(),
        version: w.canonical_revision.clone(),
        cluster: w.cluster_id.clone(),
    }
}

/// A peer known only by identity.
pub(crate) fn identity_info(id: &SpiffeId) -> PeerInfo {
    PeerInfo {
        namespace: id.namespace().to_owned(),
        identity: id.to_string(),
        ..PeerInfo::default()
    }
}

pub(crate) fn service_info(s: &Service) -> ServiceInfo {
    ServiceInfo {
        hostname: s.hostname.clone(),
        name: s.name.clone(),
        namespace: s.namespace.clone(),
    }
}

/// A connection described by addresses only (refused before anything else was known).
pub(crate) fn bare_info(direction: Direction, src: SocketAddr, dst: SocketAddr) -> ConnectionInfo {
    ConnectionInfo {
        direction,
        src_addr: src,
        src: PeerInfo::default(),
        dst_addr: dst,
        dst_hbone_addr: None,
        dst_service: None,
        dst: PeerInfo::default(),
        security: SecurityPolicy::Unknown,
    }
}

/// `err` and its causes, `: `-separated, for logs.
pub(crate) fn error_chain(err: &dyn Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
