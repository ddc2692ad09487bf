//! Authorization of connections arriving at a local workload.
//!
//! Evaluates the `istio.security.Authorization` policies the control plane sent (compiled in
//! [`MeshState::policy_index`](crate::state::MeshState::policy_index)) with Istio's semantics:
//! any matching DENY denies; then, if any ALLOW policy applies, one must match; with no policy,
//! allow. Every inbound path calls [`authorize`] before a byte reaches the application and turns
//! an `Err(reason)` into a refusal (HTTP 403 on HBONE, a closed connection on the plaintext
//! passthrough), logged with the reason and counted with `response_flags="DENY"`.

use ambit_authz::{Connection, Target};
use tracing::info;

use crate::conn::ConnInfo;
use crate::state::ProxyState;

/// Decides whether `conn` may reach its destination workload: `Err(reason)` denies.
pub fn authorize(state: &ProxyState, conn: &ConnInfo) -> Result<(), String> {
    let target = Target {
        namespace: &conn.dst_workload.namespace,
        policies: &conn.dst_workload.authorization_policies,
    };
    let connection = Connection {
        src_ip: conn.src_ip,
        src_identity: conn.src_identity.as_ref(),
        dst_ip: conn.dst.ip(),
        dst_port: conn.dst.port(),
    };
    state.read(|mesh| {
        let decision = mesh.policy_index().decide(target, &connection);
        for policy in &decision.dry_run_denials {
            info!(policy, src.ip = %conn.src_ip, dst.addr = %conn.dst, "dry-run policy would deny this connection");
        }
        if decision.allowed {
            Ok(())
        } else {
            Err(format!("connection closed due to policy rejection: {decision}"))
        }
    })
}
