use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A connected TCP pair on loopback.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), server.unwrap().0)
}

/// One h2 stream over an in-memory pipe with a small window: (client side, server side).
async fn tunnel(window: u32) -> (H2Stream, H2Stream) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut conn = h2::server::Builder::new()
            .initial_window_size(window)
            .initial_connection_window_size(window)
            .handshake::<_, Bytes>(b)
            .await
            .unwrap();
        let (req, mut respond) = conn.accept().await.unwrap().unwrap();
        let send = respond
            .send_response(http::Response::new(()), false)
            .unwrap();
        tokio::spawn(async move { while conn.accept().await.is_some() {} });
        H2Stream::new(send, req.into_body(), None)
    });
    let (mut client, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(window)
        .handshake::<_, Bytes>(a)
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("CONNECT")
        .uri("10.0.0.1:80")
        .body(())
        .unwrap();
    let (response, send) = client.send_request(req, false).unwrap();
    let server = server.await.unwrap();
    let recv = response.await.unwrap().into_body();
    (H2Stream::new(send, recv, None), server)
}

#[tokio::test]
async fn tcp_to_tcp_half_close_and_counts() {
    let (mut app_client, proxy_down) = pair().await;
    let (proxy_up, mut app_server) = pair().await;
    let moved = Transferred::default();
    let copy = bidirectional(
        tcp(proxy_down),
        tcp(proxy_up),
        Duration::from_secs(5),
        &moved,
    );
    let peers = async {
        app_client.write_all(b"hello").await.unwrap();
        app_client.shutdown().await.unwrap();
        let mut request = Vec::new();
        app_server.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"hello", "the FIN arrived after the data");
        // The other direction still works after the half-close.
        app_server.write_all(b"goodbye!").await.unwrap();
        app_server.shutdown().await.unwrap();
        let mut response = Vec::new();
        app_client.read_to_end(&mut response).await.unwrap();
        assert_eq!(response, b"goodbye!");
    };
    let (result, ()) = tokio::join!(copy, peers);
    result.unwrap();
    assert_eq!(moved.downstream_to_upstream.load(Ordering::Relaxed), 5);
    assert_eq!(moved.upstream_to_downstream.load(Ordering::Relaxed), 8);
}

#[tokio::test]
async fn tcp_through_a_tunnel_respects_a_small_window() {
    const SIZE: usize = 2 * 1024 * 1024;
    let (client_tunnel, server_tunnel) = tunnel(16 * 1024).await;
    let (mut app_client, proxy_down) = pair().await;
    let (proxy_up, mut app_server) = pair().await;
    let moved_out = Transferred::default();
    let moved_in = Transferred::default();
    let idle = Duration::from_secs(5);
    let outbound = bidirectional(tcp(proxy_down), h2(client_tunnel), idle, &moved_out);
    let inbound = bidirectional(h2(server_tunnel), tcp(proxy_up), idle, &moved_in);
    let peers = async {
        let payload: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
        let writer = async {
            app_client.write_all(&payload).await.unwrap();
            app_client.shutdown().await.unwrap();
        };
        let reader = async {
            let mut got = Vec::new();
            app_server.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = tokio::join!(writer, reader);
        assert!(got == payload, "payload corrupted");
        app_server.shutdown().await.unwrap();
        let mut rest = Vec::new();
        app_client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    };
    let (out, inn, ()) = tokio::join!(outbound, inbound, peers);
    out.unwrap();
    inn.unwrap();
    assert_eq!(
        moved_out.downstream_to_upstream.load(Ordering::Relaxed),
        SIZE as u64
    );
    assert_eq!(
        moved_in.downstream_to_upstream.load(Ordering::Relaxed),
        SIZE as u64
    );
}

#[tokio::test]
async fn a_connection_idle_both_ways_is_closed() {
    let (_app_client, proxy_down) = pair().await;
    let (proxy_up, _app_server) = pair().await;
    let moved = Transferred::default();
    let result = bidirectional(
        tcp(proxy_down),
        tcp(proxy_up),
        Duration::from_millis(100),
        &moved,
    )
    .await;
    assert!(matches!(result, Err(CopyError::Idle(_))), "{result:?}");
}
