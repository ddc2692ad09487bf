//! The capture path end to end, for real: a new network namespace with two addresses on its
//! loopback, our packet-socket capture started inside it through `ambit_verify::capture`, a
//! plaintext exchange and a real TLS 1.3 exchange (rustls, a certificate made by rcgen) between
//! the two addresses on port 15008, and the file read back through `pcap`, `flows` and `report`.
//! Once as root, once as nobody inside a user namespace of its own.
//!
//! Needs root, or a user namespace (to create the namespace and open the packet socket); fails
//! loudly without.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use ambit_netns::Netns;
use ambit_testkit::eventually;
use ambit_verify::admin::ConfigDump;
use ambit_verify::capture::{self, CaptureError, CaptureSpec, CaptureSummary};
use ambit_verify::flows::{self, Class, Flow};
use ambit_verify::pcap::{self, LinkType, TcpFlags, Trace};
use ambit_verify::report::{Evidence, Inventory, Report, Status};
use common::{NEEDLE, closed_flows, flow_to, ip, new_netns, plaintext_exchange, tls_exchange};

const A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// Set (to the user id outside) in the copy of this test binary that runs inside a user
/// namespace.
const IN_USERNS: &str = "AMBIT_VERIFY_TEST_OUTER_UID";
/// The unprivileged user the rootless test runs as when started by root.
const NOBODY: &str = "65534";

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

/// Captures on `interface` of a fresh namespace while A talks plaintext to B and B talks TLS
/// to A; the summary, the file read back, and its flows.
async fn capture_both_exchanges(interface: &str) -> (CaptureSummary, Trace, Vec<Flow>) {
    let netns = namespace();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join(format!("{interface}.pcap"));
    let spec = CaptureSpec::tcp(interface, output.clone()).in_netns(netns.clone(), "test netns");
    let running = capture::start(spec).unwrap();
    assert!(running.receive_buffer() > 0);

    plaintext_exchange((&netns, A), (&netns, B)).await;
    tls_exchange((&netns, B), (&netns, A)).await;
    // The file grows by whole packets while the capture runs: wait until both connections'
    // closing segments are in it, then stop.
    eventually!(closed_flows(&output, 2).is_some());
    let summary = running.stop().unwrap();
    assert_eq!(summary.output, output);
    let trace = pcap::read_file(&output).unwrap();
    let seeding = std::env::var_os(ambit_testkit::corpus::WRITE_SEEDS).is_some();
    if seeding && std::env::var_os(IN_USERNS).is_none() {
        // A real capture of both exchanges seeds the `pcap` fuzz target.
        let seed = ambit_testkit::corpus::dir("pcap").join(format!("capture-{interface}"));
        std::fs::copy(&output, &seed).unwrap();
    }
    assert_eq!(trace.link_type, LinkType::Raw);
    assert_eq!(summary.packets, trace.packets as u64, "{summary:?}");
    assert_eq!(summary.truncated, 0, "{summary:?}");
    assert!(trace.malformed.is_empty(), "{:?}", trace.malformed);
    // Only TCP passed the kernel filter.
    assert_eq!(trace.ignored, 0);
    let flows = flows::assemble(&trace.segments);
    (summary, trace, flows)
}

/// (a) plaintext, the metric name readable on the wire; (b) TLS both ways, from the ClientHello
/// on, and the same words nowhere in it.
fn assert_plaintext_and_tls(flows: &[Flow]) {
    let plain = flow_to(flows, B);
    assert_eq!(plain.client.ip(), IpAddr::V4(A));
    assert_eq!(plain.to_server.class, Class::Plaintext);
    assert_eq!(plain.to_client.class, Class::Plaintext);
    assert!(plain.to_server.contains(NEEDLE.as_bytes()));

    let tls = flow_to(flows, A);
    assert_eq!(tls.client.ip(), IpAddr::V4(B));
    assert!(tls.opened && tls.to_server.complete && tls.to_client.complete);
    assert_eq!(tls.to_server.class, Class::Tls);
    assert_eq!(tls.to_client.class, Class::Tls);
    assert!(!tls.contains(NEEDLE.as_bytes()));
    assert!(tls.to_server.bytes > 50 * NEEDLE.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_tells_plaintext_from_tls_on_the_hbone_port() {
    let (_, trace, flows) = capture_both_exchanges("lo").await;
    assert_plaintext_and_tls(&flows);
    // A loopback packet is seen leaving and arriving; only one copy is kept: one SYN per flow.
    let syns = trace
        .segments
        .iter()
        .filter(|s| s.flags.contains(TcpFlags::SYN) && !s.flags.contains(TcpFlags::ACK))
        .count();
    assert_eq!(syns, 2, "{:#?}", trace.segments);

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
async fn capture_on_any_sees_every_interface() {
    let (_, _, flows) = capture_both_exchanges("any").await;
    assert_plaintext_and_tls(&flows);
}

#[test]
fn capture_on_a_missing_interface_says_why() {
    let netns = namespace();
    let dir = tempfile::tempdir().unwrap();
    let spec = CaptureSpec::tcp("nosuch0", dir.path().join("x.pcap")).in_netns(netns, "test netns");
    let e = capture::start(spec).unwrap_err();
    assert!(matches!(e, CaptureError::NoInterface { .. }), "{e:?}");
    let text = e.to_string();
    assert_eq!(
        text, "cannot capture on interface nosuch0 in test netns: no such interface",
        "{e:?}"
    );
    assert!(!dir.path().join("x.pcap").exists());
}

/// tcpdump cannot run as root of a user namespace made without newuidmap (it calls
/// setgroups); the packet socket can. Started by root, this test re-runs itself as nobody
/// inside `unshare --user --map-root-user --net`; started by anyone else (or already inside
/// a user namespace), as that user.
#[test]
fn capture_runs_without_root_inside_a_user_namespace() {
    if let Some(outer) = std::env::var_os(IN_USERNS) {
        // The copy inside: root here only through the user namespace's one-line map.
        let map = std::fs::read_to_string("/proc/self/uid_map").unwrap();
        let map: Vec<&str> = map.split_whitespace().collect();
        assert_eq!(
            map,
            ["0", outer.to_str().unwrap(), "1"],
            "not in a user namespace"
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (summary, _, flows) = runtime.block_on(capture_both_exchanges("any"));
        assert_plaintext_and_tls(&flows);
        println!("rootless capture: {summary:?}");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let (mut command, outer) = if running_as_root() {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
            "unshare",
        ]);
        (c, NOBODY.to_owned())
    } else {
        (Command::new("unshare"), effective_uid())
    };
    command
        .args(["--user", "--map-root-user", "--net", "--"])
        .arg(exe)
        .args([
            "--exact",
            "capture_runs_without_root_inside_a_user_namespace",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(IN_USERNS, &outer)
        .env("TMPDIR", "/tmp");
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed") && stdout.contains("rootless capture"),
        "the capture failed inside a user namespace ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    eprintln!(
        "{}",
        stdout
            .lines()
            .find(|l| l.contains("rootless capture"))
            .unwrap()
    );
}

/// This process's effective user id, from /proc.
fn effective_uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
        .unwrap()
}

/// Root of the machine: uid 0 in the initial user namespace, whose map covers every id.
fn running_as_root() -> bool {
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap();
    effective_uid() == "0" && map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]
}
