//! The read-or-create logic on an in-memory root store (a store, not an API server: the same
//! logic against the real API server is tested in the Kubernetes tier).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// Holds at most one root; can be told to fail reads, or to have a rival win the next create.
#[derive(Default)]
struct MemoryStore {
    root: Mutex<Option<CaPem>>,
    failing_reads: AtomicUsize,
    rival: Mutex<Option<CaPem>>,
    creates: AtomicUsize,
}

impl RootStore for MemoryStore {
    fn get(&self) -> BoxFuture<'_, Result<Option<CaPem>, String>> {
        let result = if self.failing_reads.load(Ordering::SeqCst) > 0 {
            self.failing_reads.fetch_sub(1, Ordering::SeqCst);
            Err("cannot read Secret ns/istio-ca-secret: connection refused".to_owned())
        } else {
            Ok(self.root.lock().unwrap().clone())
        };
        Box::pin(std::future::ready(result))
    }

    fn create<'a>(&'a self, root: &'a CaPem) -> BoxFuture<'a, Result<Created, String>> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        let mut stored = self.root.lock().unwrap();
        if let Some(rival) = self.rival.lock().unwrap().take() {
            *stored = Some(rival);
        }
        let result = if stored.is_some() {
            Created::AlreadyExists
        } else {
            *stored = Some(root.clone());
            Created::Stored
        };
        Box::pin(std::future::ready(Ok(result)))
    }
}

/// The root a CA trusts, as DER, to compare with stored PEM.
fn root_of(ca: &CertificateAuthority) -> Vec<u8> {
    ca.roots()[0].to_vec()
}

fn der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem).unwrap().to_vec()
}

fn config() -> CaConfig {
    CaConfig::new("cluster.local".parse().unwrap())
}

fn readiness() -> Readiness {
    Readiness::waiting_for([PRECONDITION])
}

#[tokio::test]
async fn first_start_creates_and_later_starts_load_the_same_root() {
    let store = MemoryStore::default();
    let (first, origin) = self_signed(&store, &config(), &readiness()).await;
    assert_eq!(origin, Origin::Created);
    let stored = store.root.lock().unwrap().clone().unwrap();
    assert_eq!(root_of(&first), der(&stored.root_cert));

    let r = readiness();
    let (again, origin) = self_signed(&store, &config(), &r).await;
    assert_eq!(origin, Origin::Loaded);
    assert_eq!(root_of(&again), root_of(&first));
    assert!(r.is_ready());
    assert_eq!(store.creates.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn losing_the_create_race_uses_the_winners_root() {
    let store = MemoryStore::default();
    let rival = CertificateAuthority::generate_root(&config()).unwrap();
    *store.rival.lock().unwrap() = Some(rival.clone());
    let (ca, origin) = self_signed(&store, &config(), &readiness()).await;
    assert_eq!(origin, Origin::Loaded, "read back after the conflict");
    assert_eq!(root_of(&ca), der(&rival.ca_cert));
    assert_eq!(
        store.root.lock().unwrap().as_ref().unwrap().ca_cert,
        rival.ca_cert,
        "the winner's root is never replaced"
    );
}

#[tokio::test]
async fn read_failures_are_retried_and_shown_until_they_stop() {
    let store = MemoryStore {
        failing_reads: AtomicUsize::new(2),
        ..MemoryStore::default()
    };
    let r = readiness();
    let task = tokio::spawn({
        let r = r.clone();
        async move { self_signed(&store, &config(), &r).await.1 }
    });
    ambit_testkit::eventually!(r.describe().contains("connection refused"));
    assert_eq!(task.await.unwrap(), Origin::Created);
    assert!(r.is_ready());
}

#[tokio::test]
async fn an_unusable_stored_root_is_reported_and_never_replaced() {
    let store = MemoryStore::default();
    let mut broken = CertificateAuthority::generate_root(&config()).unwrap();
    broken.origin = "Secret istio-system/istio-ca-secret".into();
    broken.ca_key = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec();
    *store.root.lock().unwrap() = Some(broken);
    let r = readiness();
    let task = tokio::spawn({
        let r = r.clone();
        async move { self_signed(&store, &config(), &r).await }
    });
    ambit_testkit::eventually!(
        r.describe()
            .contains("Secret istio-system/istio-ca-secret cannot be used")
    );
    assert!(!r.is_ready());
    task.abort();
}

#[test]
fn the_secret_has_istiods_layout_and_reads_back() {
    let root = CertificateAuthority::generate_root(&config()).unwrap();
    let secret = secret_of("istio-system", &root);
    assert_eq!(secret.type_.as_deref(), Some("istio.io/ca-root"));
    assert_eq!(secret.metadata.name.as_deref(), Some("istio-ca-secret"));
    let data = secret.data.unwrap();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "key.pem",
            "root-cert.pem"
        ]
    );
    assert_eq!(data["root-cert.pem"].0, data["ca-cert.pem"].0);
    let pem = pem_of("Secret istio-system/istio-ca-secret", data.clone()).unwrap();
    CertificateAuthority::from_pem(&pem, &config()).unwrap();

    let mut partial = data;
    partial.remove("ca-key.pem");
    let err = pem_of("Secret istio-system/istio-ca-secret", partial).unwrap_err();
    assert_eq!(err, "Secret istio-system/istio-ca-secret has no ca-key.pem");
}
