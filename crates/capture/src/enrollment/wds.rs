//! Enrollment from the control plane's WDS (`istio.workload.Address`).
//!
//! The control plane marks an enrolled pod's `Workload` with `tunnel_protocol: HBONE`; that is
//! the mark the node proxy acts on, so the agent follows the same resource: a pod is enrolled
//! iff a `Workload` for it (uid `<cluster>//Pod/<namespace>/<name>`, or failing that its
//! `namespace` and `name` fields) is on this node and speaks HBONE. Services are ignored. The
//! workload's addresses become the pod's [`Enrolled::ips`].
//!
//! Resources are decoded by the node proxy's decoder ([`ambit_xds::wds`]), so both read a
//! resource the same way: one that does not decode (an address of the wrong length, say) is
//! left out and named with its field in the NACK; the rest of the update still applies.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use ambit_identity::TrustDomain;
use ambit_proto::envoy::config::core::v3::Node;
use ambit_xds::client::{
    BoxError, ClientConfig, ClientHandle, Handler, Subscription, Update, XdsClient, ztunnel_node,
};
use ambit_xds::wds::{Address, Protocol, Workload, decode_address};
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use super::{Enrolled, Enrollment, PodName};

/// Which node and cluster this agent serves.
#[derive(Clone, Debug)]
pub struct WdsEnrollmentConfig {
    /// Only workloads whose `node` is this one are enrolled here.
    pub node_name: String,
    /// The cluster part of workload uids (`Kubernetes` by default in Istio).
    pub cluster_id: String,
    /// The trust domain of workloads whose resource names none.
    pub trust_domain: TrustDomain,
}

/// Enrollment following WDS. Cheap to clone; every clone shares one view.
#[derive(Clone, Debug)]
pub struct WdsEnrollment {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: WdsEnrollmentConfig,
    view: Mutex<View>,
    version: watch::Sender<u64>,
}

/// Enrolled pods on this node, and which resource enrolled each.
#[derive(Debug, Default)]
struct View {
    by_resource: HashMap<String, PodName>,
    pods: BTreeMap<PodName, Enrolled>,
    /// An initial update has been applied: the view is the control plane's whole picture.
    synced: bool,
}

impl WdsEnrollment {
    pub fn new(config: WdsEnrollmentConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                view: Mutex::default(),
                version: watch::Sender::new(0),
            }),
        }
    }

    /// Starts a delta-ADS client on `channel` that subscribes to every address and feeds this
    /// view, sending `bearer_token()` (asked on every connect) as `authorization: Bearer …`
    /// when it returns one. The client reconnects on its own; dropping every returned handle
    /// stops it.
    pub fn start(
        &self,
        channel: Channel,
        bearer_token: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> ClientHandle {
        let config = ClientConfig::new(self.node())
            .subscribe(ambit_proto::ADDRESS_TYPE_URL, Subscription::Wildcard);
        let connect = move || std::future::ready(Ok::<_, BoxError>(channel.clone()));
        XdsClient::new(connect, config, self.clone())
            .with_bearer_token(bearer_token)
            .start()
    }

    /// The xDS `Node`, shaped like a ztunnel's: a stock istiod serves WDS only to that type.
    fn node(&self) -> Node {
        let config = &self.inner.config;
        let pod_name = format!("ambit-cni-{}", config.node_name);
        ztunnel_node(&pod_name, &config.node_name, &config.cluster_id)
    }

    /// The pod a workload enrolls on this node, if it does.
    fn enrolls(&self, workload: &Workload) -> Option<(PodName, Enrolled)> {
        let config = &self.inner.config;
        if workload.node != config.node_name || workload.protocol != Protocol::Hbone {
            return None;
        }
        let prefix = format!("{}//Pod/", config.cluster_id);
        let pod = match workload
            .uid
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once('/'))
        {
            Some((namespace, name)) => PodName::new(namespace, name),
            None if !workload.namespace.is_empty() && !workload.name.is_empty() => {
                PodName::new(&workload.namespace, &workload.name)
            }
            None => return None,
        };
        let enrolled = Enrolled {
            service_account: workload.identity.service_account().to_owned(),
            ips: workload.addresses.clone(),
        };
        Some((pod, enrolled))
    }

    fn apply(&self, update: Update) -> Result<(), String> {
        let mut errors = Vec::new();
        let mut view = self
            .inner
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = view.pods.clone();
        let was_synced = view.synced;
        let initial = update.initial;
        let td = &self.inner.config.trust_domain;
        for resource in update.upserts {
            let workload = match decode_address(&resource, td) {
                Ok(Address::Workload(w)) => Some(w),
                Ok(Address::Service(_)) => None,
                Err(rejected) => {
                    errors.push(rejected.to_string());
                    continue;
                }
            };
            view.remove(&resource.name);
            if let Some((pod, enrolled)) = workload.as_ref().and_then(|w| self.enrolls(w)) {
                view.by_resource.insert(resource.name, pod.clone());
                view.pods.insert(pod, enrolled);
            }
        }
        for name in update.removals {
            view.remove(&name);
        }
        if errors.is_empty() && initial {
            view.synced = true;
        }
        if view.pods != before || view.synced != was_synced {
            debug!(
                enrolled = view.pods.len(),
                synced = view.synced,
                "WDS enrollment changed"
            );
            self.inner.version.send_modify(|v| *v += 1);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            let message = errors.join("; ");
            warn!(error = %message, "rejected WDS resources");
            Err(message)
        }
    }
}

impl View {
    fn remove(&mut self, resource: &str) {
        if let Some(pod) = self.by_resource.remove(resource) {
            self.pods.remove(&pod);
        }
    }
}

impl Enrollment for WdsEnrollment {
    fn enrolled(&self, pod: &PodName) -> Option<Enrolled> {
        let view = self
            .inner
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        view.pods.get(pod).cloned()
    }

    fn enrolled_pods(&self) -> Vec<(PodName, Enrolled)> {
        let view = self
            .inner
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        view.pods
            .iter()
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    fn synced(&self) -> bool {
        let view = self
            .inner
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        view.synced
    }
}

impl Handler for WdsEnrollment {
    fn handle(&self, type_url: &str, update: Update) -> Result<(), String> {
        match type_url {
            ambit_proto::ADDRESS_TYPE_URL => self.apply(update),
            other => Err(format!("unexpected type {other}")),
        }
    }

    fn on_connection_state(&self, connected: bool) {
        if connected {
            info!("connected to the control plane");
        } else {
            warn!("lost the control plane; keeping the last known enrollment");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::IpAddr;

    use ambit_proto::workload::{self as pb, TunnelProtocol, Workload, address};
    use ambit_xds::Resource;
    use prost::Message;

    use super::*;

    fn enrollment() -> WdsEnrollment {
        WdsEnrollment::new(WdsEnrollmentConfig {
            node_name: "node-a".into(),
            cluster_id: "Kubernetes".into(),
            trust_domain: TrustDomain::new("cluster.local").unwrap(),
        })
    }

    fn resource(name: &str, w: Workload) -> Resource {
        let body = pb::Address {
            r#type: Some(address::Type::Workload(w)),
        };
        Resource::new(
            name,
            prost_types::Any {
                type_url: ambit_proto::ADDRESS_TYPE_URL.into(),
                value: body.encode_to_vec(),
            },
        )
    }

    fn workload(ns: &str, name: &str, node: &str, hbone: bool) -> Workload {
        Workload {
            uid: format!("Kubernetes//Pod/{ns}/{name}"),
            name: name.into(),
            namespace: ns.into(),
            node: node.into(),
            service_account: "sa".into(),
            tunnel_protocol: if hbone {
                TunnelProtocol::Hbone as i32
            } else {
                TunnelProtocol::None as i32
            },
            ..Workload::default()
        }
    }

    fn update(upserts: Vec<Resource>, removals: Vec<&str>) -> Update {
        Update {
            upserts,
            removals: removals.into_iter().map(String::from).collect(),
            initial: false,
        }
    }

    #[test]
    fn only_hbone_workloads_on_this_node_are_enrolled() {
        let e = enrollment();
        let changes = e.changes();
        let cases = [
            ("a", workload("ns", "a", "node-a", true), true),
            ("b", workload("ns", "b", "node-a", false), false),
            ("c", workload("ns", "c", "node-b", true), false),
        ];
        let upserts = cases
            .iter()
            .map(|(n, w, _)| resource(n, w.clone()))
            .collect();
        e.handle(ambit_proto::ADDRESS_TYPE_URL, update(upserts, vec![]))
            .unwrap();
        for (name, _, enrolled) in &cases {
            let got = e.enrolled(&PodName::new("ns", *name));
            assert_eq!(got.is_some(), *enrolled, "pod {name}");
        }
        assert_eq!(
            e.enrolled(&PodName::new("ns", "a"))
                .unwrap()
                .service_account,
            "sa"
        );
        assert!(changes.has_changed().unwrap());
        assert!(!e.synced(), "only an initial update completes the view");
    }

    #[test]
    fn enrolled_pods_carry_the_workload_addresses() {
        let e = enrollment();
        let mut w = workload("ns", "a", "node-a", true);
        w.addresses = vec![
            vec![10, 1, 2, 3],
            "fd00::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
                .to_vec(),
        ];
        e.handle(
            ambit_proto::ADDRESS_TYPE_URL,
            update(vec![resource("a", w.clone())], vec![]),
        )
        .unwrap();
        let ips: Vec<IpAddr> = vec!["10.1.2.3".parse().unwrap(), "fd00::7".parse().unwrap()];
        assert_eq!(e.enrolled(&PodName::new("ns", "a")).unwrap().ips, ips);
        let all = e.enrolled_pods();
        assert_eq!(all.len(), 1);
        assert_eq!(
            (all[0].0.clone(), all[0].1.ips.clone()),
            (PodName::new("ns", "a"), ips.clone())
        );

        // An address of a length WDS does not have rejects the whole resource, naming it and
        // the field, exactly as the node proxy does: never a silently shorter address list.
        w.addresses.push(vec![1, 2, 3]);
        let err = e
            .handle(
                ambit_proto::ADDRESS_TYPE_URL,
                update(vec![resource("a", w)], vec![]),
            )
            .unwrap_err();
        assert!(
            err.starts_with("a: address 2 is 3 bytes long") && err.contains("field `addresses`"),
            "{err}"
        );
        assert_eq!(
            e.enrolled(&PodName::new("ns", "a")).unwrap().ips,
            ips,
            "the rejected resource changed nothing"
        );
    }

    #[test]
    fn an_accepted_initial_update_completes_the_view() {
        let e = enrollment();
        let mut initial = update(
            vec![resource("a", workload("ns", "a", "node-a", true))],
            vec![],
        );
        initial.initial = true;
        e.handle(ambit_proto::ADDRESS_TYPE_URL, initial).unwrap();
        assert!(e.synced());
    }

    #[test]
    fn a_workload_losing_hbone_or_removed_is_unenrolled() {
        let e = enrollment();
        let pod = PodName::new("ns", "a");
        let upsert = |hbone| {
            update(
                vec![resource("a", workload("ns", "a", "node-a", hbone))],
                vec![],
            )
        };
        e.handle(ambit_proto::ADDRESS_TYPE_URL, upsert(true))
            .unwrap();
        assert!(e.enrolled(&pod).is_some());
        e.handle(ambit_proto::ADDRESS_TYPE_URL, upsert(false))
            .unwrap();
        assert!(e.enrolled(&pod).is_none());
        e.handle(ambit_proto::ADDRESS_TYPE_URL, upsert(true))
            .unwrap();
        e.handle(ambit_proto::ADDRESS_TYPE_URL, update(vec![], vec!["a"]))
            .unwrap();
        assert!(e.enrolled(&pod).is_none());
    }

    #[test]
    fn a_uid_of_another_shape_falls_back_to_namespace_and_name() {
        let e = enrollment();
        let mut w = workload("ns", "a", "node-a", true);
        w.uid = "opaque-123".into();
        e.handle(
            ambit_proto::ADDRESS_TYPE_URL,
            update(vec![resource("x", w)], vec![]),
        )
        .unwrap();
        assert!(e.enrolled(&PodName::new("ns", "a")).is_some());
    }

    #[test]
    fn a_bad_resource_is_nacked_and_the_rest_applies() {
        let e = enrollment();
        let garbage = Resource::new(
            "garbage",
            prost_types::Any {
                type_url: ambit_proto::ADDRESS_TYPE_URL.into(),
                value: vec![0xff, 0xff, 0xff],
            },
        );
        let good = resource("a", workload("ns", "a", "node-a", true));
        let err = e
            .handle(
                ambit_proto::ADDRESS_TYPE_URL,
                update(vec![garbage, good], vec![]),
            )
            .unwrap_err();
        assert!(err.contains("garbage"), "{err}");
        assert!(e.enrolled(&PodName::new("ns", "a")).is_some());
    }
}
