//! The redirection rules in real namespaces, with both backends: installed, reinstalled,
//! removed, checked, and redirecting real TCP connections.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

use ambit_capture::rules::{Backend, BackendChoice, Rules, RulesError};
use ambit_netns::Netns;
use common::{TestPod, link, new_netns, stdout_of};
use socket2::{Domain, SockRef, Socket, Type};

const BACKENDS: [BackendChoice; 2] = [BackendChoice::Nftables, BackendChoice::Iptables];

/// What the kernel holds, as the backend's own listing tool prints it (counters and dates
/// stripped).
fn listing(rules: &Rules, netns: &Netns) -> String {
    let text = match rules.backend() {
        Backend::Nftables => stdout_of(netns, "nft", &["list", "ruleset"]),
        Backend::Iptables => {
            stdout_of(netns, "iptables-save", &["-t", "nat"])
                + &stdout_of(netns, "ip6tables-save", &["-t", "nat"])
        }
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn auto_prefers_nftables_when_nft_is_installed() {
    assert_eq!(
        Rules::new(BackendChoice::Auto).unwrap().backend(),
        Backend::Nftables
    );
}

#[test]
fn install_is_idempotent_and_remove_leaves_nothing() {
    for choice in BACKENDS {
        let rules = Rules::new(choice).unwrap();
        let netns = new_netns();
        assert!(
            matches!(rules.check(&netns), Err(RulesError::Missing)),
            "{choice:?}"
        );
        let empty = listing(&rules, &netns);

        rules.install(&netns).unwrap();
        rules.check(&netns).unwrap();
        let once = listing(&rules, &netns);
        assert!(
            once.contains("15001") && once.contains("15006"),
            "{choice:?}: {once}"
        );

        rules.install(&netns).unwrap();
        rules.check(&netns).unwrap();
        assert_eq!(
            once,
            listing(&rules, &netns),
            "{choice:?}: a reinstall changes nothing"
        );

        rules.remove(&netns).unwrap();
        assert!(
            matches!(rules.check(&netns), Err(RulesError::Missing)),
            "{choice:?}"
        );
        let after = listing(&rules, &netns);
        assert!(
            !after.to_lowercase().contains("ambit"),
            "{choice:?}: {after}"
        );
        if choice == BackendChoice::Nftables {
            assert_eq!(after.trim(), "", "nothing is left");
        } else {
            assert_eq!(
                after, empty,
                "only the empty nat table iptables made is left"
            );
        }
        rules.remove(&netns).unwrap();
    }
}

#[test]
fn check_names_a_rule_that_was_changed() {
    let rules = Rules::new(BackendChoice::Nftables).unwrap();
    let netns = new_netns();
    rules.install(&netns).unwrap();
    let out = netns
        .output({
            let mut c = std::process::Command::new("nft");
            c.args([
                "add", "rule", "inet", "ambit", "output", "tcp", "dport", "22", "accept",
            ]);
            c
        })
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    match rules.check(&netns) {
        Err(RulesError::Differ { found, .. }) => {
            assert!(found.iter().any(|r| r.contains("dport 22")), "{found:?}")
        }
        other => panic!("expected a difference, got {other:?}"),
    }
}

#[test]
fn iptables_check_names_a_missing_jump() {
    let rules = Rules::new(BackendChoice::Iptables).unwrap();
    let netns = new_netns();
    rules.install(&netns).unwrap();
    let out = netns
        .output({
            let mut c = std::process::Command::new("iptables");
            c.args(["-t", "nat", "-D", "OUTPUT", "-j", "AMBIT_OUTPUT"]);
            c
        })
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(matches!(
        rules.check(&netns),
        Err(RulesError::Differ { .. })
    ));
    rules.install(&netns).unwrap();
    rules.check(&netns).unwrap();
}

#[test]
fn outbound_connections_are_redirected_unless_marked_and_inbound_goes_to_passthrough() {
    for choice in BACKENDS {
        let rules = Rules::new(choice).unwrap();
        let pod = TestPod::new();
        let peer = TestPod::new();
        link(&pod, &peer);
        rules.install(&pod.netns).unwrap();

        // The node proxy's listeners inside the pod, and a server on the peer.
        let outbound = pod
            .netns
            .run_io(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 15001)))
            .unwrap();
        let passthrough = pod
            .netns
            .run_io(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 15006)))
            .unwrap();
        let server = peer
            .netns
            .run_io(|| TcpListener::bind((Ipv4Addr::new(10, 99, 0, 2), 8080)))
            .unwrap();
        let destination = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 2), 8080);

        // An application's connection lands on 15001, which still sees where it was going.
        let app = pod
            .netns
            .run_io(move || connect(destination, None))
            .unwrap();
        let (accepted, _) = outbound.accept().unwrap();
        let original = SockRef::from(&accepted).original_dst_v4().unwrap();
        assert_eq!(
            original.as_socket(),
            Some(SocketAddr::V4(destination)),
            "{choice:?}"
        );
        assert_exchange(app, accepted);

        // A socket with the node proxy's mark goes where it asked.
        let proxy = pod
            .netns
            .run_io(move || connect(destination, Some(0x539)))
            .unwrap();
        let (accepted, from) = server.accept().unwrap();
        assert_eq!(from.ip(), Ipv4Addr::new(10, 99, 0, 1), "{choice:?}");
        assert_exchange(proxy, accepted);
        outbound.set_nonblocking(true).unwrap();
        assert!(
            outbound.accept().is_err(),
            "{choice:?}: nothing else reached 15001"
        );

        // A connection from outside the pod lands on 15006, with its original destination.
        let inbound_destination = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 1), 9999);
        let client = peer
            .netns
            .run_io(move || connect(inbound_destination, None))
            .unwrap();
        let (accepted, _) = passthrough.accept().unwrap();
        let original = SockRef::from(&accepted).original_dst_v4().unwrap();
        assert_eq!(
            original.as_socket(),
            Some(SocketAddr::V4(inbound_destination)),
            "{choice:?}"
        );
        assert_exchange(client, accepted);
    }
}

/// A TCP connection to `to`, optionally with `SO_MARK`, made in the calling thread's namespace.
fn connect(to: SocketAddrV4, mark: Option<u32>) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    socket.connect_timeout(&SocketAddr::V4(to).into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// Bytes flow both ways between the two ends.
fn assert_exchange(mut a: TcpStream, mut b: TcpStream) {
    a.write_all(b"ping").unwrap();
    let mut buf = [0; 4];
    b.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    b.write_all(b"pong").unwrap();
    a.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
}
