//! TLS for the control-plane channel (15012): WDS and CA over gRPC.
//!
//! Unlike the data path this is server-authenticated TLS only: the control plane proves its DNS
//! name (`istiod.istio-system.svc`) with a certificate from the mesh CA, and callers prove who they
//! are with a bearer token inside the gRPC call, as with istiod.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::CertificateDer;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ServerConfig};

use super::{ALPN_H2, TlsError, provider, root_store};
use crate::ca::ServingCertificate;

/// The control plane's listener config: presents `cert`, asks for no client certificate.
pub fn control_plane_server_config(
    cert: ServingCertificate,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(cert.chain, cert.key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// A node proxy's config for dialing the control plane: the server's chain must verify against
/// the mesh `roots` and name the DNS name dialed.
pub fn control_plane_client_config(
    roots: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(roots)?), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_webpki_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}
