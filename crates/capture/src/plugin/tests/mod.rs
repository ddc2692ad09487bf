//! Unit tests of the plugin: parsing tables here, results and errors in `output`.
//! End-to-end runs against a real agent socket are in `crates/capture/tests/plugin.rs`.

#![allow(clippy::unwrap_used)]

mod output;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::PodCommand;
use super::invocation::{
    AgentConf, Attachment, CniArgs, DEFAULT_AGENT_SOCKET, DEFAULT_AGENT_TIMEOUT, Invocation,
    InvocationError, NetConf,
};
use super::log::LogLevel;
use super::output::{CniVersion, ErrorCode};

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The environment kubelet (through containerd) gives the plugin for `default/web-0`.
fn pod_env(command: &str) -> HashMap<String, String> {
    env(&[
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
    ])
}

const CONF: &str = r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"ambit-cni"}"#;

fn parse_err(env: &HashMap<String, String>, stdin: &str) -> InvocationError {
    Invocation::parse(env, stdin.as_bytes()).unwrap_err()
}

#[test]
fn add_of_a_kubernetes_pod_parses_into_an_attachment() {
    let stdin = r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"ambit-cni",
        "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.244.1.7/24","interface":0},
                                                  {"address":"fd00::7/64"}]}}"#;
    let invocation = Invocation::parse(&pod_env("ADD"), stdin.as_bytes()).unwrap();
    let Invocation::Attachment(attachment) = invocation else {
        panic!("not an attachment: {invocation:?}");
    };
    let Attachment {
        command,
        container_id,
        netns,
        args,
        conf,
    } = attachment;
    assert_eq!(command, PodCommand::Add);
    assert_eq!(container_id, "sandbox-1");
    assert_eq!(netns, Some(PathBuf::from("/var/run/netns/cni-1")));
    assert_eq!(
        args,
        CniArgs {
            pod_namespace: Some("default".into()),
            pod_name: Some("web-0".into()),
            pod_uid: Some("uid-1".into()),
        }
    );
    assert_eq!(conf.cni_version, CniVersion::V1_0_0);
    assert_eq!(conf.name.as_deref(), Some("k8s-pod-network"));
    assert_eq!(
        conf.prev_ips,
        vec![
            "10.244.1.7".parse::<IpAddr>().unwrap(),
            "fd00::7".parse().unwrap()
        ]
    );
    assert!(conf.prev_result.is_some());
    assert_eq!(
        conf.agent,
        AgentConf {
            socket: PathBuf::from(DEFAULT_AGENT_SOCKET),
            timeout: DEFAULT_AGENT_TIMEOUT,
            log_level: None,
            exclude_namespaces: vec![],
        }
    );
}

#[test]
fn commands_parse() {
    type Expect = fn(&Invocation) -> bool;
    let cases: &[(&str, &str, Expect)] = &[
        (
            "ADD",
            CONF,
            |i| matches!(i, Invocation::Attachment(a) if a.command == PodCommand::Add),
        ),
        (
            "DEL",
            CONF,
            |i| matches!(i, Invocation::Attachment(a) if a.command == PodCommand::Del),
        ),
        (
            "CHECK",
            CONF,
            |i| matches!(i, Invocation::Attachment(a) if a.command == PodCommand::Check),
        ),
        ("STATUS", CONF, |i| *i == Invocation::Status),
        ("GC", CONF, |i| *i == Invocation::Gc),
        ("VERSION", r#"{"cniVersion":"0.4.0"}"#, |i| {
            *i == Invocation::Version {
                cni_version: Some(CniVersion::V0_4_0),
            }
        }),
        // Old runtimes send VERSION with empty stdin; a version we do not know is no error.
        ("VERSION", "", |i| {
            *i == Invocation::Version { cni_version: None }
        }),
        ("VERSION", r#"{"cniVersion":"9.9.9"}"#, |i| {
            *i == Invocation::Version { cni_version: None }
        }),
    ];
    for (command, stdin, expected) in cases {
        let invocation = Invocation::parse(&pod_env(command), stdin.as_bytes())
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        assert!(expected(&invocation), "{command}: {invocation:?}");
    }
}

#[test]
fn version_needs_no_other_variable() {
    let invocation = Invocation::parse(&env(&[("CNI_COMMAND", "VERSION")]), b"").unwrap();
    assert_eq!(invocation, Invocation::Version { cni_version: None });
}

#[test]
fn del_without_a_netns_is_fine() {
    let mut env = pod_env("DEL");
    env.insert("CNI_NETNS".into(), String::new());
    let Invocation::Attachment(attachment) = Invocation::parse(&env, CONF.as_bytes()).unwrap()
    else {
        panic!("not an attachment");
    };
    assert_eq!(attachment.netns, None);
}

#[test]
fn bad_environments_name_the_variable() {
    let without = |var: &str, command: &str| {
        let mut env = pod_env(command);
        env.remove(var);
        env
    };
    let with = |var: &str, value: &str| {
        let mut env = pod_env("ADD");
        env.insert(var.into(), value.into());
        env
    };
    let cases = [
        (without("CNI_COMMAND", "ADD"), "CNI_COMMAND is not set"),
        (with("CNI_COMMAND", ""), "CNI_COMMAND is not set"),
        (
            with("CNI_COMMAND", "add"),
            "CNI_COMMAND is invalid: unknown command `add`",
        ),
        (
            without("CNI_CONTAINERID", "ADD"),
            "CNI_CONTAINERID is not set",
        ),
        (
            without("CNI_CONTAINERID", "DEL"),
            "CNI_CONTAINERID is not set",
        ),
        (without("CNI_NETNS", "ADD"), "CNI_NETNS is not set"),
        (without("CNI_NETNS", "CHECK"), "CNI_NETNS is not set"),
        (
            with("CNI_ARGS", "K8S_POD_NAME=a;oops"),
            "CNI_ARGS is invalid: `oops` is not KEY=VALUE",
        ),
    ];
    for (env, expected) in cases {
        let error = parse_err(&env, CONF);
        assert_eq!(error.code(), ErrorCode::InvalidEnvironment, "{error}");
        assert!(
            error.to_string().contains(expected),
            "{error} lacks {expected}"
        );
    }
}

#[test]
fn cni_args_tolerate_unknown_keys_and_empty_values() {
    let cases = [
        ("", CniArgs::default()),
        (";;", CniArgs::default()),
        ("IgnoreUnknown=1;FOO=bar=baz", CniArgs::default()),
        (
            "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=",
            CniArgs {
                pod_namespace: Some("ns".into()),
                ..CniArgs::default()
            },
        ),
    ];
    for (raw, expected) in cases {
        let args = CniArgs::parse(raw).unwrap();
        assert_eq!(args, expected, "{raw}");
        assert_eq!(args.pod(), None, "{raw}");
    }
    let args = CniArgs::parse("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p").unwrap();
    assert_eq!(args.pod(), Some(("ns", "p")));
}

#[test]
fn bad_configurations_are_reported_with_their_code() {
    let cases = [
        ("", ErrorCode::DecodingFailure, "not JSON"),
        ("{", ErrorCode::DecodingFailure, "not JSON"),
        ("not json", ErrorCode::DecodingFailure, "not JSON"),
        (
            "[1,2]",
            ErrorCode::InvalidNetworkConfig,
            "not a JSON object",
        ),
        (
            r#"{"name":"n"}"#,
            ErrorCode::IncompatibleVersion,
            "cniVersion 0.1.0 is not supported",
        ),
        (
            r#"{"cniVersion":"0.2.0"}"#,
            ErrorCode::IncompatibleVersion,
            "0.2.0 is not supported",
        ),
        (
            r#"{"cniVersion":"2.0.0"}"#,
            ErrorCode::IncompatibleVersion,
            "supported: 0.3.0, 0.3.1",
        ),
        (
            r#"{"cniVersion":1}"#,
            ErrorCode::InvalidNetworkConfig,
            "cniVersion: invalid type",
        ),
        (
            r#"{"cniVersion":"1.0.0","prevResult":[]}"#,
            ErrorCode::InvalidNetworkConfig,
            "prevResult is not a JSON object",
        ),
        (
            r#"{"cniVersion":"1.0.0","prevResult":{"ips":{}}}"#,
            ErrorCode::InvalidNetworkConfig,
            "prevResult.ips is not a list",
        ),
        (
            r#"{"cniVersion":"1.0.0","prevResult":{"ips":[{"address":"10.0.0.1/24"},{}]}}"#,
            ErrorCode::InvalidNetworkConfig,
            "prevResult.ips[1].address is missing",
        ),
        (
            r#"{"cniVersion":"1.0.0","prevResult":{"ips":[{"address":"10.0.0.1/33"}]}}"#,
            ErrorCode::InvalidNetworkConfig,
            "prevResult.ips[0].address `10.0.0.1/33` is not an IP address",
        ),
        (
            r#"{"cniVersion":"1.0.0","ambit":"x"}"#,
            ErrorCode::InvalidNetworkConfig,
            "ambit is not a JSON object",
        ),
        (
            r#"{"cniVersion":"1.0.0","ambit":{"agent_timeout_ms":"soon"}}"#,
            ErrorCode::InvalidNetworkConfig,
            "ambit.agent_timeout_ms: invalid type",
        ),
        (
            r#"{"cniVersion":"1.0.0","ambit":{"log_level":"loud"}}"#,
            ErrorCode::InvalidNetworkConfig,
            "log_level: unknown level `loud`",
        ),
        (
            r#"{"cniVersion":"1.0.0","exclude_namespaces":"kube-system"}"#,
            ErrorCode::InvalidNetworkConfig,
            "exclude_namespaces: invalid type",
        ),
    ];
    for (stdin, code, expected) in cases {
        let error = parse_err(&pod_env("ADD"), stdin);
        assert_eq!(error.code(), code, "{stdin}: {error}");
        assert!(
            error.to_string().contains(expected),
            "{stdin}: `{error}` lacks `{expected}`"
        );
    }
}

#[test]
fn every_supported_version_parses() {
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let conf = NetConf::parse(format!(r#"{{"cniVersion":"{version}"}}"#).as_bytes()).unwrap();
        assert_eq!(conf.cni_version.as_str(), version);
    }
}

#[test]
fn missing_or_null_prev_result_means_no_addresses() {
    for stdin in [CONF, r#"{"cniVersion":"1.0.0","prevResult":null}"#] {
        let conf = NetConf::parse(stdin.as_bytes()).unwrap();
        assert_eq!(conf.prev_result, None);
        assert!(conf.prev_ips.is_empty());
    }
    let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","prevResult":{"interfaces":[]}}"#).unwrap();
    assert!(conf.prev_ips.is_empty());
}

#[test]
fn agent_settings_come_from_the_ambit_object_then_istio_keys() {
    let cases = [
        (
            r#"{"cniVersion":"1.0.0","ambit":{"agent_socket":"/run/a.sock","agent_timeout_ms":250,
                "log_level":"debug","exclude_namespaces":["kube-system"]},
                "cni_agent_run_dir":"/ignored","plugin_log_level":"error"}"#,
            AgentConf {
                socket: "/run/a.sock".into(),
                timeout: Duration::from_millis(250),
                log_level: Some("debug".parse().unwrap()),
                exclude_namespaces: vec!["kube-system".into()],
            },
        ),
        (
            r#"{"cniVersion":"0.3.1","cni_agent_run_dir":"/var/run/istio-cni",
                "plugin_log_level":"info","exclude_namespaces":["istio-system"],
                "ambient_enabled":true}"#,
            AgentConf {
                socket: "/var/run/istio-cni/pluginevent.sock".into(),
                timeout: DEFAULT_AGENT_TIMEOUT,
                log_level: Some("info".parse().unwrap()),
                exclude_namespaces: vec!["istio-system".into()],
            },
        ),
        (
            r#"{"cniVersion":"1.1.0","ambit":null}"#,
            AgentConf {
                socket: DEFAULT_AGENT_SOCKET.into(),
                timeout: DEFAULT_AGENT_TIMEOUT,
                log_level: None,
                exclude_namespaces: vec![],
            },
        ),
    ];
    for (stdin, expected) in cases {
        assert_eq!(
            NetConf::parse(stdin.as_bytes()).unwrap().agent,
            expected,
            "{stdin}"
        );
    }
}

#[test]
fn log_levels_parse() {
    for level in [
        "none", "off", "error", "WARN", "warning", "info", "debug", "trace",
    ] {
        assert!(level.parse::<LogLevel>().is_ok(), "{level}");
    }
    assert!("verbose".parse::<LogLevel>().is_err());
}
