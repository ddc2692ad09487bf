//! Istio's port numbers, the probe source address and the proxy's socket mark: fixed by Istio's
//! ambient mode, so every Ambit role (and a stock ztunnel, istiod or istio-cni beside it) agrees
//! on them. Defined here once; every crate takes them from here.

use std::net::Ipv4Addr;

/// Node proxy, inside each pod's netns: redirected outbound connections (`SO_ORIGINAL_DST`).
pub const OUTBOUND: u16 = 15001;
/// Node proxy, inside each pod's netns: plaintext inbound from outside the mesh.
pub const INBOUND_PASSTHROUGH: u16 = 15006;
/// Node proxy: inbound HBONE (mutual TLS 1.3, HTTP/2 CONNECT), dialed on every mesh workload.
pub const HBONE: u16 = 15008;
/// Node proxy: SOCKS5 outbound for hosts without redirection.
pub const SOCKS5: u16 = 15080;
/// Node proxy admin server (`/config_dump`, `/logging`, `/quitquitquit`), on loopback.
pub const ADMIN: u16 = 15000;
/// Node proxy metrics: `/stats/prometheus`.
pub const STATS: u16 = 15020;
/// Node proxy readiness: `/healthz/ready`.
pub const READINESS: u16 = 15021;
/// Control plane: WDS over plaintext gRPC (local use only).
pub const XDS_PLAINTEXT: u16 = 15010;
/// Control plane: WDS and CA over TLS, bearer token required.
pub const XDS_TLS: u16 = 15012;
/// Control plane monitoring: `/metrics`, `/ready`, `/debug/…`.
pub const MONITORING: u16 = 15014;

/// The address kubelet's probes are SNATed to inside an enrolled pod; the pod's rules let it
/// through without redirection (istio-cni's `169.254.7.127`).
pub const PROBE_SOURCE: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 127);
/// `SO_MARK` of the node proxy's own sockets inside pods (Istio's `INPOD_MARK`, 1337): the
/// pod's redirection rules let marked traffic through.
pub const PROXY_MARK: u32 = 0x539;
