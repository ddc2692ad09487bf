//! The CNI plugin run as a runtime runs it — `CNI_*` environment, configuration on stdin, answer
//! on stdout — against a real agent socket served by `EventServer`.
//!
//! `run_with` is the whole of `ambit cni plugin` but for the process boundary; process-level
//! runs of the binary live with the `ambit` crate.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_capture::plugin::{EventServer, PodCommand, PodEvent, PodEventHandler, run_with};
use serde_json::{Value, json};

/// An agent on a temporary socket, recording the events it is sent. Its runtime is separate
/// from the plugin's (which `run_with` starts itself) and stops when the agent is dropped.
struct Agent {
    _runtime: tokio::runtime::Runtime,
    handler: Arc<Recorder>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<PodEvent>>,
    refusal: Option<String>,
    delay: Duration,
}

impl PodEventHandler for Recorder {
    async fn handle(&self, event: PodEvent) -> Result<(), String> {
        tokio::time::sleep(self.delay).await;
        self.events.lock().unwrap().push(event);
        match &self.refusal {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }
}

impl Agent {
    fn start(handler: Recorder) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/pluginevent.sock");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let handler = Arc::new(handler);
        let server = runtime
            .block_on(async { EventServer::bind(&socket) })
            .unwrap();
        runtime.spawn(server.serve(Arc::clone(&handler)));
        Self {
            _runtime: runtime,
            handler,
            socket,
            _dir: dir,
        }
    }

    fn events(&self) -> Vec<PodEvent> {
        self.handler.events.lock().unwrap().clone()
    }
}

/// kubelet's environment (through containerd) for pod `default/web-0`.
fn pod_env(command: &str) -> HashMap<String, String> {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "sandbox-1"),
        ("CNI_NETNS", "/var/run/netns/cni-1"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=sandbox-1;K8S_POD_UID=uid-1",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn prev_result() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/cni-1"}],
        "ips": [{"address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 0}],
        "dns": {}
    })
}

/// The chained configuration a runtime passes, pointing at `socket`.
fn conf(socket: &Path, extra: Value) -> Vec<u8> {
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "ambit-cni",
        "ambit": {"agent_socket": socket, "agent_timeout_ms": 2000},
        "prevResult": prev_result(),
    });
    if let (Value::Object(conf), Value::Object(extra)) = (&mut conf, extra) {
        conf.extend(extra);
    }
    serde_json::to_vec(&conf).unwrap()
}

struct Run {
    code: ExitCode,
    stdout: Vec<u8>,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.text()))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The error object, after checking the run failed with one.
    fn error(&self) -> Value {
        assert_eq!(self.code, ExitCode::FAILURE, "stdout: {}", self.text());
        let error = self.json();
        for key in ["cniVersion", "code", "msg", "details"] {
            assert!(
                error.get(key).is_some(),
                "error object lacks {key}: {error}"
            );
        }
        error
    }
}

fn run(env: &HashMap<String, String>, stdin: &[u8]) -> Run {
    save_seed(env, stdin);
    let mut stdout = Vec::new();
    let code = run_with(env, stdin, &mut stdout);
    Run { code, stdout }
}

/// Saves an invocation as a seed of the `cni` fuzz target when `AMBIT_FUZZ_WRITE_SEEDS` is set,
/// in that target's input form: `KEY=VALUE` lines, a NUL byte, stdin. The test's temporary
/// socket path becomes Istio's default, so the seed is the same on every run.
fn save_seed(env: &HashMap<String, String>, stdin: &[u8]) {
    let mut vars: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    vars.sort();
    let mut seed = vars.concat().into_bytes();
    seed.push(0);
    match serde_json::from_slice::<Value>(stdin) {
        Ok(mut conf) if conf["ambit"]["agent_socket"].is_string() => {
            conf["ambit"]["agent_socket"] = json!("/var/run/istio-cni/pluginevent.sock");
            seed.extend_from_slice(conf.to_string().as_bytes());
        }
        _ => seed.extend_from_slice(stdin),
    }
    ambit_testkit::corpus::save("cni", "plugin", &seed);
}

#[test]
fn add_reports_the_pod_and_passes_the_previous_result_through() {
    let agent = Agent::start(Recorder::default());
    let out = run(
        &pod_env("ADD"),
        &conf(&agent.socket, json!({"cniVersion": "1.1.0"})),
    );
    assert_eq!(out.code, ExitCode::SUCCESS, "{}", out.text());
    let mut expected = prev_result();
    expected["cniVersion"] = json!("1.1.0");
    assert_eq!(out.json(), expected);
    assert_eq!(
        agent.events(),
        vec![PodEvent {
            command: PodCommand::Add,
            container_id: "sandbox-1".into(),
            netns: Some("/var/run/netns/cni-1".into()),
            pod_namespace: "default".into(),
            pod_name: "web-0".into(),
            pod_uid: Some("uid-1".into()),
            ips: vec!["10.244.1.7".parse::<IpAddr>().unwrap()],
        }]
    );
}

#[test]
fn add_without_a_previous_result_prints_the_minimal_result() {
    let agent = Agent::start(Recorder::default());
    let out = run(
        &pod_env("ADD"),
        &conf(&agent.socket, json!({"prevResult": null})),
    );
    assert_eq!(out.code, ExitCode::SUCCESS, "{}", out.text());
    assert_eq!(out.json(), json!({"cniVersion": "1.0.0"}));
    assert_eq!(agent.events()[0].ips, Vec::<IpAddr>::new());
}

#[test]
fn add_refused_by_the_agent_fails_with_code_100_naming_the_reason() {
    let agent = Agent::start(Recorder {
        refusal: Some("no netns at /var/run/netns/cni-1".into()),
        ..Recorder::default()
    });
    let error = run(&pod_env("ADD"), &conf(&agent.socket, json!({}))).error();
    assert_eq!(error["code"], 100);
    assert_eq!(error["cniVersion"], "1.0.0");
    let msg = error["msg"].as_str().unwrap();
    assert!(msg.contains("default/web-0"), "{msg}");
    assert!(msg.contains("no netns at /var/run/netns/cni-1"), "{msg}");
}

#[test]
fn add_without_an_agent_fails_with_code_11() {
    let dir = tempfile::tempdir().unwrap();
    // No socket file at all, and a socket file nobody listens on (an agent that died).
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    for socket in [dir.path().join("absent.sock"), stale] {
        let error = run(&pod_env("ADD"), &conf(&socket, json!({}))).error();
        assert_eq!(error["code"], 11, "{error}");
        let details = error["details"].as_str().unwrap();
        assert!(details.contains("unreachable"), "{error}");
        assert!(details.contains(&*socket.to_string_lossy()), "{error}");
    }
}

#[test]
fn add_fails_with_code_11_when_the_agent_does_not_answer_in_time() {
    let agent = Agent::start(Recorder {
        delay: Duration::from_secs(2),
        ..Recorder::default()
    });
    let stdin = conf(
        &agent.socket,
        json!({"ambit": {"agent_socket": agent.socket, "agent_timeout_ms": 100}}),
    );
    let error = run(&pod_env("ADD"), &stdin).error();
    assert_eq!(error["code"], 11, "{error}");
}

#[test]
fn del_reports_the_pod_and_prints_nothing() {
    let agent = Agent::start(Recorder::default());
    let mut env = pod_env("DEL");
    env.insert("CNI_NETNS".into(), String::new());
    let out = run(&env, &conf(&agent.socket, json!({})));
    assert_eq!(out.code, ExitCode::SUCCESS, "{}", out.text());
    assert!(out.stdout.is_empty(), "{}", out.text());
    let events = agent.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].command, PodCommand::Del);
    assert_eq!(events[0].netns, None);
}

#[test]
fn del_succeeds_without_an_agent_and_when_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &pod_env("DEL"),
        &conf(&dir.path().join("absent.sock"), json!({})),
    );
    assert_eq!(out.code, ExitCode::SUCCESS, "{}", out.text());
    assert!(out.stdout.is_empty());
    let agent = Agent::start(Recorder {
        refusal: Some("unknown pod".into()),
        ..Recorder::default()
    });
    // Twice: DEL is idempotent.
    for _ in 0..2 {
        let out = run(&pod_env("DEL"), &conf(&agent.socket, json!({})));
        assert_eq!(out.code, ExitCode::SUCCESS, "{}", out.text());
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn check_reports_the_pod_and_fails_without_an_agent() {
    let agent = Agent::start(Recorder::default());
    let out = run(&pod_env("CHECK"), &conf(&agent.socket, json!({})));
    assert_eq!(out.code, ExitCode::SUCCESS, "{}", out.text());
    assert!(out.stdout.is_empty());
    assert_eq!(agent.events()[0].command, PodCommand::Check);

    let dir = tempfile::tempdir().unwrap();
    let error = run(
        &pod_env("CHECK"),
        &conf(&dir.path().join("absent.sock"), json!({})),
    )
    .error();
    assert_eq!(error["code"], 11);
}

#[test]
fn version_lists_the_supported_versions() {
    let env: HashMap<String, String> = [("CNI_COMMAND".into(), "VERSION".into())].into();
    let supported = json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    for (stdin, version) in [(&br#"{"cniVersion":"0.4.0"}"#[..], "0.4.0"), (b"", "1.1.0")] {
        let out = run(&env, stdin);
        assert_eq!(out.code, ExitCode::SUCCESS, "{}", out.text());
        assert_eq!(
            out.json(),
            json!({"cniVersion": version, "supportedVersions": supported})
        );
    }
}

#[test]
fn status_and_gc_succeed_silently() {
    let dir = tempfile::tempdir().unwrap();
    for command in ["STATUS", "GC"] {
        let env: HashMap<String, String> = [
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_PATH".into(), "/opt/cni/bin".into()),
        ]
        .into();
        let stdin = conf(
            &dir.path().join("absent.sock"),
            json!({"cniVersion": "1.1.0"}),
        );
        let out = run(&env, &stdin);
        assert_eq!(out.code, ExitCode::SUCCESS, "{command}: {}", out.text());
        assert!(out.stdout.is_empty(), "{command}: {}", out.text());
    }
}

#[test]
fn containers_that_are_not_kubernetes_pods_pass_through_untouched() {
    let agent = Agent::start(Recorder::default());
    for args in ["", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default", "FOO=bar"] {
        let mut env = pod_env("ADD");
        env.insert("CNI_ARGS".into(), args.into());
        let out = run(&env, &conf(&agent.socket, json!({})));
        assert_eq!(out.code, ExitCode::SUCCESS, "{args}: {}", out.text());
        assert_eq!(out.json(), prev_result(), "{args}");
    }
    assert_eq!(agent.events(), vec![]);
}

#[test]
fn pods_in_excluded_namespaces_pass_through_untouched() {
    let agent = Agent::start(Recorder::default());
    let stdin = conf(
        &agent.socket,
        json!({"exclude_namespaces": ["kube-system", "default"]}),
    );
    let out = run(&pod_env("ADD"), &stdin);
    assert_eq!(out.code, ExitCode::SUCCESS, "{}", out.text());
    assert_eq!(out.json(), prev_result());
    assert_eq!(agent.events(), vec![]);
}

#[test]
fn bad_invocations_fail_with_the_specs_codes() {
    let socket = Path::new("/nonexistent/pluginevent.sock");
    let mut no_command = pod_env("ADD");
    no_command.remove("CNI_COMMAND");
    type Case = (HashMap<String, String>, Vec<u8>, u64, &'static str);
    let cases: [Case; 5] = [
        (pod_env("ADD"), b"{\"cniVersion\": ".to_vec(), 6, "not JSON"),
        (pod_env("DEL"), b"\xff\xfe".to_vec(), 6, "not JSON"),
        (no_command, conf(socket, json!({})), 4, "CNI_COMMAND"),
        (
            pod_env("ADD"),
            conf(socket, json!({"cniVersion": "0.2.0"})),
            1,
            "0.2.0",
        ),
        (
            pod_env("ADD"),
            conf(
                socket,
                json!({"prevResult": {"ips": [{"address": "300.1.1.1/24"}]}}),
            ),
            7,
            "prevResult.ips[0].address",
        ),
    ];
    for (env, stdin, code, needle) in cases {
        let error = run(&env, &stdin).error();
        assert_eq!(error["code"], code, "{error}");
        assert!(error["msg"].as_str().unwrap().contains(needle), "{error}");
    }
}
