//! The certificate verifiers: webpki chain validation against the mesh roots, then a SPIFFE id
//! check. Name checks against the TLS server name are deliberately absent (Istio identifies
//! peers by URI SAN only).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore,
    SignatureScheme,
};

use super::{IdentityMismatch, UntrustedPeer};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::x509;

/// Client side: verifies the server's chain, then requires one of the expected SPIFFE ids.
#[derive(Debug)]
pub(super) struct ServerIdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<SpiffeId>,
    algs: WebPkiSupportedAlgorithms,
}

/// Server side: verifies the client's chain (mandatory), then requires a trusted trust domain.
#[derive(Debug)]
pub(super) struct ClientIdentityVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    trust_domains: Vec<TrustDomain>,
}

impl ServerIdentityVerifier {
    pub(super) fn new(
        roots: Arc<RootCertStore>,
        expected: Vec<SpiffeId>,
        algs: WebPkiSupportedAlgorithms,
    ) -> Self {
        Self {
            roots,
            expected,
            algs,
        }
    }
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        match x509::spiffe_id_of_der(end_entity) {
            Ok(id) if self.expected.contains(&id) => Ok(ServerCertVerified::assertion()),
            actual => Err(refusal(IdentityMismatch {
                expected: self.expected.clone(),
                actual,
            })),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientIdentityVerifier {
    pub(super) fn new(chain: Arc<dyn ClientCertVerifier>, trust_domains: Vec<TrustDomain>) -> Self {
        Self {
            chain,
            trust_domains,
        }
    }
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        match x509::spiffe_id_of_der(end_entity) {
            Ok(id) if self.trust_domains.contains(id.trust_domain()) => {
                Ok(ClientCertVerified::assertion())
            }
            actual => Err(refusal(UntrustedPeer {
                trust_domains: self.trust_domains.clone(),
                actual,
            })),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

fn refusal(err: impl std::error::Error + Send + Sync + 'static) -> Error {
    tracing::debug!(error = %err, "refusing TLS peer");
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}
