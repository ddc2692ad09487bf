//! The mesh certificate authority: what istiod's `IstioCertificateService/CreateCertificate`
//! does, in process.
//!
//! Its files use Istio's plug-in CA layout, so a directory made for istiod's `cacerts` secret
//! works here and one made by [`CertificateAuthority::init`] works for istiod; the same names
//! are the keys of a Secret's data ([`CaPem`], [`CertificateAuthority::from_pem`]):
//!
//! | file | content |
//! |---|---|
//! | `ca-cert.pem` | the signing certificate (a root, or an intermediate under it) |
//! | `ca-key.pem` | its private key: PKCS#8, SEC1 (`EC PRIVATE KEY`) or PKCS#1 RSA; mode 0600 |
//! | `root-cert.pem` | the root(s) the mesh trusts |
//! | `cert-chain.pem` | optional: `ca-cert` and any intermediates up to the root |
//!
//! Invariants:
//! - The identity in an issued certificate comes only from the `identity` argument of
//!   [`CertificateAuthority::sign`]; whatever subject or SANs the CSR asks for are ignored. The
//!   caller (the gRPC service) is responsible for having authenticated that identity.
//! - A CSR is signed only after its own signature verifies with the key it carries, and only for
//!   ECDSA P-256/P-384 or RSA 2048–8192 keys.
//! - A CA is only ever constructed from material that links leaf → signing cert → intermediates
//!   → a root in `root-cert.pem` and whose key matches `ca-cert.pem`; a throwaway certificate is
//!   issued and verified with webpki at load to prove it.
//! - The key file is created with mode 0600 (never briefly wider) and an existing CA is never
//!   overwritten.

mod csr;
mod error;
mod load;
mod serving;
mod store;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ParsedCertificate;

use crate::clock::{Clock, SystemClock};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::x509;

pub use error::CaError;
pub use serving::ServingCertificate;
pub use store::{CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE};

/// Lifetime of a workload certificate when the caller asks for none (Istio's default).
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest workload certificate this CA issues unless configured otherwise. Istio allows 90
/// days; a week keeps a leaked workload key useful for little time while still letting node
/// proxies ride out a long control-plane outage on a refreshed 24-hour certificate.
pub const DEFAULT_MAX_WORKLOAD_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Lifetime of a root created by [`CertificateAuthority::init`].
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How far `not_before` is backdated, so peers whose clocks lag a little accept a fresh cert.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);
/// Common name of roots created by [`CertificateAuthority::init`].
pub const ROOT_COMMON_NAME: &str = "Ambit root CA";

/// How the CA issues certificates.
#[derive(Debug, Clone)]
pub struct CaConfig {
    pub trust_domain: TrustDomain,
    /// Lifetime when the request asks for none, or for zero.
    pub default_ttl: Duration,
    /// Upper bound on any requested lifetime.
    pub max_ttl: Duration,
    /// Source of "now" for validity periods and expiry checks.
    pub clock: Arc<dyn Clock>,
}

/// CA material in Istio's plug-in layout, as PEM bytes, wherever it is kept: a directory
/// ([`CertificateAuthority::load`]) or a Kubernetes Secret's data under the same key names.
#[derive(Clone)]
pub struct CaPem {
    /// Where it came from (a directory, or `<namespace>/<secret>`); errors name
    /// `<origin>/<file>`.
    pub origin: std::path::PathBuf,
    /// `ca-cert.pem`: the signing certificate.
    pub ca_cert: Vec<u8>,
    /// `ca-key.pem`: its private key.
    pub ca_key: Vec<u8>,
    /// `root-cert.pem`: the root(s) the mesh trusts.
    pub root_cert: Vec<u8>,
    /// `cert-chain.pem`, if there is one.
    pub cert_chain: Option<Vec<u8>>,
}

impl std::fmt::Debug for CaPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("CaPem")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// A certificate chain issued for one workload: what `CreateCertificate` returns.
#[derive(Debug, Clone)]
pub struct IssuedChain {
    cert_chain: Vec<String>,
    serial: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// The mesh certificate authority. See the [module docs](self).
pub struct CertificateAuthority {
    config: CaConfig,
    issuer: Issuer<'static, KeyPair>,
    signing_not_after: SystemTime,
    /// PEMs that follow the leaf in every issued chain: intermediates (the signing cert first,
    /// unless it is the root), then the root that anchors them.
    chain_tail: Vec<String>,
    roots: Vec<CertificateDer<'static>>,
    root_pem: String,
}

// === impl CaConfig ===

impl CaConfig {
    /// Istio's defaults for `trust_domain`, on the system clock.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            default_ttl: DEFAULT_WORKLOAD_TTL,
            max_ttl: DEFAULT_MAX_WORKLOAD_TTL,
            clock: Arc::new(SystemClock),
        }
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The lifetime to issue for `requested`: none or zero means the default; anything longer
    /// than `max_ttl` is clamped to it.
    pub fn effective_ttl(&self, requested: Option<Duration>) -> Duration {
        match requested {
            Some(ttl) if !ttl.is_zero() => ttl.min(self.max_ttl),
            _ => self.default_ttl.min(self.max_ttl),
        }
    }
}

// === impl CertificateAuthority ===

impl CertificateAuthority {
    /// Creates a self-signed ECDSA P-256 root in `dir` (created if missing) and loads it.
    /// Refuses with [`CaError::AlreadyExists`] if any plug-in file is already there.
    pub fn init(dir: &Path, config: &CaConfig) -> Result<Self, CaError> {
        store::ensure_absent(dir)?;
        let root = Self::generate_root(config)?;
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let (key, cert) = (text(&root.ca_key), text(&root.ca_cert));
        store::write_new(
            dir,
            &[
                (CA_KEY_FILE, key.as_str()),
                (CA_CERT_FILE, cert.as_str()),
                (ROOT_CERT_FILE, cert.as_str()),
                (CERT_CHAIN_FILE, cert.as_str()),
            ],
        )?;
        tracing::info!(dir = %dir.display(), trust_domain = %config.trust_domain, "created a root CA");
        // Reading back what was written proves the files are loadable, not just written.
        Self::load(dir, config)
    }

    /// A new self-signed ECDSA P-256 root (organization: the trust domain; valid
    /// [`ROOT_TTL`]), in memory, for the caller to keep (a Kubernetes Secret, say) and then
    /// load with [`Self::from_pem`]. `ca-cert` and `root-cert` are the same certificate; there
    /// is no chain.
    pub fn generate_root(config: &CaConfig) -> Result<CaPem, CaError> {
        let key = KeyPair::generate().map_err(CaError::Generate)?;
        let now = config.clock.now();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, config.trust_domain.as_str());
        dn.push(DnType::CommonName, ROOT_COMMON_NAME);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = (now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)).into();
        params.not_after = (now.checked_add(ROOT_TTL).unwrap_or(now)).into();
        params.serial_number = Some(random_serial()?);
        let root_pem = params.self_signed(&key).map_err(CaError::Generate)?.pem();
        Ok(CaPem {
            origin: "generated".into(),
            ca_cert: root_pem.clone().into_bytes(),
            ca_key: key.serialize_pem().into_bytes(),
            root_cert: root_pem.into_bytes(),
            cert_chain: None,
        })
    }

    /// Loads a CA from Istio's plug-in layout in `dir`, checking that the key matches
    /// `ca-cert.pem`, that it is a CA, and that the chain verifies to `root-cert.pem`.
    pub fn load(dir: &Path, config: &CaConfig) -> Result<Self, CaError> {
        Self::from_pem(&store::read_pem(dir)?, config)
    }

    /// Loads a CA from plug-in material held in memory (a Secret's data), with every check of
    /// [`Self::load`].
    pub fn from_pem(pem: &CaPem, config: &CaConfig) -> Result<Self, CaError> {
        let files = store::decode(pem)?;
        let material = load::validate(&files, config.clock.now())?;
        let ca = Self {
            config: config.clone(),
            issuer: material.issuer,
            signing_not_after: material.signing_not_after,
            chain_tail: material
                .chain_tail
                .iter()
                .map(|der| x509::pem_encode("CERTIFICATE", der))
                .collect(),
            root_pem: files
                .roots
                .iter()
                .map(|der| x509::pem_encode("CERTIFICATE", der))
                .collect(),
            roots: files.roots,
        };
        ca.self_test()?;
        Ok(ca)
    }

    /// Whether `dir` holds a plug-in CA (its `ca-cert.pem` or `ca-key.pem`): then it is the
    /// CA to load, and a missing part is an error rather than a reason to create a root.
    pub fn plugin_present(dir: &Path) -> bool {
        store::any_present(dir)
    }

    /// Loads the CA in `dir`, or creates one there if it holds neither `ca-cert.pem` nor
    /// `ca-key.pem` (first start).
    pub fn load_or_init(dir: &Path, config: &CaConfig) -> Result<Self, CaError> {
        if store::any_present(dir) {
            Self::load(dir, config)
        } else {
            Self::init(dir, config)
        }
    }

    /// Issues a workload certificate for `identity` to the key in `csr` (PEM or DER).
    ///
    /// The CSR's own subject and SANs are ignored: the certificate names `identity` and nothing
    /// else. The lifetime is `requested_ttl` clamped to `max_ttl` (none or zero: the default),
    /// and never beyond the signing certificate's own expiry.
    pub fn sign(
        &self,
        csr: &[u8],
        identity: &SpiffeId,
        requested_ttl: Option<Duration>,
    ) -> Result<IssuedChain, CaError> {
        if identity.trust_domain() != &self.config.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                identity: identity.clone(),
                trust_domain: self.config.trust_domain.clone(),
            });
        }
        let public_key = csr::verify(csr)?;
        let now = self.config.clock.now();
        if now >= self.signing_not_after {
            return Err(CaError::Expired {
                which: CA_CERT_FILE.to_owned(),
                not_after: x509::rfc3339(self.signing_not_after),
            });
        }
        let ttl = self.config.effective_ttl(requested_ttl);
        // X.509 times have whole seconds; truncate so what we report is what the cert says.
        let not_before = whole_seconds(now.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap_or(now));
        let not_after = whole_seconds(
            now.checked_add(ttl)
                .map_or(self.signing_not_after, |t| t.min(self.signing_not_after)),
        );

        let uri = Ia5String::try_from(identity.as_str()).map_err(CaError::Generate)?;
        let serial = random_serial()?;
        let mut params = CertificateParams::default();
        // Istio leaves the subject empty; the URI SAN (then marked critical) is the identity.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(serial.clone());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&public_key, &self.issuer)
            .map_err(CaError::Generate)?;

        let mut cert_chain = Vec::with_capacity(1 + self.chain_tail.len());
        cert_chain.push(leaf.pem());
        cert_chain.extend(self.chain_tail.iter().cloned());
        // As the certificate encodes it (DER may prepend a zero byte), like `inspect` shows it.
        let serial = x509::parse(leaf.der())
            .map_or_else(|| serial.to_string(), |c| c.raw_serial_as_string());
        tracing::debug!(%identity, %serial, not_after = %x509::rfc3339(not_after), "issued a workload certificate");
        Ok(IssuedChain {
            cert_chain,
            serial,
            not_before,
            not_after,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.config.trust_domain
    }

    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// The content of `root-cert.pem`: every root the mesh trusts, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Every root the mesh trusts, DER: the trust anchors for [`crate::tls`].
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Issues a short certificate to a fresh key and verifies it with webpki against
    /// [`Self::roots`], exactly as a peer would.
    fn self_test(&self) -> Result<(), CaError> {
        let key = KeyPair::generate().map_err(CaError::Generate)?;
        // Invariant: the trust domain is valid and the segments are constant valid names, and
        // a trust domain is at most 255 bytes, so the id is far below the 2048-byte limit.
        let identity = SpiffeId::new(
            self.config.trust_domain.clone(),
            "ambit-system",
            "self-test",
        )
        .expect("constant identity is valid");
        let uri = Ia5String::try_from(identity.as_str()).map_err(CaError::Generate)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params.serialize_request(&key).map_err(CaError::Generate)?;
        let issued = self.sign(csr.der(), &identity, Some(CLOCK_SKEW_ALLOWANCE))?;
        let ders = issued.to_der().map_err(CaError::SelfTest)?;
        let (leaf, rest) = ders
            .split_first()
            .ok_or(CaError::SelfTest(rustls::Error::NoCertificatesPresented))?;
        let intermediates = rest.split_last().map_or(&[][..], |(_root, mid)| mid);
        let mut store = RootCertStore::empty();
        for root in &self.roots {
            store.add(root.clone()).map_err(CaError::SelfTest)?;
        }
        let now = self
            .config
            .clock
            .now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let parsed = ParsedCertificate::try_from(leaf).map_err(CaError::SelfTest)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &store,
            intermediates,
            UnixTime::since_unix_epoch(now),
            crate::provider::provider()
                .signature_verification_algorithms
                .all,
        )
        .map_err(CaError::SelfTest)
    }
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The issuer's Debug elides the key; keep the output short anyway.
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.config.trust_domain)
            .field("signing_not_after", &x509::rfc3339(self.signing_not_after))
            .field("chain_len", &(self.chain_tail.len() + 1))
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

// === impl IssuedChain ===

impl IssuedChain {
    /// PEM certificates, leaf first, then intermediates, root last: `cert_chain` of Istio's
    /// `IstioCertificateResponse`.
    pub fn cert_chain(&self) -> &[String] {
        &self.cert_chain
    }

    pub fn into_cert_chain(self) -> Vec<String> {
        self.cert_chain
    }

    pub fn leaf_pem(&self) -> &str {
        self.cert_chain.first().map_or("", String::as_str)
    }

    /// The leaf's serial number, colon-separated hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The chain as DER, same order.
    pub fn to_der(&self) -> Result<Vec<CertificateDer<'static>>, rustls::Error> {
        use rustls::pki_types::pem::PemObject;
        self.cert_chain
            .iter()
            .map(|pem| {
                CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
                    rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
                })
            })
            .collect()
    }
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs()),
        Err(_) => t,
    }
}

/// A random positive 128-bit serial number (RFC 5280 allows up to 20 octets).
fn random_serial() -> Result<SerialNumber, CaError> {
    let bytes: [u8; 16] = crate::random_bytes().ok_or(CaError::Random)?;
    Ok(SerialNumber::from_slice(&bytes))
}
