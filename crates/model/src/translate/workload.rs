//! Pods → `istio.workload.Workload`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_proto::workload::{
    NetworkMode, Port, PortList, Service, TunnelProtocol, Workload, WorkloadStatus, WorkloadType,
};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::service::{hostname, ip_bytes, resource_name};
use super::{MeshConfig, PodReport, pod_uid};
use crate::enroll::{Enrollment, enrollment, redirected};
use crate::state::ClusterState;

/// Label the EndpointSlice controller puts on every slice, naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Translates one pod. Always reports the pod; yields a workload unless it cannot be served.
pub(super) fn workload(
    state: &ClusterState,
    config: &MeshConfig,
    pod: &core::Pod,
    services: &BTreeMap<String, Service>,
) -> (PodReport, Result<Workload, String>) {
    let meta = &pod.metadata;
    let namespace = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let enrolled = enrollment(pod, state.namespaces.get(&namespace));
    let result = build(state, config, pod, &namespace, &name, enrolled, services);
    let report = PodReport {
        namespace,
        name,
        enrollment: enrolled,
        skipped: result.as_ref().err().cloned(),
    };
    (report, result)
}

fn build(
    state: &ClusterState,
    config: &MeshConfig,
    pod: &core::Pod,
    namespace: &str,
    name: &str,
    enrolled: Enrollment,
    services: &BTreeMap<String, Service>,
) -> Result<Workload, String> {
    // Borrowed, never cloned: this runs for every pod on every translation.
    let default_status = core::PodStatus::default();
    let status = pod.status.as_ref().unwrap_or(&default_status);
    if let Some(phase @ ("Succeeded" | "Failed")) = status.phase.as_deref() {
        return Err(format!("pod has finished (phase {phase})"));
    }
    let addresses = pod_ips(status)?;
    let default_spec = core::PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let (workload_type, workload_name) = owner_workload(pod, name);
    let host_network = spec.host_network == Some(true);
    Ok(Workload {
        uid: pod_uid(&config.cluster_id, namespace, name),
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        addresses: addresses.into_iter().map(ip_bytes).collect(),
        network: config.network.clone(),
        // As istiod: peers tunnel to a pod only once its capture agent marked it captured, so
        // none tunnels to a pod whose listeners are not up yet.
        tunnel_protocol: if enrolled.is_enrolled() && redirected(pod) {
            TunnelProtocol::Hbone
        } else {
            TunnelProtocol::None
        } as i32,
        trust_domain: config.trust_domain.to_string(),
        service_account: spec
            .service_account_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_owned()),
        node: spec.node_name.clone().unwrap_or_default(),
        canonical_name: canonical_name(labels, &workload_name),
        canonical_revision: canonical_revision(labels),
        workload_type: workload_type as i32,
        workload_name,
        services: service_ports(state, config, pod, namespace, name, labels, services),
        status: if is_ready(status) {
            WorkloadStatus::Healthy
        } else {
            WorkloadStatus::Unhealthy
        } as i32,
        cluster_id: config.cluster_id.clone(),
        network_mode: if host_network {
            NetworkMode::HostNetwork
        } else {
            NetworkMode::Standard
        } as i32,
        ..Workload::default()
    })
}

fn pod_ips(status: &core::PodStatus) -> Result<Vec<IpAddr>, String> {
    let mut raw: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    if raw.is_empty() {
        raw.extend(status.pod_ip.as_deref());
    }
    if raw.is_empty() {
        return Err("no pod IP yet".to_owned());
    }
    let mut ips = Vec::with_capacity(raw.len());
    for ip in raw {
        let parsed = ip
            .parse::<IpAddr>()
            .map_err(|_| format!("status.podIPs has an invalid address {ip:?}"))?;
        if !ips.contains(&parsed) {
            ips.push(parsed);
        }
    }
    Ok(ips)
}

fn is_ready(status: &core::PodStatus) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The workload a pod belongs to, from its controller: a Deployment through its ReplicaSet, a
/// CronJob through its Job, or the controller itself; the pod alone otherwise.
fn owner_workload(pod: &core::Pod, pod_name: &str) -> (WorkloadType, String) {
    let labels = pod.metadata.labels.as_ref();
    let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    else {
        return (WorkloadType::Pod, pod_name.to_owned());
    };
    match owner.kind.as_str() {
        "ReplicaSet" => {
            // `<deployment>-<pod-template-hash>`: strip the hash the Deployment controller added.
            let hash = labels.and_then(|l| l.get("pod-template-hash"));
            match hash
                .and_then(|h| owner.name.strip_suffix(h.as_str()))
                .and_then(|n| n.strip_suffix('-'))
            {
                Some(deployment) => (WorkloadType::Deployment, deployment.to_owned()),
                None => (WorkloadType::Deployment, owner.name.clone()),
            }
        }
        "Job" => {
            // CronJob-created jobs are `<cronjob>-<scheduled time in minutes>`.
            match owner.name.rsplit_once('-') {
                Some((cronjob, suffix))
                    if suffix.len() >= 8 && suffix.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    (WorkloadType::Cronjob, cronjob.to_owned())
                }
                _ => (WorkloadType::Job, owner.name.clone()),
            }
        }
        _ => (WorkloadType::Deployment, owner.name.clone()),
    }
}

fn canonical_name(labels: &BTreeMap<String, String>, workload_name: &str) -> String {
    [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| labels.get(*k))
    .cloned()
    .unwrap_or_else(|| workload_name.to_owned())
}

fn canonical_revision(labels: &BTreeMap<String, String>) -> String {
    [
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| labels.get(*k))
    .cloned()
    .unwrap_or_else(|| "latest".to_owned())
}

/// The services this pod backs, with each service port mapped to the pod's target port.
/// Services with a selector match by labels; selector-less ones by their EndpointSlices.
fn service_ports(
    state: &ClusterState,
    config: &MeshConfig,
    pod: &core::Pod,
    namespace: &str,
    pod_name: &str,
    labels: &BTreeMap<String, String>,
    services: &BTreeMap<String, Service>,
) -> BTreeMap<String, PortList> {
    let mut out = BTreeMap::new();
    for ((ns, name), svc) in state
        .services
        .range((namespace.to_owned(), String::new())..)
    {
        if ns != namespace {
            break;
        }
        let spec = svc.spec.as_ref();
        let selector = spec
            .and_then(|s| s.selector.as_ref())
            .filter(|s| !s.is_empty());
        // Cheap checks first: this loop runs for every pod × every service of its namespace.
        let ports = match selector {
            Some(selector) => {
                if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                    continue;
                }
                selected_ports(pod, spec.and_then(|s| s.ports.as_ref()))
            }
            None => endpoint_slice_ports(
                state,
                namespace,
                name,
                pod_name,
                spec.and_then(|s| s.ports.as_ref()),
            ),
        };
        if ports.is_empty() {
            continue;
        }
        let key = resource_name(namespace, &hostname(config, namespace, name));
        if services.contains_key(&key) {
            out.insert(key, PortList { ports });
        }
    }
    out
}

fn selected_ports(pod: &core::Pod, ports: Option<&Vec<core::ServicePort>>) -> Vec<Port> {
    ports
        .into_iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let service_port = u32::try_from(p.port).ok()?;
            let target_port = match &p.target_port {
                None => service_port,
                Some(IntOrString::Int(n)) => u32::try_from(*n).ok()?,
                // A named port that this pod does not declare is not served by it (as in Istio).
                Some(IntOrString::String(port_name)) => named_container_port(pod, port_name)?,
            };
            Some(Port {
                service_port,
                target_port,
            })
        })
        .collect()
}

fn named_container_port(pod: &core::Pod, port_name: &str) -> Option<u32> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(port_name))
        .and_then(|p| u32::try_from(p.container_port).ok())
}

/// For a service without a selector: the ports of the EndpointSlices that list this pod.
fn endpoint_slice_ports(
    state: &ClusterState,
    namespace: &str,
    service: &str,
    pod_name: &str,
    service_ports: Option<&Vec<core::ServicePort>>,
) -> Vec<Port> {
    let mut out = Vec::new();
    for ((ns, _), slice) in state
        .endpoint_slices
        .range((namespace.to_owned(), String::new())..)
    {
        if ns != namespace {
            break;
        }
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL));
        if owner.map(String::as_str) != Some(service) {
            continue;
        }
        let lists_pod = slice.endpoints.iter().any(|e| {
            e.target_ref.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("Pod") && r.name.as_deref() == Some(pod_name)
            })
        });
        if !lists_pod {
            continue;
        }
        for sp in service_ports.into_iter().flatten() {
            let target = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name == sp.name)
                .and_then(|p| p.port);
            if let (Ok(service_port), Some(Ok(target_port))) =
                (u32::try_from(sp.port), target.map(u32::try_from))
            {
                let port = Port {
                    service_port,
                    target_port,
                };
                if !out.contains(&port) {
                    out.push(port);
                }
            }
        }
    }
    out
}
