//! The inbound HBONE path: `<workload ip>:15008` → TLS as that workload → HTTP/2 → one
//! CONNECT stream per tunnel → authorization → the application.
//!
//! Invariants:
//! - Never forwards a byte before the peer's identity is verified: the TLS handshake requires
//!   a client certificate chaining to the mesh roots with a SPIFFE id in a trusted trust domain,
//!   and the stream is authorized with that identity before the application is dialed.
//! - Policy sees what the kernel and the handshake saw: the TCP peer address and the verified
//!   SPIFFE id. `Forwarded` is what the client wrote: its `for=` is only logged (at debug), its
//!   `host=` only chooses which of the services the workload backs telemetry names.
//! - A tunnel reaches only the workload that owns the address the connection arrived on, and
//!   only at an address of that workload (`:authority`); anything else is a 400. A port of the
//!   proxy's own in that namespace (15001, 15006, 15008, …: [`Scope::is_reserved_port`]) is a
//!   503, as ztunnel refuses its `illegal_ports`.
//! - The application is dialed from the namespace the connection arrived in: the proxy's own
//!   address in shared mode (no transparent source spoofing), the pod's own address in in-pod
//!   mode.
//! - A hostile peer costs bounded time and memory: handshakes time out, a connection without
//!   streams idles out, HTTP/2 limits bound streams, headers and buffers (see
//!   [`crate::hbone`]), and one connection's failure never touches another.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ambit_identity::SpiffeId;
use ambit_identity::tls::{self as id_tls};
use bytes::Bytes;
use h2::RecvStream;
use h2::server::{Connection, SendResponse};
use http::{Request, Response, StatusCode};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::debug;

use crate::conn::{ConnInfo, bare_info, error_chain, identity_info, peer_info, service_info};
use crate::copy::{self, Transferred};
use crate::drain::Kind;
use crate::hbone::headers::{ConnectHead, forwarded_for, forwarded_host};
use crate::hbone::stream::H2Stream;
use crate::hbone::wire::ReadAhead;
use crate::hbone::{SEND_AHEAD, server_builder};
use crate::proxy::authorize::authorize;
use crate::proxy::inputs::Inputs;
use crate::scope::Scope;
use crate::socket::{self, canonical};
use crate::state::{Protocol, Workload};
use crate::telemetry::{ConnectionInfo, Direction, ResponseFlags, SecurityPolicy};

/// Serves one TCP connection accepted on a workload's 15008.
pub(crate) async fn serve(
    inputs: Arc<Inputs>,
    scope: Arc<Scope>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let local = match tcp.local_addr() {
        Ok(addr) => canonical(addr),
        Err(_) => return,
    };
    // Boxed: the handshakes' state is needed only until the connection is up, and inline it
    // would stay part of this future for the connection's life.
    let (workload, peer_id, mut conn) = match Box::pin(establish(&inputs, &scope, tcp, local)).await
    {
        Ok(established) => established,
        Err(reason) => {
            let info = bare_info(Direction::Inbound, peer, local);
            return inputs.telemetry.log_refused(&info, reason);
        }
    };
    debug!(%peer, %local, peer_identity = %peer_id, "HBONE connection established");

    let stop = inputs.drain.stop_accepting.clone();
    let idle = inputs.config.timeouts.hbone_idle;
    let mut draining = false;
    let mut idle_since = Some(tokio::time::Instant::now());
    let mut ticks = tokio::time::interval((idle / 4).max(std::time::Duration::from_millis(10)));
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((request, respond))) => {
                    idle_since = None;
                    let stream = Stream {
                        inputs: inputs.clone(),
                        scope: scope.clone(),
                        workload: workload.clone(),
                        peer_id: peer_id.clone(),
                        peer,
                        local,
                    };
                    inputs.drain.tracker.spawn(stream.serve(request, respond));
                }
                Some(Err(e)) if e.is_io() => {
                    // The peer went away (reset, EOF): nothing hostile about it.
                    debug!(%peer, error = %e, "HBONE connection closed by the peer");
                    break;
                }
                Some(Err(e)) => {
                    let info = bare_info(Direction::Inbound, peer, local);
                    inputs.telemetry.log_refused(&info, format!("HTTP/2 protocol error: {e}"));
                    break;
                }
                None => break,
            },
            () = stop.cancelled(), if !draining => {
                // GOAWAY: no new streams; open ones finish.
                conn.graceful_shutdown();
                draining = true;
            }
            _ = ticks.tick() => {
                if conn.has_streams() {
                    idle_since = None;
                } else {
                    let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= idle && !draining {
                        debug!(%peer, "closing HBONE connection without streams");
                        conn.graceful_shutdown();
                        draining = true;
                    }
                }
            }
            () = inputs.drain.force.cancelled() => break,
        }
    }
}

/// The TLS (as the workload the scope serves at `local`) and HTTP/2 handshakes of a connection to
/// `local`: the workload, the client's verified identity and the connection, or why it was
/// refused.
async fn establish(
    inputs: &Inputs,
    scope: &Scope,
    tcp: TcpStream,
    local: SocketAddr,
) -> Result<Established, String> {
    let Some(workload) = scope
        .destination_workload(&inputs.state, local.ip())
        .await
        .filter(|w| w.protocol == Protocol::Hbone)
    else {
        return Err(format!("no local HBONE workload at {}", local.ip()));
    };
    let Some(certs) = inputs.state.certificates() else {
        return Err("no certificate source".to_owned());
    };
    let config = certs
        .server_config(&workload.identity)
        .await
        .map_err(|e| error_chain(&e))?;
    let timeout = inputs.config.timeouts.handshake;
    let tls = match tokio::time::timeout(
        timeout,
        TlsAcceptor::from(config).accept(ReadAhead::new(tcp)),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let failure = id_tls::classify_io(&e);
            let reason = crate::hbone::client::handshake_reason(&e);
            return Err(format!("TLS handshake failed ({failure:?}): {reason}"));
        }
        Err(_) => return Err(format!("TLS handshake did not finish within {timeout:?}")),
    };
    // The verifier accepted the client, so it named a SPIFFE id; be strict anyway.
    let Some(peer_id) = id_tls::peer_identity(tls.get_ref().1) else {
        return Err("the client presented no SPIFFE identity".to_owned());
    };
    let mut tls = tls;
    tls.get_mut().1.set_buffer_limit(Some(SEND_AHEAD));
    match tokio::time::timeout(timeout, server_builder().handshake::<_, Bytes>(tls)).await {
        Ok(Ok(conn)) => Ok((workload, peer_id, conn)),
        Ok(Err(e)) => Err(format!("HTTP/2 handshake failed: {e}")),
        Err(_) => Err(format!(
            "HTTP/2 handshake did not finish within {timeout:?}"
        )),
    }
}

/// What [`establish`] yields: the local workload, the client's identity and the connection.
type Established = (
    Arc<Workload>,
    SpiffeId,
    Connection<TlsStream<ReadAhead>, Bytes>,
);

/// One CONNECT stream on an established connection.
struct Stream {
    inputs: Arc<Inputs>,
    scope: Arc<Scope>,
    workload: Arc<Workload>,
    peer_id: SpiffeId,
    peer: SocketAddr,
    local: SocketAddr,
}

impl Stream {
    async fn serve(self, request: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
        let inputs = &self.inputs;
        let _counted = inputs.state.connections().open(Kind::Inbound);
        // The kernel's word for where the tunnel comes from; `Forwarded` is the client's.
        let src_addr = self.peer;
        let forwarded = request.headers().get(http::header::FORWARDED);
        if let Some(claimed) = forwarded.and_then(forwarded_for) {
            debug!(peer = %self.peer, %claimed, "Forwarded names a source; policy uses the TCP peer");
        }
        let mut info = ConnectionInfo {
            direction: Direction::Inbound,
            src_addr,
            src: self.source_info(src_addr),
            dst_addr: self.local,
            dst_hbone_addr: Some(self.local),
            dst_service: None,
            dst: peer_info(&self.workload),
            security: SecurityPolicy::MutualTls,
        };
        let head = ConnectHead::parse(request.method(), request.uri(), request.headers());
        let target = match head.and_then(|head| self.target(head)) {
            Ok(target) => target,
            Err((status, reason)) => {
                send_status(&mut respond, status);
                return inputs.telemetry.log_refused(&info, reason);
            }
        };
        info.dst_addr = target;
        let host = forwarded.and_then(forwarded_host);
        let service = inputs
            .state
            .inbound_service(&self.workload, host, target.port());
        info.dst_service = service.as_deref().map(service_info);
        let conn = ConnInfo {
            src_identity: Some(self.peer_id.clone()),
            src_ip: src_addr.ip(),
            dst: target,
            dst_workload: self.workload.clone(),
        };
        let mut guard = inputs.telemetry.open(info);
        if let Err(reason) = authorize(&inputs.state, &conn) {
            send_status(&mut respond, StatusCode::FORBIDDEN);
            return guard.finish_with_flags(ResponseFlags::Deny, Some(reason));
        }
        let timeouts = &inputs.config.timeouts;
        let factory = self.scope.factory.as_ref();
        // Boxed: a one-shot phase, not to be carried for the tunnel's life.
        let app = match Box::pin(socket::connect(factory, target, timeouts.connect)).await {
            Ok(app) => app,
            Err(e) => {
                send_status(&mut respond, StatusCode::SERVICE_UNAVAILABLE);
                let error = format!("cannot connect to the application at {target}: {e}");
                return guard.finish_with_flags(ResponseFlags::ConnectFailure, Some(error));
            }
        };
        let send = match respond.send_response(Response::new(()), false) {
            Ok(send) => send,
            Err(e) => return guard.finish(Some(format!("cannot answer CONNECT: {e}"))),
        };
        let tunnel = H2Stream::new(send, request.into_body(), None);
        let moved = Transferred::default();
        let copying = copy::bidirectional(copy::h2(tunnel), copy::tcp(app), timeouts.idle, &moved);
        let result = tokio::select! {
            result = copying => result.map_err(|e| error_chain(&e)),
            () = inputs.drain.force.cancelled() => Err("aborted: drain deadline reached".to_owned()),
        };
        // The workload this proxy speaks for is the server: it sends what flows upstream→down.
        guard.add_sent(moved.upstream_to_downstream.load(Ordering::Relaxed));
        guard.add_recv(moved.downstream_to_upstream.load(Ordering::Relaxed));
        guard.finish(result.err());
    }

    /// The CONNECT target, if this stream may have it.
    fn target(&self, head: ConnectHead) -> Result<SocketAddr, (StatusCode, String)> {
        let target = head.target;
        if let Some(trace_id) = head.trace_id {
            debug!(trace_id = %format_args!("{trace_id:032x}"), %target, "CONNECT");
        }
        if !self.workload.addresses.contains(&target.ip()) {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "CONNECT to {target}, which is not an address of local workload {}",
                    self.workload.uid
                ),
            ));
        }
        if self.scope.is_reserved_port(target.port()) {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "CONNECT to {target}: port {} is the proxy's own",
                    target.port()
                ),
            ));
        }
        Ok(target)
    }

    /// The source as telemetry sees it: the workload at the source address if it carries the
    /// verified identity, else the identity alone.
    fn source_info(&self, src: SocketAddr) -> crate::telemetry::PeerInfo {
        match self.inputs.state.workload_by_ip(src.ip()) {
            Some(w) if w.identity == self.peer_id => peer_info(&w),
            _ => identity_info(&self.peer_id),
        }
    }
}

fn send_status(respond: &mut SendResponse<Bytes>, status: StatusCode) {
    let mut response = Response::new(());
    *response.status_mut() = status;
    let _ = respond.send_response(response, true);
}
