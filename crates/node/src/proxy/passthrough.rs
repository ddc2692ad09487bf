//! The inbound passthrough (15006): plaintext from outside the mesh, redirected to a local
//! workload.
//!
//! The connection carries no identity, so it is authorized as such (a policy requiring mTLS
//! denies it) and reported with `connection_security_policy="unknown"`. Only redirected
//! connections are served: without an original destination the connection was addressed to
//! the proxy itself, which would loop. The application is dialed from the namespace the
//! connection arrived in (the pod's, in in-pod mode).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use super::authorize::authorize;
use super::inputs::Inputs;
use crate::conn::{ConnInfo, bare_info, error_chain, peer_info};
use crate::copy::{self, Transferred};
use crate::drain::Kind;
use crate::scope::Scope;
use crate::socket::{self, original_dst};
use crate::telemetry::{Direction, ResponseFlags};

/// Serves one connection accepted on 15006.
pub(crate) async fn serve(
    inputs: Arc<Inputs>,
    scope: Arc<Scope>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _counted = inputs.state.connections().open(Kind::Passthrough);
    let local = stream.local_addr().map(socket::canonical).unwrap_or(peer);
    let dst = original_dst(&stream).unwrap_or(local);
    let mut info = bare_info(Direction::Inbound, peer, dst);
    if scope.is_own(dst) {
        let reason = "not redirected: the connection has no original destination";
        return inputs.telemetry.log_refused(&info, reason);
    }
    let Some(workload) = scope.destination_workload(&inputs.state, dst.ip()).await else {
        let reason = format!("{} is not a workload on this node", dst.ip());
        return inputs.telemetry.log_refused(&info, reason);
    };
    info.dst = peer_info(&workload);
    if let Some(source) = inputs.state.workload_by_ip(peer.ip()) {
        // Known by address only: no identity is claimed for a plaintext peer.
        info.src = peer_info(&source);
        info.src.identity.clear();
    }
    let conn = ConnInfo {
        src_identity: None,
        src_ip: peer.ip(),
        dst,
        dst_workload: workload,
    };
    let mut guard = inputs.telemetry.open(info);
    if let Err(reason) = authorize(&inputs.state, &conn) {
        return guard.finish_with_flags(ResponseFlags::Deny, Some(reason));
    }
    let timeouts = &inputs.config.timeouts;
    // Boxed: a one-shot phase, not to be carried for the connection's life.
    let connecting = Box::pin(socket::connect(
        scope.factory.as_ref(),
        dst,
        timeouts.connect,
    ));
    let app = match connecting.await {
        Ok(app) => app,
        Err(e) => {
            let error = format!("cannot connect to {dst}: {e}");
            return guard.finish_with_flags(ResponseFlags::ConnectFailure, Some(error));
        }
    };
    let moved = Transferred::default();
    let copying = copy::bidirectional(copy::tcp(stream), copy::tcp(app), timeouts.idle, &moved);
    let result = tokio::select! {
        result = copying => result.map_err(|e| error_chain(&e)),
        () = inputs.drain.force.cancelled() => Err("aborted: drain deadline reached".to_owned()),
    };
    guard.add_sent(moved.upstream_to_downstream.load(Ordering::Relaxed));
    guard.add_recv(moved.downstream_to_upstream.load(Ordering::Relaxed));
    guard.finish(result.err());
}
