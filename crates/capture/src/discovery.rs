//! Finding the network namespaces of pods that already run, from procfs.
//!
//! The agent learns a pod's network namespace from its CNI ADD. Some pods never give it one: pods
//! that were running before the agent was installed, and pods whose ADD an agent that lost its
//! state file never saw. When enrollment names such a pod with its addresses, the agent looks for
//! the namespace that holds one of those addresses ([`NetnsScan::find`]).
//!
//! A scan walks `<procfs>/<pid>/ns/net` for every process, keeps one process per namespace
//! (by namespace inode: the lowest pid, usually the sandbox's pause process), and reads that
//! namespace's addresses from the same process's `net/` files: `fib_trie` (an IPv4 address is
//! a `/32 host LOCAL` leaf) and `if_inet6`. Those files describe the namespace of the process
//! they belong to, so no namespace is entered and nothing is spawned: the agent's image needs
//! no `ip` binary, and a scan of a busy node costs a few file reads per pod.
//!
//! Invariants:
//! - The host's own namespace (that of the procfs's pid 1, and the agent's own) is never
//!   reported: host-network pods are not captured.
//! - A namespace is reported only if its inode was the same before and after its addresses were
//!   read, so a process that exits (and a pid that is reused) mid-scan cannot attach one
//!   namespace's addresses to another.
//! - An address found in two namespaces matches neither ([`Lookup::Ambiguous`]): the agent
//!   never captures a namespace on a guess.

mod addresses;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tracing::debug;

/// Where the host's procfs is mounted in the agent's DaemonSet pod.
pub const HOST_PROCFS: &str = "/host/proc";

/// The procfs to scan: [`HOST_PROCFS`] when it exists (in the DaemonSet), else `/proc`.
pub fn default_procfs() -> PathBuf {
    let host = Path::new(HOST_PROCFS);
    if host.join("1").is_dir() {
        host.to_owned()
    } else {
        PathBuf::from("/proc")
    }
}

/// One network namespace found by a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetns {
    /// The namespace's inode: equal inodes mean the same namespace.
    pub inode: u64,
    /// The process the namespace was found through.
    pub pid: u32,
    /// `<procfs>/<pid>/ns/net`: opens the namespace while that process lives.
    pub path: PathBuf,
    /// The namespace's addresses, without loopback and link-local ones.
    pub ips: Vec<IpAddr>,
}

/// Which namespace holds a pod's addresses.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    Found(&'a PodNetns),
    NotFound,
    /// The addresses are held by several namespaces (listed by inode).
    Ambiguous(Vec<u64>),
}

/// Why a scan could not run at all (single processes that cannot be read are skipped).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    #[error("cannot list the processes in {path}")]
    ListProcfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The network namespaces of a procfs, other than the host's, and their addresses.
#[derive(Debug, Default)]
pub struct NetnsScan {
    netns: Vec<PodNetns>,
}

impl NetnsScan {
    /// Scans `procfs` (`/proc`, or the host's mounted elsewhere). Blocks on file reads: async
    /// callers use `spawn_blocking`.
    pub fn scan(procfs: &Path) -> Result<Self, DiscoveryError> {
        let entries = fs::read_dir(procfs).map_err(|source| DiscoveryError::ListProcfs {
            path: procfs.to_owned(),
            source,
        })?;
        let mut pids: Vec<u32> = entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();

        let mut skip: HashSet<u64> = HashSet::new();
        for host in [procfs.join("1/ns/net"), PathBuf::from("/proc/self/ns/net")] {
            if let Ok(inode) = netns_inode(&host) {
                skip.insert(inode);
            }
        }
        let mut netns = Vec::new();
        for pid in pids {
            let path = procfs.join(pid.to_string()).join("ns/net");
            let Ok(inode) = netns_inode(&path) else {
                continue;
            };
            if skip.contains(&inode) {
                continue;
            }
            match read_addresses(procfs, pid, &path, inode) {
                Some(ips) => {
                    skip.insert(inode);
                    if !ips.is_empty() {
                        netns.push(PodNetns {
                            inode,
                            pid,
                            path,
                            ips,
                        });
                    }
                }
                None => debug!(
                    pid,
                    inode, "process went away mid-scan; trying the next one"
                ),
            }
        }
        Ok(Self { netns })
    }

    /// Every namespace found that holds an address.
    pub fn netns(&self) -> &[PodNetns] {
        &self.netns
    }

    /// The one namespace that holds any of `ips`.
    pub fn find(&self, ips: &[IpAddr]) -> Lookup<'_> {
        let mut holders: BTreeMap<u64, &PodNetns> = BTreeMap::new();
        for netns in &self.netns {
            if netns.ips.iter().any(|ip| ips.contains(ip)) {
                holders.insert(netns.inode, netns);
            }
        }
        match holders.len() {
            0 => Lookup::NotFound,
            1 => holders
                .into_values()
                .next()
                .map_or(Lookup::NotFound, Lookup::Found),
            _ => Lookup::Ambiguous(holders.into_keys().collect()),
        }
    }
}

/// The inode of the namespace a `ns/net` link names.
fn netns_inode(path: &Path) -> io::Result<u64> {
    fs::metadata(path).map(|m| m.ino())
}

/// The addresses of `pid`'s namespace, `None` if the process is gone or now in another
/// namespace than `inode`.
fn read_addresses(procfs: &Path, pid: u32, ns_path: &Path, inode: u64) -> Option<Vec<IpAddr>> {
    let net = procfs.join(pid.to_string()).join("net");
    let fib_trie = fs::read_to_string(net.join("fib_trie")).ok()?;
    // Without IPv6 in the kernel (or in this namespace) the file does not exist.
    let if_inet6 = fs::read_to_string(net.join("if_inet6")).unwrap_or_default();
    if netns_inode(ns_path).ok()? != inode {
        return None;
    }
    let mut ips: Vec<IpAddr> = addresses::local_ipv4(&fib_trie)
        .into_iter()
        .map(IpAddr::V4)
        .chain(addresses::ipv6(&if_inet6).into_iter().map(IpAddr::V6))
        .collect();
    ips.sort_unstable();
    ips.dedup();
    Some(ips)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn netns(inode: u64, ips: &[&str]) -> PodNetns {
        PodNetns {
            inode,
            pid: inode as u32,
            path: PathBuf::from(format!("/proc/{inode}/ns/net")),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn find_matches_one_namespace_or_none_and_refuses_to_guess() {
        let scan = NetnsScan {
            netns: vec![
                netns(1, &["10.0.0.1", "fd00::1"]),
                netns(2, &["10.0.0.2"]),
                netns(3, &["10.0.0.9"]),
                netns(4, &["10.0.0.9"]),
            ],
        };
        let ips =
            |list: &[&str]| -> Vec<IpAddr> { list.iter().map(|i| i.parse().unwrap()).collect() };
        assert_eq!(scan.find(&ips(&["fd00::1"])), Lookup::Found(&scan.netns[0]));
        assert_eq!(
            scan.find(&ips(&["10.0.0.2", "fd00::2"])),
            Lookup::Found(&scan.netns[1])
        );
        assert_eq!(scan.find(&ips(&["10.0.0.3"])), Lookup::NotFound);
        assert_eq!(scan.find(&[]), Lookup::NotFound);
        assert_eq!(
            scan.find(&ips(&["10.0.0.9"])),
            Lookup::Ambiguous(vec![3, 4])
        );
        assert_eq!(
            scan.find(&ips(&["10.0.0.1", "10.0.0.2"])),
            Lookup::Ambiguous(vec![1, 2])
        );
    }

    #[test]
    fn a_missing_procfs_is_an_error_naming_it() {
        let err = NetnsScan::scan(Path::new("/no/such/procfs")).unwrap_err();
        assert!(err.to_string().contains("/no/such/procfs"), "{err}");
    }
}
