use std::io;
use std::path::PathBuf;

use crate::spiffe::{SpiffeId, TrustDomain};

/// Why the CA could not be created, loaded, or could not sign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    // --- files ---
    #[error("a CA already exists: {} is present", .path.display())]
    AlreadyExists { path: PathBuf },
    #[error("cannot {action} {}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} holds no {what}", .path.display())]
    MissingPem { path: PathBuf, what: &'static str },
    #[error("{} is not valid PEM", .path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },

    // --- CA material ---
    #[error("{} holds an unsupported or malformed private key ({detail})", .path.display())]
    UnsupportedSigningKey { path: PathBuf, detail: String },
    #[error("certificate {index} in {} cannot be parsed", .path.display())]
    BadCertificate { path: PathBuf, index: usize },
    #[error("ca-key.pem does not match the public key of ca-cert.pem")]
    KeyMismatch,
    #[error("{which} ({subject}) is not a CA: it needs basicConstraints CA:true and keyCertSign")]
    NotCa { which: String, subject: String },
    #[error("ca-cert.pem has a subject this CA cannot reproduce as issuer name: {subject}")]
    UnsupportedCaSubject { subject: String },
    #[error("{which} expired at {not_after}")]
    Expired { which: String, not_after: String },
    #[error("the CA chain does not verify: {detail}")]
    ChainBroken { detail: String },
    #[error("a certificate issued by this CA does not verify against root-cert.pem")]
    SelfTest(#[source] rustls::Error),

    // --- signing ---
    #[error("certificate signing request is malformed: {0}")]
    CsrMalformed(String),
    #[error(
        "certificate signing request signature does not verify: it was altered, or not signed by the key it carries"
    )]
    CsrSignature,
    #[error("certificate signing request refused: {0}")]
    UnsupportedCsrKey(String),
    #[error("{identity} is outside this CA's trust domain {trust_domain}")]
    ForeignTrustDomain {
        identity: SpiffeId,
        trust_domain: TrustDomain,
    },
    #[error("cannot generate a key or certificate")]
    Generate(#[source] rcgen::Error),
    #[error("the system random number generator failed")]
    Random,
}
