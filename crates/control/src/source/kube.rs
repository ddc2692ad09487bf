//! The Kubernetes API as the source of truth.
//!
//! One watcher per kind the mesh reads. Every object arrives as JSON and is typed by
//! [`Object::from_value`] — the same path a manifest file takes — so a cluster and a directory
//! feed the translation identically. A watcher's re-list (`Init` … `InitDone`) replaces that
//! kind's objects as one change, so objects deleted while the watch was down disappear too.

use std::collections::BTreeSet;

use ambit_model::{Kind, Object, ObjectKey};
use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use tracing::{debug, info, warn};

use crate::SharedState;
use crate::readiness::Readiness;

/// Watches every kind the mesh reads and mirrors it into `state`. Runs until the client fails
/// permanently; transient errors are retried with backoff by the watchers, resuming from the
/// last resource version they saw (a re-list only when the API server no longer has it). Each
/// kind's [`precondition`] is marked done in `readiness` once its first full list has been
/// applied; until then its last watch error is recorded there.
pub async fn run(client: kube::Client, state: SharedState, readiness: Readiness) {
    let mut tasks = tokio::task::JoinSet::new();
    for kind in Kind::ALL {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource(kind));
        let (state, readiness) = (state.clone(), readiness.clone());
        tasks.spawn(async move {
            let precondition = precondition(kind);
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            let mut mirror = KindMirror::new(kind);
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        let done = matches!(event, watcher::Event::InitDone);
                        mirror.handle(&state, map_event(event));
                        if done {
                            readiness.done(&precondition);
                        }
                    }
                    Err(e) => {
                        warn!(%kind, error = %e, "watch failed; retrying");
                        readiness.failing(&precondition, e.to_string());
                    }
                }
            }
        });
    }
    info!("watching the Kubernetes API");
    while tasks.join_next().await.is_some() {}
}

/// The start-up precondition of a kind: its first full list, named by its resource
/// (`pods`, `authorizationpolicies.security.istio.io`).
pub fn precondition(kind: Kind) -> String {
    let resource = api_resource(kind);
    if resource.group.is_empty() {
        format!("the first list of {}", resource.plural)
    } else {
        format!("the first list of {}.{}", resource.plural, resource.group)
    }
}

/// The API resource of a kind (group, version, plural).
pub fn api_resource(kind: Kind) -> ApiResource {
    let (group, version, name, plural) = match kind {
        Kind::Namespace => ("", "v1", "Namespace", "namespaces"),
        Kind::Pod => ("", "v1", "Pod", "pods"),
        Kind::Service => ("", "v1", "Service", "services"),
        Kind::ServiceAccount => ("", "v1", "ServiceAccount", "serviceaccounts"),
        Kind::EndpointSlice => ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
        Kind::AuthorizationPolicy => (
            "security.istio.io",
            "v1",
            "AuthorizationPolicy",
            "authorizationpolicies",
        ),
        Kind::PeerAuthentication => (
            "security.istio.io",
            "v1",
            "PeerAuthentication",
            "peerauthentications",
        ),
        _ => ("", "v1", "Unknown", "unknown"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, name), plural)
}

fn map_event(event: watcher::Event<DynamicObject>) -> watcher::Event<Value> {
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(to_value(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(to_value(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(to_value(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Watch lists omit `apiVersion`/`kind` on items; the watcher knows them, so put them back.
fn to_value(object: DynamicObject) -> Value {
    serde_json::to_value(object).unwrap_or(Value::Null)
}

/// Applies one kind's watch events to the shared state.
#[derive(Debug)]
pub struct KindMirror {
    kind: Kind,
    /// Objects listed since the last `Init`, applied together on `InitDone`.
    relist: Option<Vec<Object>>,
}

impl KindMirror {
    pub fn new(kind: Kind) -> Self {
        Self { kind, relist: None }
    }

    pub fn handle(&mut self, state: &SharedState, event: watcher::Event<Value>) {
        match event {
            watcher::Event::Init => self.relist = Some(Vec::new()),
            watcher::Event::InitApply(value) => {
                if let Some(object) = self.typed(value) {
                    self.relist.get_or_insert_with(Vec::new).push(object);
                }
            }
            watcher::Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                let keep: BTreeSet<ObjectKey> =
                    listed.iter().filter_map(|o| o.key().ok()).collect();
                let kind = self.kind;
                let changed = state.update(|cluster| {
                    let stale: Vec<ObjectKey> = cluster
                        .keys()
                        .into_iter()
                        .filter(|k| k.kind == kind && !keep.contains(k))
                        .collect();
                    let mut changed = false;
                    for key in &stale {
                        changed |= cluster.delete(key);
                    }
                    for object in listed {
                        changed |= cluster.apply(object).unwrap_or(false);
                    }
                    changed
                });
                debug!(%kind, changed, "listed");
            }
            watcher::Event::Apply(value) => {
                if let Some(object) = self.typed(value) {
                    state.update(|cluster| cluster.apply(object).unwrap_or(false));
                }
            }
            watcher::Event::Delete(value) => {
                if let Some(key) = self.typed(value).and_then(|o| o.key().ok()) {
                    state.update(|cluster| cluster.delete(&key));
                }
            }
        }
    }

    /// Types an object from the API, reporting (not applying) one that does not fit.
    fn typed(&self, mut value: Value) -> Option<Object> {
        let resource = api_resource(self.kind);
        if let Value::Object(map) = &mut value {
            map.insert(
                "apiVersion".to_owned(),
                Value::String(resource.api_version.clone()),
            );
            map.insert("kind".to_owned(), Value::String(resource.kind.clone()));
        }
        match Object::from_value(value) {
            Ok(object) => Some(object),
            Err(e) => {
                warn!(kind = %self.kind, error = %e, "object from the API server ignored");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
