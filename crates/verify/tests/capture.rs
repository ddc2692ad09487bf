//! The capture path end to end, for real: a new network namespace with two addresses on its
//! loopback, tcpdump started inside it through `ambit_verify::capture`, a plaintext exchange and
//! a real TLS 1.3 exchange (rustls, a certificate made by rcgen) between the two addresses on
//! port 15008, and the file read back through `pcap`, `flows` and `report`.
//!
//! Needs root (to create the namespace and run tcpdump) and tcpdump installed; fails loudly
//! without them.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};

use ambit_netns::Netns;
use ambit_testkit::eventually;
use ambit_verify::admin::ConfigDump;
use ambit_verify::capture::{self, CaptureError, CaptureSpec};
use ambit_verify::flows::{self, Class};
use ambit_verify::pcap::{self, LinkType};
use ambit_verify::report::{Evidence, Inventory, Report, Status};
use common::{NEEDLE, closed_flows, flow_to, ip, new_netns, plaintext_exchange, tls_exchange};

const A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// A fresh namespace with loopback up and `A`, `B` on it.
fn namespace() -> Netns {
    let netns = new_netns();
    ip(&netns, &["link", "set", "lo", "up"]);
    ip(&netns, &["addr", "add", "10.77.0.1/32", "dev", "lo"]);
    ip(&netns, &["addr", "add", "10.77.0.2/32", "dev", "lo"]);
    netns
}

fn both_enrolled() -> Inventory {
    let dump = ConfigDump::parse(
        r#"{"workloads": [
          {"uid": "a", "name": "a", "namespace": "test", "workloadIps": ["10.77.0.1"],
           "protocol": "HBONE", "identity": "spiffe://cluster.local/ns/test/sa/a"},
          {"uid": "b", "name": "b", "namespace": "test", "workloadIps": ["10.77.0.2"],
           "protocol": "HBONE", "identity": "spiffe://cluster.local/ns/test/sa/b"}
        ]}"#,
    )
    .unwrap();
    Inventory::new([&dump])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_tells_plaintext_from_tls_on_the_hbone_port() {
    let netns = namespace();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("lo.pcap");
    let spec = CaptureSpec::tcp("lo", output.clone()).in_netns(netns.clone(), "test netns");
    let running = capture::start(spec).unwrap();

    plaintext_exchange((&netns, A), (&netns, B)).await;
    tls_exchange((&netns, B), (&netns, A)).await;
    // tcpdump writes each packet as it comes (-U, --immediate-mode): wait until both
    // connections' closing segments are in the file, then stop it.
    eventually!(closed_flows(&output, 2).is_some());
    let summary = running.stop().unwrap();
    assert_eq!(summary.output, output);
    assert_eq!(summary.dropped_by_kernel, Some(0), "{summary:?}");

    let trace = pcap::read_file(&output).unwrap();
    assert_eq!(trace.link_type, LinkType::Ethernet);
    assert!(trace.malformed.is_empty(), "{:?}", trace.malformed);
    let flows = flows::assemble(&trace.segments);

    // (a) plaintext, the metric name readable on the wire.
    let plain = flow_to(&flows, B);
    assert_eq!(plain.client.ip(), IpAddr::V4(A));
    assert_eq!(plain.to_server.class, Class::Plaintext);
    assert_eq!(plain.to_client.class, Class::Plaintext);
    assert!(plain.to_server.contains(NEEDLE.as_bytes()));

    // (b) TLS both ways, from the ClientHello on, and the same words nowhere in it.
    let tls = flow_to(&flows, A);
    assert_eq!(tls.client.ip(), IpAddr::V4(B));
    assert!(tls.opened && tls.to_server.complete && tls.to_client.complete);
    assert_eq!(tls.to_server.class, Class::Tls);
    assert_eq!(tls.to_client.class, Class::Tls);
    assert!(!tls.contains(NEEDLE.as_bytes()));
    assert!(tls.to_server.bytes > 50 * NEEDLE.len() as u64);

    // The report: (a) is the enrolled pods' plaintext failure, (b) is mTLS.
    let inventory = both_enrolled();
    let find = [NEEDLE.to_owned()];
    let report = Report::build(Evidence {
        inventory: Some(&inventory),
        flows: Some(&flows),
        find: &find,
        ..Evidence::default()
    });
    let row = |status| {
        report
            .rows
            .iter()
            .find(|r| r.status == status)
            .unwrap_or_else(|| panic!("no {status:?} row in\n{}", report.render_text()))
    };
    let failure = row(Status::Plaintext);
    assert_eq!(failure.source.workload.as_deref(), Some("test/a"));
    assert_eq!(
        failure.destination.address.as_deref(),
        Some("10.77.0.2:15008")
    );
    assert_eq!(failure.cleartext_matches, find.to_vec());
    let secure = row(Status::Mtls);
    assert!(secure.mtls);
    assert_eq!(secure.source.workload.as_deref(), Some("test/b"));
    assert!(secure.cleartext_matches.is_empty());
    assert!(!report.passed());
    let text = report.render_text();
    eprintln!("{text}");
    assert!(text.contains("VERDICT: FAIL"), "{text}");
    assert!(text.contains(&format!(
        "found {NEEDLE:?} in cleartext: test/a -> test/b:15008"
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_on_any_reads_cooked_frames() {
    let netns = namespace();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("any.pcap");
    let spec = CaptureSpec::tcp("any", output.clone()).in_netns(netns.clone(), "test netns");
    let running = capture::start(spec).unwrap();
    tls_exchange((&netns, B), (&netns, A)).await;
    eventually!(closed_flows(&output, 1).is_some());
    running.stop().unwrap();

    let trace = pcap::read_file(&output).unwrap();
    assert!(
        matches!(trace.link_type, LinkType::LinuxSll | LinkType::LinuxSll2),
        "{:?}",
        trace.link_type
    );
    let flows = flows::assemble(&trace.segments);
    let tls = flow_to(&flows, A);
    assert_eq!(
        (tls.to_server.class, tls.to_client.class),
        (Class::Tls, Class::Tls)
    );
}

#[test]
fn capture_on_a_missing_interface_says_why() {
    let netns = namespace();
    let dir = tempfile::tempdir().unwrap();
    let spec = CaptureSpec::tcp("nosuch0", dir.path().join("x.pcap")).in_netns(netns, "test netns");
    let e = capture::start(spec).unwrap_err();
    assert!(matches!(e, CaptureError::Failed { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("nosuch0 in test netns") && text.contains("nosuch0"),
        "{text}"
    );
}
