//! The certificate manager: coalescing, refresh at half-life, backoff while the CA fails, no
//! expired certificate ever returned, and refusal of what the CA should not have sent.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is a test failure

mod common;

use std::sync::Arc;
use std::time::Duration;

use ambit_identity::clock::{Clock, ManualClock};
use ambit_identity::manager::ChainError;
use ambit_identity::{
    CertificateManager, CertificateSigner, CertificateState, LocalSigner, ManagerConfig,
    ManagerError, SignError, SpiffeId,
};
use common::{TestSigner, id, manager, root_ca};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_share_one_csr() {
    let clock = ManualClock::starting_now();
    let (_dir, ca) = root_ca(&clock);
    let signer = TestSigner::new(ca);
    signer.set_open(false);
    let manager = manager(Arc::clone(&signer), &clock);
    let identity = id("default", "sleep");

    let mut fetches = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (manager, identity) = (manager.clone(), identity.clone());
        fetches.spawn(async move { manager.fetch(&identity).await });
    }
    // Let every fetch reach the in-flight CSR before the CA answers.
    while signer.calls() == 0 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let status = &manager.snapshot()[0];
    assert_eq!(status.state, CertificateState::Pending);
    assert!(
        status.refreshing && status.not_after.is_none(),
        "{status:?}"
    );
    signer.set_open(true);

    let certs: Vec<_> = fetches
        .join_all()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        signer.calls(),
        1,
        "50 concurrent fetches must produce one CSR"
    );
    assert!(certs.iter().all(|c| Arc::ptr_eq(c, &certs[0])));
    assert_eq!(certs[0].identity(), &identity);
    // Another identity gets its own CSR and key.
    let other = manager.fetch(&id("default", "other")).await.unwrap();
    assert_eq!(signer.calls(), 2);
    assert_ne!(other.leaf(), certs[0].leaf());
}

#[tokio::test]
async fn refreshes_between_half_and_sixty_percent_of_lifetime() {
    let clock = ManualClock::starting_now();
    let (_dir, ca) = root_ca(&clock);
    let signer = TestSigner::new(ca);
    let manager = manager(Arc::clone(&signer), &clock);
    let identity = id("default", "sleep");

    let first = manager.fetch(&identity).await.unwrap();
    let lifetime = first
        .not_after()
        .duration_since(first.not_before())
        .unwrap();
    assert_eq!(
        lifetime,
        24 * HOUR + Duration::from_secs(60),
        "24h plus the 1 min backdate"
    );
    let status = &manager.snapshot()[0];
    let refresh_at = status.refresh_at.unwrap();
    assert!(
        refresh_at >= first.not_before() + lifetime / 2,
        "{status:?}"
    );
    assert!(
        refresh_at <= first.not_before() + lifetime.mul_f64(0.6),
        "{status:?}"
    );

    // Before the refresh point: the same certificate, no CSR.
    clock.advance(11 * HOUR);
    assert!(Arc::ptr_eq(
        &manager.fetch(&identity).await.unwrap(),
        &first
    ));
    assert_eq!(manager.refresh_due().await, 0);
    assert_eq!(signer.calls(), 1);

    // Past it: the current certificate is served at once, the refresh runs behind it.
    clock.advance(4 * HOUR);
    let served = manager.fetch(&identity).await.unwrap();
    assert!(
        Arc::ptr_eq(&served, &first),
        "a refresh must not delay the caller"
    );
    manager.refresh_due().await;
    assert_eq!(signer.calls(), 2);
    let second = manager.fetch(&identity).await.unwrap();
    assert!(!Arc::ptr_eq(&second, &first));
    assert!(second.not_after() > first.not_after());
    assert_ne!(second.serial(), first.serial());
    assert_eq!(manager.snapshot()[0].state, CertificateState::Available);
}

#[tokio::test]
async fn keeps_serving_a_valid_cert_while_the_ca_fails_then_never_an_expired_one() {
    let clock = ManualClock::starting_now();
    let (_dir, ca) = root_ca(&clock);
    let signer = TestSigner::new(ca);
    let manager = manager(Arc::clone(&signer), &clock);
    let identity = id("default", "sleep");
    let first = manager.fetch(&identity).await.unwrap();

    signer.set_failing(true);
    clock.advance(15 * HOUR);
    assert_eq!(manager.refresh_due().await, 1);
    assert_eq!(signer.calls(), 2);
    // Backing off: a fetch still gets the valid certificate and does not hit the CA.
    let served = manager.fetch(&identity).await.unwrap();
    assert!(Arc::ptr_eq(&served, &first));
    assert_eq!(manager.refresh_due().await, 0, "within the 1s backoff");
    assert_eq!(signer.calls(), 2);
    let status = &manager.snapshot()[0];
    assert_eq!(status.state, CertificateState::Available);
    assert_eq!(status.failures, 1);
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("test CA is down"),
        "{status:?}"
    );

    // Backoff doubles and is capped at 60s.
    let mut attempts = 2;
    for expected_backoff in [1, 2, 4, 8, 16, 32, 60, 60] {
        clock.advance(Duration::from_secs(expected_backoff) - Duration::from_millis(1));
        assert_eq!(
            manager.refresh_due().await,
            0,
            "retried before {expected_backoff}s"
        );
        clock.advance(Duration::from_millis(1));
        assert_eq!(
            manager.refresh_due().await,
            1,
            "not retried after {expected_backoff}s"
        );
        attempts += 1;
        assert_eq!(signer.calls(), attempts);
    }

    // Past expiry: never the old certificate. The first fetch tries the CA and reports its
    // error; the next fails fast while backing off.
    clock.set(first.not_after());
    let err = manager.fetch(&identity).await.unwrap_err();
    assert!(matches!(err, ManagerError::Sign { .. }), "{err:?}");
    match manager.fetch(&identity).await {
        Err(ManagerError::Unavailable {
            last_error: Some(last),
            ..
        }) => {
            assert!(matches!(*last, ManagerError::Sign { .. }), "{last:?}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(manager.cached(&identity).is_none());
    assert!(
        matches!(manager.snapshot()[0].state, CertificateState::Failed(ref e) if e.contains("test CA is down"))
    );

    // When the CA is back, the next attempt issues a new certificate.
    signer.set_failing(false);
    clock.advance(Duration::from_secs(61));
    let fresh = manager.fetch(&identity).await.unwrap();
    assert!(fresh.not_after() > clock.now());
    assert_eq!(manager.snapshot()[0].failures, 0);
}

#[tokio::test]
async fn first_fetch_failure_is_reported_with_its_cause() {
    let clock = ManualClock::starting_now();
    let (_dir, ca) = root_ca(&clock);
    let signer = TestSigner::new(ca);
    signer.set_failing(true);
    let manager = manager(Arc::clone(&signer), &clock);
    let err = manager.fetch(&id("a", "b")).await.unwrap_err();
    assert!(
        matches!(&err, ManagerError::Sign { source, .. } if matches!(**source, SignError::Unavailable(_))),
        "{err:?}"
    );
    let err = manager.fetch(&id("a", "b")).await.unwrap_err();
    assert!(matches!(err, ManagerError::Unavailable { .. }), "{err:?}");
    assert_eq!(signer.calls(), 1);
}

#[tokio::test]
async fn forget_drops_an_identity() {
    let clock = ManualClock::starting_now();
    let (_dir, ca) = root_ca(&clock);
    let manager = manager(LocalSigner::new(ca), &clock);
    let identity = id("a", "b");
    manager.fetch(&identity).await.unwrap();
    assert!(manager.cached(&identity).is_some());
    assert!(manager.forget(&identity));
    assert!(manager.cached(&identity).is_none());
    assert!(manager.snapshot().is_empty());
    assert!(!manager.forget(&identity));
}

/// A CA that answers with the wrong identity, or for a key that is not ours.
#[derive(Debug)]
enum LyingSigner {
    OtherIdentity(LocalSigner, SpiffeId),
    OtherKey(LocalSigner),
}

impl CertificateSigner for LyingSigner {
    async fn sign(&self, csr_pem: String, identity: &SpiffeId) -> Result<Vec<String>, SignError> {
        match self {
            Self::OtherIdentity(ca, other) => ca.sign(csr_pem, other).await,
            Self::OtherKey(ca) => {
                let key = rcgen::KeyPair::generate().unwrap();
                let csr = rcgen::CertificateParams::default()
                    .serialize_request(&key)
                    .unwrap();
                ca.sign(csr.pem().unwrap(), identity).await
            }
        }
    }
}

#[tokio::test]
async fn certificates_for_another_identity_or_key_are_rejected() {
    let clock = ManualClock::starting_now();
    let (_dir, ca) = root_ca(&clock);
    let identity = id("default", "victim");

    let liar =
        LyingSigner::OtherIdentity(LocalSigner::new(Arc::clone(&ca)), id("default", "attacker"));
    let err = manager(liar, &clock).fetch(&identity).await.unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::Rejected {
                source: ChainError::WrongIdentity { .. },
                ..
            }
        ),
        "{err:?}"
    );

    let liar = LyingSigner::OtherKey(LocalSigner::new(ca));
    let err = manager(liar, &clock).fetch(&identity).await.unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::Rejected {
                source: ChainError::KeyMismatch,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_already_expired_certificate_is_rejected() {
    // The CA's clock is two days behind the node's.
    let ca_clock = ManualClock::new(std::time::SystemTime::now() - 48 * HOUR);
    let node_clock = ManualClock::starting_now();
    let (_dir, ca) = root_ca(&ca_clock);
    let err = manager(LocalSigner::new(ca), &node_clock)
        .fetch(&id("a", "b"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::Rejected {
                source: ChainError::Expired { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn background_refresher_renews_without_fetches() {
    let clock = ManualClock::starting_now();
    let (_dir, ca) = root_ca(&clock);
    let signer = TestSigner::new(ca);
    let manager = manager(Arc::clone(&signer), &clock);
    let identity = id("default", "idle");
    let first = manager.fetch(&identity).await.unwrap();
    let refresher = manager.spawn_refresher(Duration::from_secs(30));

    clock.advance(15 * HOUR);
    // Paused tokio time auto-advances to the refresher's next tick.
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(signer.calls(), 2);
    let renewed = manager.cached(&identity).unwrap();
    assert!(renewed.not_after() > first.not_after());

    refresher.abort();
}

#[tokio::test(start_paused = true)]
async fn a_ca_that_never_answers_times_out() {
    #[derive(Debug)]
    struct Silent;
    impl CertificateSigner for Silent {
        async fn sign(&self, _: String, _: &SpiffeId) -> Result<Vec<String>, SignError> {
            std::future::pending().await
        }
    }
    let clock = ManualClock::starting_now();
    let config = ManagerConfig {
        sign_timeout: Duration::from_secs(5),
        ..ManagerConfig::default()
    };
    let manager = CertificateManager::new(Silent, Arc::new(clock.clone()), config);
    let err = manager.fetch(&id("a", "b")).await.unwrap_err();
    assert!(
        matches!(err, ManagerError::Timeout { timeout, .. } if timeout == Duration::from_secs(5)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_panicking_signer_fails_the_waiters_and_does_not_wedge_the_identity() {
    #[derive(Debug)]
    struct Panicking;
    impl CertificateSigner for Panicking {
        async fn sign(&self, _: String, _: &SpiffeId) -> Result<Vec<String>, SignError> {
            panic!("signer bug (expected by this test)")
        }
    }
    let clock = ManualClock::starting_now();
    let manager =
        CertificateManager::new(Panicking, Arc::new(clock.clone()), ManagerConfig::default());
    let identity = id("a", "b");
    let err = manager.fetch(&identity).await.unwrap_err();
    assert!(matches!(err, ManagerError::Aborted { .. }), "{err:?}");
    let status = &manager.snapshot()[0];
    assert!(
        !status.refreshing,
        "the in-flight mark must be cleared: {status:?}"
    );
    assert!(
        matches!(status.state, CertificateState::Failed(_)),
        "{status:?}"
    );
    // After the backoff the identity is tried again rather than waiting forever.
    clock.advance(Duration::from_secs(2));
    let err = manager.fetch(&identity).await.unwrap_err();
    assert!(matches!(err, ManagerError::Aborted { .. }), "{err:?}");
}
