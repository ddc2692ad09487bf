#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use super::*;

fn topology() -> Topology {
    Topology::new(Ipv4Addr::new(10, 99, 0, 1), 16)
        .expect("building namespaces needs root or `unshare --user --map-root-user`")
}

#[test]
fn two_pods_on_the_wire_reach_each_other_and_vanish_when_removed() {
    let mut topo = topology();
    let a_ip = Ipv4Addr::new(10, 99, 1, 1);
    let b_ip = Ipv4Addr::new(10, 99, 1, 2);
    topo.add_pod("a", a_ip).unwrap();
    topo.add_pod("b", b_ip).unwrap();

    let b = topo.pod("b").unwrap().netns().clone();
    let server = b
        .run_io(move || TcpListener::bind(SocketAddr::from((b_ip, 8080))))
        .unwrap();
    let a = topo.pod("a").unwrap().netns().clone();
    let sent = a
        .run_io(move || {
            let mut s = TcpStream::connect(SocketAddr::from((b_ip, 8080)))?;
            s.write_all(b"hello")?;
            s.local_addr()
        })
        .unwrap();
    let (mut conn, peer) = server.accept().unwrap();
    let mut buf = [0u8; 5];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    assert_eq!(peer, sent);
    assert_eq!(peer.ip(), a_ip, "the source is the pod's own address");

    let path = topo.pod("a").unwrap().netns_path();
    assert_eq!(Netns::open(&path).unwrap(), a);
    assert!(topo.remove_pod("a"));
    assert!(Netns::open(&path).is_err(), "the holder is gone");
}

#[test]
fn bad_addresses_and_duplicates_are_refused() {
    let mut topo = topology();
    let err = topo.add_pod("x", Ipv4Addr::new(10, 98, 0, 5)).unwrap_err();
    assert!(err.to_string().contains("outside 10.99.0.0/16"), "{err}");
    let err = topo.add_pod("x", Ipv4Addr::new(10, 99, 0, 1)).unwrap_err();
    assert!(err.to_string().contains("gateway"), "{err}");
    topo.add_pod("x", Ipv4Addr::new(10, 99, 0, 5)).unwrap();
    let err = topo.add_pod("x", Ipv4Addr::new(10, 99, 0, 6)).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}
