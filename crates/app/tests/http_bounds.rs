//! The side-door HTTP server against a slowloris client: one that sends its request head a
//! byte per second is cut once the header timeout passes, while other clients are served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_app::Limits;
use ambit_app::http::{Reply, Route, StatusCode, serve_with};
use tokio::net::TcpListener;

fn get(addr: std::net::SocketAddr) -> String {
    let mut client = TcpStream::connect(addr).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set timeout");
    client
        .write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut reply = String::new();
    client.read_to_string(&mut reply).expect("read the reply");
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_after_the_header_timeout_while_others_are_served() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let route: Route = Arc::new(|_, _, _| Reply::text(StatusCode::OK, "ready\n"));
    let limits = Limits {
        max_connections: 8,
        header_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(30),
    };
    tokio::spawn(async move { serve_with("test", listener, route, &limits).await });

    let outcome = tokio::task::spawn_blocking(move || {
        let mut slow = TcpStream::connect(addr).expect("connect");
        slow.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set timeout");
        let started = Instant::now();
        let head = b"GET /ready HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let mut served_meanwhile = 0;
        for byte in head {
            // Cut: the write fails, or a read sees the end of the stream (or a reset).
            if slow.write_all(&[*byte]).is_err() {
                return (started.elapsed(), served_meanwhile, true);
            }
            let mut buf = [0u8; 256];
            match slow.read(&mut buf) {
                // Only the 50 ms read timeout: the server is still waiting for the head.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                // The end of the stream, a reset, or an answer before the head was complete.
                _ => return (started.elapsed(), served_meanwhile, true),
            }
            if get(addr).starts_with("HTTP/1.1 200") {
                served_meanwhile += 1;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        (started.elapsed(), served_meanwhile, false)
    })
    .await
    .expect("client thread");
    let (after, served, cut) = outcome;
    assert!(cut, "the slow client was never cut ({after:?})");
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_secs(5),
        "cut after {after:?}, not after the 2 s header timeout"
    );
    assert!(served >= 2, "other clients were served meanwhile: {served}");
}
