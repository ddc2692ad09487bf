//! Publishes the mesh root as ConfigMap [`ROOT_CERT_CONFIGMAP`] (key [`ROOT_CERT_KEY`]) in
//! every namespace, as istiod's namespace controller does: node proxies and capture agents mount
//! it to verify the control plane.
//!
//! Two watches, of Namespaces and of ConfigMaps named [`ROOT_CERT_CONFIGMAP`], feed caches and a
//! queue of namespaces to reconcile. Reconciling a namespace creates the ConfigMap when it is
//! missing (a new namespace, or the ConfigMap was deleted) and puts the root back when its
//! `root-cert.pem` differs (it was edited), keeping any other keys. Nothing happens before both
//! caches have synced, so a ConfigMap is never created only because its event had not arrived.
//!
//! As istiod: namespaces in [`IGNORED_NAMESPACES`] and terminating namespaces are skipped;
//! creating into a namespace that is going away is not an error. A failed reconcile is retried
//! with backoff for that namespace alone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The ConfigMap holding the root in each namespace.
pub const ROOT_CERT_CONFIGMAP: &str = "istio-ca-root-cert";
/// Its data key.
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// The label istiod puts on it.
pub const CONFIG_LABEL: (&str, &str) = ("istio.io/config", "true");
/// Namespaces that never get the ConfigMap: istiod's ignored system namespaces, except
/// `kube-system` (a node proxy may run there).
pub const IGNORED_NAMESPACES: [&str; 3] = ["kube-public", "kube-node-lease", "local-path-storage"];

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Keeps the ConfigMap in every namespace until the client fails permanently.
pub async fn run(client: kube::Client, root_pem: String) {
    let (namespaces, ns_writer) = reflector::store::<Namespace>();
    let (configmaps, cm_writer) = reflector::store::<ConfigMap>();
    let ns_events = reflector::reflector(
        ns_writer,
        watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .boxed();
    let by_name = format!("metadata.name={ROOT_CERT_CONFIGMAP}");
    let cm_events = reflector::reflector(
        cm_writer,
        watcher(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default().fields(&by_name),
        ),
    )
    .default_backoff()
    .boxed();
    let mut publisher = Publisher {
        client,
        root_pem,
        namespaces,
        configmaps,
        queue: BTreeSet::new(),
        retries: BTreeMap::new(),
    };
    publisher.run(ns_events, cm_events).await;
}

struct Publisher {
    client: kube::Client,
    root_pem: String,
    namespaces: Store<Namespace>,
    configmaps: Store<ConfigMap>,
    /// Namespaces to reconcile now.
    queue: BTreeSet<String>,
    /// Namespaces whose last reconcile failed: when to try again, and the delay after that.
    retries: BTreeMap<String, (Instant, Duration)>,
}

type Events<K> =
    futures_util::stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;

impl Publisher {
    async fn run(&mut self, mut ns_events: Events<Namespace>, mut cm_events: Events<ConfigMap>) {
        let (mut ns_synced, mut cm_synced) = (false, false);
        let mut announced = false;
        loop {
            let next_retry = self.retries.values().map(|(at, _)| *at).min();
            tokio::select! {
                event = ns_events.next() => match event {
                    None => return,
                    Some(Ok(event)) => {
                        ns_synced |= matches!(event, watcher::Event::InitDone);
                        if let watcher::Event::Apply(ns) | watcher::Event::InitApply(ns) = event
                            && let Some(name) = ns.metadata.name
                        {
                            self.queue.insert(name);
                        }
                    }
                    Some(Err(e)) => warn!(error = %e, "namespace watch failed; retrying"),
                },
                event = cm_events.next() => match event {
                    None => return,
                    Some(Ok(event)) => {
                        cm_synced |= matches!(event, watcher::Event::InitDone);
                        if let watcher::Event::Apply(cm)
                            | watcher::Event::InitApply(cm)
                            | watcher::Event::Delete(cm) = event
                            && let Some(ns) = cm.metadata.namespace
                        {
                            self.queue.insert(ns);
                        }
                    }
                    Some(Err(e)) => warn!(error = %e, "{ROOT_CERT_CONFIGMAP} watch failed; retrying"),
                },
                () = sleep_until(next_retry) => {
                    let now = Instant::now();
                    let due: Vec<String> = self
                        .retries
                        .iter()
                        .filter(|(_, (at, _))| *at <= now)
                        .map(|(ns, _)| ns.clone())
                        .collect();
                    self.queue.extend(due);
                }
            }
            if !(ns_synced && cm_synced) {
                continue;
            }
            if !announced {
                announced = true;
                info!(
                    namespaces = self.namespaces.state().len(),
                    "publishing the root as ConfigMap {ROOT_CERT_CONFIGMAP} in every namespace"
                );
            }
            while let Some(ns) = self.queue.pop_first() {
                match self.reconcile(&ns).await {
                    Ok(()) => {
                        self.retries.remove(&ns);
                    }
                    Err(why) => {
                        let delay = self
                            .retries
                            .get(&ns)
                            .map_or(RETRY_FIRST, |(_, d)| (*d * 2).min(RETRY_MAX));
                        warn!(namespace = %ns, error = %why, retry_in = ?delay, "cannot publish the root");
                        self.retries.insert(ns, (Instant::now() + delay, delay));
                    }
                }
            }
        }
    }

    /// Makes the namespace's ConfigMap hold the root, from the caches' view.
    async fn reconcile(&self, ns: &str) -> Result<(), String> {
        let Some(namespace) = self.namespaces.get(&ObjectRef::new(ns)) else {
            return Ok(()); // gone
        };
        if !wanted_in(&namespace) {
            return Ok(());
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let current = self
            .configmaps
            .get(&ObjectRef::new(ROOT_CERT_CONFIGMAP).within(ns));
        match current {
            None => match api.create(&PostParams::default(), &self.fresh(ns)).await {
                Ok(_) => {
                    debug!(namespace = %ns, "created {ROOT_CERT_CONFIGMAP}");
                    Ok(())
                }
                // The cache lags our own or another replica's create; its event requeues.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                // The namespace is gone or going: nothing to publish into.
                Err(kube::Error::Api(s))
                    if s.code == 404
                        || (s.code == 403 && s.message.contains("being terminated")) =>
                {
                    Ok(())
                }
                Err(e) => Err(format!(
                    "cannot create ConfigMap {ns}/{ROOT_CERT_CONFIGMAP}: {e}"
                )),
            },
            Some(cm) if holds_root(&cm, &self.root_pem) => Ok(()),
            Some(cm) => {
                let mut restored = (*cm).clone();
                restored
                    .data
                    .get_or_insert_with(BTreeMap::new)
                    .insert(ROOT_CERT_KEY.to_owned(), self.root_pem.clone());
                // The cached resourceVersion makes this a compare-and-swap: a newer edit makes it
                // fail with 409, and the edit's event brings this namespace back.
                match api
                    .replace(ROOT_CERT_CONFIGMAP, &PostParams::default(), &restored)
                    .await
                {
                    Ok(_) => {
                        info!(namespace = %ns, "restored the root in {ROOT_CERT_CONFIGMAP}");
                        Ok(())
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                    Err(e) => Err(format!(
                        "cannot update ConfigMap {ns}/{ROOT_CERT_CONFIGMAP}: {e}"
                    )),
                }
            }
        }
    }

    fn fresh(&self, ns: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(ROOT_CERT_CONFIGMAP.to_owned()),
                namespace: Some(ns.to_owned()),
                labels: Some(BTreeMap::from([(
                    CONFIG_LABEL.0.to_owned(),
                    CONFIG_LABEL.1.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                ROOT_CERT_KEY.to_owned(),
                self.root_pem.clone(),
            )])),
            ..ConfigMap::default()
        }
    }
}

/// Whether a namespace gets the ConfigMap: not ignored, not terminating.
pub fn wanted_in(namespace: &Namespace) -> bool {
    let name = namespace.metadata.name.as_deref().unwrap_or_default();
    let terminating = namespace
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Terminating")
        || namespace.metadata.deletion_timestamp.is_some();
    !name.is_empty() && !IGNORED_NAMESPACES.contains(&name) && !terminating
}

fn holds_root(cm: &ConfigMap, root_pem: &str) -> bool {
    cm.data
        .as_ref()
        .and_then(|d| d.get(ROOT_CERT_KEY))
        .is_some_and(|v| v == root_pem)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(name: &str, phase: Option<&str>) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            status: phase.map(|p| k8s_openapi::api::core::v1::NamespaceStatus {
                phase: Some(p.to_owned()),
                ..Default::default()
            }),
            ..Namespace::default()
        }
    }

    #[test]
    fn system_and_terminating_namespaces_are_skipped_as_istiod_does() {
        assert!(wanted_in(&namespace("default", Some("Active"))));
        assert!(
            wanted_in(&namespace("kube-system", None)),
            "kube-system is kept"
        );
        for skipped in IGNORED_NAMESPACES {
            assert!(!wanted_in(&namespace(skipped, None)), "{skipped}");
        }
        assert!(!wanted_in(&namespace("leaving", Some("Terminating"))));
    }

    #[test]
    fn only_the_root_key_is_compared() {
        let mut cm = ConfigMap {
            data: Some(BTreeMap::from([
                (ROOT_CERT_KEY.to_owned(), "ROOT".to_owned()),
                ("other".to_owned(), "x".to_owned()),
            ])),
            ..ConfigMap::default()
        };
        assert!(holds_root(&cm, "ROOT"));
        assert!(!holds_root(&cm, "NEW"));
        cm.data = None;
        assert!(!holds_root(&cm, "ROOT"));
    }
}
