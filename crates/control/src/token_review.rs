//! Authentication of service-account tokens through the Kubernetes TokenReview API, as istiod
//! does it for audience `istio-ca`, and the bound pod behind each token.
//!
//! A node proxy and a capture agent present the projected token of their pod (TokenRequest,
//! audience [`CA_AUDIENCE`], bound to the pod). A token is accepted only when:
//! 1. the API server's TokenReview authenticates it for [`CA_AUDIENCE`] (this refuses expired
//!    tokens, tokens for another audience, and tokens whose bound object is gone);
//! 2. it is a service account's (`system:serviceaccount:<ns>:<name>` in group
//!    `system:serviceaccounts`);
//! 3. if it names a bound pod (`authentication.kubernetes.io/pod-name` and `pod-uid`), that pod
//!    exists in the control plane's watched view of the API server, has that uid, and runs as
//!    that service account.
//!
//! A node proxy (service account `istio-system/ztunnel`) must present a pod-bound token, and its
//! node is the bound pod's `spec.nodeName` as the watched view has it: never the token's own
//! `node-name` extra, which a token bound to a Node object could set to any node (the
//! security review's L6). Any other service account is a workload with its own identity only.
//!
//! Refusals of the token itself are [`AuthError::Refused`] (gRPC `PermissionDenied`) and say
//! why; failures to ask the API server are [`AuthError::Unavailable`].

use ambit_identity::{SpiffeId, TrustDomain};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use crate::SharedState;
use crate::auth::{AuthError, Authenticator, BoxFuture, Caller};

/// The audience node proxies' and capture agents' tokens are minted for.
pub const CA_AUDIENCE: &str = "istio-ca";
/// The group every service-account token's user is in.
pub const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";
/// Extras of a pod-bound token's user.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// What a successful TokenReview says about the token's user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reviewed {
    pub username: String,
    pub groups: Vec<String>,
    /// The bound pod's name and uid, when the token is bound to a pod.
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
}

/// The bound pod as the API server has it now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoundPod {
    pub uid: String,
    pub service_account: String,
    pub node_name: Option<String>,
}

/// Authenticates bearer tokens by TokenReview. See the [module docs](self).
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    client: kube::Client,
    /// The watched cluster: bound pods are looked up here (as istiod looks them up in its pod
    /// informer), so no request but the TokenReview reaches the API server per token.
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

impl TokenReviewAuthenticator {
    pub fn new(client: kube::Client, state: SharedState, trust_domain: TrustDomain) -> Self {
        Self {
            client,
            state,
            trust_domain,
            node_proxy_account: ("istio-system".to_owned(), "ztunnel".to_owned()),
        }
    }

    async fn authenticate_token(&self, token: &str) -> Result<Caller, AuthError> {
        let reviewed = self.review(token).await?;
        let account = service_account(&reviewed)?;
        let pod = match (&reviewed.pod_name, &reviewed.pod_uid) {
            (Some(name), Some(uid)) => Some(self.bound_pod(account.0, name, uid)?),
            _ => None,
        };
        caller_for(
            &reviewed,
            pod.as_ref(),
            &self.node_proxy_account,
            &self.trust_domain,
        )
    }

    async fn review(&self, token: &str) -> Result<Reviewed, AuthError> {
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
            let why = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "not authenticated".to_owned());
            return Err(AuthError::Refused(format!(
                "the API server's TokenReview (audience {CA_AUDIENCE}) did not accept the token: {why}"
            )));
        }
        let user = status.user.unwrap_or_default();
        let extra = user.extra.unwrap_or_default();
        let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
        Ok(Reviewed {
            username: user.username.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
            pod_name: first(POD_NAME_EXTRA),
            pod_uid: first(POD_UID_EXTRA),
        })
    }

    /// The pod `namespace/name` as the control plane's watch has it, checked against the
    /// token's `uid`.
    fn bound_pod(&self, namespace: &str, name: &str, uid: &str) -> Result<BoundPod, AuthError> {
        let found = self.state.read(|s| {
            let pod = s.pods.get(&(namespace.to_owned(), name.to_owned()))?;
            let spec = pod.spec.as_ref();
            Some(BoundPod {
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                service_account: spec
                    .and_then(|s| s.service_account_name.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "default".to_owned()),
                node_name: spec
                    .and_then(|s| s.node_name.clone())
                    .filter(|n| !n.is_empty()),
            })
        });
        let Some(found) = found else {
            return Err(AuthError::Refused(format!(
                "the pod {namespace}/{name} the token is bound to does not exist (as the control plane's watch of the API server has it)"
            )));
        };
        if found.uid != uid {
            return Err(AuthError::Refused(format!(
                "the token is bound to pod {namespace}/{name} with uid {uid}, but that pod now has uid {} (it was replaced)",
                found.uid
            )));
        }
        Ok(found)
    }
}

impl Authenticator for TokenReviewAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(self.authenticate_token(token))
    }
}

/// `(namespace, name)` of the reviewed user's service account.
pub fn service_account(reviewed: &Reviewed) -> Result<(&str, &str), AuthError> {
    let username = reviewed.username.as_str();
    let Some(rest) = username.strip_prefix("system:serviceaccount:") else {
        return Err(AuthError::Refused(format!(
            "{username:?} is not a service account"
        )));
    };
    let Some((namespace, account)) = rest.split_once(':') else {
        return Err(AuthError::Refused(format!(
            "malformed service account user {username:?}"
        )));
    };
    if namespace.is_empty() || account.is_empty() || account.contains(':') {
        return Err(AuthError::Refused(format!(
            "malformed service account user {username:?}"
        )));
    }
    if !reviewed.groups.iter().any(|g| g == SERVICE_ACCOUNTS_GROUP) {
        return Err(AuthError::Refused(format!(
            "{username:?} is not in group {SERVICE_ACCOUNTS_GROUP}"
        )));
    }
    Ok((namespace, account))
}

/// Who a reviewed token belongs to, given its bound pod as the API server has it (`None`: the
/// token is not bound to a pod).
pub fn caller_for(
    reviewed: &Reviewed,
    pod: Option<&BoundPod>,
    node_proxy_account: &(String, String),
    trust_domain: &TrustDomain,
) -> Result<Caller, AuthError> {
    let (namespace, account) = service_account(reviewed)?;
    if let Some(pod) = pod {
        if pod.service_account != account {
            return Err(AuthError::Refused(format!(
                "the token is of service account {namespace}/{account}, but its pod {namespace}/{} runs as {namespace}/{}",
                reviewed.pod_name.as_deref().unwrap_or_default(),
                pod.service_account
            )));
        }
        if let Some(uid) = &reviewed.pod_uid
            && uid != &pod.uid
        {
            return Err(AuthError::Refused(format!(
                "the token is bound to pod uid {uid}, not {}",
                pod.uid
            )));
        }
    }
    if (namespace, account) == (node_proxy_account.0.as_str(), node_proxy_account.1.as_str()) {
        let Some(pod) = pod else {
            return Err(AuthError::Refused(format!(
                "a node proxy ({namespace}/{account}) must present a token bound to its pod"
            )));
        };
        let Some(node) = pod.node_name.clone() else {
            return Err(AuthError::Refused(format!(
                "the node proxy's pod {namespace}/{} is not scheduled to a node",
                reviewed.pod_name.as_deref().unwrap_or_default()
            )));
        };
        return Ok(Caller::NodeProxy { node });
    }
    let identity = SpiffeId::new(trust_domain.clone(), namespace, account)
        .map_err(|e| AuthError::Refused(format!("service account {namespace}/{account}: {e}")))?;
    Ok(Caller::Workload { identity })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        "cluster.local".parse().unwrap()
    }

    fn proxy() -> (String, String) {
        ("istio-system".to_owned(), "ztunnel".to_owned())
    }

    fn reviewed(username: &str, pod: Option<(&str, &str)>) -> Reviewed {
        Reviewed {
            username: username.to_owned(),
            groups: vec![
                SERVICE_ACCOUNTS_GROUP.to_owned(),
                "system:authenticated".to_owned(),
            ],
            pod_name: pod.map(|(n, _)| n.to_owned()),
            pod_uid: pod.map(|(_, u)| u.to_owned()),
        }
    }

    fn pod(uid: &str, sa: &str, node: Option<&str>) -> BoundPod {
        BoundPod {
            uid: uid.to_owned(),
            service_account: sa.to_owned(),
            node_name: node.map(str::to_owned),
        }
    }

    fn refusal(result: Result<Caller, AuthError>) -> String {
        match result {
            Err(AuthError::Refused(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    const ZTUNNEL: &str = "system:serviceaccount:istio-system:ztunnel";

    #[test]
    fn a_node_proxy_is_on_its_bound_pods_node() {
        let r = reviewed(ZTUNNEL, Some(("ztunnel-x", "u1")));
        let caller = caller_for(
            &r,
            Some(&pod("u1", "ztunnel", Some("node-b"))),
            &proxy(),
            &td(),
        );
        assert_eq!(
            caller.unwrap(),
            Caller::NodeProxy {
                node: "node-b".into()
            }
        );
    }

    #[test]
    fn a_node_proxy_token_needs_a_scheduled_bound_pod_of_its_account() {
        let unbound = reviewed(ZTUNNEL, None);
        assert!(refusal(caller_for(&unbound, None, &proxy(), &td())).contains("bound to its pod"));

        let r = reviewed(ZTUNNEL, Some(("ztunnel-x", "u1")));
        let why = refusal(caller_for(
            &r,
            Some(&pod("u1", "ztunnel", None)),
            &proxy(),
            &td(),
        ));
        assert!(why.contains("not scheduled"), "{why}");

        let why = refusal(caller_for(
            &r,
            Some(&pod("u1", "default", Some("n"))),
            &proxy(),
            &td(),
        ));
        assert!(why.contains("runs as istio-system/default"), "{why}");

        let why = refusal(caller_for(
            &r,
            Some(&pod("u2", "ztunnel", Some("n"))),
            &proxy(),
            &td(),
        ));
        assert!(why.contains("uid u1"), "{why}");
    }

    #[test]
    fn other_accounts_are_workloads_with_their_own_identity() {
        let r = reviewed("system:serviceaccount:prometheus:scraper", None);
        assert_eq!(
            caller_for(&r, None, &proxy(), &td()).unwrap(),
            Caller::Workload {
                identity: "spiffe://cluster.local/ns/prometheus/sa/scraper"
                    .parse()
                    .unwrap()
            }
        );
        let cni = reviewed(
            "system:serviceaccount:istio-system:istio-cni",
            Some(("cni-a", "u")),
        );
        assert!(matches!(
            caller_for(
                &cni,
                Some(&pod("u", "istio-cni", Some("node-a"))),
                &proxy(),
                &td()
            ),
            Ok(Caller::Workload { .. })
        ));
    }

    #[test]
    fn users_that_are_not_service_accounts_are_refused() {
        let why = refusal(caller_for(
            &reviewed("kubernetes-admin", None),
            None,
            &proxy(),
            &td(),
        ));
        assert!(why.contains("not a service account"), "{why}");
        let why = refusal(caller_for(
            &reviewed("system:serviceaccount:broken", None),
            None,
            &proxy(),
            &td(),
        ));
        assert!(why.contains("malformed"), "{why}");
        let mut r = reviewed(ZTUNNEL, None);
        r.groups = vec!["system:authenticated".to_owned()];
        let why = refusal(caller_for(&r, None, &proxy(), &td()));
        assert!(why.contains(SERVICE_ACCOUNTS_GROUP), "{why}");
    }
}
