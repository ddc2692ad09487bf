//! Serving certificates for the control plane's own TLS listener (15012).
//!
//! Node proxies dial the control plane by DNS name (`istiod.istio-system.svc`) and verify it
//! against the mesh root, as ztunnel does with istiod; so this certificate names DNS names, not
//! a SPIFFE id. Its key is generated here, in-process, and handed to rustls only.

use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{CLOCK_SKEW_ALLOWANCE, CaError, CertificateAuthority, random_serial, whole_seconds};

/// A certificate chain (leaf first) with its private key, for a TLS server.
pub struct ServingCertificate {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is never printed.
        f.debug_struct("ServingCertificate")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Issues a serverAuth certificate for `dns_names` with a fresh P-256 key, valid for `ttl`
    /// (capped by the signing certificate's expiry).
    pub fn issue_serving_certificate(
        &self,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<ServingCertificate, CaError> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
        let now = self.config.clock.now();
        let mut params = CertificateParams::new(dns_names.to_vec()).map_err(CaError::Generate)?;
        params.distinguished_name = DistinguishedName::new();
        params.not_before =
            whole_seconds(now.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap_or(now)).into();
        params.not_after = whole_seconds(
            now.checked_add(ttl)
                .map_or(self.signing_not_after, |t| t.min(self.signing_not_after)),
        )
        .into();
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        debug_assert!(
            params
                .subject_alt_names
                .iter()
                .all(|s| matches!(s, SanType::DnsName(_)))
        );
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(CaError::Generate)?;

        let mut chain = vec![leaf.der().clone()];
        for pem in &self.chain_tail {
            // The tail was parsed from these PEMs when the CA loaded, so they decode.
            chain.extend(CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(Result::ok));
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(ServingCertificate { chain, key })
    }
}
