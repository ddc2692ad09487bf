//! Authorization of connections arriving at a local workload: THE ONE STUB OF THE DATA PATH.
//!
//! Issue 5 (L4 policy enforcement) replaces the body of [`authorize`] with the evaluation of
//! the `istio.security.Authorization` policies held in [`ProxyState`] (see
//! [`ProxyState::policies`]). Every inbound path already calls it before a byte reaches the
//! application and turns an `Err(reason)` into a refusal (HTTP 403 on HBONE, a closed
//! connection on the plaintext passthrough) logged with the reason and counted with
//! `response_flags="DENY"`. Nothing else needs to change when the stub goes.

use super::conn::ConnInfo;
use crate::state::ProxyState;

/// Decides whether `conn` may reach its destination workload: `Err(reason)` denies.
///
/// STUB (issue 5 replaces it): allows everything.
pub fn authorize(state: &ProxyState, conn: &ConnInfo) -> Result<(), String> {
    let _ = (state, conn);
    Ok(())
}
