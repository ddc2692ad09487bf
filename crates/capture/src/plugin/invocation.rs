//! One invocation of the plugin, parsed from the environment and stdin.
//!
//! A container runtime runs the plugin with the `CNI_*` environment variables and the network
//! configuration JSON on stdin (CNI spec 1.x, "Execution Protocol"). This module turns both into
//! an [`Invocation`] once, at the edge; nothing after it looks at strings again. Variables the
//! plugin has no use for (`CNI_IFNAME`, `CNI_PATH`) are not read, so their absence is no error.
//!
//! Each failure names what was wrong (the variable, the configuration key) and carries the CNI
//! error code it is reported with.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::channel::PodCommand;
use super::log::LogLevel;
use super::output::{CniVersion, ErrorCode, parse_cidr_address};

/// Where the agent listens unless the configuration says otherwise (Istio's path).
pub(crate) const DEFAULT_AGENT_SOCKET: &str = "/var/run/istio-cni/pluginevent.sock";
/// The socket's file name inside Istio's `cni_agent_run_dir`.
const SOCKET_NAME: &str = "pluginevent.sock";
/// How long ADD waits for the agent unless `ambit.agent_timeout_ms` says otherwise.
pub(crate) const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(15);

/// What the runtime asked for.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one value per process; boxing buys nothing"
)]
pub(crate) enum Invocation {
    /// `VERSION`: report the supported spec versions, in `cni_version` when the runtime named
    /// a supported one.
    Version { cni_version: Option<CniVersion> },
    /// `STATUS` (spec 1.1): the plugin is ready for ADD.
    Status,
    /// `GC` (spec 1.1): the plugin keeps no per-attachment state, so nothing to collect.
    Gc,
    /// `ADD`, `DEL` or `CHECK` of one container attachment.
    Attachment(Attachment),
}

/// An ADD, DEL or CHECK: one container joining, leaving or being checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Attachment {
    pub(crate) command: PodCommand,
    pub(crate) container_id: String,
    /// Present for ADD and CHECK (required); DEL may come without one.
    pub(crate) netns: Option<PathBuf>,
    pub(crate) args: CniArgs,
    pub(crate) conf: NetConf,
}

/// The Kubernetes keys of `CNI_ARGS` (`K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;...`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CniArgs {
    pub(crate) pod_namespace: Option<String>,
    pub(crate) pod_name: Option<String>,
    pub(crate) pod_uid: Option<String>,
}

/// The network configuration from stdin: the spec's keys this plugin uses and its own.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NetConf {
    pub(crate) cni_version: CniVersion,
    pub(crate) name: Option<String>,
    /// The previous plugin's result, passed through on ADD.
    pub(crate) prev_result: Option<Map<String, Value>>,
    /// `prevResult.ips[].address` without the prefix length.
    pub(crate) prev_ips: Vec<IpAddr>,
    pub(crate) agent: AgentConf,
}

/// How to reach the agent, and what to leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentConf {
    pub(crate) socket: PathBuf,
    pub(crate) timeout: Duration,
    pub(crate) log_level: Option<LogLevel>,
    /// Pods in these namespaces pass through untouched and are never reported.
    pub(crate) exclude_namespaces: Vec<String>,
}

/// Why an invocation could not be parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum InvocationError {
    #[error("environment variable {var} is not set")]
    MissingEnv { var: &'static str },
    #[error("environment variable {var} is invalid: {reason}")]
    InvalidEnv { var: &'static str, reason: String },
    #[error("the network configuration on stdin is not JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("the network configuration is invalid: {what}")]
    InvalidConfig { what: String },
    #[error("cniVersion {found} is not supported (supported: {supported})")]
    IncompatibleVersion { found: String, supported: String },
}

impl InvocationError {
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            Self::MissingEnv { .. } | Self::InvalidEnv { .. } => ErrorCode::InvalidEnvironment,
            Self::NotJson(_) => ErrorCode::DecodingFailure,
            Self::InvalidConfig { .. } => ErrorCode::InvalidNetworkConfig,
            Self::IncompatibleVersion { .. } => ErrorCode::IncompatibleVersion,
        }
    }
}

impl Invocation {
    /// Parses the runtime's environment and the bytes it wrote to stdin.
    pub(crate) fn parse(
        env: &HashMap<String, String>,
        stdin: &[u8],
    ) -> Result<Self, InvocationError> {
        let command = required(env, "CNI_COMMAND")?;
        let command = match command {
            "ADD" => PodCommand::Add,
            "DEL" => PodCommand::Del,
            "CHECK" => PodCommand::Check,
            "VERSION" => {
                return Ok(Self::Version {
                    cni_version: requested_version(stdin),
                });
            }
            // Both carry the network configuration; a broken one is reported here too.
            "STATUS" => return NetConf::parse(stdin).map(|_| Self::Status),
            "GC" => return NetConf::parse(stdin).map(|_| Self::Gc),
            other => {
                return Err(InvocationError::InvalidEnv {
                    var: "CNI_COMMAND",
                    reason: format!("unknown command `{other}`"),
                });
            }
        };
        let container_id = required(env, "CNI_CONTAINERID")?.to_owned();
        let netns = match (optional(env, "CNI_NETNS"), &command) {
            (Some(path), _) => Some(PathBuf::from(path)),
            (None, PodCommand::Del) => None,
            (None, _) => return Err(InvocationError::MissingEnv { var: "CNI_NETNS" }),
        };
        let args = CniArgs::parse(optional(env, "CNI_ARGS").unwrap_or_default())?;
        let conf = NetConf::parse(stdin)?;
        Ok(Self::Attachment(Attachment {
            command,
            container_id,
            netns,
            args,
            conf,
        }))
    }
}

impl CniArgs {
    /// Parses `K1=V1;K2=V2`. Other keys (`K8S_POD_INFRA_CONTAINER_ID`, `IgnoreUnknown`, a
    /// runtime's own) are ignored, as with `IgnoreUnknown=1`: none changes what the plugin does.
    pub(crate) fn parse(raw: &str) -> Result<Self, InvocationError> {
        let mut args = Self::default();
        for pair in raw.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(InvocationError::InvalidEnv {
                    var: "CNI_ARGS",
                    reason: format!("`{pair}` is not KEY=VALUE"),
                });
            };
            let value = (!value.is_empty()).then(|| value.to_owned());
            match key {
                "K8S_POD_NAMESPACE" => args.pod_namespace = value,
                "K8S_POD_NAME" => args.pod_name = value,
                "K8S_POD_UID" => args.pod_uid = value,
                _ => {}
            }
        }
        Ok(args)
    }

    /// `(namespace, name)` when the container is a Kubernetes pod.
    pub(crate) fn pod(&self) -> Option<(&str, &str)> {
        Some((self.pod_namespace.as_deref()?, self.pod_name.as_deref()?))
    }
}

impl NetConf {
    pub(crate) fn parse(stdin: &[u8]) -> Result<Self, InvocationError> {
        let value: Value = serde_json::from_slice(stdin).map_err(InvocationError::NotJson)?;
        let Value::Object(mut conf) = value else {
            return Err(invalid("the configuration is not a JSON object"));
        };
        let cni_version = parse_version(field::<String>(&mut conf, "", "cniVersion")?)?;
        let prev_result = match conf.remove("prevResult") {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => Some(map),
            Some(_) => return Err(invalid("prevResult is not a JSON object")),
        };
        let prev_ips = match &prev_result {
            Some(result) => result_ips(result)?,
            None => Vec::new(),
        };
        let mut ambit = match conf.remove("ambit") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map,
            Some(_) => return Err(invalid("ambit is not a JSON object")),
        };
        // Istio's own plugin keys are read too, so an istio-cni configuration works unchanged;
        // the `ambit` object wins where both are set.
        let socket = match (
            field::<PathBuf>(&mut ambit, "ambit.", "agent_socket")?,
            field::<PathBuf>(&mut conf, "", "cni_agent_run_dir")?,
        ) {
            (Some(socket), _) => socket,
            (None, Some(dir)) => dir.join(SOCKET_NAME),
            (None, None) => PathBuf::from(DEFAULT_AGENT_SOCKET),
        };
        let timeout = field::<u64>(&mut ambit, "ambit.", "agent_timeout_ms")?
            .map_or(DEFAULT_AGENT_TIMEOUT, Duration::from_millis);
        let log_level = match (
            field::<String>(&mut ambit, "ambit.", "log_level")?,
            field::<String>(&mut conf, "", "plugin_log_level")?,
        ) {
            (Some(level), _) | (None, Some(level)) => Some(
                level
                    .parse()
                    .map_err(|reason| invalid(format!("log_level: {reason}")))?,
            ),
            (None, None) => None,
        };
        let exclude_namespaces = match field(&mut ambit, "ambit.", "exclude_namespaces")? {
            Some(namespaces) => namespaces,
            None => field(&mut conf, "", "exclude_namespaces")?.unwrap_or_default(),
        };
        Ok(Self {
            cni_version,
            name: field(&mut conf, "", "name")?,
            prev_result,
            prev_ips,
            agent: AgentConf {
                socket,
                timeout,
                log_level,
                exclude_namespaces,
            },
        })
    }
}

/// Takes `key` out of a configuration object; `null` counts as absent. The error names the key
/// (`prefix` says which object it sits in).
fn field<T: DeserializeOwned>(
    object: &mut Map<String, Value>,
    prefix: &str,
    key: &str,
) -> Result<Option<T>, InvocationError> {
    match object.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value)
            .map(Some)
            .map_err(|e| invalid(format!("{prefix}{key}: {e}"))),
    }
}

fn invalid(what: impl Into<String>) -> InvocationError {
    InvocationError::InvalidConfig { what: what.into() }
}

fn required<'a>(
    env: &'a HashMap<String, String>,
    var: &'static str,
) -> Result<&'a str, InvocationError> {
    optional(env, var).ok_or(InvocationError::MissingEnv { var })
}

/// A variable that is unset or empty is absent: runtimes set unused ones to "".
fn optional<'a>(env: &'a HashMap<String, String>, var: &str) -> Option<&'a str> {
    env.get(var).map(String::as_str).filter(|v| !v.is_empty())
}

fn parse_version(found: Option<String>) -> Result<CniVersion, InvocationError> {
    // A configuration without cniVersion is spec 0.1.0, which predates chaining.
    let found = found.unwrap_or_else(|| "0.1.0".to_owned());
    found
        .parse()
        .map_err(|_| InvocationError::IncompatibleVersion {
            found,
            supported: CniVersion::supported_list(),
        })
}

/// The `cniVersion` of stdin, if it is readable and supported. VERSION's stdin is
/// `{"cniVersion": ..}` from new runtimes and empty from old ones; an error object uses it too.
pub(crate) fn requested_version(stdin: &[u8]) -> Option<CniVersion> {
    #[derive(Deserialize)]
    struct Request {
        #[serde(rename = "cniVersion")]
        cni_version: String,
    }
    let request: Request = serde_json::from_slice(stdin).ok()?;
    request.cni_version.parse().ok()
}

/// The addresses of a result's `ips` list (CIDR notation, prefix length dropped).
fn result_ips(result: &Map<String, Value>) -> Result<Vec<IpAddr>, InvocationError> {
    let Some(ips) = result.get("ips") else {
        return Ok(Vec::new());
    };
    let ips = ips
        .as_array()
        .ok_or_else(|| invalid("prevResult.ips is not a list".to_owned()))?;
    ips.iter()
        .enumerate()
        .map(|(i, ip)| {
            let address = ip
                .get("address")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("prevResult.ips[{i}].address is missing")))?;
            parse_cidr_address(address).ok_or_else(|| {
                invalid(format!(
                    "prevResult.ips[{i}].address `{address}` is not an IP address in CIDR notation"
                ))
            })
        })
        .collect()
}
