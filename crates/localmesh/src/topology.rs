//! Pods as network namespaces on one bridge.
//!
//! ```text
//!  wire netns:  ambit0 (bridge, gateway address) ── vp0 ── vp1 ── …
//!                                                   │      │
//!  pod netns:                                      eth0   eth0   (pod address, default route
//!                                                                 via the gateway)
//! ```
//!
//! Every namespace is held by a `sleep infinity` process started inside it, like a Kubernetes
//! pause container: `/proc/<pid>/ns/net` is the path a container runtime hands to CNI plugins,
//! and the namespace lives exactly as long as that process. All commands (iproute2) run inside
//! the namespaces through [`Netns`], so the host's own network is never touched.

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use ambit_netns::{Netns, NetnsError};

/// The bridge every pod's `eth0` is attached to.
pub const BRIDGE: &str = "ambit0";

/// Why the topology could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    #[error("network namespace")]
    Netns(#[from] NetnsError),
    #[error("cannot run `{command}` (is iproute2 installed? `apt-get install iproute2`)")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("pod {0} already exists")]
    Duplicate(String),
    #[error("address {ip} is outside {network}/{prefix} or is the gateway")]
    Address {
        ip: Ipv4Addr,
        network: Ipv4Addr,
        prefix: u8,
    },
}

/// The wire and the pods on it. Dropping it removes every namespace it made.
#[derive(Debug)]
pub struct Topology {
    wire: Holder,
    gateway: Ipv4Addr,
    prefix: u8,
    pods: BTreeMap<String, PodNet>,
    next_veth: usize,
}

/// One pod's network namespace.
#[derive(Debug)]
pub struct PodNet {
    holder: Holder,
    ip: Ipv4Addr,
    veth: String,
}

/// A namespace and the process that keeps it alive.
#[derive(Debug)]
struct Holder {
    netns: Netns,
    process: Child,
}

impl Topology {
    /// Builds the wire: a bridge with `gateway/prefix` in a new namespace.
    pub fn new(gateway: Ipv4Addr, prefix: u8) -> Result<Self, TopologyError> {
        let wire = Holder::start()?;
        run(&wire.netns, &["link", "set", "lo", "up"])?;
        run(&wire.netns, &["link", "add", BRIDGE, "type", "bridge"])?;
        let cidr = format!("{gateway}/{prefix}");
        run(&wire.netns, &["addr", "add", &cidr, "dev", BRIDGE])?;
        run(&wire.netns, &["link", "set", BRIDGE, "up"])?;
        Ok(Self {
            wire,
            gateway,
            prefix,
            pods: BTreeMap::new(),
            next_veth: 0,
        })
    }

    /// Adds a pod named `key` with address `ip`: a new namespace, lo up, `eth0` on the bridge,
    /// default route via the gateway.
    pub fn add_pod(&mut self, key: &str, ip: Ipv4Addr) -> Result<&PodNet, TopologyError> {
        if self.pods.contains_key(key) {
            return Err(TopologyError::Duplicate(key.to_owned()));
        }
        if ip == self.gateway || !same_network(ip, self.gateway, self.prefix) {
            return Err(TopologyError::Address {
                ip,
                network: network(self.gateway, self.prefix),
                prefix: self.prefix,
            });
        }
        let holder = Holder::start()?;
        let veth = format!("vp{}", self.next_veth);
        self.next_veth += 1;
        let pid = holder.process.id().to_string();
        let wire = &self.wire.netns;
        run(
            wire,
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pid,
            ],
        )?;
        run(wire, &["link", "set", &veth, "master", BRIDGE, "up"])?;
        let pod = &holder.netns;
        let cidr = format!("{ip}/{}", self.prefix);
        run(pod, &["link", "set", "lo", "up"])?;
        run(pod, &["addr", "add", &cidr, "dev", "eth0"])?;
        run(pod, &["link", "set", "eth0", "up"])?;
        run(
            pod,
            &["route", "add", "default", "via", &self.gateway.to_string()],
        )?;
        Ok(self
            .pods
            .entry(key.to_owned())
            .or_insert(PodNet { holder, ip, veth }))
    }

    /// Removes a pod: its holder process ends, so its namespace and `eth0` go.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        self.pods.remove(key).is_some()
    }

    pub fn pod(&self, key: &str) -> Option<&PodNet> {
        self.pods.get(key)
    }

    pub fn pods(&self) -> impl Iterator<Item = (&str, &PodNet)> {
        self.pods.iter().map(|(k, p)| (k.as_str(), p))
    }

    /// The namespace holding the bridge: capture there to see every pod-to-pod packet.
    pub fn wire(&self) -> &Netns {
        &self.wire.netns
    }

    /// `/proc/<pid>/ns/net` of the wire namespace.
    pub fn wire_path(&self) -> PathBuf {
        self.wire.path()
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }
}

impl PodNet {
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn netns(&self) -> &Netns {
        &self.holder.netns
    }

    /// `/proc/<pid>/ns/net`: what a container runtime passes to CNI plugins as `CNI_NETNS`.
    pub fn netns_path(&self) -> PathBuf {
        self.holder.path()
    }

    /// The pod's interface on the wire side (`vpN`), where a capture sees only this pod.
    pub fn wire_interface(&self) -> &str {
        &self.veth
    }
}

impl Holder {
    fn start() -> Result<Self, TopologyError> {
        let netns = Netns::create()?;
        let mut sleep = Command::new("sleep");
        sleep
            .arg("infinity")
            // Not in the owner's process group: Ctrl-C must not take the namespaces away
            // before the owner has stopped what runs in them.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let process = netns.spawn(sleep).map_err(|source| TopologyError::Spawn {
            command: "sleep infinity".to_owned(),
            source,
        })?;
        Ok(Self { netns, process })
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.process.id()))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Runs `ip <args>` inside `netns`, failing with its stderr.
pub fn run(netns: &Netns, args: &[&str]) -> Result<(), TopologyError> {
    let mut command = Command::new("ip");
    command.args(args);
    let line = format!("ip {}", args.join(" "));
    let out = netns
        .output(command)
        .map_err(|source| TopologyError::Spawn {
            command: line.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(TopologyError::Command {
            command: line,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

fn network(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ipv4Addr::from(u32::from(ip) & mask)
}

fn same_network(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    network(a, prefix) == network(b, prefix)
}

#[cfg(test)]
mod tests;
