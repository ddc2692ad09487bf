use std::sync::atomic::AtomicUsize;

use tokio::io::DuplexStream;
use tokio::sync::mpsc;

use super::*;

fn key() -> PoolKey {
    PoolKey {
        src: "spiffe://td/ns/a/sa/a".parse().unwrap(),
        dst: vec!["spiffe://td/ns/b/sa/b".parse().unwrap()],
        addr: "10.0.0.2:15008".parse().unwrap(),
        netns: None,
        local: None,
    }
}

fn request() -> ConnectRequest {
    ConnectRequest {
        target: "10.0.0.2:80".parse().unwrap(),
        forwarded: None,
        baggage: None,
    }
}

/// An in-memory HBONE server answering 200 to every CONNECT. Each accepted connection is
/// announced on `accepted` with a sender that, when used, makes the server go away.
type Dialed = Result<(SendRequest<Bytes>, Connection<DuplexStream, Bytes>), HboneError>;

struct Server {
    dials: Arc<AtomicUsize>,
    kill: mpsc::UnboundedSender<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    fn new() -> (
        Self,
        mpsc::UnboundedReceiver<tokio::sync::oneshot::Sender<()>>,
    ) {
        let (kill, kills) = mpsc::unbounded_channel();
        (
            Self {
                dials: Arc::default(),
                kill,
            },
            kills,
        )
    }

    async fn dial(&self) -> Dialed {
        self.dials.fetch_add(1, Ordering::SeqCst);
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
        let _ = self.kill.send(stop_tx);
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(b).await.unwrap();
            loop {
                tokio::select! {
                    next = conn.accept() => match next {
                        Some(Ok((_req, mut respond))) => {
                            let stream = respond.send_response(http::Response::new(()), false);
                            // Hold the stream open until the connection ends.
                            tokio::spawn(async move { let _s = stream; std::future::pending::<()>().await });
                        }
                        _ => break,
                    },
                    _ = &mut stop => {
                        conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                        let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
                        break;
                    }
                }
            }
        });
        h2::client::Builder::new()
            .handshake::<_, Bytes>(a)
            .await
            .map_err(HboneError::Request)
    }
}

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn tunnels_share_a_connection_up_to_the_stream_limit() {
    let pool = Pool::new(2, Duration::from_secs(60), CancellationToken::new());
    let (server, _kills) = Server::new();
    let a = pool
        .open(&key(), &request(), T, || server.dial())
        .await
        .unwrap();
    let b = pool
        .open(&key(), &request(), T, || server.dial())
        .await
        .unwrap();
    assert_eq!(
        server.dials.load(Ordering::SeqCst),
        1,
        "the second tunnel reuses"
    );
    let c = pool
        .open(&key(), &request(), T, || server.dial())
        .await
        .unwrap();
    assert_eq!(
        server.dials.load(Ordering::SeqCst),
        2,
        "past the limit, a new connection"
    );
    assert_eq!(pool.stats(), (2, 3));
    drop((a, b, c));
    assert_eq!(pool.stats(), (2, 0));
}

#[tokio::test]
async fn a_connection_that_went_away_is_not_reused() {
    let pool = Pool::new(100, Duration::from_secs(60), CancellationToken::new());
    let (server, mut kills) = Server::new();
    let first = pool
        .open(&key(), &request(), T, || server.dial())
        .await
        .unwrap();
    drop(first);
    kills.recv().await.unwrap().send(()).unwrap();
    // Wait until the client side has seen the GOAWAY.
    ambit_testkit::eventually!(observe = pool.stats().0, |n| n == 0);
    let _second = pool
        .open(&key(), &request(), T, || server.dial())
        .await
        .unwrap();
    assert_eq!(server.dials.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_connections_leave_the_pool() {
    let pool = Pool::new(100, Duration::from_millis(100), CancellationToken::new());
    let (server, _kills) = Server::new();
    let tunnel = pool
        .open(&key(), &request(), T, || server.dial())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pool.stats(),
        (1, 1),
        "a connection with a stream is never idle"
    );
    drop(tunnel);
    ambit_testkit::eventually!(observe = pool.stats(), |s| s == (0, 0));
}

#[tokio::test]
async fn a_refused_connect_reports_the_status() {
    let pool = Pool::new(100, Duration::from_secs(60), CancellationToken::new());
    let dial = || async {
        let (a, b) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(b).await.unwrap();
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                let mut rsp = http::Response::new(());
                *rsp.status_mut() = http::StatusCode::FORBIDDEN;
                let _ = respond.send_response(rsp, true);
            }
        });
        h2::client::Builder::new()
            .handshake::<_, Bytes>(a)
            .await
            .map_err(HboneError::Request)
    };
    let err = pool.open(&key(), &request(), T, dial).await.unwrap_err();
    assert!(
        matches!(err, HboneError::Status(http::StatusCode::FORBIDDEN)),
        "{err}"
    );
}

#[tokio::test]
async fn pods_never_share_a_connection_and_leave_with_their_namespace() {
    let pool = Pool::new(100, Duration::from_secs(60), CancellationToken::new());
    let (server, _kills) = Server::new();
    let in_pod = |inode| PoolKey {
        netns: Some(inode),
        ..key()
    };
    let a = pool
        .open(&in_pod(7), &request(), T, || server.dial())
        .await
        .unwrap();
    let b = pool
        .open(&in_pod(8), &request(), T, || server.dial())
        .await
        .unwrap();
    assert_eq!(
        server.dials.load(Ordering::SeqCst),
        2,
        "same identities and address, different namespaces: two connections"
    );
    drop(a);
    pool.evict_netns(7);
    assert_eq!(pool.stats(), (1, 1), "only namespace 7's connection left");
    let _again = pool
        .open(&in_pod(7), &request(), T, || server.dial())
        .await
        .unwrap();
    assert_eq!(
        server.dials.load(Ordering::SeqCst),
        3,
        "evicted: dialed anew"
    );
    drop(b);
}
