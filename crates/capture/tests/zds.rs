//! The ZDS server against a node proxy end driven by the test: timeouts, protocol errors,
//! `KeepWorkload`, and what a connection's snapshot names.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use ambit_capture::zds::{AckState, Zds, ZdsConfig, ZdsError, ZdsPod};
use ambit_proto::zds::KeepWorkload;
use ambit_proto::zds::workload_request::Payload;
use ambit_testkit::eventually;
use common::{NodeSide, TestPod, new_netns};
use tempfile::TempDir;

fn server(dir: &TempDir) -> Zds {
    let mut config = ZdsConfig::new(dir.path().join("zds.sock"));
    config.ack_timeout = Duration::from_millis(300);
    Zds::bind(config).unwrap()
}

fn pod(uid: &str, netns: Option<ambit_netns::Netns>) -> ZdsPod {
    ZdsPod {
        uid: uid.into(),
        name: uid.into(),
        namespace: "ns".into(),
        service_account: "sa".into(),
        netns,
    }
}

#[tokio::test]
async fn a_node_proxy_that_does_not_ack_in_time_is_dropped_and_gets_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let zds = server(&dir);
    let node = NodeSide::connect(&dir.path().join("zds.sock")).await;
    assert!(node.replay().await.is_empty());
    eventually!(zds.connected());

    let netns = new_netns();
    let err = zds.add(pod("slow", Some(netns.clone()))).await.unwrap_err();
    assert!(matches!(err, ZdsError::Timeout { .. }), "{err:?}");
    assert!(!zds.connected());
    assert_eq!(zds.ack_state("slow"), Some(AckState::Pending));
    let (payload, _) = node.recv().await;
    assert!(matches!(payload, Payload::Add(_)), "the request did go out");
    assert!(node.closed_by_agent().await);

    let node = NodeSide::connect(&dir.path().join("zds.sock")).await;
    let replay = node.replay().await;
    assert!(
        matches!(&replay[..], [(Payload::Add(add), Some(inode))] if add.uid == "slow" && *inode == netns.inode()),
        "{replay:?}"
    );
    eventually!(observe = zds.ack_state("slow"), |s| s
        == Some(AckState::Acked));
    zds.shutdown().await;
    assert!(
        !dir.path().join("zds.sock").exists(),
        "shutdown removes the socket"
    );
}

#[tokio::test]
async fn an_answer_that_is_not_an_ack_ends_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let zds = server(&dir);
    let node = NodeSide::connect(&dir.path().join("zds.sock")).await;
    assert!(node.replay().await.is_empty());
    eventually!(zds.connected());

    let pod_netns = TestPod::new();
    let add = {
        let zds = zds.clone();
        let netns = pod_netns.netns.clone();
        tokio::spawn(async move { zds.add(pod("odd", Some(netns))).await })
    };
    let _ = node.recv().await;
    node.send_raw(b"\x12\x00").await; // field 2: no such payload in WorkloadResponse
    let err = add.await.unwrap().unwrap_err();
    assert!(matches!(err, ZdsError::Protocol { .. }), "{err:?}");
    assert!(node.closed_by_agent().await);
}

#[tokio::test]
async fn a_pod_without_its_netns_is_replayed_as_keep_and_a_deleted_one_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let zds = server(&dir);
    let err = zds.add(pod("kept", None)).await.unwrap_err();
    assert!(matches!(err, ZdsError::NotConnected), "{err:?}");
    let netns = new_netns();
    assert!(matches!(
        zds.add(pod("deleted", Some(netns))).await,
        Err(ZdsError::NotConnected)
    ));
    zds.del("deleted").await.unwrap();
    assert_eq!(zds.ack_state("deleted"), None);

    let node = NodeSide::connect(&dir.path().join("zds.sock")).await;
    let replay = node.replay().await;
    assert_eq!(
        replay,
        [(Payload::Keep(KeepWorkload { uid: "kept".into() }), None)]
    );
    eventually!(observe = zds.pods(), |p| p
        == [("kept".to_owned(), AckState::Acked)]);
}
