//! Kubernetes Services → `istio.workload.Service`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_proto::workload::{NetworkAddress, Port, Service};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::MeshConfig;
use crate::state::ClusterState;

/// Istio's annotation naming the service accounts allowed to serve a Service.
const SERVICE_ACCOUNTS_ANNOTATION: &str = "alpha.istio.io/kubernetes-serviceaccounts";
/// Istio's annotation naming full identities allowed to serve a Service.
const CANONICAL_SERVICE_ACCOUNTS_ANNOTATION: &str = "alpha.istio.io/canonical-serviceaccounts";

/// Every Service, keyed by its resource name `<namespace>/<hostname>`.
pub(super) fn services(state: &ClusterState, config: &MeshConfig) -> BTreeMap<String, Service> {
    state
        .services
        .iter()
        .map(|((ns, name), svc)| {
            let service = service(config, ns, name, svc);
            (resource_name(ns, &service.hostname), service)
        })
        .collect()
}

/// The Services of one namespace, keyed like [`services`].
pub(super) fn services_in(
    state: &ClusterState,
    config: &MeshConfig,
    namespace: &str,
) -> BTreeMap<String, Service> {
    state
        .services
        .range((namespace.to_owned(), String::new())..)
        .take_while(|((ns, _), _)| ns == namespace)
        .map(|((ns, name), svc)| {
            let service = service(config, ns, name, svc);
            (resource_name(ns, &service.hostname), service)
        })
        .collect()
}

/// `<namespace>/<hostname>`, the WDS resource name of a service (and the key of a workload's
/// `services` map).
pub(super) fn resource_name(namespace: &str, hostname: &str) -> String {
    format!("{namespace}/{hostname}")
}

/// `<name>.<namespace>.svc.<suffix>`.
pub(super) fn hostname(config: &MeshConfig, namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.svc.{}", config.domain_suffix)
}

fn service(config: &MeshConfig, namespace: &str, name: &str, svc: &core::Service) -> Service {
    let default_spec = core::ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&default_spec);
    let cluster_ips: Vec<&String> = match spec.cluster_ips.as_ref().filter(|ips| !ips.is_empty()) {
        Some(ips) => ips.iter().collect(),
        None => spec.cluster_ip.iter().collect(),
    };
    let addresses = cluster_ips
        .iter()
        // Headless services ("None") have no VIP; anything unparsable is not an address.
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| NetworkAddress {
            network: config.network.clone(),
            address: ip_bytes(ip),
        })
        .collect();
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let service_port = u32::try_from(p.port).ok()?;
            // A named target port differs per pod: 0 here, resolved in each workload's map.
            let target_port = match &p.target_port {
                None => service_port,
                Some(IntOrString::Int(n)) => u32::try_from(*n).unwrap_or(0),
                Some(IntOrString::String(s)) => s.parse().unwrap_or(0),
            };
            Some(Port {
                service_port,
                target_port,
            })
        })
        .collect();
    Service {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        hostname: hostname(config, namespace, name),
        addresses,
        ports,
        subject_alt_names: subject_alt_names(config, namespace, svc),
        ..Service::default()
    }
}

fn subject_alt_names(config: &MeshConfig, namespace: &str, svc: &core::Service) -> Vec<String> {
    let Some(annotations) = svc.metadata.annotations.as_ref() else {
        return Vec::new();
    };
    let accounts = annotations
        .get(SERVICE_ACCOUNTS_ANNOTATION)
        .into_iter()
        .flat_map(|v| v.split(','));
    let mut sans: Vec<String> = accounts
        .map(str::trim)
        .filter(|sa| !sa.is_empty())
        .filter_map(|sa| {
            ambit_identity::SpiffeId::new(config.trust_domain.clone(), namespace, sa)
                .ok()
                .map(|id| id.to_string())
        })
        .collect();
    let canonical = annotations
        .get(CANONICAL_SERVICE_ACCOUNTS_ANNOTATION)
        .into_iter()
        .flat_map(|v| v.split(','));
    sans.extend(
        canonical
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    );
    sans.sort();
    sans.dedup();
    sans
}

pub(super) fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}
