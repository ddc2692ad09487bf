//! The whole local mesh: the wire and pods ([`Topology`]), the control plane reading the
//! cluster's manifests, and per node a capture agent and a node proxy in in-pod mode, all as
//! `ambit` processes. This process plays the API server's client, kubelet and the container
//! runtime in a cluster's order: it writes the pod's object without an IP, creates the pod's
//! network namespace, calls the CNI plugin's ADD (`ambit cni plugin`) with the IP in
//! `prevResult` exactly as a runtime would, and only once ADD succeeded writes the pod's
//! status (`podIP`, Ready). The capture agents mark captured pods in the same manifest
//! directory (`--pod-manifests`).
//!
//! Addresses: the roles listen on loopback, the control plane on [`Options::roles`] and node
//! `k`'s admin, stats and readiness servers on the addresses after it; pods live on
//! `10.<block>.0.0/16` behind the gateway `10.<block>.0.1`.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_proto::ports;

use crate::cluster::{Cluster, Pod};
use crate::http;
use crate::process::{LineSink, Role};
use crate::topology::{Topology, TopologyError};
use crate::ztunnel::{self, ZtunnelNodes};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the mesh could not be built or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    #[error("topology")]
    Topology(#[from] TopologyError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    NotReady(String),
    #[error("the CNI plugin refused {pod}: {output}")]
    Plugin { pod: String, output: String },
    #[error("unknown {0}")]
    Unknown(String),
}

/// How to build the mesh.
#[derive(Clone)]
pub struct Options {
    /// The `ambit` binary.
    pub exe: PathBuf,
    /// The node proxy's own binary (`ambit-node`, which maps a fraction of the code, as a
    /// node's DaemonSet runs it); `None`: `ambit node`.
    pub node_exe: Option<PathBuf>,
    /// Pods live on `10.<block>.0.0/16` (inside the mesh's own namespaces).
    pub block: u8,
    /// The control plane's loopback address; node `k`'s servers use the next addresses
    /// (last octet + 1 + k). Two meshes side by side need different ones.
    pub roles: Ipv4Addr,
    /// Node names; pods name theirs.
    pub nodes: Vec<String>,
    /// Where the manifests, CA, tokens and sockets go.
    pub dir: PathBuf,
    /// The `--log-level` filter of every role.
    pub log_level: String,
    /// Receives every line a role prints (role name, line).
    pub sink: Option<LineSink>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("exe", &self.exe)
            .field("node_exe", &self.node_exe)
            .field("block", &self.block)
            .field("nodes", &self.nodes)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A running local mesh. Dropping it stops every process and removes every namespace.
#[derive(Debug)]
pub struct LocalMesh {
    options: Options,
    cluster: Cluster,
    // Field order is drop order: roles stop before the namespaces go.
    nodes: Vec<Node>,
    control: Role,
    ztunnel: Option<ZtunnelNodes>,
    topology: Topology,
}

/// One node's processes.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub ip: Ipv4Addr,
    pub proxy: Option<Role>,
    /// A ztunnel node's own namespace (after `proxy`: dropped once the proxy has stopped).
    pub host: Option<ztunnel::Host>,
    pub agent: Option<Role>,
}

impl LocalMesh {
    /// Builds the wire, writes `cluster`'s manifests, starts the control plane, the capture
    /// agents and node proxies, waits until they are ready, then creates every pod of
    /// `cluster` (namespace + CNI ADD).
    pub fn start(options: Options, cluster: Cluster) -> Result<Self, MeshError> {
        Self::start_with(options, cluster, None)
    }

    /// Like [`LocalMesh::start`], with the nodes `ztunnel` names running a stock ztunnel as
    /// their proxy (see [`crate::ztunnel`]) instead of Ambit's.
    pub fn start_with(
        options: Options,
        cluster: Cluster,
        ztunnel: Option<ZtunnelNodes>,
    ) -> Result<Self, MeshError> {
        let b = options.block;
        let topology = Topology::new(Ipv4Addr::new(10, b, 0, 1), 16)?;
        let dir = &options.dir;
        let manifests = dir.join("manifests");
        let mut tokens = String::new();
        for node in &options.nodes {
            // The control plane takes tokens of 16 characters or more, whatever the node's name.
            let token = format!("localmesh-token-{node}-{}", std::process::id());
            tokens.push_str(&format!("{token} {node}\n"));
            write(&dir.join(format!("{node}.token")), &token)?;
        }
        write(&dir.join("bootstrap-tokens"), &tokens)?;
        let mut empty = cluster.clone();
        empty.pods.clear();
        empty.write(&manifests).map_err(io("write the manifests"))?;

        let control_ip = options.roles;
        let control = Role::spawn(
            "control",
            &options.exe,
            &strings(&[
                "--log-level",
                &options.log_level,
                "control",
                "--config-dir",
                &manifests.display().to_string(),
                "--ca-dir",
                &dir.join("ca").display().to_string(),
                "--bootstrap-tokens",
                &dir.join("bootstrap-tokens").display().to_string(),
                "--plaintext-addr",
                &format!("{control_ip}:{}", ports::XDS_PLAINTEXT),
                "--tls-addr",
                &format!("{control_ip}:{}", ports::XDS_TLS),
                "--monitoring-addr",
                &format!("{control_ip}:{}", ports::MONITORING),
                "--debounce-ms",
                "20",
                "--poll-ms",
                "100",
            ]),
            options.sink.clone(),
        )
        .map_err(io("start the control plane"))?;
        wait_http(
            SocketAddr::from((control_ip, ports::MONITORING)),
            "/ready",
            "control plane",
        )
        .map_err(|e| with_output(e, &control))?;

        let nodes = options
            .nodes
            .iter()
            .enumerate()
            .map(|(k, name)| Node {
                name: name.clone(),
                ip: offset(options.roles, k + 1),
                proxy: None,
                host: None,
                agent: None,
            })
            .collect();
        let mut mesh = Self {
            options,
            cluster: Cluster {
                namespaces: cluster.namespaces.clone(),
                pods: Vec::new(),
                extra: cluster.extra.clone(),
            },
            nodes,
            control,
            ztunnel,
            topology,
        };
        for k in 0..mesh.nodes.len() {
            mesh.start_agent(k)?;
            mesh.start_proxy(k)?;
        }
        for k in 0..mesh.nodes.len() {
            mesh.wait_proxy_ready(k)?;
        }
        for pod in cluster.pods {
            mesh.add_pod(pod)?;
        }
        Ok(mesh)
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn control(&self) -> &Role {
        &self.control
    }

    pub fn control_monitoring(&self) -> SocketAddr {
        SocketAddr::from((self.options.roles, ports::MONITORING))
    }

    /// The directory holding manifests, CA, tokens and sockets.
    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    /// Creates a pod in a cluster's order: [`create_pod_object`](Self::create_pod_object),
    /// [`create_sandbox`](Self::create_sandbox), CNI ADD retried while it fails (the agent away
    /// or undecided, as a runtime retries sandbox creation), then
    /// [`write_pod_status`](Self::write_pod_status). Returns once the control plane serves the
    /// pod's address.
    pub fn add_pod(&mut self, pod: Pod) -> Result<(), MeshError> {
        let (namespace, name) = (pod.namespace.clone(), pod.name.clone());
        self.create_pod_object(pod)?;
        self.create_sandbox(&namespace, &name)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.cni_add(&namespace, &name) {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        self.write_pod_status(&namespace, &name)
    }

    /// The API server's part: the pod's object, scheduled to its node, without an IP. It
    /// replaces a pod of the same namespace and name.
    pub fn create_pod_object(&mut self, mut pod: Pod) -> Result<(), MeshError> {
        let key = pod.key();
        self.node_index(&pod.node)
            .ok_or_else(|| MeshError::Unknown(format!("node {} of pod {key}", pod.node)))?;
        pod.started = false;
        self.cluster.pods.retain(|p| p.key() != key);
        self.cluster.pods.push(pod);
        self.write_manifests()
    }

    /// The runtime's part before ADD: the pod's network namespace on the wire, with its IP
    /// (which IPAM hands out during ADD on a cluster; here it is fixed in advance).
    pub fn create_sandbox(&mut self, namespace: &str, name: &str) -> Result<(), MeshError> {
        let pod = self.known_pod(namespace, name)?;
        self.topology.add_pod(&pod.key(), pod.ip)?;
        Ok(())
    }

    /// One CNI ADD of the pod's sandbox, its IP in `prevResult`, as the runtime runs it.
    pub fn cni_add(&self, namespace: &str, name: &str) -> Result<(), MeshError> {
        let pod = self.known_pod(namespace, name)?;
        let node = self.known_node(&pod.node)?;
        self.cni("ADD", &pod, node)
    }

    /// kubelet's part after ADD succeeded: the pod's status (`podIP`, Ready). Returns once the
    /// control plane serves the pod's address.
    pub fn write_pod_status(&mut self, namespace: &str, name: &str) -> Result<(), MeshError> {
        let pod = self
            .cluster
            .pod_mut(namespace, name)
            .ok_or_else(|| MeshError::Unknown(format!("pod {namespace}/{name}")))?;
        pod.started = true;
        let pod = pod.clone();
        self.write_manifests()?;
        self.wait_control_knows(&pod)
    }

    /// Deletes a pod: CNI DEL, then its namespace, then its manifest.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> Result<(), MeshError> {
        let pod = self
            .cluster
            .pod(namespace, name)
            .cloned()
            .ok_or_else(|| MeshError::Unknown(format!("pod {namespace}/{name}")))?;
        if let Some(node) = self.node_index(&pod.node) {
            self.cni("DEL", &pod, node)?;
        }
        self.topology.remove_pod(&pod.key());
        self.cluster.pods.retain(|p| p.key() != pod.key());
        self.write_manifests()
    }

    /// Changes the cluster's manifests (labels of namespaces or pods) in place.
    pub fn relabel(&mut self, change: impl FnOnce(&mut Cluster)) -> Result<(), MeshError> {
        change(&mut self.cluster);
        self.write_manifests()
    }

    /// Stops node `k`'s proxy (SIGTERM, drain) and, if `start` says so, starts it again and
    /// waits until it is ready.
    pub fn restart_proxy(&mut self, node: &str, start: bool) -> Result<(), MeshError> {
        let k = self.known_node(node)?;
        if let Some(mut role) = self.nodes[k].proxy.take() {
            role.stop(Duration::from_secs(5));
        }
        if start {
            self.start_proxy(k)?;
            self.wait_proxy_ready(k)?;
        }
        Ok(())
    }

    /// Stops node `k`'s capture agent and, if `start` says so, starts it again.
    pub fn restart_agent(&mut self, node: &str, start: bool) -> Result<(), MeshError> {
        let k = self.known_node(node)?;
        if let Some(mut role) = self.nodes[k].agent.take() {
            role.stop(Duration::from_secs(5));
        }
        if start {
            self.start_agent(k)?;
        }
        Ok(())
    }

    /// Node `name`'s admin (`/config_dump`), stats (`/stats/prometheus`) and readiness
    /// addresses.
    pub fn node_addrs(&self, name: &str) -> Option<NodeAddrs> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| NodeAddrs {
                admin: SocketAddr::from((n.ip, ports::ADMIN)),
                stats: SocketAddr::from((n.ip, ports::STATS)),
                readiness: SocketAddr::from((n.ip, ports::READINESS)),
            })
    }

    /// Node `name`'s metrics text.
    pub fn metrics(&self, name: &str) -> Result<String, MeshError> {
        let addrs = self
            .node_addrs(name)
            .ok_or_else(|| MeshError::Unknown(format!("node {name}")))?;
        http::get(addrs.stats, "/stats/prometheus", Duration::from_secs(5))
            .map(|(_, body)| body)
            .map_err(MeshError::NotReady)
    }

    /// Every line node `name`'s proxy printed.
    pub fn proxy_lines(&self, name: &str) -> Vec<String> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .and_then(|n| n.proxy.as_ref())
            .map(Role::lines)
            .unwrap_or_default()
    }

    pub fn zds_socket(&self, node: &str) -> PathBuf {
        self.options.dir.join(node).join("ztunnel.sock")
    }

    pub fn plugin_socket(&self, node: &str) -> PathBuf {
        self.options.dir.join(node).join("pluginevent.sock")
    }

    // === helpers ===

    fn start_agent(&mut self, k: usize) -> Result<(), MeshError> {
        let name = self.nodes[k].name.clone();
        let node_dir = self.options.dir.join(&name);
        std::fs::create_dir_all(&node_dir).map_err(io("create the node directory"))?;
        let control = self.options.roles;
        let role = Role::spawn(
            &format!("cni/{name}"),
            &self.options.exe,
            &strings(&[
                "--log-level",
                &self.options.log_level,
                "cni",
                "--node-name",
                &name,
                "--zds-socket",
                &self.zds_socket(&name).display().to_string(),
                "--plugin-socket",
                &self.plugin_socket(&name).display().to_string(),
                "--state-dir",
                &node_dir.join("cni-state").display().to_string(),
                "--xds-address",
                &format!("{control}:{}", ports::XDS_PLAINTEXT),
                "--xds-plaintext",
                "--pod-manifests",
                &self.options.dir.join("manifests").display().to_string(),
            ]),
            self.options.sink.clone(),
        )
        .map_err(io("start the capture agent"))?;
        self.nodes[k].agent = Some(role);
        let sockets = [self.zds_socket(&name), self.plugin_socket(&name)];
        wait(&format!("capture agent of {name}"), || {
            sockets.iter().all(|s| s.exists())
        })
    }

    fn start_proxy(&mut self, k: usize) -> Result<(), MeshError> {
        let name = self.nodes[k].name.clone();
        if let Some(zt) = self.ztunnel.as_ref().filter(|z| z.nodes.contains(&name)) {
            let dir = &self.options.dir;
            let (role, host) = ztunnel::start(ztunnel::Start {
                node: &name,
                exe: &zt.exe,
                control: SocketAddr::from((self.options.roles, ports::XDS_TLS)),
                zds_socket: self.zds_socket(&name),
                root_cert: dir.join("ca").join("root-cert.pem"),
                token_file: dir.join(format!("{name}.token")),
                worker_threads: self.proxy_share(),
                log_level: &self.options.log_level,
                sink: self.options.sink.clone(),
            })
            .map_err(io("start ztunnel"))?;
            self.nodes[k].proxy = Some(role);
            self.nodes[k].host = Some(host);
            return Ok(());
        }
        let ip = self.nodes[k].ip;
        let control = self.options.roles;
        let dir = &self.options.dir;
        let (exe, subcommand) = self.node_exe();
        let role = Role::spawn(
            &format!("node/{name}"),
            &exe,
            &strings(&["--log-level", &self.options.log_level])
                .into_iter()
                .chain(subcommand)
                .chain(strings(&[
                    "--node-name",
                    &name,
                    "--xds-address",
                    &format!("{control}:{}", ports::XDS_TLS),
                    "--server-name",
                    "istiod.istio-system.svc",
                    "--root-cert",
                    &dir.join("ca").join("root-cert.pem").display().to_string(),
                    "--token-file",
                    &dir.join(format!("{name}.token")).display().to_string(),
                    "--inpod",
                    "--inpod-uds",
                    &self.zds_socket(&name).display().to_string(),
                    "--outbound-addr",
                    "off",
                    "--inbound-passthrough-addr",
                    "off",
                    "--socks5-addr",
                    "off",
                    "--admin-addr",
                    &format!("{ip}:{}", ports::ADMIN),
                    "--stats-addr",
                    &format!("{ip}:{}", ports::STATS),
                    "--readiness-addr",
                    &format!("{ip}:{}", ports::READINESS),
                    "--drain-seconds",
                    "2",
                ]))
                .chain(self.proxy_threads())
                .collect::<Vec<_>>(),
            self.options.sink.clone(),
        )
        .map_err(io("start the node proxy"))?;
        self.nodes[k].proxy = Some(role);
        Ok(())
    }

    fn wait_proxy_ready(&self, k: usize) -> Result<(), MeshError> {
        let node = &self.nodes[k];
        let ready = match &node.host {
            Some(host) => wait(&format!("ztunnel of {}", node.name), || {
                ztunnel::ready(host)
            }),
            None => wait_http(
                SocketAddr::from((node.ip, ports::READINESS)),
                "/healthz/ready",
                &format!("node proxy of {}", node.name),
            ),
        };
        match (&node.proxy, ready) {
            (Some(role), Err(e)) => Err(with_output(e, role)),
            (_, ready) => ready,
        }
    }

    fn wait_control_knows(&self, pod: &Pod) -> Result<(), MeshError> {
        let addr = self.control_monitoring();
        let needle = format!("\"{}\"", pod.ip);
        wait(&format!("control plane to serve {}", pod.key()), || {
            http::get(addr, "/debug/workloads", Duration::from_secs(2))
                .is_ok_and(|(_, body)| body.contains(&needle))
        })
    }

    fn write_manifests(&self) -> Result<(), MeshError> {
        self.cluster
            .write(&self.options.dir.join("manifests"))
            .map_err(io("write the manifests"))
    }

    /// The node proxy's program and the subcommand it needs.
    fn node_exe(&self) -> (PathBuf, Option<String>) {
        match &self.options.node_exe {
            Some(alone) => (alone.clone(), None),
            None => (self.options.exe.clone(), Some("node".to_owned())),
        }
    }

    /// `--worker-threads` for a node proxy: the nodes share this machine's CPUs, so each
    /// proxy gets its node's share (at least one), as on a cluster where each node has its
    /// own. `ZTUNNEL_WORKER_THREADS` in the environment (inherited) decides instead.
    fn proxy_threads(&self) -> Option<String> {
        self.proxy_share()
            .map(|share| format!("--worker-threads={share}"))
    }

    /// Each node proxy's share of this machine's CPUs (at least one), or `None` when
    /// `ZTUNNEL_WORKER_THREADS` in the environment decides. The nodes of one kind share the
    /// CPUs (Ambit's nodes and ztunnel's carry traffic in turn, never together).
    fn proxy_share(&self) -> Option<usize> {
        if std::env::var_os("ZTUNNEL_WORKER_THREADS").is_some() {
            return None;
        }
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let ztunnels = self.ztunnel.as_ref().map_or(0, |z| {
            self.nodes
                .iter()
                .filter(|n| z.nodes.contains(&n.name))
                .count()
        });
        let sharing = ztunnels.max(self.nodes.len() - ztunnels).max(1);
        Some((cpus / sharing).max(1))
    }

    fn known_pod(&self, namespace: &str, name: &str) -> Result<Pod, MeshError> {
        self.cluster
            .pod(namespace, name)
            .cloned()
            .ok_or_else(|| MeshError::Unknown(format!("pod {namespace}/{name}")))
    }

    fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    fn known_node(&self, name: &str) -> Result<usize, MeshError> {
        self.node_index(name)
            .ok_or_else(|| MeshError::Unknown(format!("node {name}")))
    }

    /// Runs `ambit cni plugin` as a runtime would for `pod` on node `k`.
    fn cni(&self, command: &str, pod: &Pod, k: usize) -> Result<(), MeshError> {
        let node = &self.nodes[k].name;
        let netns = self
            .topology
            .pod(&pod.key())
            .map(|p| p.netns_path().display().to_string())
            .unwrap_or_default();
        let config = format!(
            concat!(
                r#"{{"cniVersion":"1.0.0","name":"ambit","type":"ambit-cni","#,
                r#""ambit":{{"agent_socket":"{socket}"}},"#,
                r#""prevResult":{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"{netns}"}}],"#,
                r#""ips":[{{"address":"{ip}/16","interface":0}}]}}}}"#
            ),
            socket = self.plugin_socket(node).display(),
            netns = netns,
            ip = pod.ip,
        );
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID=sandbox-{};K8S_POD_UID={}",
            pod.namespace,
            pod.name,
            pod.name,
            pod.uid()
        );
        let mut child = Command::new(&self.options.exe)
            .args(["cni", "plugin"])
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("sandbox-{}", pod.uid()))
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", args)
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io("run the CNI plugin"))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(config.as_bytes());
        }
        let out = child.wait_with_output().map_err(io("run the CNI plugin"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(MeshError::Plugin {
                pod: pod.key(),
                output: format!(
                    "{} {}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            })
        }
    }
}

/// Where a node proxy's servers listen.
#[derive(Debug, Clone, Copy)]
pub struct NodeAddrs {
    pub admin: SocketAddr,
    pub stats: SocketAddr,
    pub readiness: SocketAddr,
}

fn wait_http(addr: SocketAddr, path: &str, what: &str) -> Result<(), MeshError> {
    wait(what, || {
        http::get(addr, path, Duration::from_secs(2)).is_ok_and(|(status, _)| status == 200)
    })
}

fn wait(what: &str, mut ready: impl FnMut() -> bool) -> Result<(), MeshError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !ready() {
        if Instant::now() > deadline {
            return Err(MeshError::NotReady(format!(
                "{what}: not ready after {READY_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `error` followed by the last lines `role` printed, so a role that never became ready says why.
fn with_output(error: MeshError, role: &Role) -> MeshError {
    const LAST: usize = 20;
    let MeshError::NotReady(what) = error else {
        return error;
    };
    let lines = role.lines();
    let tail = lines[lines.len().saturating_sub(LAST)..].join("\n  ");
    MeshError::NotReady(format!("{what}; its last output:\n  {tail}"))
}

fn write(path: &Path, text: &str) -> Result<(), MeshError> {
    std::fs::write(path, text).map_err(io(&format!("write {}", path.display())))
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> MeshError + '_ {
    move |source| MeshError::Io {
        what: format!("cannot {what}"),
        source,
    }
}

/// `ip` with `n` added to its last octet (saturating).
fn offset(ip: Ipv4Addr, n: usize) -> Ipv4Addr {
    let [a, b, c, d] = ip.octets();
    let d = u8::try_from(usize::from(d) + n).unwrap_or(u8::MAX);
    Ipv4Addr::new(a, b, c, d)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}
