//! The outbound path: a local workload's connection to wherever it was going.
//!
//! 1. The source is the pod whose namespace the connection came from (in-pod mode, as the
//!    capture agent named it over ZDS; its source address is never consulted), or in shared
//!    mode the local workload owning the connection's source address. Without one the
//!    connection is refused: an unknown source has no identity to speak with.
//! 2. The original destination is resolved: a workload address, a service VIP (one healthy
//!    endpoint, service port mapped to its target port), or unknown (after a short on-demand
//!    WDS lookup).
//! 3. A destination that speaks HBONE is reached through a tunnel presenting the source's
//!    certificate and accepting only the destination's identity; anything else is plain TCP
//!    to the address, and says so (`connection_security_policy="unknown"`).
//!
//! Every upstream socket (to a peer's 15008 or a destination outside the mesh) is opened in the
//! namespace the connection arrived in: in in-pod mode, the source pod's, with the proxy's mark.
//!
//! Invariant: fail closed. A mesh destination is never sent a byte unencrypted: no source
//! workload, no certificate, or a wrong peer identity refuses the connection (and logs it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ambit_identity::SpiffeId;
use ambit_identity::tls::HandshakeFailure;
use http::StatusCode;
use tokio::net::TcpStream;
use tracing::debug;

use super::inputs::Inputs;
use super::socks5::{self, Reply, Socks5Error};
use crate::conn::{bare_info, error_chain, peer_info, service_info};
use crate::copy::{self, Side, Transferred};
use crate::drain::Kind;
use crate::hbone::client::{self, ConnectRequest};
use crate::hbone::headers;
use crate::hbone::pool::PoolKey;
use crate::hbone::{HboneError, stream::H2Stream};
use crate::scope::Scope;
use crate::socket::{self, original_dst};
use crate::state::{Protocol, ResolveError, Upstream, Workload};
use crate::telemetry::{ConnectionInfo, Direction, ResponseFlags, SecurityPolicy};

/// Why an outbound connection was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum OutboundError {
    #[error("source {0} is not a workload on this node")]
    UnknownSource(std::net::IpAddr),
    #[error("{0} is this proxy's own listener")]
    Loop(SocketAddr),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("no certificate source: refusing to reach mesh workload {0} without mTLS")]
    NoCertificates(String),
    #[error("HBONE to {addr}")]
    Hbone {
        addr: SocketAddr,
        #[source]
        source: HboneError,
    },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How the connection will be carried.
#[derive(Debug)]
enum Route {
    Hbone {
        target: SocketAddr,
        hbone: SocketAddr,
        expected: Vec<SpiffeId>,
        service_host: Option<String>,
    },
    Tcp(SocketAddr),
}

/// Serves a connection redirected to 15001.
pub(crate) async fn serve_redirected(
    inputs: Arc<Inputs>,
    scope: Arc<Scope>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let local = stream.local_addr().map(socket::canonical);
    let dst = original_dst(&stream).or(local.ok()).unwrap_or(peer);
    run(&inputs, &scope, stream, peer, dst, false).await;
}

/// Serves a SOCKS5 client of 15080: the handshake, then the outbound path.
pub(crate) async fn serve_socks5(
    inputs: Arc<Inputs>,
    scope: Arc<Scope>,
    mut stream: TcpStream,
    peer: SocketAddr,
) {
    let timeout = inputs.config.timeouts.handshake;
    let request = tokio::time::timeout(timeout, socks5::handshake(&mut stream))
        .await
        .unwrap_or(Err(Socks5Error::Timeout(timeout)));
    match request {
        Ok(dst) => run(&inputs, &scope, stream, peer, dst, true).await,
        Err(e) => {
            let local = stream.local_addr().unwrap_or(peer);
            if let Some(code) = e.reply() {
                let _ = socks5::reply(&mut stream, code).await;
            }
            inputs
                .telemetry
                .log_refused(&bare_info(Direction::Outbound, peer, local), &e);
        }
    }
}

/// Proxies `stream` from `src` to its original destination `dst`; `socks` says a SOCKS5
/// reply is owed once the upstream is connected.
pub(crate) async fn run(
    inputs: &Inputs,
    scope: &Scope,
    mut stream: TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
    socks: bool,
) {
    let _counted = inputs.state.connections().open(Kind::Outbound);
    // The one-shot phases (lookup, dial, TLS and HTTP/2 handshakes) are boxed: inline, their
    // state would be part of this future, and so of the connection's memory, until it closes.
    let (source, route, info) = match Box::pin(prepare(inputs, scope, src, dst)).await {
        Ok(prepared) => prepared,
        Err(e) => {
            if socks {
                let _ = socks5::reply(&mut stream, e.socks_reply()).await;
            }
            let info = bare_info(Direction::Outbound, src, dst);
            inputs.telemetry.log_refused(&info, error_chain(&e));
            return;
        }
    };
    let mut guard = inputs.telemetry.open(info);
    let upstream = match Box::pin(connect(inputs, scope, &source, src, &route)).await {
        Ok(upstream) => upstream,
        Err(e) => {
            if socks {
                let _ = socks5::reply(&mut stream, e.socks_reply()).await;
            }
            guard.finish_with_flags(ResponseFlags::ConnectFailure, Some(error_chain(&e)));
            return;
        }
    };
    if socks && let Err(e) = socks5::reply(&mut stream, Reply::Succeeded).await {
        guard.finish(Some(format!("SOCKS5 reply: {e}")));
        return;
    }
    let moved = Transferred::default();
    let copying = copy::bidirectional(
        copy::tcp(stream),
        upstream,
        inputs.config.timeouts.idle,
        &moved,
    );
    let result = tokio::select! {
        result = copying => result.map_err(|e| error_chain(&e)),
        () = inputs.drain.force.cancelled() => Err("aborted: drain deadline reached".to_owned()),
    };
    guard.add_sent(moved.downstream_to_upstream.load(Ordering::Relaxed));
    guard.add_recv(moved.upstream_to_downstream.load(Ordering::Relaxed));
    guard.finish(result.err());
}

/// Identifies the source, resolves the destination and describes the connection.
async fn prepare(
    inputs: &Inputs,
    scope: &Scope,
    src: SocketAddr,
    dst: SocketAddr,
) -> Result<(Arc<Workload>, Route, ConnectionInfo), OutboundError> {
    if scope.is_own(dst) {
        return Err(OutboundError::Loop(dst));
    }
    let source = scope
        .source_workload(&inputs.state, src.ip())
        .await
        .ok_or(OutboundError::UnknownSource(src.ip()))?;
    let mut info = bare_info(Direction::Outbound, src, dst);
    info.src = peer_info(&source);
    let route = match resolve(inputs, dst).await? {
        Upstream::Workload {
            workload,
            addr,
            service,
        } => {
            // The address actually reached (a VIP's chosen endpoint): what ztunnel logs as
            // `dst.hbone_addr`; the service, if any, is reported beside it.
            info.dst_addr = addr;
            info.dst = peer_info(&workload);
            info.dst_service = service.as_deref().map(service_info);
            // A source outside the mesh (not enrolled) has no identity to present: its traffic
            // goes on as plain TCP, exactly as if no node proxy had seen it.
            if workload.protocol == Protocol::Hbone && source.protocol == Protocol::Hbone {
                let hbone = SocketAddr::new(addr.ip(), inputs.config.peer_hbone_port);
                info.dst_hbone_addr = Some(hbone);
                info.security = SecurityPolicy::MutualTls;
                let mut expected = vec![workload.identity.clone()];
                if let Some(s) = &service {
                    expected.extend(s.subject_alt_names.iter().filter_map(|n| n.parse().ok()));
                }
                Route::Hbone {
                    target: addr,
                    hbone,
                    expected,
                    service_host: service.map(|s| s.hostname.clone()),
                }
            } else {
                Route::Tcp(addr)
            }
        }
        Upstream::Unknown => Route::Tcp(dst),
    };
    Ok((source, route, info))
}

/// Resolves `dst`, asking the control plane once for an address it has not sent.
async fn resolve(inputs: &Inputs, dst: SocketAddr) -> Result<Upstream, ResolveError> {
    let state = &inputs.state;
    let found = state.resolve(dst)?;
    let Some(xds) = &inputs.xds else {
        return Ok(found);
    };
    if !matches!(found, Upstream::Unknown) || state.read(|m| m.is_not_found(dst.ip())) {
        return Ok(found);
    }
    let mut changes = state.subscribe();
    xds.subscribe(ambit_proto::ADDRESS_TYPE_URL, [format!("/{}", dst.ip())]);
    let deadline = tokio::time::Instant::now() + inputs.config.timeouts.on_demand;
    loop {
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            _ => {
                debug!(%dst, "on-demand lookup found nothing in time");
                return Ok(Upstream::Unknown);
            }
        }
        match state.resolve(dst)? {
            Upstream::Unknown if !state.read(|m| m.is_not_found(dst.ip())) => continue,
            found => return Ok(found),
        }
    }
}

/// Opens the upstream side: a tunnel through the pool, or a TCP connection.
async fn connect(
    inputs: &Inputs,
    scope: &Scope,
    source: &Workload,
    src: SocketAddr,
    route: &Route,
) -> Result<Side, OutboundError> {
    let timeouts = &inputs.config.timeouts;
    match route {
        Route::Tcp(addr) => {
            let tcp = socket::connect(scope.factory.as_ref(), *addr, timeouts.connect)
                .await
                .map_err(|source| OutboundError::Connect {
                    addr: *addr,
                    source,
                })?;
            Ok(copy::tcp(tcp))
        }
        Route::Hbone {
            target,
            hbone,
            expected,
            service_host,
        } => {
            let certs = inputs
                .state
                .certificates()
                .ok_or_else(|| OutboundError::NoCertificates(target.to_string()))?;
            let failed = |source| OutboundError::Hbone {
                addr: *hbone,
                source,
            };
            let cert = certs
                .fetch(&source.identity)
                .await
                .map_err(|e| failed(e.into()))?;
            // Shared mode: the tunnel leaves from the source's own address (the client
            // connected from it, so this namespace has it), and the destination authorizes the
            // address the kernel saw. In a pod's namespace routing gives the pod's address.
            let local = scope.netns.is_none().then_some(src.ip());
            let key = PoolKey {
                src: source.identity.clone(),
                dst: expected.clone(),
                addr: *hbone,
                netns: scope.netns,
                local,
            };
            let request = ConnectRequest {
                target: *target,
                forwarded: headers::forwarded(src, service_host.as_deref()),
                baggage: headers::baggage(&inputs.config.cluster_id, source),
            };
            let dial = || async {
                let tls = certs.client_config(&cert, expected.clone())?;
                let pool = &inputs.config.pool;
                let dial = client::Dial {
                    addr: *hbone,
                    local,
                };
                client::connect(
                    scope.factory.as_ref(),
                    dial,
                    tls,
                    timeouts.connect,
                    timeouts.handshake,
                    pool.max_streams_per_connection,
                )
                .await
            };
            let stream: H2Stream = inputs
                .pool
                .open(&key, &request, timeouts.handshake, dial)
                .await
                .map_err(failed)?;
            Ok(copy::h2(stream))
        }
    }
}

impl OutboundError {
    /// The SOCKS5 reply that says what happened.
    fn socks_reply(&self) -> Reply {
        match self {
            Self::UnknownSource(_) | Self::Loop(_) | Self::NoCertificates(_) => Reply::NotAllowed,
            Self::Resolve(_) => Reply::HostUnreachable,
            Self::Connect { source, .. }
                if source.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                Reply::ConnectionRefused
            }
            Self::Connect { .. } => Reply::HostUnreachable,
            Self::Hbone { source, .. } => match source {
                HboneError::Status(StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED) => {
                    Reply::NotAllowed
                }
                HboneError::Status(StatusCode::SERVICE_UNAVAILABLE) => Reply::ConnectionRefused,
                HboneError::Tls { failure, .. } if *failure != HandshakeFailure::Other => {
                    Reply::NotAllowed
                }
                HboneError::Connect { .. } | HboneError::TlsTimeout { .. } => {
                    Reply::HostUnreachable
                }
                _ => Reply::GeneralFailure,
            },
        }
    }
}
