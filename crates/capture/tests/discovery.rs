//! Finding running pods' network namespaces by address, in real namespaces: the procfs scan on
//! its own, and the agent capturing an enrolled pod it never had a CNI ADD for.
//!
//! Pods are namespaces on a bridge (ambit-localmesh's topology), each held by a `sleep`
//! process as a runtime's pause process holds a sandbox's. The addresses are picked from ranges
//! no other test uses, since the scan sees every namespace on the machine.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use ambit_capture::discovery::{Lookup, NetnsScan};
use ambit_capture::zds::ZdsConfig;
use ambit_capture::{
    Agent, AgentConfig, BackendChoice, CniPod, DiscoveryConfig, PodName, Rules, RulesError,
    StaticEnrollment,
};
use ambit_localmesh::topology::Topology;
use ambit_netns::Netns;
use ambit_proto::zds::DelWorkload;
use ambit_proto::zds::workload_request::Payload;
use ambit_testkit::eventually;
use common::{NodeSide, inode_of};
use tempfile::TempDir;

fn topology(subnet: u8, pods: &[(&str, u8)]) -> Topology {
    let mut topology = Topology::new(Ipv4Addr::new(10, 231, subnet, 1), 24).expect(
        "these tests build network namespaces: run them as root (or inside `unshare --user --map-root-user`)",
    );
    for (key, host) in pods {
        topology
            .add_pod(key, Ipv4Addr::new(10, 231, subnet, *host))
            .unwrap();
    }
    topology
}

fn ip(subnet: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 231, subnet, host))
}

#[test]
fn the_scan_maps_each_pod_address_to_its_namespace_and_skips_the_hosts() {
    let topology = topology(1, &[("ns/a", 11), ("ns/b", 12)]);
    let scan = NetnsScan::scan("/proc".as_ref()).unwrap();

    for (key, host) in [("ns/a", 11), ("ns/b", 12)] {
        let pod = topology.pod(key).unwrap();
        let Lookup::Found(found) = scan.find(&[ip(1, host)]) else {
            panic!("{key}: {:?}", scan.find(&[ip(1, host)]));
        };
        assert_eq!(found.inode, pod.netns().inode(), "{key}");
        assert_eq!(
            found.path,
            pod.netns_path(),
            "{key}: found through its holder"
        );
        assert!(found.ips.contains(&ip(1, host)), "{key}: {:?}", found.ips);
        assert!(
            found.ips.iter().all(|ip| !ip.is_loopback()),
            "{key}: {:?}",
            found.ips
        );
    }
    // The wire namespace holds the gateway address; nothing holds an address never assigned.
    assert!(
        matches!(scan.find(&[ip(1, 1)]), Lookup::Found(w) if w.inode == topology.wire().inode())
    );
    assert_eq!(scan.find(&[ip(1, 99)]), Lookup::NotFound);
    let host = Netns::current().unwrap().inode();
    assert!(
        scan.netns().iter().all(|n| n.inode != host),
        "the host's namespace is skipped"
    );
    let mut inodes: Vec<u64> = scan.netns().iter().map(|n| n.inode).collect();
    inodes.sort_unstable();
    let len = inodes.len();
    inodes.dedup();
    assert_eq!(inodes.len(), len, "one entry per namespace");
}

/// An agent scanning `/proc`, with in-memory enrollment, on its own socket and state directory.
async fn start_agent(dir: &TempDir, enrollment: &Arc<StaticEnrollment>) -> Agent {
    let mut zds = ZdsConfig::new(dir.path().join("zds.sock"));
    zds.ack_timeout = Duration::from_secs(3);
    let mut config = AgentConfig::new(dir.path().join("state"), zds, rules());
    let mut discovery = DiscoveryConfig::new("/proc");
    discovery.min_interval = Duration::from_millis(100);
    config.discovery = Some(discovery);
    Agent::start(config, enrollment.clone()).await.unwrap()
}

fn rules() -> Rules {
    Rules::new(BackendChoice::Auto).unwrap()
}

#[tokio::test]
async fn an_enrolled_pod_never_added_is_found_captured_and_replayed_then_adopted_by_its_add() {
    let topology = topology(2, &[("ns/running", 11), ("ns/bystander", 12)]);
    let running = topology.pod("ns/running").unwrap();
    let bystander = topology.pod("ns/bystander").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let enrollment = Arc::new(StaticEnrollment::new());
    // Enrolled before the agent starts, as a restarted agent finds WDS; one pod is not here.
    enrollment.enroll_with_ips(PodName::new("ns", "running"), "sa-running", vec![ip(2, 11)]);
    enrollment.enroll_with_ips(PodName::new("ns", "elsewhere"), "sa-x", vec![ip(2, 99)]);

    let agent = start_agent(&dir, &enrollment).await;
    eventually!(observe = agent.status().await, |s| s.len() == 1
        && s[0].rules_installed);
    rules().check(running.netns()).unwrap();
    assert!(matches!(
        rules().check(bystander.netns()),
        Err(RulesError::Missing)
    ));
    let status = agent.status().await.remove(0);
    assert_eq!(
        (status.namespace.as_str(), status.name.as_str()),
        ("ns", "running")
    );
    assert_eq!(status.uid, "ns/running", "WDS carries no pod UID");
    assert_eq!(
        Netns::open(&status.netns).unwrap().inode(),
        running.netns().inode(),
        "recorded by a path that opens its namespace"
    );

    // A node proxy connecting now is handed the pod with its namespace.
    let node = NodeSide::connect(&dir.path().join("zds.sock")).await;
    let replay = node.replay().await;
    assert!(
        matches!(&replay[..], [(Payload::Add(add), Some(inode))]
            if add.uid == "ns/running" && *inode == running.netns().inode()
                && add.workload_info.as_ref().unwrap().service_account == "sa-running"),
        "{replay:?}"
    );

    // The runtime's ADD for that sandbox arrives late: the pod takes its uid, rules stay.
    let event = CniPod {
        namespace: "ns".into(),
        name: "running".into(),
        uid: Some("uid-running".into()),
        container_id: "sandbox-running".into(),
        netns: Some(running.netns_path()),
        ips: vec![ip(2, 11)],
    };
    let added = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.pod_added(event).await })
    };
    let (payload, fds) = node.recv().await;
    assert_eq!(
        payload,
        Payload::Del(DelWorkload {
            uid: "ns/running".into()
        })
    );
    assert!(fds.is_empty());
    node.ack("").await;
    let (payload, fds) = node.recv().await;
    let Payload::Add(add) = payload else {
        panic!("expected AddWorkload, got {payload:?}")
    };
    assert_eq!(add.uid, "uid-running");
    assert_eq!(inode_of(fds), Some(running.netns().inode()));
    node.ack("").await;
    added.await.unwrap().unwrap();
    rules().check(running.netns()).unwrap();
    let status = agent.status().await.remove(0);
    assert!(status.acked && status.uid == "uid-running", "{status:?}");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_running_pod_enrolled_while_the_agent_runs_is_found_without_an_add() {
    let topology = topology(3, &[("ns/labelled", 11)]);
    let pod = topology.pod("ns/labelled").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let enrollment = Arc::new(StaticEnrollment::new());
    let agent = start_agent(&dir, &enrollment).await;
    let node = NodeSide::connect(&dir.path().join("zds.sock")).await;
    assert!(node.replay().await.is_empty());
    // Searched for once and not found: an address no namespace holds.
    enrollment.enroll_with_ips(PodName::new("ns", "ghost"), "sa", vec![ip(3, 99)]);

    // The namespace is labelled: the pod is enrolled with no CNI event.
    enrollment.enroll_with_ips(
        PodName::new("ns", "labelled"),
        "sa-labelled",
        vec![ip(3, 11)],
    );
    let (payload, fds) = node.recv().await;
    let Payload::Add(add) = payload else {
        panic!("expected AddWorkload, got {payload:?}")
    };
    assert_eq!(add.uid, "ns/labelled");
    assert_eq!(inode_of(fds), Some(pod.netns().inode()));
    node.ack("").await;
    eventually!(observe = agent.status().await, |s| s.len() == 1
        && s[0].acked);
    rules().check(pod.netns()).unwrap();

    // Unlabelled again: released like any captured pod.
    enrollment.unenroll(&PodName::new("ns", "labelled"));
    let (payload, _) = node.recv().await;
    assert_eq!(
        payload,
        Payload::Del(DelWorkload {
            uid: "ns/labelled".into()
        })
    );
    node.ack("").await;
    eventually!(matches!(
        rules().check(pod.netns()),
        Err(RulesError::Missing)
    ));
    agent.shutdown().await;
}
