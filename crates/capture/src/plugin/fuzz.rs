//! Fuzz target body for the CNI invocation: the `CNI_*` environment and the configuration on
//! stdin (`fuzz/fuzz_targets/cni.rs`), and the plugin → agent event line.
//!
//! Built only for `cargo fuzz` (`cfg(fuzzing)`) and this crate's tests, which replay the seed
//! corpus `fuzz/corpus/cni/` through it on stable.
//!
//! Input: `KEY=VALUE` lines (the environment), a NUL byte, then stdin. Without a NUL byte the
//! whole input is stdin and the environment is a kubelet's ADD for a pod. Invariants checked:
//! - nothing panics, on any environment or stdin;
//! - a refusal carries one of the spec's codes for bad input (1, 4, 6, 7) and names the variable
//!   or version it refuses; its error object is JSON;
//! - an attachment has a container id, and a network namespace unless it is a DEL; ADD's
//!   result is a JSON object carrying the configuration's `cniVersion`;
//! - the event the plugin would send reads back the same on the agent's side, on one line;
//! - the agent's decoding of an arbitrary request line never panics.

use std::collections::HashMap;

use serde_json::Value;

use super::channel::PodEvent;
use super::invocation::{Invocation, InvocationError, requested_version};
use super::output::{CniError, CniVersion, passthrough_result};
use super::{PodCommand, configured_log_level, pod_event};

/// The body of the `cni` target.
pub fn cni(data: &[u8]) {
    let Some((env, stdin)) = split(data) else {
        return;
    };
    // What the plugin does with stdin before anything else: pick its log level.
    let _ = configured_log_level(stdin);
    match Invocation::parse(&env, stdin) {
        Err(error) => refused(&error, stdin),
        Ok(Invocation::Attachment(attachment)) => {
            assert!(!attachment.container_id.is_empty());
            assert!(attachment.netns.is_some() || attachment.command == PodCommand::Del);
            let conf = &attachment.conf;
            let result = passthrough_result(conf.prev_result.as_ref(), conf.cni_version);
            assert_eq!(
                result.get("cniVersion").and_then(Value::as_str),
                Some(conf.cni_version.as_str())
            );
            if let Some(event) = pod_event(&attachment) {
                let line = serde_json::to_vec(&event)
                    .unwrap_or_else(|e| panic!("an event from strings must encode: {e}"));
                assert!(!line.contains(&b'\n'), "an event is one line");
                let back: PodEvent = serde_json::from_slice(&line)
                    .unwrap_or_else(|e| panic!("the agent cannot read the plugin's event: {e}"));
                assert_eq!(back, event);
            }
        }
        Ok(Invocation::Version { .. } | Invocation::Status | Invocation::Gc) => {}
    }
    // The agent reads one line per connection from the plugin's socket.
    let line = stdin.split(|b| *b == b'\n').next().unwrap_or_default();
    let _ = serde_json::from_slice::<PodEvent>(line);
}

fn refused(error: &InvocationError, stdin: &[u8]) {
    let text = error.to_string();
    match error {
        InvocationError::MissingEnv { var } | InvocationError::InvalidEnv { var, .. } => {
            assert!(text.contains(var), "{text:?} does not name {var}");
        }
        InvocationError::IncompatibleVersion { found, .. } => {
            assert!(
                text.contains(found.as_str()),
                "{text:?} does not name {found:?}"
            );
        }
        _ => assert!(!text.is_empty()),
    }
    let version = requested_version(stdin).unwrap_or(CniVersion::LATEST);
    let object = serde_json::to_value(CniError::new(version, error.code(), error))
        .unwrap_or_else(|e| panic!("an error object must encode: {e}"));
    let code = object.get("code").and_then(Value::as_u64);
    assert!(
        matches!(code, Some(1 | 4 | 6 | 7)),
        "code {code:?} for {text:?}"
    );
}

/// The environment and stdin of an input (see the module's documentation).
fn split(data: &[u8]) -> Option<(HashMap<String, String>, &[u8])> {
    let Some(nul) = data.iter().position(|b| *b == 0) else {
        return Some((kubelet_add(), data));
    };
    // Environment variables reach the plugin as text; other bytes are dropped by `run_plugin`.
    let text = std::str::from_utf8(&data[..nul]).ok()?;
    let env = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Some((env, &data[nul + 1..]))
}

/// What kubelet (through containerd) sets for an ADD of pod `default/web-0`.
fn kubelet_add() -> HashMap<String, String> {
    [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "sandbox-1"),
        ("CNI_NETNS", "/var/run/netns/cni-1"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=uid-1",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[cfg(test)]
mod tests {
    /// Configurations of the unit tests: a chained ADD with IPv4 and IPv6 results, istio-cni's
    /// own keys, and VERSION, STATUS and DEL environments.
    fn generated() -> Vec<(String, Vec<u8>)> {
        let add = br#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"ambit-cni",
            "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.244.1.7/24","interface":0},
            {"address":"fd00::7/64"}]},"ambit":{"log_level":"debug","agent_timeout_ms":500}}"#;
        let istio = br#"{"cniVersion":"0.4.0","name":"k8s-pod-network","type":"istio-cni",
            "cni_agent_run_dir":"/var/run/istio-cni","plugin_log_level":"info",
            "exclude_namespaces":["kube-system","istio-system"]}"#;
        let with_env = |env: &str, stdin: &[u8]| {
            let mut seed = env.as_bytes().to_vec();
            seed.push(0);
            seed.extend_from_slice(stdin);
            seed
        };
        vec![
            ("add-dual-stack".to_owned(), add.to_vec()),
            ("istio-keys".to_owned(), istio.to_vec()),
            (
                "version".to_owned(),
                with_env("CNI_COMMAND=VERSION\n", br#"{"cniVersion":"0.4.0"}"#),
            ),
            ("status".to_owned(), with_env("CNI_COMMAND=STATUS\n", istio)),
            (
                "del-without-netns".to_owned(),
                with_env(
                    "CNI_COMMAND=DEL\nCNI_CONTAINERID=c\nCNI_ARGS=K8S_POD_NAMESPACE=a;K8S_POD_NAME=b\n",
                    add,
                ),
            ),
        ]
    }

    #[test]
    fn seed_corpus() {
        ambit_testkit::corpus::run("cni", generated(), super::cni);
    }

    #[test]
    fn input_without_a_nul_is_stdin_of_a_pod_add() {
        let (env, stdin) = super::split(b"{}").unwrap();
        assert_eq!(env["CNI_COMMAND"], "ADD");
        assert_eq!(stdin, b"{}");
        let (env, stdin) = super::split(b"CNI_COMMAND=DEL\nX=1=2\0{\"a\":1}").unwrap();
        assert_eq!(
            (env["CNI_COMMAND"].as_str(), env["X"].as_str()),
            ("DEL", "1=2")
        );
        assert_eq!(stdin, b"{\"a\":1}");
    }
}
