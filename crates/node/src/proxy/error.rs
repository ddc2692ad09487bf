//! [`StartError`]: why a node proxy could not start.

use std::net::SocketAddr;

use ambit_identity::CaError;
use ambit_identity::ControlPlaneError;
use ambit_identity::control_plane::RootsError;

use crate::local_config::LocalConfigError;

/// Why the node proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("cannot bind the {what} listener on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("local config")]
    LocalConfig(#[from] LocalConfigError),
    #[error("control plane")]
    Control(#[from] ControlPlaneError),
    #[error("mesh root certificates")]
    Roots(#[from] RootsError),
    #[error("local certificate authority in {dir}")]
    LocalCa {
        dir: String,
        #[source]
        source: CaError,
    },
}
