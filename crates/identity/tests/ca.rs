//! The certificate authority: Istio's plug-in layout on disk, issuance, chain validation with
//! webpki, and every refusal asserted by variant.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is a test failure

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use ambit_identity::ca::{CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE};
use ambit_identity::clock::ManualClock;
use ambit_identity::{CaConfig, CaError, CertificateAuthority, inspect};
use common::{KeyFormat, TRUST_DOMAIN, config, csr_der, ders, id, plug_intermediate, root_ca};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ParsedCertificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// Full webpki validation of `chain` (leaf first) against `roots` at `at`, as a TLS peer does.
fn webpki_verify(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
    at: SystemTime,
) -> Result<(), rustls::Error> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone())?;
    }
    let (leaf, intermediates) = chain.split_first().unwrap();
    let now = UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap());
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &ParsedCertificate::try_from(leaf)?,
        &store,
        intermediates,
        now,
        ambit_identity::tls::provider()
            .signature_verification_algorithms
            .all,
    )
}

#[test]
fn init_writes_istio_plugin_layout_with_a_private_key_file() {
    let clock = ManualClock::starting_now();
    let (dir, ca) = root_ca(&clock);
    for file in [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE] {
        assert!(dir.path().join(file).is_file(), "{file} missing");
    }
    let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the CA key must be readable by its owner only"
    );

    let root_file = std::fs::read_to_string(dir.path().join(ROOT_CERT_FILE)).unwrap();
    assert_eq!(ca.root_pem(), root_file);
    assert_eq!(ca.roots().len(), 1);
    let report = inspect::describe_pem(root_file.as_bytes()).unwrap();
    let root = &report.certificates[0];
    assert!(root.is_ca && root.self_signed, "{report}");
    assert!(root.subject.contains("Ambit root CA") && root.subject.contains(TRUST_DOMAIN));
    assert_eq!(root.key_type, "ECDSA P-256");
    let ten_years = Duration::from_secs(10 * 365 * 24 * 3600);
    assert!(root.not_after >= clock_now(&clock) + ten_years - Duration::from_secs(60));

    let (_, cert) = x509_parser::parse_x509_certificate(ca.roots()[0].as_ref()).unwrap();
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
}

#[test]
fn init_refuses_to_overwrite_and_load_or_init_reuses() {
    let clock = ManualClock::starting_now();
    let (dir, ca) = root_ca(&clock);
    let key_before = std::fs::read(dir.path().join(CA_KEY_FILE)).unwrap();
    let err = CertificateAuthority::init(dir.path(), &config(&clock)).unwrap_err();
    assert!(matches!(err, CaError::AlreadyExists { .. }), "{err:?}");
    assert_eq!(
        std::fs::read(dir.path().join(CA_KEY_FILE)).unwrap(),
        key_before
    );

    let again = CertificateAuthority::load_or_init(dir.path(), &config(&clock)).unwrap();
    assert_eq!(
        again.roots(),
        ca.roots(),
        "load_or_init must load the existing CA"
    );

    let fresh = tempfile::tempdir().unwrap();
    let created =
        CertificateAuthority::load_or_init(&fresh.path().join("new"), &config(&clock)).unwrap();
    assert_ne!(created.roots(), ca.roots());
}

#[test]
fn issued_leaf_has_istio_shape_and_ignores_what_the_csr_asks_for() {
    let clock = ManualClock::starting_now();
    let (_dir, ca) = root_ca(&clock);
    let identity = id("bookinfo", "reviews");
    // The CSR asks for somebody else's identity; the CA must not care.
    let csr = csr_der("spiffe://cluster.local/ns/kube-system/sa/admin");
    let issued = ca.sign(&csr, &identity, None).unwrap();

    let chain = ders(issued.cert_chain());
    assert_eq!(chain.len(), 2, "leaf then root");
    assert_eq!(chain[1], ca.roots()[0], "root last");
    webpki_verify(&chain, ca.roots(), clock_now(&clock)).unwrap();

    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(&chain[0]).unwrap();
    assert_eq!(
        leaf.subject().iter().count(),
        0,
        "Istio leaves the subject empty"
    );
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "SAN must be critical with an empty subject");
    let names: Vec<_> = san.value.general_names.iter().collect();
    assert_eq!(names, [&GeneralName::URI(identity.as_str())]);
    assert!(!leaf.is_ca());
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let has = |f: fn(&ParsedExtension<'_>) -> bool| {
        leaf.extensions().iter().any(|e| f(e.parsed_extension()))
    };
    assert!(has(|e| matches!(
        e,
        ParsedExtension::AuthorityKeyIdentifier(_)
    )));
    assert!(has(|e| matches!(
        e,
        ParsedExtension::SubjectKeyIdentifier(_)
    )));
    assert!(leaf.raw_serial().len() >= 15, "random 128-bit serial");
    assert_eq!(issued.serial(), leaf.raw_serial_as_string());
    let other = ca.sign(&csr, &identity, None).unwrap();
    assert_ne!(other.serial(), issued.serial());

    let now = clock_now(&clock);
    let not_before = x509_parser::time::ASN1Time::to_datetime(&leaf.validity().not_before);
    assert_eq!(
        SystemTime::from(not_before),
        trunc(now) - Duration::from_secs(60)
    );
    assert_eq!(issued.not_before(), trunc(now) - Duration::from_secs(60));
    assert_eq!(
        issued.not_after(),
        trunc(now) + Duration::from_secs(24 * 3600)
    );
}

#[test]
fn ttl_is_clamped_and_zero_means_default() {
    let clock = ManualClock::starting_now();
    let (_dir, ca) = root_ca(&clock);
    let identity = id("default", "default");
    let now = clock_now(&clock);
    let day = Duration::from_secs(24 * 3600);
    let cases = [
        (None, day),
        (Some(Duration::ZERO), day),
        (Some(Duration::from_secs(3600)), Duration::from_secs(3600)),
        (Some(90 * day), 7 * day),
    ];
    for (requested, expected) in cases {
        let issued = ca
            .sign(&csr_der(identity.as_str()), &identity, requested)
            .unwrap();
        assert_eq!(
            issued.not_after(),
            trunc(now) + expected,
            "requested {requested:?}"
        );
    }
}

#[test]
fn plugged_intermediate_issues_leaf_intermediate_root_chains() {
    let clock = ManualClock::starting_now();
    let (root_dir, root) = root_ca(&clock);
    for format in [KeyFormat::Pkcs8, KeyFormat::Sec1, KeyFormat::Pkcs1Rsa] {
        let dir = tempfile::tempdir().unwrap();
        plug_intermediate(root_dir.path(), dir.path(), format, true);
        let ca = CertificateAuthority::load(dir.path(), &config(&clock))
            .unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(ca.roots(), root.roots(), "{format:?}");

        let identity = id("payments", "api");
        let issued = ca
            .sign(&csr_der(identity.as_str()), &identity, None)
            .unwrap();
        let chain = ders(issued.cert_chain());
        assert_eq!(chain.len(), 3, "{format:?}: leaf, intermediate, root");
        assert_eq!(chain[2], root.roots()[0], "{format:?}: root last");
        // Trusting only the root, the leaf verifies through the intermediate.
        webpki_verify(&chain[..2], root.roots(), clock_now(&clock)).unwrap();
        let report = inspect::describe_pem(issued.cert_chain().concat().as_bytes()).unwrap();
        assert!(report.links(), "{format:?}: {report}");
        assert_eq!(report.certificates[0].spiffe_ids, [identity.to_string()]);
        let expected_key = match format {
            KeyFormat::Pkcs1Rsa => "RSA 2048",
            _ => "ECDSA P-256",
        };
        assert_eq!(report.certificates[1].key_type, expected_key);
    }
}

#[test]
fn intermediate_without_cert_chain_file_still_links_to_its_root() {
    let clock = ManualClock::starting_now();
    let (root_dir, root) = root_ca(&clock);
    let dir = tempfile::tempdir().unwrap();
    plug_intermediate(root_dir.path(), dir.path(), KeyFormat::Pkcs8, false);
    let ca = CertificateAuthority::load(dir.path(), &config(&clock)).unwrap();
    let identity = id("a", "b");
    let chain = ders(
        ca.sign(&csr_der(identity.as_str()), &identity, None)
            .unwrap()
            .cert_chain(),
    );
    assert_eq!(chain.len(), 3);
    webpki_verify(&chain[..2], root.roots(), clock_now(&clock)).unwrap();
}

#[test]
fn bad_plugin_material_is_refused_by_variant() {
    let clock = ManualClock::starting_now();
    let (root_dir, _) = root_ca(&clock);
    let (other_dir, _) = root_ca(&clock);
    let copy = |from: &std::path::Path, file: &str, to: &std::path::Path, as_file: &str| {
        std::fs::copy(from.join(file), to.join(as_file)).unwrap();
    };

    // Key of another CA.
    let dir = tempfile::tempdir().unwrap();
    plug_intermediate(root_dir.path(), dir.path(), KeyFormat::Pkcs8, true);
    copy(other_dir.path(), CA_KEY_FILE, dir.path(), CA_KEY_FILE);
    let err = CertificateAuthority::load(dir.path(), &config(&clock)).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch), "{err:?}");

    // root-cert.pem of another mesh: the chain does not reach it.
    let dir = tempfile::tempdir().unwrap();
    plug_intermediate(root_dir.path(), dir.path(), KeyFormat::Pkcs8, false);
    copy(other_dir.path(), ROOT_CERT_FILE, dir.path(), ROOT_CERT_FILE);
    let err = CertificateAuthority::load(dir.path(), &config(&clock)).unwrap_err();
    assert!(matches!(err, CaError::ChainBroken { .. }), "{err:?}");

    // A workload certificate (not a CA) as ca-cert.pem, with its own key.
    let dir = tempfile::tempdir().unwrap();
    copy(root_dir.path(), ROOT_CERT_FILE, dir.path(), ROOT_CERT_FILE);
    let root = CertificateAuthority::load(root_dir.path(), &config(&clock)).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://cluster.local/ns/a/sa/b".try_into().unwrap(),
    )];
    let csr = params.serialize_request(&key).unwrap();
    let issued = root.sign(csr.der(), &id("a", "b"), None).unwrap();
    std::fs::write(dir.path().join(CA_CERT_FILE), issued.leaf_pem()).unwrap();
    std::fs::write(dir.path().join(CA_KEY_FILE), key.serialize_pem()).unwrap();
    let err = CertificateAuthority::load(dir.path(), &config(&clock)).unwrap_err();
    assert!(matches!(err, CaError::NotCa { .. }), "{err:?}");

    // Missing and garbage files are named.
    let dir = tempfile::tempdir().unwrap();
    let err = CertificateAuthority::load(dir.path(), &config(&clock)).unwrap_err();
    assert!(
        matches!(&err, CaError::Io { path, .. } if path.ends_with(CA_CERT_FILE)),
        "{err:?}"
    );
    copy(root_dir.path(), CA_CERT_FILE, dir.path(), CA_CERT_FILE);
    std::fs::write(dir.path().join(CA_KEY_FILE), "no key here").unwrap();
    let err = CertificateAuthority::load(dir.path(), &config(&clock)).unwrap_err();
    assert!(
        matches!(&err, CaError::MissingPem { path, .. } if path.ends_with(CA_KEY_FILE)),
        "{err:?}"
    );
}

#[test]
fn expired_ca_is_refused_at_load() {
    let long_ago = ManualClock::new(SystemTime::now() - Duration::from_secs(11 * 365 * 24 * 3600));
    let (dir, _) = root_ca(&long_ago);
    let err = CertificateAuthority::load(dir.path(), &CaConfig::new(common::td())).unwrap_err();
    assert!(matches!(err, CaError::Expired { .. }), "{err:?}");
}

#[test]
fn tampered_csr_is_refused() {
    let clock = ManualClock::starting_now();
    let (_dir, ca) = root_ca(&clock);
    let identity = id("shop", "cart");
    let mut csr = csr_der("spiffe://cluster.local/ns/shop/sa/cart");
    // Rewrite the requested identity inside the signed part: it still parses, no longer verifies.
    let at = csr.windows(4).position(|w| w == b"cart").unwrap();
    csr[at..at + 4].copy_from_slice(b"cash");
    let err = ca.sign(&csr, &identity, None).unwrap_err();
    assert!(matches!(err, CaError::CsrSignature), "{err:?}");

    let err = ca.sign(b"garbage", &identity, None).unwrap_err();
    assert!(matches!(err, CaError::CsrMalformed(_)), "{err:?}");
}

#[test]
fn identities_outside_the_trust_domain_are_refused() {
    let clock = ManualClock::starting_now();
    let (_dir, ca) = root_ca(&clock);
    let foreign = ambit_identity::SpiffeId::new("other.mesh".parse().unwrap(), "a", "b").unwrap();
    let err = ca
        .sign(&csr_der(foreign.as_str()), &foreign, None)
        .unwrap_err();
    assert!(matches!(err, CaError::ForeignTrustDomain { .. }), "{err:?}");
}

#[test]
fn weak_keys_are_refused() {
    let clock = ManualClock::starting_now();
    let (_dir, ca) = root_ca(&clock);
    let identity = id("a", "b");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    let err = ca.sign(csr.der(), &identity, None).unwrap_err();
    assert!(matches!(err, CaError::UnsupportedCsrKey(_)), "{err:?}");
}

fn clock_now(clock: &ManualClock) -> SystemTime {
    common::now(clock)
}

/// `t` truncated to whole seconds (X.509 times have second precision).
fn trunc(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}
