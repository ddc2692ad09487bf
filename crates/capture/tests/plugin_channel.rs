//! The plugin → agent channel on its own: `send_event` against a real `EventServer`, and the
//! server's behaviour under bad, oversized, stalled and slow requests.

#![allow(clippy::unwrap_used)]

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_capture::plugin::{
    EventServer, MAX_REQUEST_BYTES, PodCommand, PodEvent, PodEventHandler, SendError, send_event,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Records events; refuses pods named `refuse-me`, and takes its time with `slow-*` pods.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<PodEvent>>,
}

impl PodEventHandler for Recorder {
    async fn handle(&self, event: PodEvent) -> Result<(), String> {
        if event.pod_name.starts_with("slow-") {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let refused = event.pod_name == "refuse-me";
        self.events.lock().unwrap().push(event);
        if refused {
            Err("pod refuse-me is not welcome".into())
        } else {
            Ok(())
        }
    }
}

impl Recorder {
    fn names(&self) -> Vec<String> {
        let events = self.events.lock().unwrap();
        events.iter().map(|e| e.pod_name.clone()).collect()
    }
}

fn event(name: &str) -> PodEvent {
    PodEvent {
        command: PodCommand::Add,
        container_id: format!("sandbox-{name}"),
        netns: Some(PathBuf::from("/proc/1/ns/net")),
        pod_namespace: "default".into(),
        pod_name: name.into(),
        pod_uid: None,
        ips: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
    }
}

/// Binds a server in a fresh directory and serves it on this test's runtime.
fn serve(timeout: Duration) -> (tempfile::TempDir, PathBuf, Arc<Recorder>) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("pluginevent.sock");
    let server = EventServer::bind(&socket)
        .unwrap()
        .with_request_timeout(timeout);
    assert_eq!(server.path(), socket);
    let recorder = Arc::new(Recorder::default());
    tokio::spawn(server.serve(Arc::clone(&recorder)));
    (dir, socket, recorder)
}

/// Writes `request` raw, closes the write half, and returns the reply as JSON.
async fn raw_exchange(socket: &Path, request: &[u8]) -> Value {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    // The server may answer and close before reading an oversized request to the end, so
    // errors writing, and a reset after the reply, are expected.
    let _ = stream.write_all(request).await;
    let _ = stream.shutdown().await;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut buf).await {
        reply.extend_from_slice(&buf[..n]);
    }
    serde_json::from_slice(&reply)
        .unwrap_or_else(|e| panic!("reply {:?}: {e}", String::from_utf8_lossy(&reply)))
}

#[tokio::test]
async fn an_accepted_event_reaches_the_handler_intact() {
    let (_dir, socket, recorder) = serve(TIMEOUT);
    send_event(&socket, &event("web-0"), TIMEOUT).await.unwrap();
    assert_eq!(*recorder.events.lock().unwrap(), vec![event("web-0")]);
}

#[tokio::test]
async fn a_refusal_carries_the_handlers_reason() {
    let (_dir, socket, _recorder) = serve(TIMEOUT);
    let error = send_event(&socket, &event("refuse-me"), TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SendError::Refused { reason } if reason == "pod refuse-me is not welcome"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "the capture agent refused: pod refuse-me is not welcome"
    );
}

#[tokio::test]
async fn no_listener_is_unreachable_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let error = send_event(&socket, &event("web-0"), TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SendError::Unreachable { path, .. } if *path == socket),
        "{error:?}"
    );
}

#[tokio::test]
async fn malformed_requests_get_an_error_reply_and_the_server_keeps_serving() {
    let (_dir, socket, recorder) = serve(TIMEOUT);
    for request in [&b"garbage\n"[..], b"{\"command\":\"ADD\"}\n", b"\n", b""] {
        let reply = raw_exchange(&socket, request).await;
        assert_eq!(reply["result"], "error", "{reply}");
        assert!(
            reply["reason"].as_str().unwrap().contains("malformed"),
            "{reply}"
        );
    }
    send_event(&socket, &event("after"), TIMEOUT).await.unwrap();
    assert_eq!(recorder.names(), ["after"]);
}

#[tokio::test]
async fn oversized_requests_are_refused_unread() {
    let (_dir, socket, recorder) = serve(TIMEOUT);
    let mut request = vec![b' '; MAX_REQUEST_BYTES + 10];
    request.push(b'\n');
    let reply = raw_exchange(&socket, &request).await;
    assert_eq!(reply["result"], "error", "{reply}");
    assert!(
        reply["reason"].as_str().unwrap().contains("larger than"),
        "{reply}"
    );
    send_event(&socket, &event("after"), TIMEOUT).await.unwrap();
    assert_eq!(recorder.names(), ["after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_served_concurrently() {
    let (_dir, socket, recorder) = serve(TIMEOUT);
    // A client that connects and never writes, and a pod the handler is slow with.
    let _stalled = UnixStream::connect(&socket).await.unwrap();
    let slow = tokio::spawn({
        let socket = socket.clone();
        async move { send_event(&socket, &event("slow-1"), TIMEOUT).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    send_event(&socket, &event("fast"), TIMEOUT).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "a stalled or slow connection held up another: {:?}",
        start.elapsed()
    );
    slow.await.unwrap().unwrap();
    assert_eq!(recorder.names(), ["fast", "slow-1"]);
}

#[tokio::test]
async fn a_stalled_client_is_cut_off_at_the_request_timeout() {
    let (_dir, socket, _recorder) = serve(Duration::from_millis(200));
    let mut stalled = UnixStream::connect(&socket).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(TIMEOUT, stalled.read_to_end(&mut reply))
        .await
        .expect("the server kept a silent connection open")
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["result"], "error", "{reply}");
}

#[tokio::test]
async fn a_handler_outliving_the_timeout_still_runs_to_completion() {
    let (_dir, socket, recorder) = serve(Duration::from_millis(100));
    let error = send_event(&socket, &event("slow-2"), TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(error, SendError::Refused { .. }), "{error:?}");
    ambit_testkit::eventually!(observe = recorder.names(), |names| names == ["slow-2"]);
}

#[tokio::test]
async fn the_plugin_gives_up_at_its_own_timeout() {
    let (_dir, socket, _recorder) = serve(TIMEOUT);
    let error = send_event(&socket, &event("slow-3"), Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(error, SendError::TimedOut(_)), "{error:?}");
}

#[tokio::test]
async fn bind_replaces_a_stale_socket_but_not_a_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nested/dir/pluginevent.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists(), "the stale socket file stays behind");

    let live = EventServer::bind(&socket).unwrap();
    let error = EventServer::bind(&socket).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");
    drop(live);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}
