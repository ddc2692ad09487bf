//! A workload's certificate and key, and the checks that turn a CA's answer into one.
//!
//! The key is generated here, used to sign the CSR, and then only ever handed to rustls as a
//! signing key inside [`CertifiedKey`]; no accessor returns key bytes.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::clock::Clock;
use crate::spiffe::SpiffeId;
use crate::x509::{self, CertIdentityError};

/// A workload's certificate chain with its private key, ready for rustls.
pub struct WorkloadCertificate {
    identity: SpiffeId,
    /// Leaf first, then intermediates: what is presented in a handshake.
    chain: Vec<CertificateDer<'static>>,
    /// The root the CA returned at the end of the chain, if it returned one.
    roots: Vec<CertificateDer<'static>>,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: String,
    certified_key: Arc<CertifiedKey>,
}

/// Why the manager refused a chain returned by the CA.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    #[error("the CA returned no certificates")]
    Empty,
    #[error("certificate {index} of the returned chain is not a valid PEM/DER certificate")]
    Malformed { index: usize },
    #[error("the leaf names no usable SPIFFE id")]
    NoIdentity(#[source] CertIdentityError),
    #[error("the leaf is for {actual}, not the requested {expected}")]
    WrongIdentity {
        expected: SpiffeId,
        actual: SpiffeId,
    },
    #[error("the leaf is a CA certificate")]
    LeafIsCa,
    #[error("the leaf's public key is not the key of our CSR")]
    KeyMismatch,
    #[error("certificate {index} of the returned chain is not issued by the next one")]
    Unlinked { index: usize },
    #[error("the leaf already expired at {not_after}")]
    Expired { not_after: String },
    #[error("rustls cannot use the key")]
    KeyLoad(#[source] rustls::Error),
}

/// A freshly generated key waiting for its certificate.
pub(super) struct PendingKey {
    key: KeyPair,
}

// === impl WorkloadCertificate ===

impl WorkloadCertificate {
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// Leaf first, then intermediates (the root is not presented).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn leaf(&self) -> &CertificateDer<'static> {
        // Invariant: `chain` always holds the leaf (checked in `PendingKey::into_certificate`).
        &self.chain[0]
    }

    /// The root that ended the CA's answer, if any (informational: trust comes from the
    /// configured mesh roots, not from this).
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The leaf's serial number, colon-separated hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The chain and signing key for rustls.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    /// Time left before expiry by `clock`; zero once expired.
    pub fn expires_in(&self, clock: &dyn Clock) -> Duration {
        self.not_after
            .duration_since(clock.now())
            .unwrap_or(Duration::ZERO)
    }

    pub fn is_expired(&self, clock: &dyn Clock) -> bool {
        clock.now() >= self.not_after
    }
}

impl fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is deliberately absent.
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity)
            .field("serial", &self.serial)
            .field("not_before", &x509::rfc3339(self.not_before))
            .field("not_after", &x509::rfc3339(self.not_after))
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

// === impl PendingKey ===

impl PendingKey {
    /// A new ECDSA P-256 key.
    pub(super) fn generate() -> Result<Self, rcgen::Error> {
        Ok(Self {
            key: KeyPair::generate()?,
        })
    }

    /// A CSR for `identity` signed by this key: empty subject, one URI SAN (as ztunnel sends).
    pub(super) fn csr_pem(&self, identity: &SpiffeId) -> Result<String, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(identity.as_str())?)];
        params.serialize_request(&self.key)?.pem()
    }

    /// Checks the CA's answer and binds it to this key. Never trusts the CA blindly: the leaf
    /// must name `identity`, carry our public key, not be a CA, not be expired at `now`, and
    /// each certificate must be issued by the next.
    pub(super) fn into_certificate(
        self,
        identity: &SpiffeId,
        pems: &[String],
        now: SystemTime,
    ) -> Result<WorkloadCertificate, ChainError> {
        let mut ders = Vec::with_capacity(pems.len());
        for pem in pems {
            for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let index = ders.len();
                ders.push(der.map_err(|_| ChainError::Malformed { index })?);
            }
        }
        let parsed = ders
            .iter()
            .enumerate()
            .map(|(index, der)| x509::parse(der).ok_or(ChainError::Malformed { index }))
            .collect::<Result<Vec<_>, _>>()?;
        let leaf = parsed.first().ok_or(ChainError::Empty)?;

        let actual = x509::spiffe_id(leaf).map_err(ChainError::NoIdentity)?;
        if &actual != identity {
            return Err(ChainError::WrongIdentity {
                expected: identity.clone(),
                actual,
            });
        }
        if matches!(leaf.basic_constraints(), Ok(Some(bc)) if bc.value.ca) {
            return Err(ChainError::LeafIsCa);
        }
        if x509::public_key_bits(leaf) != self.key.public_key_raw() {
            return Err(ChainError::KeyMismatch);
        }
        for (index, pair) in parsed.windows(2).enumerate() {
            if let [child, parent] = pair
                && !x509::issued_by(child, parent)
            {
                return Err(ChainError::Unlinked { index });
            }
        }
        let not_before = x509::system_time(leaf.validity().not_before);
        let not_after = x509::system_time(leaf.validity().not_after);
        if not_after <= now {
            return Err(ChainError::Expired {
                not_after: x509::rfc3339(not_after),
            });
        }
        let serial = leaf.raw_serial_as_string();
        let root_at_end = parsed.len() > 1 && parsed.last().is_some_and(x509::is_self_signed);
        drop(parsed);

        let mut chain = ders;
        let roots = if root_at_end {
            chain.pop().into_iter().collect()
        } else {
            Vec::new()
        };
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        let signing_key = crate::provider::provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(ChainError::KeyLoad)?;
        let certified_key = CertifiedKey::new(chain.clone(), signing_key);
        // Belt and braces: rustls' own comparison of the key with the leaf's SPKI.
        certified_key
            .keys_match()
            .map_err(|_| ChainError::KeyMismatch)?;
        Ok(WorkloadCertificate {
            identity: identity.clone(),
            chain,
            roots,
            not_before,
            not_after,
            serial,
            certified_key: Arc::new(certified_key),
        })
    }
}
