//! The capture agent end to end in real namespaces: CNI events in, rules in the pod's netns and
//! ZDS requests out to a node proxy end driven by the test (ZDS is a wire contract, so the test
//! speaks it directly).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_capture::plugin::{EventServer, PodCommand, PodEvent, send_event};
use ambit_capture::zds::ZdsConfig;
use ambit_capture::{
    Agent, AgentConfig, AgentError, BackendChoice, CniPod, PodName, PodStatus, Rules, RulesError,
    StaticEnrollment,
};
use ambit_proto::zds::workload_request::Payload;
use ambit_testkit::eventually;
use common::{NodeSide, TestPod, inode_of};
use tempfile::TempDir;

/// An agent on its own socket and state directory, with in-memory enrollment.
struct Setup {
    dir: TempDir,
    enrollment: Arc<StaticEnrollment>,
    agent: Agent,
}

impl Setup {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let enrollment = Arc::new(StaticEnrollment::new());
        let agent = start_agent(&dir, &enrollment).await;
        Self {
            dir,
            enrollment,
            agent,
        }
    }

    fn zds_path(&self) -> PathBuf {
        self.dir.path().join("zds.sock")
    }

    async fn node(&self) -> NodeSide {
        let node = NodeSide::connect(&self.zds_path()).await;
        assert!(node.replay().await.is_empty(), "nothing to replay yet");
        node
    }

    fn enroll(&self, name: &str) {
        self.enrollment
            .enroll(PodName::new("ns", name), format!("sa-{name}"));
    }

    async fn status(&self, name: &str) -> Option<PodStatus> {
        self.agent
            .status()
            .await
            .into_iter()
            .find(|s| s.name == name)
    }

    /// Sends ADD for `pod` on a task, since it waits for the node proxy's ack.
    fn add(&self, name: &str, pod: &TestPod) -> tokio::task::JoinHandle<Result<(), String>> {
        let agent = self.agent.clone();
        let event = cni(name, pod);
        tokio::spawn(async move { agent.pod_added(event).await.map_err(|e| format!("{e:#?}")) })
    }
}

async fn start_agent(dir: &TempDir, enrollment: &Arc<StaticEnrollment>) -> Agent {
    let mut zds = ZdsConfig::new(dir.path().join("zds.sock"));
    zds.ack_timeout = Duration::from_secs(3);
    let rules = Rules::new(BackendChoice::Auto).unwrap();
    let config = AgentConfig::new(dir.path().join("state"), zds, rules);
    Agent::start(config, enrollment.clone()).await.unwrap()
}

fn cni(name: &str, pod: &TestPod) -> CniPod {
    CniPod {
        namespace: "ns".into(),
        name: name.into(),
        uid: Some(format!("uid-{name}")),
        container_id: format!("sandbox-{name}"),
        netns: Some(pod.path.clone()),
        ips: vec![],
    }
}

fn rules() -> Rules {
    Rules::new(BackendChoice::Auto).unwrap()
}

/// Receives an `AddWorkload`, checks it names `name` and carries `pod`'s namespace, acks it.
async fn expect_add(node: &NodeSide, name: &str, pod: &TestPod, ack: &str) {
    let (payload, fds) = node.recv().await;
    let Payload::Add(add) = payload else {
        panic!("expected AddWorkload, got {payload:?}")
    };
    assert_eq!(add.uid, format!("uid-{name}"));
    let info = add.workload_info.unwrap();
    assert_eq!((info.namespace.as_str(), info.name.as_str()), ("ns", name));
    assert_eq!(info.service_account, format!("sa-{name}"));
    assert_eq!(
        inode_of(fds),
        Some(pod.netns.inode()),
        "the pod's netns rides along"
    );
    node.ack(ack).await;
}

async fn expect_del(node: &NodeSide, name: &str) {
    let (payload, fds) = node.recv().await;
    assert_eq!(
        payload,
        Payload::Del(ambit_proto::zds::DelWorkload {
            uid: format!("uid-{name}")
        })
    );
    assert!(fds.is_empty());
    node.ack("").await;
}

#[tokio::test]
async fn an_enrolled_pod_is_captured_and_handed_to_the_node_proxy() {
    let setup = Setup::new().await;
    let node = setup.node().await;
    let pod = TestPod::new();
    setup.enroll("web");

    let added = setup.add("web", &pod);
    expect_add(&node, "web", &pod, "").await;
    added.await.unwrap().unwrap();

    rules().check(&pod.netns).unwrap();
    let status = setup.status("web").await.unwrap();
    assert_eq!(
        status,
        PodStatus {
            namespace: "ns".into(),
            name: "web".into(),
            uid: "uid-web".into(),
            netns: pod.path.clone(),
            enrolled: true,
            rules_installed: true,
            acked: true,
            marked: true,
            error: None,
        }
    );
    setup.agent.pod_checked(cni("web", &pod)).await.unwrap();
}

#[tokio::test]
async fn a_pod_enrolled_after_its_add_is_captured_and_released_on_unenrollment() {
    let setup = Setup::new().await;
    let node = setup.node().await;
    let pod = TestPod::new();

    setup.add("late", &pod).await.unwrap().unwrap();
    node.expect_nothing(Duration::from_millis(300)).await;
    assert!(matches!(
        rules().check(&pod.netns),
        Err(RulesError::Missing)
    ));
    let status = setup.status("late").await.unwrap();
    assert!(!status.enrolled && !status.rules_installed && !status.acked);
    setup.agent.pod_checked(cni("late", &pod)).await.unwrap();

    // A label change: no new ADD, the agent captures the running pod.
    setup.enroll("late");
    expect_add(&node, "late", &pod, "").await;
    eventually!(observe = setup.status("late").await.unwrap(), |s| s.acked
        && s.rules_installed);
    rules().check(&pod.netns).unwrap();

    setup.enrollment.unenroll(&PodName::new("ns", "late"));
    expect_del(&node, "late").await;
    eventually!(observe = setup.status("late").await.unwrap(), |s| !s
        .rules_installed
        && !s.enrolled);
    assert!(matches!(
        rules().check(&pod.netns),
        Err(RulesError::Missing)
    ));
    assert_eq!(
        setup.agent.status().await.len(),
        1,
        "the pod is still known"
    );
}

#[tokio::test]
async fn del_releases_the_pod_and_forgets_it() {
    let setup = Setup::new().await;
    let node = setup.node().await;
    let pod = TestPod::new();
    setup.enroll("gone");
    let added = setup.add("gone", &pod);
    expect_add(&node, "gone", &pod, "").await;
    added.await.unwrap().unwrap();

    // A late DEL of another sandbox of the same pod changes nothing.
    let mut stale = cni("gone", &pod);
    stale.container_id = "sandbox-older".into();
    setup.agent.pod_deleted(stale).await.unwrap();
    node.expect_nothing(Duration::from_millis(200)).await;

    let agent = setup.agent.clone();
    let event = cni("gone", &pod);
    let deleted = tokio::spawn(async move { agent.pod_deleted(event).await });
    expect_del(&node, "gone").await;
    deleted.await.unwrap().unwrap();
    assert!(matches!(
        rules().check(&pod.netns),
        Err(RulesError::Missing)
    ));
    assert!(setup.agent.status().await.is_empty());
}

#[tokio::test]
async fn check_fails_when_an_enrolled_pods_rules_are_gone() {
    let setup = Setup::new().await;
    let pod = TestPod::new();
    let node = setup.node().await;
    setup.enroll("checked");
    let added = setup.add("checked", &pod);
    expect_add(&node, "checked", &pod, "").await;
    added.await.unwrap().unwrap();
    setup.agent.pod_checked(cni("checked", &pod)).await.unwrap();

    rules().remove(&pod.netns).unwrap();
    let err = setup
        .agent
        .pod_checked(cni("checked", &pod))
        .await
        .unwrap_err();
    assert!(format!("{err:#?}").contains("Missing"), "{err:#?}");
    let unknown = TestPod::new();
    setup.enroll("unknown");
    assert!(
        setup
            .agent
            .pod_checked(cni("unknown", &unknown))
            .await
            .is_err()
    );
}

/// As istio-cni: without a node proxy, an enrolled pod's ADD fails (the runtime retries), its
/// rules in place and the pod unmarked; the node proxy gets it in its replay when it connects,
/// the pod is marked then, and the retried ADD succeeds. A pod outside the mesh passes.
#[tokio::test]
async fn without_a_node_proxy_add_fails_with_rules_in_place_and_the_retry_succeeds_once_it_has_the_pod()
 {
    let setup = Setup::new().await;
    let (pod, other) = (TestPod::new(), TestPod::new());
    setup.enroll("early");
    let err = setup.add("early", &pod).await.unwrap().unwrap_err();
    assert!(err.contains("NoNodeProxy"), "{err}");
    setup.add("bystander", &other).await.unwrap().unwrap();
    rules().check(&pod.netns).unwrap();
    let status = setup.status("early").await.unwrap();
    assert!(
        status.rules_installed && !status.acked && !status.marked,
        "{status:?}"
    );
    assert!(
        status
            .error
            .as_deref()
            .is_some_and(|e| e.contains("no node proxy")),
        "{status:?}"
    );

    let node = NodeSide::connect(&setup.zds_path()).await;
    let replay = node.replay().await;
    assert_eq!(replay.len(), 1, "only the enrolled pod: {replay:?}");
    let (Payload::Add(add), inode) = &replay[0] else {
        panic!("{replay:?}")
    };
    assert_eq!(add.uid, "uid-early");
    assert_eq!(*inode, Some(pod.netns.inode()));
    eventually!(observe = setup.status("early").await.unwrap(), |s| s.acked
        && s.marked
        && s.error.is_none());
    eventually!(setup.agent.zds().connected());
    setup.add("early", &pod).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_reconnecting_or_replacing_node_proxy_gets_a_replay_then_the_snapshot() {
    let setup = Setup::new().await;
    let node = setup.node().await;
    let pod = TestPod::new();
    setup.enroll("kept");
    let added = setup.add("kept", &pod);
    expect_add(&node, "kept", &pod, "").await;
    added.await.unwrap().unwrap();

    // The node proxy restarts: the connection drops, a new one comes.
    drop(node);
    eventually!(!setup.agent.zds().connected());
    let node = NodeSide::connect(&setup.zds_path()).await;
    let replay = node.replay().await;
    assert!(
        matches!(&replay[..], [(Payload::Add(add), Some(inode))] if add.uid == "uid-kept" && *inode == pod.netns.inode()),
        "{replay:?}"
    );

    // A second node proxy connects while the first is still there: it takes over.
    let newer = NodeSide::connect(&setup.zds_path()).await;
    assert_eq!(newer.replay().await.len(), 1);
    assert!(
        node.closed_by_agent().await,
        "the replaced connection is closed"
    );
    eventually!(setup.agent.zds().connected());

    // A connection that does not start with a hello is closed and changes nothing.
    let rude = ambit_netns::seqpacket::SeqpacketStream::connect(setup.zds_path())
        .await
        .unwrap();
    rude.send(b"\x0a\x00", &[]).await.unwrap();
    let mut buf = [0; 64];
    let (len, _) = rude.recv(&mut buf).await.unwrap();
    assert_eq!(len, 0, "closed without a request");
    assert!(setup.agent.zds().connected(), "the good connection stays");
}

#[tokio::test]
async fn a_node_proxy_rejection_fails_the_add_and_shows_in_status() {
    let setup = Setup::new().await;
    let node = setup.node().await;
    let pod = TestPod::new();
    setup.enroll("refused");
    let added = setup.add("refused", &pod);
    expect_add(&node, "refused", &pod, "no room for this pod").await;
    let err = added.await.unwrap().unwrap_err();
    assert!(err.contains("no room for this pod"), "{err}");

    let status = setup.status("refused").await.unwrap();
    assert!(status.rules_installed && !status.acked, "{status:?}");
    assert!(
        status
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("no room for this pod"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_restarted_agent_replays_surviving_pods_and_forgets_vanished_ones() {
    let mut setup = Setup::new().await;
    let node = setup.node().await;
    let (survivor, doomed) = (TestPod::new(), TestPod::new());
    for (name, pod) in [("survivor", &survivor), ("doomed", &doomed)] {
        setup.enroll(name);
        let added = setup.add(name, pod);
        expect_add(&node, name, pod, "").await;
        added.await.unwrap().unwrap();
    }
    let idle = TestPod::new();
    setup.add("idle", &idle).await.unwrap().unwrap();

    setup.agent.shutdown().await;
    assert!(node.closed_by_agent().await);
    drop(node);
    // The pod is deleted while the agent is down: its holder process and path are gone.
    let doomed_path = doomed.path.clone();
    drop(doomed);
    assert!(!doomed_path.exists());

    setup.agent = start_agent(&setup.dir, &setup.enrollment).await;
    let node = NodeSide::connect(&setup.zds_path()).await;
    let replay = node.replay().await;
    assert!(
        matches!(&replay[..], [(Payload::Add(add), Some(inode))] if add.uid == "uid-survivor" && *inode == survivor.netns.inode()),
        "{replay:?}"
    );
    let mut names: Vec<String> = setup
        .agent
        .status()
        .await
        .into_iter()
        .map(|s| s.name)
        .collect();
    names.sort();
    assert_eq!(names, ["idle", "survivor"]);
    eventually!(observe = setup.status("survivor").await.unwrap(), |s| s
        .acked
        && s.rules_installed);
    let state = std::fs::read_to_string(setup.dir.path().join("state/pods.json")).unwrap();
    assert!(!state.contains("doomed"), "{state}");

    // The restored agent handles the survivor's DEL as usual.
    let agent = setup.agent.clone();
    let event = cni("survivor", &survivor);
    let deleted = tokio::spawn(async move { agent.pod_deleted(event).await });
    expect_del(&node, "survivor").await;
    deleted.await.unwrap().unwrap();
}

#[tokio::test]
async fn events_from_the_plugin_channel_reach_the_agent() {
    let setup = Setup::new().await;
    let node = setup.node().await;
    let socket = setup.dir.path().join("pluginevent.sock");
    let server = EventServer::bind(&socket).unwrap();
    let events = tokio::spawn(server.serve(Arc::new(setup.agent.clone())));
    let pod = TestPod::new();
    setup.enroll("web");

    let event = PodEvent {
        command: PodCommand::Add,
        container_id: "sandbox-web".into(),
        netns: Some(pod.path.clone()),
        pod_namespace: "ns".into(),
        pod_name: "web".into(),
        pod_uid: Some("uid-web".into()),
        ips: vec!["10.0.0.7".parse().unwrap()],
    };
    let sent = {
        let (socket, event) = (socket.clone(), event.clone());
        tokio::spawn(async move { send_event(&socket, &event, Duration::from_secs(10)).await })
    };
    expect_add(&node, "web", &pod, "").await;
    sent.await.unwrap().unwrap();
    rules().check(&pod.netns).unwrap();

    // A refusal comes back to the plugin with the agent's reason.
    let mut no_netns = event.clone();
    no_netns.netns = None;
    let err = send_event(&socket, &no_netns, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no network namespace"), "{err}");
    events.abort();
}

#[tokio::test]
async fn a_netns_path_from_the_host_is_opened_under_the_host_root() {
    // In the DaemonSet the host's /var/run/netns is mounted at /host/var/run/netns, while the
    // runtime names the namespace by its host path.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("host");
    std::fs::create_dir_all(root.join("var/run/netns")).unwrap();
    let pod = TestPod::new();
    std::os::unix::fs::symlink(&pod.path, root.join("var/run/netns/cni-1234")).unwrap();
    let enrollment = Arc::new(StaticEnrollment::new());
    let mut config = AgentConfig::new(
        dir.path().join("state"),
        ZdsConfig::new(dir.path().join("zds.sock")),
        rules(),
    );
    config.host_root = Some(root.clone());
    let agent = Agent::start(config, enrollment.clone()).await.unwrap();
    enrollment.enroll(PodName::new("ns", "web"), "sa-web");

    let mut event = cni("web", &pod);
    event.netns = Some("/var/run/netns/cni-1234".into());
    // No node proxy here: the ADD fails after the rules went into the namespace it opened.
    let err = agent.pod_added(event).await.unwrap_err();
    assert!(matches!(err, AgentError::NoNodeProxy { .. }), "{err:?}");
    rules().check(&pod.netns).unwrap();
    let status = agent.status().await.remove(0);
    assert_eq!(status.netns, root.join("var/run/netns/cni-1234"));

    // A path that exists only as given (the local mesh's /proc/<pid>/ns/net) still opens.
    let other = TestPod::new();
    agent.pod_added(cni("other", &other)).await.unwrap();
    let status = agent.status().await;
    assert_eq!(
        status.iter().find(|s| s.name == "other").unwrap().netns,
        other.path
    );
    agent.shutdown().await;
}
