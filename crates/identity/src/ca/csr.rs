//! Certificate signing requests: decode, verify the proof of possession, apply the key policy.
//!
//! Only the public key survives this step. Subject, SANs and requested extensions are dropped,
//! because the identity of the certificate is the CA caller's decision, never the requester's.

use rustls::pki_types::CertificateSigningRequestDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::CaError;
use crate::x509;

const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;

/// Decodes `csr` (PEM or DER), verifies its signature with the key it carries and returns that
/// key if policy allows it.
pub(super) fn verify(csr: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo, CaError> {
    let der = decode(csr)?;
    let (rest, request) = X509CertificationRequest::from_der(&der)
        .map_err(|e| CaError::CsrMalformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CaError::CsrMalformed(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    let alg = &request.signature_algorithm.algorithm;
    if *alg == OID_PKCS1_SHA1WITHRSA || *alg == OID_SHA1_WITH_RSA {
        return Err(CaError::UnsupportedCsrKey(
            "SHA-1 signatures are not accepted".to_owned(),
        ));
    }
    match request.verify_signature() {
        Ok(()) => {}
        Err(X509Error::SignatureUnsupportedAlgorithm) => {
            return Err(CaError::UnsupportedCsrKey(format!(
                "signature algorithm {alg} is not supported"
            )));
        }
        Err(_) => return Err(CaError::CsrSignature),
    }
    let spki = &request.certification_request_info.subject_pki;
    check_key_policy(spki)?;
    rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| CaError::UnsupportedCsrKey(e.to_string()))
}

fn decode(csr: &[u8]) -> Result<Vec<u8>, CaError> {
    if csr.trim_ascii_start().starts_with(b"-----BEGIN") {
        CertificateSigningRequestDer::from_pem_slice(csr)
            .map(|der| der.as_ref().to_vec())
            .map_err(|e| CaError::CsrMalformed(format!("no CERTIFICATE REQUEST PEM block: {e}")))
    } else {
        Ok(csr.to_vec())
    }
}

/// ECDSA on P-256 or P-384, or RSA of 2048 to 8192 bits: what webpki verifies and what Istio
/// peers accept.
fn check_key_policy(spki: &SubjectPublicKeyInfo<'_>) -> Result<(), CaError> {
    let alg = &spki.algorithm.algorithm;
    let refuse = || Err(CaError::UnsupportedCsrKey(x509::describe_key(spki)));
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => Ok(()),
            _ => refuse(),
        }
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        match x509::rsa_modulus_bits(spki) {
            Some(bits) if (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) => Ok(()),
            Some(bits) => Err(CaError::UnsupportedCsrKey(format!(
                "RSA key of {bits} bits; {MIN_RSA_BITS} to {MAX_RSA_BITS} are accepted"
            ))),
            None => refuse(),
        }
    } else {
        refuse()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair};

    use super::*;

    fn csr_for(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = KeyPair::generate_for(alg).unwrap();
        let params = CertificateParams::new(vec!["ignored.example".to_owned()]).unwrap();
        params.serialize_request(&key).unwrap().der().to_vec()
    }

    #[test]
    fn accepts_p256_p384_and_rsa_in_pem_or_der() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_RSA_SHA256,
        ] {
            let der = csr_for(alg);
            verify(&der).unwrap();
            let pem = x509::pem_encode("CERTIFICATE REQUEST", &der);
            verify(pem.as_bytes()).unwrap();
        }
    }

    #[test]
    fn refuses_ed25519_and_garbage() {
        let der = csr_for(&rcgen::PKCS_ED25519);
        assert!(matches!(verify(&der), Err(CaError::UnsupportedCsrKey(_))));
        assert!(matches!(verify(b"junk"), Err(CaError::CsrMalformed(_))));
        assert!(matches!(
            verify(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            Err(CaError::CsrMalformed(_))
        ));
        let mut trailing = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        trailing.push(0);
        assert!(matches!(verify(&trailing), Err(CaError::CsrMalformed(_))));
    }

    #[test]
    fn tampered_signature_is_refused() {
        let mut der = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        // The last byte is inside the ECDSA signature's `s` integer: still parses, no longer
        // verifies.
        if let Some(last) = der.last_mut() {
            *last ^= 0x01;
        }
        assert!(matches!(verify(&der), Err(CaError::CsrSignature)));
    }
}
