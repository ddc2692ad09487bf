//! In-pod redirection rules: what sends a pod's TCP traffic to the node proxy's listeners.
//!
//! The rules live inside the pod's network namespace and are the same for every pod:
//!
//! - inbound (prerouting): kubelet probes (source 169.254.7.127) and HBONE (port 15008) pass
//!   untouched; every other TCP connection is redirected to the passthrough listener, 15006;
//! - outbound (output): the node proxy's own sockets (mark 0x539 under mask 0xfff) and pod-local
//!   traffic (`lo`) pass untouched; every other TCP connection is redirected to 15001, where the
//!   node proxy reads the original destination with `SO_ORIGINAL_DST`.
//!
//! Two backends write them: nftables (table `inet ambit`, the preferred one) and iptables
//! (`nat` chains `AMBIT_PREROUTING`/`AMBIT_OUTPUT`, for hosts without `nft`). Either way:
//!
//! - [`Rules::install`] is idempotent and atomic: a reinstall replaces the rules in one kernel
//!   transaction, so there is never a moment without them;
//! - [`Rules::remove`] is idempotent: removing rules that are not there succeeds;
//! - [`Rules::check`] compares what the kernel holds with what [`Rules::install`] writes, rule by
//!   rule and in order, and names the differences.
//!
//! Commands run inside the namespace through [`Netns::spawn`] and block the calling thread until
//! they exit: async callers use `spawn_blocking`.

mod iptables;
mod nft;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

use ambit_netns::Netns;

/// The bits of the mark that carry the proxy's mark ([`ambit_proto::ports::PROXY_MARK`]).
pub const PROXY_MARK_MASK: u32 = 0xfff;

/// Which tool writes the rules, as configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendChoice {
    /// `nft` when it is on the `PATH`, else `iptables-restore`.
    #[default]
    Auto,
    Nftables,
    Iptables,
}

/// The tool that writes the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `nft`, table `inet ambit`.
    Nftables,
    /// `iptables-restore` (and `ip6tables-restore` when IPv6 is available), `nat` table.
    Iptables,
}

/// Why rules could not be installed, removed or confirmed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    #[error("neither nft nor iptables-restore is on the PATH")]
    NoBackend,
    #[error("cannot run {program} in the pod network namespace")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        program: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("the redirection rules are missing")]
    Missing,
    #[error("the redirection rules differ: expected {expected:?}, found {found:?}")]
    Differ {
        expected: Vec<String>,
        found: Vec<String>,
    },
}

/// Installs, removes and checks the redirection rules with one [`Backend`].
#[derive(Clone, Debug)]
pub struct Rules {
    backend: Backend,
    /// Whether the iptables backend also writes IPv6 rules.
    ipv6: bool,
}

impl Rules {
    /// Rules written by `choice`, probing the `PATH` for [`BackendChoice::Auto`].
    pub fn new(choice: BackendChoice) -> Result<Self, RulesError> {
        let backend = match choice {
            BackendChoice::Nftables => Backend::Nftables,
            BackendChoice::Iptables => Backend::Iptables,
            BackendChoice::Auto if find_program("nft").is_some() => Backend::Nftables,
            BackendChoice::Auto if find_program("iptables-restore").is_some() => Backend::Iptables,
            BackendChoice::Auto => return Err(RulesError::NoBackend),
        };
        // IPv6 rules only where the kernel has IPv6 and the tool exists; a host without either
        // has no IPv6 traffic to redirect.
        let ipv6 =
            Path::new("/proc/net/if_inet6").exists() && find_program("ip6tables-restore").is_some();
        Ok(Self { backend, ipv6 })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Installs the rules in `netns`, replacing any earlier version atomically.
    pub fn install(&self, netns: &Netns) -> Result<(), RulesError> {
        match self.backend {
            Backend::Nftables => nft::install(netns),
            Backend::Iptables => self
                .families()
                .try_for_each(|f| iptables::install(netns, f)),
        }
    }

    /// Removes the rules from `netns`; succeeds when they are not there.
    pub fn remove(&self, netns: &Netns) -> Result<(), RulesError> {
        match self.backend {
            Backend::Nftables => nft::remove(netns),
            Backend::Iptables => self.families().try_for_each(|f| iptables::remove(netns, f)),
        }
    }

    /// Confirms that `netns` holds exactly the rules [`Rules::install`] writes.
    pub fn check(&self, netns: &Netns) -> Result<(), RulesError> {
        match self.backend {
            Backend::Nftables => nft::check(netns),
            Backend::Iptables => self.families().try_for_each(|f| iptables::check(netns, f)),
        }
    }

    fn families(&self) -> impl Iterator<Item = iptables::Family> {
        [iptables::Family::V4]
            .into_iter()
            .chain(self.ipv6.then_some(iptables::Family::V6))
    }
}

/// Runs `program args` inside `netns`, feeding it `stdin`, and returns its output when it exits
/// successfully.
fn run(netns: &Netns, program: &str, args: &[&str], stdin: &str) -> Result<Output, RulesError> {
    let output = run_unchecked(netns, program, args, stdin)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(command_failed(program, &output))
    }
}

/// Like [`run`], returning the output whatever the exit status.
fn run_unchecked(
    netns: &Netns,
    program: &str,
    args: &[&str],
    stdin: &str,
) -> Result<Output, RulesError> {
    let spawn_error = |source| RulesError::Spawn {
        program: program.to_owned(),
        source,
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = netns.spawn(command).map_err(spawn_error)?;
    if let Some(mut pipe) = child.stdin.take() {
        // A program that exits early closes its end; its exit status then says why.
        let _ = pipe.write_all(stdin.as_bytes());
    }
    child.wait_with_output().map_err(spawn_error)
}

fn command_failed(program: &str, output: &Output) -> RulesError {
    RulesError::Command {
        program: program.to_owned(),
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    }
}

/// The first executable named `name` on the `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
