//! Small X.509 helpers shared by the CA, the certificate manager, the TLS verifiers and
//! `inspect`: reading the SPIFFE id out of a certificate, checking that one certificate issued
//! another, describing keys, converting times, and writing PEM.
//!
//! Everything here reads untrusted bytes and returns errors; nothing panics on input.

use std::time::SystemTime;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::spiffe::{SpiffeId, SpiffeIdError};

/// Why a certificate does not name exactly one valid SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertIdentityError {
    #[error("certificate is not valid DER X.509")]
    Unparsable,
    #[error("certificate has a malformed subjectAltName extension")]
    MalformedSan,
    #[error("certificate has no spiffe:// URI SAN")]
    NoSpiffeId,
    #[error("certificate has {0} spiffe:// URI SANs; exactly one is allowed")]
    MultipleSpiffeIds(usize),
    #[error("certificate's URI SAN {uri:?} is not an Istio SPIFFE id")]
    Invalid {
        uri: String,
        #[source]
        source: SpiffeIdError,
    },
}

/// Parses a DER certificate, refusing trailing bytes.
pub(crate) fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Some(cert),
        _ => None,
    }
}

/// The SPIFFE id of a DER certificate.
pub(crate) fn spiffe_id_of_der(der: &[u8]) -> Result<SpiffeId, CertIdentityError> {
    let cert = parse(der).ok_or(CertIdentityError::Unparsable)?;
    spiffe_id(&cert)
}

/// The one `spiffe://` URI SAN of `cert`, parsed. Other URI SANs are ignored, as Istio does.
pub(crate) fn spiffe_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, CertIdentityError> {
    let uris = spiffe_uris(cert)?;
    match uris.as_slice() {
        [] => Err(CertIdentityError::NoSpiffeId),
        [uri] => uri.parse().map_err(|source| CertIdentityError::Invalid {
            uri: (*uri).to_owned(),
            source,
        }),
        many => Err(CertIdentityError::MultipleSpiffeIds(many.len())),
    }
}

/// All `spiffe://` URI SANs of `cert`, unparsed.
pub(crate) fn spiffe_uris<'a>(
    cert: &'a X509Certificate<'_>,
) -> Result<Vec<&'a str>, CertIdentityError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|_| CertIdentityError::MalformedSan)?;
    let Some(san) = san else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
            _ => None,
        })
        .collect())
}

/// Whether `parent` issued `child`: names chain byte for byte (as webpki requires) and
/// `parent`'s key verifies `child`'s signature.
pub(crate) fn issued_by(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> bool {
    child.issuer().as_raw() == parent.subject().as_raw()
        && child.verify_signature(Some(parent.public_key())).is_ok()
}

/// Whether `cert` is self-issued and self-signed (a root).
pub(crate) fn is_self_signed(cert: &X509Certificate<'_>) -> bool {
    issued_by(cert, cert)
}

/// Whether `cert` may issue certificates: basicConstraints CA and, when key usage is present,
/// keyCertSign.
pub(crate) fn is_issuer(cert: &X509Certificate<'_>) -> bool {
    let ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    let cert_sign = match cert.key_usage() {
        Ok(Some(ku)) => ku.value.key_cert_sign(),
        Ok(None) => true,
        Err(_) => false,
    };
    ca && cert_sign
}

/// The public key bits (not the whole SPKI) of `cert`.
pub(crate) fn public_key_bits<'a>(cert: &'a X509Certificate<'_>) -> &'a [u8] {
    &cert.public_key().subject_public_key.data
}

/// A short human description of a key: `ECDSA P-256`, `RSA 2048`, `Ed25519`.
pub(crate) fn describe_key(spki: &SubjectPublicKeyInfo<'_>) -> String {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => "ECDSA P-256".to_owned(),
            Some(c) if c == OID_NIST_EC_P384 => "ECDSA P-384".to_owned(),
            Some(c) if c == OID_NIST_EC_P521 => "ECDSA P-521".to_owned(),
            Some(c) => format!("ECDSA (curve {c})"),
            None => "ECDSA (unknown curve)".to_owned(),
        }
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        match rsa_modulus_bits(spki) {
            Some(bits) => format!("RSA {bits}"),
            None => "RSA (malformed)".to_owned(),
        }
    } else if *alg == OID_SIG_ED25519 {
        "Ed25519".to_owned()
    } else {
        format!("unknown key type {alg}")
    }
}

/// The size in bits of an RSA modulus, counted from its DER integer (leading zeros excluded).
pub(crate) fn rsa_modulus_bits(spki: &SubjectPublicKeyInfo<'_>) -> Option<usize> {
    let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
        return None;
    };
    let modulus = rsa.modulus;
    let first = modulus.iter().position(|&b| b != 0)?;
    let significant = &modulus[first..];
    let top = significant.first()?;
    Some(significant.len() * 8 - top.leading_zeros() as usize)
}

pub(crate) fn system_time(t: ASN1Time) -> SystemTime {
    SystemTime::from(t.to_datetime())
}

/// RFC 3339 in UTC, to the second: `2025-01-31T12:00:00Z` (how certificate times are shown
/// by `ambit ca inspect` and the node proxy's `/config_dump`).
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t).to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Encodes DER as a PEM block with `label` (e.g. `CERTIFICATE`), 64 columns, LF line ends.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        // `b64` is ASCII, so every byte index is a char boundary.
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn pem_encoding_round_trips_every_padding_length() {
        for len in [0usize, 1, 2, 3, 47, 48, 49, 100, 1000] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let pem = pem_encode("CERTIFICATE", &der);
            if len == 0 {
                continue; // pki-types refuses empty sections; nothing to compare
            }
            let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            assert_eq!(back.as_ref(), der.as_slice(), "length {len}");
            assert!(pem.lines().all(|l| l.len() <= 64 || l.starts_with("-----")));
        }
    }

    #[test]
    fn rfc3339_is_utc_seconds() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(parse(b"not a certificate").is_none());
        assert_eq!(
            spiffe_id_of_der(b"\x30\x03\x02\x01\x00"),
            Err(CertIdentityError::Unparsable)
        );
    }
}
