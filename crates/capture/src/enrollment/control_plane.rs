//! Enrollment from the control plane: Ambit's `ambit.capture.PodEnrollment` resources on the
//! delta-ADS stream that also carries WDS.
//!
//! The control plane describes every pod from the moment its object exists, before it has an
//! IP, with its enrollment decision (Istio's label rules, applied once, in the control plane):
//! that is what the agent needs at CNI ADD, where a pod has no IP in the API server yet. WDS
//! cannot serve here: the control plane marks a workload HBONE only once the agent captured the
//! pod and marked it (`ambient.istio.io/redirection: enabled`), so following it would wait for
//! itself.
//!
//! Only pods on this node are kept. [`Enrollment::decide`] answers for a pod's ADD: enrolled
//! (with its service account), not enrolled (with the reason, e.g. the opt-out label), or not
//! known yet: no resource for the pod, or one whose uid names an earlier pod of the same name.
//! A resource that does not decode is left out and named in the NACK; the rest of the update
//! still applies.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use ambit_proto::capture::PodEnrollment;
use ambit_proto::envoy::config::core::v3::Node;
use ambit_xds::client::{
    BoxError, ClientConfig, ClientHandle, Handler, Subscription, Update, XdsClient, ztunnel_node,
};
use ambit_xds::wds::ip_from_bytes;
use prost::Message;
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use super::{Decision, Enrolled, Enrollment, PodName};

/// Which node this agent serves.
#[derive(Clone, Debug)]
pub struct ControlPlaneEnrollmentConfig {
    /// Only pods whose `spec.nodeName` is this one are decided here.
    pub node_name: String,
    /// The cluster id sent in the xDS node (`Kubernetes` by default in Istio).
    pub cluster_id: String,
}

/// Enrollment following the control plane. Cheap to clone; every clone shares one view.
#[derive(Clone, Debug)]
pub struct ControlPlaneEnrollment {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ControlPlaneEnrollmentConfig,
    view: Mutex<View>,
    version: watch::Sender<u64>,
}

/// One pod of this node as the control plane described it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Known {
    uid: String,
    /// `Some` when enrolled.
    enrolled: Option<Enrolled>,
    reason: String,
}

/// The pods on this node, and which resource described each.
#[derive(Debug, Default)]
struct View {
    by_resource: HashMap<String, PodName>,
    pods: BTreeMap<PodName, Known>,
    /// An initial update has been applied: the view is the control plane's whole picture.
    synced: bool,
}

impl ControlPlaneEnrollment {
    pub fn new(config: ControlPlaneEnrollmentConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                view: Mutex::default(),
                version: watch::Sender::new(0),
            }),
        }
    }

    /// Starts a delta-ADS client on `channel` that subscribes to every pod resource and feeds
    /// this view, sending `bearer_token()` (asked on every connect) as `authorization: Bearer …`
    /// when it returns one. The client reconnects on its own; dropping every returned handle
    /// stops it.
    pub fn start(
        &self,
        channel: Channel,
        bearer_token: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> ClientHandle {
        let config = ClientConfig::new(self.node())
            .subscribe(ambit_proto::POD_ENROLLMENT_TYPE_URL, Subscription::Wildcard);
        let connect = move || std::future::ready(Ok::<_, BoxError>(channel.clone()));
        XdsClient::new(connect, config, self.clone())
            .with_bearer_token(bearer_token)
            .start()
    }

    /// The xDS `Node`, shaped like a ztunnel's, as the node proxy's.
    fn node(&self) -> Node {
        let config = &self.inner.config;
        let pod_name = format!("ambit-cni-{}", config.node_name);
        ztunnel_node(&pod_name, &config.node_name, &config.cluster_id)
    }

    /// The pod a resource describes on this node, if it does.
    fn known(&self, message: &PodEnrollment) -> Result<Option<(PodName, Known)>, String> {
        if message.node != self.inner.config.node_name {
            return Ok(None);
        }
        if message.namespace.is_empty() || message.name.is_empty() {
            return Err("field `namespace` or `name` is empty".to_owned());
        }
        let mut ips: Vec<IpAddr> = Vec::with_capacity(message.addresses.len());
        for (i, bytes) in message.addresses.iter().enumerate() {
            let ip = ip_from_bytes(bytes).ok_or_else(|| {
                format!(
                    "address {i} is {} bytes long (field `addresses`)",
                    bytes.len()
                )
            })?;
            ips.push(ip);
        }
        let enrolled = message.enrolled.then(|| Enrolled {
            service_account: message.service_account.clone(),
            ips,
        });
        let known = Known {
            uid: message.uid.clone(),
            enrolled,
            reason: message.reason.clone(),
        };
        Ok(Some((
            PodName::new(&message.namespace, &message.name),
            known,
        )))
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
        for resource in update.upserts {
            let decoded = PodEnrollment::decode(resource.body.value.as_slice())
                .map_err(|e| format!("not a PodEnrollment: {e}"))
                .and_then(|m| self.known(&m));
            let pod = match decoded {
                Ok(pod) => pod,
                Err(e) => {
                    errors.push(format!("{}: {e}", resource.name));
                    continue;
                }
            };
            view.remove(&resource.name);
            if let Some((name, known)) = pod {
                view.by_resource.insert(resource.name, name.clone());
                view.pods.insert(name, known);
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
                pods = view.pods.len(),
                synced = view.synced,
                "pod enrollment changed"
            );
            self.inner.version.send_modify(|v| *v += 1);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            let message = errors.join("; ");
            warn!(error = %message, "rejected pod enrollment resources");
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

impl Enrollment for ControlPlaneEnrollment {
    fn enrolled(&self, pod: &PodName) -> Option<Enrolled> {
        let view = self
            .inner
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        view.pods.get(pod).and_then(|k| k.enrolled.clone())
    }

    fn decide(&self, pod: &PodName, uid: Option<&str>) -> Decision {
        let view = self
            .inner
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(known) = view.pods.get(pod) else {
            return Decision::Unknown(format!(
                "the control plane has described no pod {pod} on node {} yet",
                self.inner.config.node_name
            ));
        };
        if let Some(uid) = uid.filter(|u| !u.is_empty())
            && !known.uid.is_empty()
            && known.uid != uid
        {
            return Decision::Unknown(format!(
                "the control plane knows pod {pod} with uid {}, not {uid} (an earlier pod of that name)",
                known.uid
            ));
        }
        match &known.enrolled {
            Some(enrolled) => Decision::Enrolled(enrolled.clone()),
            None => Decision::NotEnrolled(known.reason.clone()),
        }
    }

    fn enrolled_pods(&self) -> Vec<(PodName, Enrolled)> {
        let view = self
            .inner
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        view.pods
            .iter()
            .filter_map(|(n, k)| Some((n.clone(), k.enrolled.clone()?)))
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

impl Handler for ControlPlaneEnrollment {
    fn handle(&self, type_url: &str, update: Update) -> Result<(), String> {
        match type_url {
            ambit_proto::POD_ENROLLMENT_TYPE_URL => self.apply(update),
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
    use ambit_xds::Resource;

    use super::*;

    fn enrollment() -> ControlPlaneEnrollment {
        ControlPlaneEnrollment::new(ControlPlaneEnrollmentConfig {
            node_name: "node-a".into(),
            cluster_id: "Kubernetes".into(),
        })
    }

    fn pod(name: &str, node: &str, enrolled: bool) -> PodEnrollment {
        PodEnrollment {
            uid: format!("uid-{name}"),
            namespace: "ns".into(),
            name: name.into(),
            node: node.into(),
            service_account: "sa".into(),
            enrolled,
            reason: if enrolled {
                "namespace label istio.io/dataplane-mode=ambient".into()
            } else {
                "pod label istio.io/dataplane-mode=none".into()
            },
            addresses: vec![],
        }
    }

    fn resource(m: &PodEnrollment) -> Resource {
        Resource::new(
            format!("{}/{}", m.namespace, m.name),
            prost_types::Any {
                type_url: ambit_proto::POD_ENROLLMENT_TYPE_URL.into(),
                value: m.encode_to_vec(),
            },
        )
    }

    fn update(upserts: Vec<Resource>, removals: Vec<&str>, initial: bool) -> Update {
        Update {
            upserts,
            removals: removals.into_iter().map(String::from).collect(),
            initial,
        }
    }

    fn handle(e: &ControlPlaneEnrollment, u: Update) -> Result<(), String> {
        e.handle(ambit_proto::POD_ENROLLMENT_TYPE_URL, u)
    }

    #[test]
    fn decides_pods_of_this_node_and_does_not_know_the_rest() {
        let e = enrollment();
        let upserts = vec![
            resource(&pod("in", "node-a", true)),
            resource(&pod("out", "node-a", false)),
            resource(&pod("elsewhere", "node-b", true)),
        ];
        handle(&e, update(upserts, vec![], true)).unwrap();
        assert!(e.synced());
        let name = |n: &str| PodName::new("ns", n);
        match e.decide(&name("in"), Some("uid-in")) {
            Decision::Enrolled(en) => assert_eq!(en.service_account, "sa"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            e.decide(&name("out"), Some("uid-out")),
            Decision::NotEnrolled("pod label istio.io/dataplane-mode=none".into())
        );
        assert!(matches!(
            e.decide(&name("elsewhere"), None),
            Decision::Unknown(why) if why.contains("no pod ns/elsewhere on node node-a")
        ));
        assert!(e.enrolled(&name("in")).is_some() && e.enrolled(&name("out")).is_none());
        assert_eq!(e.enrolled_pods().len(), 1);
    }

    #[test]
    fn a_resource_of_an_earlier_pod_with_the_same_name_decides_nothing() {
        let e = enrollment();
        handle(
            &e,
            update(vec![resource(&pod("web", "node-a", true))], vec![], true),
        )
        .unwrap();
        let web = PodName::new("ns", "web");
        assert!(matches!(
            e.decide(&web, Some("uid-new")),
            Decision::Unknown(why) if why.contains("uid uid-web, not uid-new")
        ));
        assert!(matches!(e.decide(&web, None), Decision::Enrolled(_)));
        handle(&e, update(vec![], vec!["ns/web"], false)).unwrap();
        assert!(matches!(e.decide(&web, None), Decision::Unknown(_)));
    }

    #[test]
    fn a_bad_resource_is_nacked_by_name_and_the_rest_applies() {
        let e = enrollment();
        let mut bad = pod("bad", "node-a", true);
        bad.addresses = vec![vec![1, 2, 3]];
        let err = handle(
            &e,
            update(
                vec![resource(&bad), resource(&pod("good", "node-a", true))],
                vec![],
                true,
            ),
        )
        .unwrap_err();
        assert!(
            err.contains("ns/bad: address 0 is 3 bytes long (field `addresses`)"),
            "{err}"
        );
        assert!(e.enrolled(&PodName::new("ns", "good")).is_some());
        assert!(
            !e.synced(),
            "a rejected initial update does not complete the view"
        );
    }
}
