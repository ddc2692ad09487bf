use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::process::Command;

use super::seqpacket::{SeqpacketListener, SeqpacketStream};
use super::*;

/// These tests create namespaces, so they need root or a user namespace; they fail loudly
/// otherwise rather than skip.
fn new_netns() -> Netns {
    Netns::create().expect("creating a network namespace needs root or `unshare --user`")
}

#[test]
fn a_created_namespace_differs_from_the_current_one_and_sockets_live_in_it() {
    let here = Netns::current().unwrap();
    let there = new_netns();
    assert_ne!(here, there);
    assert_eq!(here, Netns::current().unwrap(), "the caller never moves");

    // Connecting to loopback fails in a fresh namespace (lo is down), works here.
    let here_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = here_listener.local_addr().unwrap();
    assert!(std::net::TcpStream::connect(addr).is_ok());
    let inside = there.run(move || std::net::TcpStream::connect(addr).is_ok());
    assert!(!inside.unwrap(), "lo is down in a fresh namespace");

    let seen = there
        .run(|| Netns::current().map(|ns| ns.inode()))
        .unwrap()
        .unwrap();
    assert_eq!(seen, there.inode());
}

#[test]
fn commands_run_inside_and_a_listener_there_is_invisible_here() {
    let ns = new_netns();
    let out = ns
        .output({
            let mut c = Command::new("ip");
            c.args(["link", "set", "lo", "up"]);
            c
        })
        .expect("iproute2 is installed");
    assert!(out.status.success(), "{out:?}");
    let listener = ns
        .run_io(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let inside = ns
        .run(move || std::net::TcpStream::connect(addr).is_ok())
        .unwrap();
    assert!(inside, "reachable from inside the namespace");
    drop(listener);
    let gone = ns
        .run(move || std::net::TcpStream::connect(addr).is_err())
        .unwrap();
    assert!(gone, "the listener lived in the namespace");
}

#[test]
fn a_file_that_is_not_a_namespace_is_refused() {
    let file = tempfile::tempfile().unwrap();
    let err = Netns::from_fd(file.into(), "a temp file").unwrap_err();
    assert!(
        err.to_string()
            .contains("a temp file is not a namespace file"),
        "{err}"
    );
}

#[tokio::test]
async fn a_namespace_travels_over_seqpacket_and_stays_the_same_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zds.sock");
    let listener = SeqpacketListener::bind(&path).unwrap();
    let ns = new_netns();
    let client = SeqpacketStream::connect(&path).await.unwrap();
    let server = listener.accept().await.unwrap();

    client.send(b"add", &[ns.as_fd()]).await.unwrap();
    client.send(b"plain", &[]).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, fds) = server.recv(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"add");
    let received = Netns::from_fd(fds.into_iter().next().unwrap(), "received").unwrap();
    assert_eq!(received, ns);
    let (n, fds) = server.recv(&mut buf).await.unwrap();
    assert_eq!((&buf[..n], fds.len()), (&b"plain"[..], 0));

    drop(client);
    let (n, fds) = server.recv(&mut buf).await.unwrap();
    assert_eq!((n, fds.len()), (0, 0), "end of stream");
}

#[tokio::test]
async fn an_oversized_datagram_is_an_error_not_a_truncation() {
    let (a, b) = SeqpacketStream::pair().unwrap();
    a.send(&[7u8; 100], &[]).await.unwrap();
    a.send(b"next", &[]).await.unwrap();
    let mut small = [0u8; 10];
    let err = b.recv(&mut small).await.unwrap_err();
    assert!(err.to_string().contains("longer than the 10-byte"), "{err}");
    let (n, _) = b.recv(&mut small).await.unwrap();
    assert_eq!(&small[..n], b"next", "the stream goes on");
}
