//! The CNI plugin (`ambit cni plugin`) and its channel to the agent.
//!
//! The container runtime runs the plugin, chained after the cluster's own network plugin, for
//! every pod sandbox it creates or removes (CNI spec 1.x; versions 0.3.0 to 1.1.0). The plugin
//! changes no network itself: it reports the pod to the capture agent on this node over a Unix
//! socket ([`send_event`] → [`EventServer`]), and the agent installs the redirection rules and
//! hands the pod to the node proxy before the plugin answers.
//!
//! Invariants:
//! - **Fail closed on ADD.** A Kubernetes pod's ADD succeeds only once the agent has accepted
//!   it; an unreachable agent is error 11 ("try again later") and a refusal error 100, so the
//!   runtime retries and a pod never starts uncaptured.
//! - **DEL always succeeds** (for a well-formed invocation): it tells the agent if it can and
//!   logs if it cannot, because a failing DEL would wedge pod teardown.
//! - Containers that are not Kubernetes pods (no `K8S_POD_NAME`/`K8S_POD_NAMESPACE` in
//!   `CNI_ARGS`) and pods in excluded namespaces pass through untouched and are not reported.
//! - ADD prints the previous plugin's result unchanged but for `cniVersion`; stdout carries
//!   nothing but the one JSON document the spec asks for; logs go to stderr.
//!
//! Errors are the spec's error object on stdout with a non-zero exit: 1 unsupported
//! `cniVersion`, 4 bad or missing `CNI_*` variable, 5 I/O failure, 6 stdin not JSON, 7 invalid
//! network configuration, 11 agent unreachable or not answering, 100 agent refused the pod, 101
//! agent's reply unreadable.
//!
//! Configuration: the spec's keys plus an `"ambit"` object — `agent_socket` (default
//! `/var/run/istio-cni/pluginevent.sock`), `agent_timeout_ms` (default 15000), `log_level`
//! (none/error/warn/info/debug/trace, default warn), `exclude_namespaces`. Istio's istio-cni keys
//! `cni_agent_run_dir`, `plugin_log_level` and `exclude_namespaces` are read as fallbacks.

mod channel;
#[cfg(any(test, fuzzing))]
pub(crate) mod fuzz;
mod invocation;
mod log;
mod output;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::ExitCode;

use serde_json::Value;

pub use channel::{
    DEFAULT_REQUEST_TIMEOUT, EventServer, MAX_REQUEST_BYTES, PodCommand, PodEvent, PodEventHandler,
    SendError, send_event,
};
use invocation::{Attachment, Invocation, InvocationError, requested_version};
use log::LogLevel;
use output::{CniError, CniVersion, ErrorCode, VersionInfo, passthrough_result};

/// `ambit cni plugin`: reads the `CNI_*` environment and stdin, does the work, writes the
/// answer to stdout and returns the exit code. Logs go to stderr.
pub fn run_plugin() -> ExitCode {
    // A variable that is not UTF-8 is treated as unset; none of the spec's values can be.
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let mut stdin = Vec::new();
    let mut stdout = Vec::new();
    let code = match std::io::stdin().lock().read_to_end(&mut stdin) {
        Ok(_) => log::with_stderr_log(configured_log_level(&stdin), || {
            run_with(&env, &stdin, &mut stdout)
        }),
        Err(error) => {
            let version = CniVersion::LATEST;
            let error = PluginError::Stdin(error);
            write_json(&mut stdout, &CniError::new(version, error.code(), &error));
            ExitCode::FAILURE
        }
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(&stdout).and_then(|()| out.flush()) {
        Ok(()) => code,
        Err(_) => ExitCode::FAILURE,
    }
}

/// The plugin with its inputs and output passed in: `env` stands for the process environment,
/// `stdin` for what the runtime wrote to stdin, and the answer is appended to `stdout`. It runs
/// its own current-thread Tokio runtime, so it must not be called from within one.
pub fn run_with(env: &HashMap<String, String>, stdin: &[u8], stdout: &mut Vec<u8>) -> ExitCode {
    let invocation = match Invocation::parse(env, stdin) {
        Ok(invocation) => invocation,
        Err(error) => {
            let version = requested_version(stdin).unwrap_or(CniVersion::LATEST);
            let error = PluginError::from(error);
            write_json(stdout, &CniError::new(version, error.code(), &error));
            return ExitCode::FAILURE;
        }
    };
    let version = match &invocation {
        Invocation::Attachment(attachment) => attachment.conf.cni_version,
        Invocation::Version { cni_version } => cni_version.unwrap_or(CniVersion::LATEST),
        Invocation::Status | Invocation::Gc => {
            requested_version(stdin).unwrap_or(CniVersion::LATEST)
        }
    };
    match execute(invocation) {
        Ok(Some(answer)) => {
            write_json(stdout, &answer);
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %chain(&error), "CNI command failed");
            write_json(stdout, &CniError::new(version, error.code(), &error));
            ExitCode::FAILURE
        }
    }
}

/// Why a command failed, with the CNI error code it is reported with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
enum PluginError {
    #[error(transparent)]
    Invocation(#[from] InvocationError),
    #[error("cannot read the network configuration from stdin")]
    Stdin(#[source] std::io::Error),
    #[error("cannot start the plugin's runtime")]
    Runtime(#[source] std::io::Error),
    #[error("the capture agent refused pod {pod}: {reason}")]
    Refused { pod: String, reason: String },
    #[error("cannot report pod {pod} to the capture agent")]
    Agent {
        pod: String,
        #[source]
        source: SendError,
    },
}

impl PluginError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Invocation(error) => error.code(),
            Self::Stdin(_) | Self::Runtime(_) => ErrorCode::IoFailure,
            Self::Refused { .. } => ErrorCode::AgentRefused,
            Self::Agent { source, .. } => match source {
                SendError::Encode(_) | SendError::BadReply(_) => ErrorCode::AgentProtocol,
                SendError::Refused { .. } => ErrorCode::AgentRefused,
                _ => ErrorCode::TryAgainLater,
            },
        }
    }
}

/// Does what the invocation asks; `Some` is the JSON document to print.
fn execute(invocation: Invocation) -> Result<Option<Value>, PluginError> {
    match invocation {
        Invocation::Version { cni_version } => {
            let info = VersionInfo::new(cni_version.unwrap_or(CniVersion::LATEST));
            Ok(Some(serde_json::to_value(info).unwrap_or_default()))
        }
        // The plugin can always take an ADD (it fails it itself if the agent is away), and it
        // keeps no per-attachment state to collect.
        Invocation::Status | Invocation::Gc => Ok(None),
        Invocation::Attachment(attachment) => attach(attachment),
    }
}

/// ADD, DEL or CHECK of one container.
fn attach(attachment: Attachment) -> Result<Option<Value>, PluginError> {
    let conf = &attachment.conf;
    let passthrough = || {
        (attachment.command == PodCommand::Add)
            .then(|| passthrough_result(conf.prev_result.as_ref(), conf.cni_version))
    };
    let Some(event) = pod_event(&attachment) else {
        tracing::debug!(container = %attachment.container_id, network = ?conf.name, "not a Kubernetes pod: passing through");
        return Ok(passthrough());
    };
    let pod = format!("{}/{}", event.pod_namespace, event.pod_name);
    if conf.agent.exclude_namespaces.contains(&event.pod_namespace) {
        tracing::debug!(%pod, "namespace excluded: passing through");
        return Ok(passthrough());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PluginError::Runtime)?;
    let sent = runtime.block_on(send_event(&conf.agent.socket, &event, conf.agent.timeout));
    match (sent, &attachment.command) {
        (Ok(()), _) => {
            tracing::info!(%pod, command = ?attachment.command, "the capture agent accepted the pod");
            Ok(passthrough())
        }
        (Err(error), PodCommand::Del) => {
            tracing::warn!(%pod, error = %chain(&error), "DEL not reported to the capture agent; succeeding anyway");
            Ok(None)
        }
        (Err(SendError::Refused { reason }), _) => Err(PluginError::Refused { pod, reason }),
        (Err(source), _) => Err(PluginError::Agent { pod, source }),
    }
}

/// The event to report, when the container is a Kubernetes pod.
fn pod_event(attachment: &Attachment) -> Option<PodEvent> {
    let (namespace, name) = attachment.args.pod()?;
    Some(PodEvent {
        command: attachment.command.clone(),
        container_id: attachment.container_id.clone(),
        netns: attachment.netns.clone(),
        pod_namespace: namespace.to_owned(),
        pod_name: name.to_owned(),
        pod_uid: attachment.args.pod_uid.clone(),
        ips: attachment.conf.prev_ips.clone(),
    })
}

/// The log level the configuration asks for, read leniently: a configuration too broken to
/// say is reported by the parse proper, logged at the default level.
fn configured_log_level(stdin: &[u8]) -> LogLevel {
    invocation::NetConf::parse(stdin)
        .ok()
        .and_then(|conf| conf.agent.log_level)
        .unwrap_or(LogLevel::DEFAULT)
}

fn write_json(stdout: &mut Vec<u8>, value: &impl serde::Serialize) {
    // Serializing into a Vec fails only for maps with non-string keys, which none of these has.
    if serde_json::to_writer(&mut *stdout, value).is_ok() {
        stdout.push(b'\n');
    }
}

/// An error and its causes on one line, for the log.
fn chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests;
