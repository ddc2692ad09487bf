//! The channel to the control plane, as every role that follows it opens it (the node proxy for
//! WDS and the CA, the capture agent for WDS): where it is, TLS checked against the mesh root
//! certificate, and the bearer token re-read from its file on every use.
//!
//! Invariants: the control plane is trusted only through the mesh roots read from
//! [`ControlPlaneTls::root_cert_file`] and the DNS name in [`ControlPlaneTls::server_name`]; the
//! token is never cached (projected tokens rotate) and never sent over plaintext; the CA, which
//! hands out identities, is reached over TLS only.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::transport::Channel;

use crate::grpc::{CaClient, ChannelError, plaintext_channel, tls_channel};
use crate::tls::{TlsError, control_plane_client_config};

/// How to reach a control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneEndpoint {
    /// `host:port`: plaintext WDS on 15010, or TLS on 15012.
    pub addr: String,
    /// `None` for plaintext (loopback only; the CA is not served there).
    pub tls: Option<ControlPlaneTls>,
}

/// TLS and authentication towards the control plane's 15012 port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneTls {
    /// DNS name the control plane's certificate must carry, e.g. `istiod.istio-system.svc`.
    pub server_name: String,
    /// PEM file of the mesh root certificate(s): trust for the control plane and for HBONE peers.
    pub root_cert_file: PathBuf,
    /// File holding the bearer token (a bootstrap token or a service-account JWT); re-read on
    /// every connection so rotated tokens are picked up.
    pub token_file: PathBuf,
}

/// Why the channel to the control plane cannot be set up (nothing here connects yet: channels
/// are lazy).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlPlaneError {
    #[error("mesh root certificates")]
    Roots(#[from] RootsError),
    #[error("TLS towards the control plane")]
    Tls(#[from] TlsError),
    #[error("control plane address")]
    Channel(#[from] ChannelError),
    #[error("the CA is only served over TLS: {addr} has no TLS settings")]
    CaNeedsTls { addr: String },
}

/// Why the mesh roots could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootsError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    Empty { path: String },
}

// === impl ControlPlaneEndpoint ===

impl ControlPlaneEndpoint {
    /// Plaintext WDS (15010): loopback use only.
    pub fn plaintext(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            tls: None,
        }
    }

    /// WDS and CA over TLS (15012) with a bearer token.
    pub fn tls(addr: impl Into<String>, tls: ControlPlaneTls) -> Self {
        Self {
            addr: addr.into(),
            tls: Some(tls),
        }
    }

    /// A lazily connecting channel to this endpoint.
    pub fn channel(&self) -> Result<Channel, ControlPlaneError> {
        Ok(match &self.tls {
            None => plaintext_channel(&self.addr)?,
            Some(tls) => {
                let roots = read_roots(&tls.root_cert_file)?;
                let config = control_plane_client_config(&roots)?;
                tls_channel(&self.addr, &tls.server_name, config)?
            }
        })
    }

    /// The bearer token for this endpoint, read afresh from its token file on every call
    /// (projected tokens rotate); `None` when unreadable or empty, and always over plaintext.
    pub fn bearer_token(&self) -> impl Fn() -> Option<String> + Send + Sync + 'static {
        let path = self.tls.as_ref().map(|tls| tls.token_file.clone());
        move || read_token(path.as_deref()?)
    }

    /// The CA client of this endpoint, which must use TLS.
    pub fn ca_client(&self) -> Result<CaClient, ControlPlaneError> {
        if self.tls.is_none() {
            return Err(ControlPlaneError::CaNeedsTls {
                addr: self.addr.clone(),
            });
        }
        Ok(CaClient::new(self.channel()?, self.bearer_token()))
    }
}

/// Reads the PEM certificates of `path` (the mesh roots).
pub fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, RootsError> {
    let display = || path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| RootsError::Read {
        path: display(),
        source,
    })?;
    let roots: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if roots.is_empty() {
        return Err(RootsError::Empty { path: display() });
    }
    Ok(roots)
}

fn read_token(path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text.trim().to_owned()).filter(|t| !t.is_empty()),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the bearer token");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tls(dir: &Path) -> ControlPlaneEndpoint {
        ControlPlaneEndpoint::tls(
            "127.0.0.1:15012",
            ControlPlaneTls {
                server_name: "istiod.istio-system.svc".into(),
                root_cert_file: dir.join("root-cert.pem"),
                token_file: dir.join("token"),
            },
        )
    }

    #[test]
    fn the_token_is_read_on_every_use_and_never_for_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let token = tls(dir.path()).bearer_token();
        assert_eq!(token(), None, "no file yet");
        std::fs::write(dir.path().join("token"), "first\n").unwrap();
        assert_eq!(token().as_deref(), Some("first"));
        std::fs::write(dir.path().join("token"), "rotated").unwrap();
        assert_eq!(token().as_deref(), Some("rotated"));
        std::fs::write(dir.path().join("token"), " \n").unwrap();
        assert_eq!(token(), None, "an empty token is no token");
        assert_eq!(
            ControlPlaneEndpoint::plaintext("127.0.0.1:15010").bearer_token()(),
            None
        );
    }

    #[test]
    fn missing_roots_and_plaintext_ca_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let err = tls(dir.path()).channel().unwrap_err();
        assert!(
            matches!(&err, ControlPlaneError::Roots(RootsError::Read { path, .. }) if path.ends_with("root-cert.pem")),
            "{err:?}"
        );
        std::fs::write(dir.path().join("root-cert.pem"), "not pem").unwrap();
        assert!(matches!(
            tls(dir.path()).channel().unwrap_err(),
            ControlPlaneError::Roots(RootsError::Empty { .. })
        ));
        let err = ControlPlaneEndpoint::plaintext("127.0.0.1:15010")
            .ca_client()
            .unwrap_err();
        assert!(err.to_string().contains("127.0.0.1:15010"), "{err}");
    }
}
