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

/// An application client, the proxy's two TCP sides (toward the client and toward the server)
/// and the application server, connected in that order.
async fn app_proxy_app() -> (TcpStream, Side, Side, TcpStream) {
    let (app_client, proxy_down) = pair().await;
    let (proxy_up, app_server) = pair().await;
    (app_client, tcp(proxy_down), tcp(proxy_up), app_server)
}

/// The next chunk `side` reads.
async fn read(side: &mut Side) -> io::Result<Option<Bytes>> {
    poll_fn(|cx| side.poll_read(cx)).await
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
    let (mut app_client, down, up, mut app_server) = app_proxy_app().await;
    let moved = Transferred::default();
    let copy = bidirectional(down, up, Duration::from_secs(5), &moved);
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
    let (mut app_client, down, up, mut app_server) = app_proxy_app().await;
    let moved_out = Transferred::default();
    let moved_in = Transferred::default();
    let idle = Duration::from_secs(5);
    let outbound = bidirectional(down, h2(client_tunnel), idle, &moved_out);
    let inbound = bidirectional(h2(server_tunnel), up, idle, &moved_in);
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
async fn an_error_one_way_ends_both_and_resets_the_tunnel() {
    let (client_tunnel, server_tunnel) = tunnel(64 * 1024).await;
    let (proxy_up, app_server) = pair().await;
    let moved = Transferred::default();
    let idle = Duration::from_secs(5);
    let mut copying = Copying::new(h2(server_tunnel), tcp(proxy_up), idle, &moved);
    // The application aborts its connection: the proxy's read of it fails.
    app_server.set_zero_linger().unwrap();
    drop(app_server);
    let result = tokio::time::timeout(idle, copying.run()).await.unwrap();
    assert!(
        matches!(
            &result,
            Err(CopyError::Io {
                direction: "upstream to downstream",
                ..
            })
        ),
        "{result:?}"
    );
    // The tunnel is still held here, so only the reset can tell the peer it failed: it sees
    // the end, and its next send fails instead of going into a tunnel that looks half-open.
    let mut client = h2(client_tunnel);
    let end = tokio::time::timeout(idle, read(&mut client)).await;
    assert!(end.unwrap().unwrap().is_none(), "data after the failure");
    let mut data = Bytes::from_static(b"late");
    let sent = tokio::time::timeout(idle, poll_fn(|cx| client.poll_write(cx, &mut data))).await;
    let error = sent.unwrap().unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::BrokenPipe, "{error}");
    drop(copying);
}

#[tokio::test]
async fn a_connection_idle_both_ways_is_closed() {
    let (_app_client, down, up, _app_server) = app_proxy_app().await;
    let moved = Transferred::default();
    let result = bidirectional(down, up, Duration::from_millis(100), &moved).await;
    assert!(matches!(result, Err(CopyError::Idle(_))), "{result:?}");
}

#[tokio::test]
async fn an_idle_reader_holds_no_buffer() {
    let (mut peer, ours) = pair().await;
    let mut reader = tcp(ours);
    assert_eq!(reader.held_capacity(), 0, "a buffer before the first byte");

    peer.write_all(b"hello").await.unwrap();
    let chunk = read(&mut reader).await.unwrap().unwrap();
    assert_eq!(&chunk[..], b"hello");

    // The next read finds the socket dry, lets the buffer go and waits for readiness.
    let waited = tokio::time::timeout(Duration::from_millis(50), read(&mut reader)).await;
    assert!(waited.is_err(), "nothing was sent, yet a read returned");
    assert_eq!(reader.held_capacity(), 0, "an idle socket kept its buffer");
    drop(chunk);

    // And the reader still works after waiting without a buffer.
    peer.write_all(b"again").await.unwrap();
    let chunk = read(&mut reader).await.unwrap().unwrap();
    assert_eq!(&chunk[..], b"again");
    peer.shutdown().await.unwrap();
    assert_eq!(read(&mut reader).await.unwrap(), None);
    assert_eq!(reader.held_capacity(), 0, "a buffer kept after the end");
}

#[tokio::test]
async fn idle_connections_through_the_copy_hold_no_buffers() {
    let (mut app_client, down, up, mut app_server) = app_proxy_app().await;
    let moved = Transferred::default();
    let idle = Duration::from_secs(5);
    let mut copying = Copying::new(down, up, idle, &moved);
    let exchange = async {
        app_client.write_all(b"ping").await.unwrap();
        let mut got = [0; 4];
        app_server.read_exact(&mut got).await.unwrap();
        app_server.write_all(b"pong").await.unwrap();
        app_client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
    };
    // Run the copy until the exchange is done and it has gone idle, then look at its readers.
    tokio::select! {
        _ = copying.run() => panic!("the copy ended on an open connection"),
        () = async {
            exchange.await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        } => {}
    }
    assert_eq!(moved.downstream_to_upstream.load(Ordering::Relaxed), 4);
    assert_eq!(moved.upstream_to_downstream.load(Ordering::Relaxed), 4);
    let (down, up) = (&copying.downstream, &copying.upstream);
    assert_eq!(down.held_capacity(), 0, "downstream side kept a buffer");
    assert_eq!(up.held_capacity(), 0, "upstream side kept a buffer");
}

#[tokio::test]
async fn read_buffers_grow_with_bulk_data_and_shrink_with_small_reads() {
    const SIZE: usize = 8 * 1024 * 1024;
    let (mut peer, ours) = pair().await;
    let mut reader = tcp(ours);
    assert_eq!(reader.next_buffer_size(), Some(MIN_BUFFER));

    let sender = tokio::spawn(async move {
        let payload = vec![7u8; SIZE];
        peer.write_all(&payload).await.unwrap();
        peer
    });
    let (mut total, mut first, mut largest) = (0, None, 0);
    while total < SIZE {
        let chunk = read(&mut reader).await.unwrap().unwrap();
        first.get_or_insert(chunk.len());
        largest = largest.max(chunk.len());
        total += chunk.len();
    }
    let mut peer = sender.await.unwrap();
    assert!(first.unwrap() <= MIN_BUFFER, "first read {first:?}");
    assert!(
        largest > 16 * 1024,
        "a bulk transfer never read more than {largest} bytes at once"
    );
    assert!(largest <= MAX_BUFFER, "a read of {largest} bytes");
    let grown = reader.next_buffer_size().unwrap();
    assert!(grown > 16 * 1024, "the buffer size stayed at {grown}");

    // Small messages bring it back down, halving each time.
    for _ in 0..16 {
        peer.write_all(b"tiny").await.unwrap();
        let chunk = read(&mut reader).await.unwrap().unwrap();
        assert_eq!(&chunk[..], b"tiny");
    }
    assert_eq!(reader.next_buffer_size(), Some(MIN_BUFFER));
}

#[tokio::test]
async fn the_copy_of_a_connection_is_small() {
    let (_app_client, down, up, _app_server) = app_proxy_app().await;
    let moved = Transferred::default();
    let copy = bidirectional(down, up, Duration::from_secs(5), &moved);
    // Held for a connection's whole life, idle or not: the largest part of what an idle
    // connection costs before this was a hand-written state (about 3.8 KB).
    const LIMIT: usize = 640;
    let size = std::mem::size_of_val(&copy);
    eprintln!("copy future: {size} bytes");
    assert!(
        size <= LIMIT,
        "the copy of one connection takes {size} bytes"
    );
}

#[test]
fn buffer_sizes_follow_recent_reads() {
    let k = 1024;
    let cases = [
        // (size, room offered, bytes read, next size)
        (4 * k, 4 * k, 4 * k, 16 * k),
        (16 * k, 16 * k, 16 * k, 64 * k),
        (64 * k, 64 * k, 64 * k, 256 * k),
        (256 * k, 256 * k, 256 * k, 256 * k),
        (64 * k, 40 * k, 40 * k, 256 * k),
        (64 * k, 64 * k, 20 * k, 64 * k),
        (64 * k, 64 * k, 16 * k, 64 * k),
        (64 * k, 64 * k, 16 * k - 1, 32 * k),
        (8 * k, 8 * k, 100, 4 * k),
        (4 * k, 4 * k, 1, 4 * k),
    ];
    for (size, room, n, want) in cases {
        assert_eq!(next_size(size, room, n), want, "{size} {room} {n}");
    }
}
