//! The command line of Ambit's binaries: `ambit` (every role of the mesh and the CLI) and
//! `ambit-node` (the node proxy alone).
//!
//! This crate only parses arguments and hands over to the crate that owns the work; no mesh
//! logic lives here. Each subcommand is a module under `cmd/`.
//!
//! Why two binaries: the node proxy runs on every node, and its resident memory includes the
//! code pages it maps. `ambit-node` links only the node proxy (no control plane, Kubernetes
//! client, capture agent or demo), so a node pays for a fraction of the code; `ambit node` stays
//! for a single-binary install.

mod cmd;
mod logging;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Ambit: a sidecar-less service mesh, wire-compatible with Istio's ambient mode.
#[derive(Debug, Parser)]
#[command(name = "ambit", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    log: logging::LogArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the mesh certificate authority's files.
    #[command(subcommand)]
    Ca(cmd::ca::CaCommand),
    /// Run the control plane: WDS and the CA for node proxies (istiod's ambient role).
    Control(Box<cmd::control::ControlArgs>),
    /// Show what the control plane serves: workloads, pods, services, policies.
    Config(cmd::config::ConfigArgs),
    /// Run the node proxy: the HBONE mTLS data path for this node's pods (ztunnel's role).
    Node(Box<cmd::node::NodeArgs>),
    /// Run the capture agent (istio-cni's role), or `cni plugin` as a container runtime's CNI
    /// plugin.
    Cni(Box<cmd::cni::CniArgs>),
    /// Run a whole mesh on this machine and show its traffic carried over mTLS.
    Demo(cmd::demo::DemoArgs),
    /// Prove that enrolled workloads' connections are carried over mutual TLS.
    Verify(Box<cmd::verify::VerifyArgs>),
}

/// `ambit`'s `main`.
pub fn ambit_main() -> ExitCode {
    // Copied by `ambit cni --install-cni` to <cni bin dir>/ambit-cni, the binary is run by the
    // container runtime as a CNI plugin: CNI_* variables and stdin, no ambit arguments.
    if ambit_capture::install::invoked_as_plugin() {
        return ambit_capture::plugin::run_plugin();
    }
    let cli = Cli::parse();
    let default_filter = match cli.command {
        // The demo's screen is its tables; only access logs and problems go to stderr.
        Command::Demo(_) => cmd::demo::DEFAULT_LOG_FILTER,
        _ => "info",
    };
    let log = match logging::init(&cli.log, default_filter) {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("ambit: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Ca(command) => cmd::ca::run(command),
        Command::Control(args) => cmd::control::run(*args),
        Command::Config(args) => cmd::config::run(args),
        Command::Node(args) => cmd::node::run(*args, log, cli.log.is_json()),
        Command::Cni(args) => cmd::cni::run(*args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Verify(args) => cmd::verify::run(*args),
    };
    exit_code("ambit", result)
}

/// `ambit-node`: the node proxy's flags (as `ambit node` takes them) and the logging flags.
#[derive(Debug, Parser)]
#[command(
    name = "ambit-node",
    version,
    about = "Ambit's node proxy: the HBONE mTLS data path for this node's pods (ztunnel's role)."
)]
struct NodeCli {
    #[command(flatten)]
    log: logging::LogArgs,

    #[command(flatten)]
    node: cmd::node::NodeArgs,
}

/// `ambit-node`'s `main`.
pub fn node_main() -> ExitCode {
    let cli = NodeCli::parse();
    let log = match logging::init(&cli.log, "info") {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("ambit-node: {e:#}");
            return ExitCode::from(2);
        }
    };
    exit_code(
        "ambit-node",
        cmd::node::run(cli.node, log, cli.log.is_json()),
    )
}

fn exit_code(program: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
        super::NodeCli::command().debug_assert();
    }

    /// `ambit-node …` takes exactly what `ambit node …` takes.
    #[test]
    fn ambit_node_takes_the_node_subcommands_flags() {
        use clap::Parser;
        let flags = [
            "--node-name",
            "node-a",
            "--inpod",
            "--worker-threads",
            "1",
            "--outbound-addr",
            "off",
        ];
        let alone = super::NodeCli::try_parse_from(
            ["ambit-node", "--log-level", "debug"]
                .into_iter()
                .chain(flags),
        )
        .unwrap();
        let sub = super::Cli::try_parse_from(
            ["ambit", "--log-level", "debug", "node"]
                .into_iter()
                .chain(flags),
        )
        .unwrap();
        let super::Command::Node(node) = sub.command else {
            panic!("not the node subcommand")
        };
        assert_eq!(format!("{:?}", alone.node), format!("{node:?}"));
        assert_eq!(format!("{:?}", alone.log), format!("{:?}", sub.log));
    }
}
