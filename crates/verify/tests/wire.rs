//! Capturing the way the local mesh's harness lays pods out: each pod a network namespace with
//! an `eth0` (a veth) on one bridge in a "wire" namespace. One capture in the wire namespace on
//! `any` sees every pod-to-pod packet (twice: leaving one veth, entering the other), and the
//! report counts each connection once; a capture on one pod's veth sees that pod's traffic only.
//!
//! Needs root (or a user namespace); fails loudly without.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command};

use ambit_netns::Netns;
use ambit_testkit::eventually;
use ambit_verify::admin::ConfigDump;
use ambit_verify::capture::{self, CaptureSpec};
use ambit_verify::flows::{self, Class, Flow};
use ambit_verify::pcap;
use ambit_verify::report::{Evidence, Inventory, Report, Status};
use common::{NEEDLE, closed_flows, flow_to, ip, new_netns, plaintext_exchange, tls_exchange};

const ENROLLED: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 3);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 4);

/// A namespace kept alive by a `sleep` inside it, so iproute2 can name it by pid.
struct Pod {
    netns: Netns,
    holder: Child,
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The wire (a bridge) and three pods on it.
fn topology() -> (Netns, Vec<Pod>) {
    let wire = new_netns();
    ip(&wire, &["link", "add", "ambit0", "type", "bridge"]);
    ip(&wire, &["link", "set", "ambit0", "up"]);
    let pods = [ENROLLED, PEER, OUTSIDE]
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let netns = new_netns();
            let mut sleep = Command::new("sleep");
            sleep.arg("300");
            let holder = netns.spawn(sleep).unwrap();
            let veth = format!("vp{i}");
            let pid = holder.id().to_string();
            ip(
                &wire,
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pid,
                ],
            );
            ip(&wire, &["link", "set", &veth, "master", "ambit0", "up"]);
            ip(&netns, &["link", "set", "lo", "up"]);
            ip(
                &netns,
                &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
            );
            ip(&netns, &["link", "set", "eth0", "up"]);
            Pod { netns, holder }
        })
        .collect();
    (wire, pods)
}

/// ENROLLED and PEER are enrolled workloads; OUTSIDE is no workload at all.
fn inventory() -> Inventory {
    let dump = ConfigDump::parse(
        r#"{"workloads": [
          {"uid": "e", "name": "enrolled", "namespace": "test", "workloadIps": ["10.78.0.2"],
           "protocol": "HBONE", "identity": "spiffe://cluster.local/ns/test/sa/enrolled"},
          {"uid": "p", "name": "peer", "namespace": "test", "workloadIps": ["10.78.0.3"],
           "protocol": "HBONE", "identity": "spiffe://cluster.local/ns/test/sa/peer"}
        ]}"#,
    )
    .unwrap();
    Inventory::new([&dump])
}

/// Captures on `interface` of the wire while ENROLLED talks TLS to PEER and plaintext to
/// OUTSIDE; the flows in the file.
async fn capture_on_the_wire(interface: &str) -> Vec<Flow> {
    let (wire, pods) = topology();
    let [enrolled, peer, outside] = [&pods[0].netns, &pods[1].netns, &pods[2].netns];
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("wire.pcap");
    let spec = CaptureSpec::tcp(interface, output.clone()).in_netns(wire, "the wire");
    let running = capture::start(spec).unwrap();

    tls_exchange((enrolled, ENROLLED), (peer, PEER)).await;
    plaintext_exchange((enrolled, ENROLLED), (outside, OUTSIDE)).await;
    let expected = if interface == "any" { 2 } else { 1 };
    eventually!(closed_flows(&output, expected).is_some());
    running.stop().unwrap();

    let trace = pcap::read_file(&output).unwrap();
    flows::assemble(&trace.segments)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_capture_on_the_wire_judges_every_pod_to_pod_connection() {
    let flows = capture_on_the_wire("any").await;
    assert_eq!(flows.len(), 2, "{flows:#?}");
    let tls = flow_to(&flows, PEER);
    assert_eq!(
        (tls.to_server.class, tls.to_client.class),
        (Class::Tls, Class::Tls)
    );
    // Each packet was captured on two veths; the bytes are counted once.
    assert!(tls.to_server.packets > 0);
    let wire_bytes: usize = tls.to_server.chunks().iter().map(|c| c.bytes.len()).sum();
    assert_eq!(tls.to_server.bytes, wire_bytes as u64);

    let inventory = inventory();
    let find = [NEEDLE.to_owned()];
    let report = Report::build(Evidence {
        inventory: Some(&inventory),
        flows: Some(&flows),
        find: &find,
        ..Evidence::default()
    });
    let text = report.render_text();
    let statuses: Vec<Status> = report.rows.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Status::Mtls, Status::LeavesMesh], "{text}");
    assert_eq!(report.rows[0].connections, 1, "{text}");
    let outside_row = &report.rows[1];
    assert_eq!(
        outside_row.destination.address.as_deref(),
        Some("10.78.0.4:15008")
    );
    assert_eq!(outside_row.cleartext_matches, find.to_vec());
    assert!(report.passed(), "{text}");
    assert_eq!(tls.client.ip(), IpAddr::V4(ENROLLED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_on_one_veth_sees_only_that_pods_traffic() {
    // vp2 is OUTSIDE's link to the bridge: the TLS exchange between the other two never
    // crosses it.
    let flows = capture_on_the_wire("vp2").await;
    assert_eq!(flows.len(), 1, "{flows:#?}");
    let plain = flow_to(&flows, OUTSIDE);
    assert_eq!(plain.client.ip(), IpAddr::V4(ENROLLED));
    assert_eq!(plain.to_server.class, Class::Plaintext);
    assert!(plain.to_server.contains(NEEDLE.as_bytes()));
}
