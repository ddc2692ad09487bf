//! Human-readable summaries of certificate files, for `ambit ca inspect FILE`.
//!
//! Reads any PEM file with one or more certificates (a leaf, a chain, a root bundle) and says,
//! per certificate: subject, SPIFFE id, issuer, serial, validity, CA or leaf, key type; and for
//! the file as a whole whether it is a chain, i.e. each certificate is issued by the next.
//! Nothing is trusted or validated against a root here: this is a description, not a verdict.

use std::fmt;
use std::time::SystemTime;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::{self, PemObject};

use crate::x509;

/// Why a file could not be described.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    #[error("no PEM CERTIFICATE blocks found")]
    NoCertificates,
    #[error("invalid PEM")]
    Pem(#[source] pem::Error),
    #[error("certificate {index} is not valid DER X.509")]
    Malformed { index: usize },
}

/// The certificates of one file, in file order. `Display` prints the whole report.
#[derive(Debug, Clone)]
pub struct ChainReport {
    pub certificates: Vec<CertSummary>,
}

/// One certificate, described.
#[derive(Debug, Clone)]
pub struct CertSummary {
    /// Position in the file, from 0.
    pub index: usize,
    /// RFC 4514-style subject; empty for Istio workload certificates.
    pub subject: String,
    pub issuer: String,
    /// Every `spiffe://` URI SAN (one for a well-formed workload certificate).
    pub spiffe_ids: Vec<String>,
    /// Colon-separated hex.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
    pub self_signed: bool,
    /// e.g. `ECDSA P-256`, `RSA 2048`.
    pub key_type: String,
    /// Whether the next certificate in the file issued this one; `None` for the last.
    pub issued_by_next: Option<bool>,
}

/// Describes every certificate in a PEM file.
pub fn describe_pem(pem_bytes: &[u8]) -> Result<ChainReport, InspectError> {
    let ders = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| match e {
            pem::Error::NoItemsFound => InspectError::NoCertificates,
            e => InspectError::Pem(e),
        })?;
    if ders.is_empty() {
        return Err(InspectError::NoCertificates);
    }
    let parsed = ders
        .iter()
        .enumerate()
        .map(|(index, der)| x509::parse(der).ok_or(InspectError::Malformed { index }))
        .collect::<Result<Vec<_>, _>>()?;
    let certificates = parsed
        .iter()
        .enumerate()
        .map(|(index, cert)| CertSummary {
            index,
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            spiffe_ids: x509::spiffe_uris(cert)
                .map(|uris| uris.into_iter().map(str::to_owned).collect())
                .unwrap_or_default(),
            serial: cert.raw_serial_as_string(),
            not_before: x509::system_time(cert.validity().not_before),
            not_after: x509::system_time(cert.validity().not_after),
            is_ca: matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca),
            self_signed: x509::is_self_signed(cert),
            key_type: x509::describe_key(cert.public_key()),
            issued_by_next: parsed
                .get(index + 1)
                .map(|next| x509::issued_by(cert, next)),
        })
        .collect();
    Ok(ChainReport { certificates })
}

impl ChainReport {
    /// Whether every certificate is issued by the one after it (trivially true for one).
    pub fn links(&self) -> bool {
        self.certificates
            .iter()
            .all(|c| c.issued_by_next != Some(false))
    }
}

impl fmt::Display for ChainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for cert in &self.certificates {
            writeln!(f, "{cert}")?;
        }
        match self.certificates.len() {
            1 => writeln!(f, "1 certificate"),
            n if self.links() => writeln!(
                f,
                "{n} certificates; the chain links: each is issued by the next"
            ),
            n => writeln!(
                f,
                "{n} certificates; NOT a chain: see \"issued by next\" above"
            ),
        }
    }
}

impl fmt::Display for CertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_empty = |s: &str| {
            if s.is_empty() {
                "(empty)".to_owned()
            } else {
                s.to_owned()
            }
        };
        let kind = match (self.is_ca, self.self_signed) {
            (true, true) => "CA (self-signed root)",
            (true, false) => "CA (intermediate)",
            (false, _) => "leaf",
        };
        writeln!(f, "certificate {}: {kind}", self.index)?;
        writeln!(f, "  subject:     {}", or_empty(&self.subject))?;
        match self.spiffe_ids.as_slice() {
            [] => writeln!(f, "  spiffe id:   (none)")?,
            ids => writeln!(f, "  spiffe id:   {}", ids.join(", "))?,
        }
        writeln!(f, "  issuer:      {}", or_empty(&self.issuer))?;
        writeln!(f, "  serial:      {}", self.serial)?;
        writeln!(f, "  not before:  {}", x509::rfc3339(self.not_before))?;
        writeln!(f, "  not after:   {}", x509::rfc3339(self.not_after))?;
        writeln!(f, "  key:         {}", self.key_type)?;
        match self.issued_by_next {
            Some(true) => write!(f, "  issued by next: yes"),
            Some(false) => write!(f, "  issued by next: NO"),
            None => write!(f, "  issued by next: (last in file)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_is_refused_with_a_reason() {
        assert!(matches!(
            describe_pem(b"not a certificate"),
            Err(InspectError::NoCertificates)
        ));
        let bogus = x509::pem_encode("CERTIFICATE", b"\x30\x03\x02\x01\x00");
        assert!(matches!(
            describe_pem(bogus.as_bytes()),
            Err(InspectError::Malformed { index: 0 })
        ));
    }
}
