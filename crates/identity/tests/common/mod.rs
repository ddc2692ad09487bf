//! Helpers shared by the integration tests: CAs in temporary directories, plugged intermediate
//! CAs made the way an operator would, a signer that counts, fails or waits on demand.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset
#![allow(clippy::unwrap_used)] // test helpers: a panic is a test failure

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use ambit_identity::clock::{Clock, ManualClock};
use ambit_identity::{
    CaConfig, CertificateAuthority, CertificateManager, CertificateSigner, LocalSigner,
    ManagerConfig, SignError, SpiffeId, TrustDomain,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tempfile::TempDir;
use tokio::sync::watch;

pub const TRUST_DOMAIN: &str = "cluster.local";

pub fn td() -> TrustDomain {
    TRUST_DOMAIN.parse().unwrap()
}

pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(td(), ns, sa).unwrap()
}

pub fn config(clock: &ManualClock) -> CaConfig {
    CaConfig::new(td()).with_clock(Arc::new(clock.clone()))
}

/// A fresh root CA in a temporary directory, on `clock`.
pub fn root_ca(clock: &ManualClock) -> (TempDir, Arc<CertificateAuthority>) {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::init(dir.path(), &config(clock)).unwrap();
    (dir, Arc::new(ca))
}

pub fn manager<S: CertificateSigner>(signer: S, clock: &ManualClock) -> CertificateManager<S> {
    CertificateManager::new(signer, Arc::new(clock.clone()), ManagerConfig::default())
}

/// A CSR for `identity` from a fresh P-256 key (what a node proxy sends), DER.
pub fn csr_der(san_uri: &str) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(san_uri.try_into().unwrap())];
    params.serialize_request(&key).unwrap().der().to_vec()
}

pub fn ders(pems: &[String]) -> Vec<CertificateDer<'static>> {
    pems.iter()
        .flat_map(|p| CertificateDer::pem_slice_iter(p.as_bytes()))
        .collect::<Result<_, _>>()
        .unwrap()
}

/// How the plugged intermediate's key is written to `ca-key.pem`.
#[derive(Debug, Clone, Copy)]
pub enum KeyFormat {
    /// `PRIVATE KEY`, ECDSA P-256.
    Pkcs8,
    /// `EC PRIVATE KEY`, ECDSA P-256.
    Sec1,
    /// `RSA PRIVATE KEY`, RSA 2048 (Istio's sample plug-in certificates are RSA).
    Pkcs1Rsa,
}

/// Writes an intermediate CA, signed by the root CA in `root_dir`, to `dir` in Istio's plug-in
/// layout: `ca-cert.pem` (intermediate), `ca-key.pem`, `root-cert.pem`, and `cert-chain.pem`
/// (intermediate then root) when `with_chain`.
pub fn plug_intermediate(root_dir: &Path, dir: &Path, format: KeyFormat, with_chain: bool) {
    let root_pem = std::fs::read_to_string(root_dir.join("ca-cert.pem")).unwrap();
    let root_key =
        KeyPair::from_pem(&std::fs::read_to_string(root_dir.join("ca-key.pem")).unwrap()).unwrap();
    let root = Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();

    let key = match format {
        KeyFormat::Pkcs8 | KeyFormat::Sec1 => KeyPair::generate().unwrap(),
        KeyFormat::Pkcs1Rsa => KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap(),
    };
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, TRUST_DOMAIN);
    params
        .distinguished_name
        .push(DnType::CommonName, "Plugged intermediate CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(365 * 24 * 3600)).into();
    let cert_pem = params.signed_by(&key, &root).unwrap().pem();

    let key_pem = match format {
        KeyFormat::Pkcs8 => key.serialize_pem(),
        KeyFormat::Sec1 => {
            use aws_lc_rs::encoding::AsDer;
            let ec = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                &key.serialize_der(),
            )
            .unwrap();
            let sec1 = ec.private_key().as_der().unwrap();
            pem("EC PRIVATE KEY", sec1.as_ref())
        }
        KeyFormat::Pkcs1Rsa => pem("RSA PRIVATE KEY", &pkcs1_from_pkcs8(&key.serialize_der())),
    };
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca-cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.join("ca-key.pem"), key_pem).unwrap();
    std::fs::write(dir.join("root-cert.pem"), &root_pem).unwrap();
    if with_chain {
        std::fs::write(dir.join("cert-chain.pem"), format!("{cert_pem}{root_pem}")).unwrap();
    }
}

/// The RSAPrivateKey inside a PKCS#8 PrivateKeyInfo (its `privateKey` OCTET STRING).
fn pkcs1_from_pkcs8(pkcs8: &[u8]) -> Vec<u8> {
    use x509_parser::der_parser::der::parse_der_sequence;
    let (_, seq) = parse_der_sequence(pkcs8).unwrap();
    let items = seq.as_sequence().unwrap();
    items[2].as_slice().unwrap().to_vec()
}

fn pem(label: &str, der: &[u8]) -> String {
    // The crate's encoder is private: standard base64, 64 columns.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let b = |i: usize| u32::from(*chunk.get(i).unwrap_or(&0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let body: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        body.join("\n")
    )
}

/// A signer wrapping a [`LocalSigner`] that counts calls, can be made to fail, and can be made
/// to wait until released.
#[derive(Debug)]
pub struct TestSigner {
    inner: LocalSigner,
    calls: AtomicUsize,
    failing: AtomicBool,
    open: watch::Sender<bool>,
}

impl TestSigner {
    pub fn new(ca: Arc<CertificateAuthority>) -> Arc<Self> {
        Arc::new(Self {
            inner: LocalSigner::new(ca),
            calls: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            open: watch::Sender::new(true),
        })
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// While closed, every sign call waits.
    pub fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

impl CertificateSigner for TestSigner {
    async fn sign(&self, csr_pem: String, identity: &SpiffeId) -> Result<Vec<String>, SignError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
        if self.failing.load(Ordering::SeqCst) {
            return Err(SignError::Unavailable("test CA is down".to_owned()));
        }
        self.inner.sign(csr_pem, identity).await
    }
}

/// The manual clock's current time, for readable assertions.
pub fn now(clock: &ManualClock) -> SystemTime {
    clock.now()
}
