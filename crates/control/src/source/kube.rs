//! The Kubernetes API as the source of truth, and TokenReview authentication.
//!
//! One watcher per kind the mesh reads. Every object arrives as JSON and is typed by
//! [`Object::from_value`] — the same path a manifest file takes — so a cluster and a directory
//! feed the translation identically. A watcher's re-list (`Init` … `InitDone`) replaces that
//! kind's objects as one change, so objects deleted while the watch was down disappear too.

use std::collections::BTreeSet;

use ambit_identity::{SpiffeId, TrustDomain};
use ambit_model::{Kind, Object, ObjectKey};
use futures_util::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use tracing::{debug, info, warn};

use crate::SharedState;
use crate::auth::{AuthError, Authenticator, BoxFuture, Caller};

/// Watches every kind the mesh reads and mirrors it into `state`. Runs until the client fails
/// permanently; transient errors are retried with backoff by the watchers. Each kind is sent on
/// `listed` once its first full list has been applied.
pub async fn run(
    client: kube::Client,
    state: SharedState,
    listed: tokio::sync::mpsc::Sender<Kind>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for kind in Kind::ALL {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource(kind));
        let (state, listed) = (state.clone(), listed.clone());
        tasks.spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            let mut mirror = KindMirror::new(kind);
            let mut announced = false;
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        let done = matches!(event, watcher::Event::InitDone);
                        mirror.handle(&state, map_event(event));
                        if done && !announced {
                            announced = true;
                            let _ = listed.send(kind).await;
                        }
                    }
                    Err(e) => warn!(%kind, error = %e, "watch failed; retrying"),
                }
            }
        });
    }
    info!("watching the Kubernetes API");
    while tasks.join_next().await.is_some() {}
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

// === TokenReview ===

/// Authenticates callers by their service-account token through the Kubernetes TokenReview
/// API, with audience `istio-ca` as istiod uses.
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    client: kube::Client,
    state: SharedState,
    trust_domain: TrustDomain,
    /// `(namespace, service account)` of node proxies.
    node_proxy_account: (String, String),
}

impl std::fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .field("node_proxy_account", &self.node_proxy_account)
            .finish_non_exhaustive()
    }
}

/// The audience node proxies' tokens are minted for.
pub const CA_AUDIENCE: &str = "istio-ca";

impl TokenReviewAuthenticator {
    pub fn new(client: kube::Client, state: SharedState, trust_domain: TrustDomain) -> Self {
        Self {
            client,
            state,
            trust_domain,
            node_proxy_account: ("istio-system".to_owned(), "ztunnel".to_owned()),
        }
    }

    async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![CA_AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(format!("TokenReview failed: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::Invalid(
                status
                    .error
                    .unwrap_or_else(|| "not authenticated".to_owned()),
            ));
        }
        let user = status.user.unwrap_or_default();
        let extra = user.extra.unwrap_or_default();
        let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
        caller_from_review(
            user.username.as_deref().unwrap_or_default(),
            first("authentication.kubernetes.io/node-name"),
            first("authentication.kubernetes.io/pod-name"),
            &self.node_proxy_account,
            &self.trust_domain,
            |ns, pod| {
                self.state.read(|s| {
                    s.pods
                        .get(&(ns.to_owned(), pod.to_owned()))
                        .and_then(|p| p.spec.as_ref()?.node_name.clone())
                })
            },
        )
    }
}

impl Authenticator for TokenReviewAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(self.review(token))
    }
}

/// Who a reviewed token belongs to: a node proxy (its node from the bound token, or from its
/// pod), or a workload identified by its service account.
pub fn caller_from_review(
    username: &str,
    node_name: Option<String>,
    pod_name: Option<String>,
    node_proxy_account: &(String, String),
    trust_domain: &TrustDomain,
    pod_node: impl Fn(&str, &str) -> Option<String>,
) -> Result<Caller, AuthError> {
    let Some(rest) = username.strip_prefix("system:serviceaccount:") else {
        return Err(AuthError::Invalid(format!(
            "{username:?} is not a service account"
        )));
    };
    let Some((namespace, account)) = rest.split_once(':') else {
        return Err(AuthError::Invalid(format!(
            "malformed service account user {username:?}"
        )));
    };
    if (namespace, account) == (node_proxy_account.0.as_str(), node_proxy_account.1.as_str()) {
        let node = node_name
            .or_else(|| pod_name.and_then(|pod| pod_node(namespace, &pod)))
            .ok_or_else(|| {
                AuthError::Invalid(
                    "node proxy token is not bound to a pod on a known node".to_owned(),
                )
            })?;
        return Ok(Caller::NodeProxy { node });
    }
    let identity = SpiffeId::new(trust_domain.clone(), namespace, account)
        .map_err(|e| AuthError::Invalid(format!("service account {namespace}/{account}: {e}")))?;
    Ok(Caller::Workload { identity })
}

#[cfg(test)]
mod tests;
