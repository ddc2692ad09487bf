//! Where an outbound connection goes: the original destination resolved against the mesh.
//!
//! A destination is a workload address (sent to that workload), a service VIP (sent to one
//! healthy endpoint that maps the port), or unknown (sent to the address as is, unencrypted,
//! as Istio does). Endpoints are picked round-robin among the healthy ones.
//!
//! Inbound, [`ProxyState::inbound_service`] names the service a tunnel was for, for telemetry
//! only: among the services the destination workload backs, the one the client's `Forwarded
//! host=` names, else the first whose port maps to the tunnel's target port (ztunnel's
//! `guess_inbound_service`). What the client wrote can pick only among those.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::proxy_state::ProxyState;
use ambit_xds::wds::{Service, Workload};

/// Where to send an outbound connection.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// A mesh workload: connect to `addr` (its address and target port), over HBONE if the
    /// workload speaks it.
    Workload {
        workload: Arc<Workload>,
        addr: SocketAddr,
        /// The service the application addressed, if it used a VIP.
        service: Option<Arc<Service>>,
    },
    /// Not an address of the mesh: passthrough to the original destination.
    Unknown,
}

/// Why a destination cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    #[error("service {service} does not expose port {port}")]
    NoSuchPort { service: String, port: u16 },
    #[error("service {service} has no healthy endpoint for port {port}")]
    NoHealthyEndpoint { service: String, port: u16 },
}

/// Round-robin position shared by every service (fairness per service is not needed).
static NEXT: AtomicUsize = AtomicUsize::new(0);

impl ProxyState {
    /// Resolves the original destination `dst` of an outbound connection.
    pub fn resolve(&self, dst: SocketAddr) -> Result<Upstream, ResolveError> {
        self.read(|mesh| {
            if let Some(workload) = mesh.workload_by_ip(dst.ip()) {
                return Ok(Upstream::Workload {
                    workload,
                    addr: dst,
                    service: None,
                });
            }
            let Some(service) = mesh.service_by_vip(dst.ip()) else {
                return Ok(Upstream::Unknown);
            };
            let port = dst.port();
            let own = service.port(port).ok_or_else(|| ResolveError::NoSuchPort {
                service: service.hostname.clone(),
                port,
            })?;
            let key = service.key();
            let mut candidates: Vec<(Arc<Workload>, IpAddr, u16)> = mesh
                .endpoints(&key)
                .into_iter()
                .filter(|w| w.healthy)
                .filter_map(|w| {
                    let target = match w.target_port(&key, port)? {
                        0 if own.target_port != 0 => own.target_port,
                        0 => port,
                        t => t,
                    };
                    let ip = *w.addresses.first()?;
                    Some((w, ip, target))
                })
                .collect();
            if candidates.is_empty() {
                return Err(ResolveError::NoHealthyEndpoint {
                    service: service.hostname.clone(),
                    port,
                });
            }
            let pick = NEXT.fetch_add(1, Ordering::Relaxed) % candidates.len();
            let (workload, ip, target) = candidates.swap_remove(pick);
            Ok(Upstream::Workload {
                workload,
                addr: SocketAddr::new(ip, target),
                service: Some(service),
            })
        })
    }

    /// The service an inbound tunnel to `port` of local workload `workload` was for, as
    /// telemetry names it; `host` is the client's `Forwarded host=`. See the [module
    /// docs](self).
    pub fn inbound_service(
        &self,
        workload: &Workload,
        host: Option<&str>,
        port: u16,
    ) -> Option<Arc<Service>> {
        self.read(|mesh| {
            let backed: Vec<(Arc<Service>, &[ambit_xds::wds::PortMapping])> = workload
                .services
                .iter()
                .filter_map(|(key, ports)| Some((mesh.service(key)?, ports.as_slice())))
                .collect();
            if let Some(host) = host
                && let Some((service, _)) = backed.iter().find(|(s, _)| s.hostname == host)
            {
                return Some(service.clone());
            }
            backed
                .iter()
                .find(|(service, mappings)| {
                    service.ports.iter().any(|p| p.target_port == port)
                        || mappings.iter().any(|m| m.target_port == port)
                })
                .map(|(service, _)| service.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_xds::wds::PortMapping;

    use crate::state::proxy_state::test_state as state;

    fn endpoint(uid: &str, ip: &str, healthy: bool, target: u16) -> Workload {
        let mut w = crate::state::testing::test_workload(uid, ip);
        w.healthy = healthy;
        w.services.insert(
            "ns/svc.ns.svc.cluster.local".to_owned(),
            vec![PortMapping {
                service_port: 80,
                target_port: target,
            }],
        );
        w
    }

    fn service() -> Service {
        Service {
            name: "svc".into(),
            namespace: "ns".into(),
            hostname: "svc.ns.svc.cluster.local".into(),
            vips: vec!["10.96.0.1".parse().unwrap()],
            ports: vec![PortMapping {
                service_port: 80,
                target_port: 9090,
            }],
            subject_alt_names: vec![],
        }
    }

    #[test]
    fn a_vip_resolves_to_a_healthy_endpoint_with_its_target_port() {
        let state = state();
        state.update(|m| {
            m.insert_service("svc", service());
            m.insert_workload("sick", endpoint("sick", "10.0.0.1", false, 8080));
            m.insert_workload("ok", endpoint("ok", "10.0.0.2", true, 0));
        });
        for _ in 0..3 {
            let Ok(Upstream::Workload {
                workload,
                addr,
                service,
            }) = state.resolve("10.96.0.1:80".parse().unwrap())
            else {
                panic!("expected a workload");
            };
            assert_eq!(workload.uid, "ok");
            // The workload leaves the port to the service's own mapping.
            assert_eq!(addr, "10.0.0.2:9090".parse().unwrap());
            assert!(service.is_some());
        }
        assert_eq!(
            state.resolve("10.96.0.1:81".parse().unwrap()).unwrap_err(),
            ResolveError::NoSuchPort {
                service: "svc.ns.svc.cluster.local".into(),
                port: 81
            }
        );
        assert!(matches!(
            state.resolve("10.0.0.1:5".parse().unwrap()),
            Ok(Upstream::Workload { service: None, .. })
        ));
        assert!(matches!(
            state.resolve("1.1.1.1:443".parse().unwrap()),
            Ok(Upstream::Unknown)
        ));
    }

    #[test]
    fn the_inbound_service_is_chosen_among_those_the_workload_backs() {
        let state = state();
        let mut other = service();
        other.name = "other".into();
        other.hostname = "other.ns.svc.cluster.local".into();
        other.vips = vec!["10.96.0.2".parse().unwrap()];
        other.ports[0].target_port = 7070;
        let stranger = Service {
            name: "stranger".into(),
            hostname: "stranger.ns.svc.cluster.local".into(),
            vips: vec!["10.96.0.3".parse().unwrap()],
            ..service()
        };
        let mut w = endpoint("w", "10.0.0.2", true, 8080);
        w.services.insert(
            other.key(),
            vec![PortMapping {
                service_port: 80,
                target_port: 7070,
            }],
        );
        state.update(|m| {
            m.insert_service("svc", service());
            m.insert_service("other", other);
            m.insert_service("stranger", stranger);
            m.insert_workload("w", w.clone());
        });
        let name = |host, port| {
            state
                .inbound_service(&w, host, port)
                .map(|s| s.name.clone())
        };
        // By port: the workload's own mapping, then the service's.
        assert_eq!(name(None, 8080).as_deref(), Some("svc"));
        assert_eq!(name(None, 7070).as_deref(), Some("other"));
        assert_eq!(name(None, 9090).as_deref(), Some("svc"));
        assert_eq!(name(None, 1), None);
        // The client's `host=` picks among the backed services only.
        assert_eq!(
            name(Some("other.ns.svc.cluster.local"), 8080).as_deref(),
            Some("other")
        );
        assert_eq!(
            name(Some("stranger.ns.svc.cluster.local"), 8080).as_deref(),
            Some("svc")
        );
    }
}
