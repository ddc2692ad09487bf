//! The Kubernetes objects the mesh is computed from, as typed values.
//!
//! Both sources — the Kubernetes API and a directory of manifests — produce [`Object`]s; nothing
//! past this module looks at untyped YAML or JSON. [`Object::from_value`] is the one place where a
//! manifest becomes a typed object, and its errors name the field that was wrong.

use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::istio::{AuthorizationPolicy, PeerAuthentication};

/// One Kubernetes object of a kind the mesh reads.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Object {
    Namespace(Namespace),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    ServiceAccount(ServiceAccount),
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    PeerAuthentication(PeerAuthentication),
}

/// The kinds of [`Object`], with their API group/version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    ServiceAccount,
    AuthorizationPolicy,
    PeerAuthentication,
}

/// Identifies an object within the cluster: kind, namespace (empty for cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

/// Why a manifest could not become an [`Object`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectError {
    #[error("not a Kubernetes object: {0}")]
    NotAnObject(&'static str),
    #[error("kind {kind:?} of apiVersion {api_version:?} is not one the mesh reads")]
    UnsupportedKind { api_version: String, kind: String },
    #[error("{kind} has no metadata.name")]
    MissingName { kind: Kind },
    #[error("{kind} {name:?} has no metadata.namespace")]
    MissingNamespace { kind: Kind, name: String },
    #[error("field `{path}`: {message}")]
    Field { path: String, message: String },
}

impl Kind {
    /// Every kind, in the order a consistent snapshot is best applied (namespaces first).
    pub const ALL: [Kind; 7] = [
        Kind::Namespace,
        Kind::ServiceAccount,
        Kind::Service,
        Kind::Pod,
        Kind::EndpointSlice,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
    ];

    /// `apiVersion` of this kind (the one version read; others are refused by name).
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service | Kind::ServiceAccount => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::AuthorizationPolicy | Kind::PeerAuthentication => "security.istio.io/v1",
        }
    }

    pub fn is_namespaced(self) -> bool {
        self != Kind::Namespace
    }

    fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        let found = match kind {
            "Namespace" => Kind::Namespace,
            "Pod" => Kind::Pod,
            "Service" => Kind::Service,
            "EndpointSlice" => Kind::EndpointSlice,
            "ServiceAccount" => Kind::ServiceAccount,
            "AuthorizationPolicy" => Kind::AuthorizationPolicy,
            "PeerAuthentication" => Kind::PeerAuthentication,
            _ => return None,
        };
        // Istio still serves v1beta1 of its security CRDs with the same schema.
        let version_ok = found.api_version() == api_version
            || (matches!(found, Kind::AuthorizationPolicy | Kind::PeerAuthentication)
                && api_version == "security.istio.io/v1beta1");
        version_ok.then_some(found)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl Object {
    /// Types a manifest. Objects of kinds the mesh does not read are refused with
    /// [`ObjectError::UnsupportedKind`], which callers may choose to skip quietly.
    pub fn from_value(value: Value) -> Result<Object, ObjectError> {
        let Value::Object(map) = &value else {
            return Err(ObjectError::NotAnObject(
                "expected a mapping at the top level",
            ));
        };
        let field = |name: &'static str| {
            map.get(name)
                .and_then(Value::as_str)
                .ok_or(ObjectError::NotAnObject(match name {
                    "kind" => "no `kind` field",
                    _ => "no `apiVersion` field",
                }))
        };
        let (api_version, kind) = (field("apiVersion")?, field("kind")?);
        let Some(kind) = Kind::from_type(api_version, kind) else {
            return Err(ObjectError::UnsupportedKind {
                api_version: api_version.to_owned(),
                kind: kind.to_owned(),
            });
        };
        let object = match kind {
            Kind::Namespace => Object::Namespace(typed(value)?),
            Kind::Pod => Object::Pod(Box::new(typed(value)?)),
            Kind::Service => Object::Service(Box::new(typed(value)?)),
            Kind::EndpointSlice => Object::EndpointSlice(Box::new(typed(value)?)),
            Kind::ServiceAccount => Object::ServiceAccount(typed(value)?),
            Kind::AuthorizationPolicy => Object::AuthorizationPolicy(Box::new(typed(value)?)),
            Kind::PeerAuthentication => Object::PeerAuthentication(typed(value)?),
        };
        object.key()?;
        Ok(object)
    }

    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::ServiceAccount(_) => Kind::ServiceAccount,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::PeerAuthentication(_) => Kind::PeerAuthentication,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
            Object::PeerAuthentication(o) => &o.metadata,
        }
    }

    /// The object's key; fails when the manifest lacks the name (or namespace) to place it.
    pub fn key(&self) -> Result<ObjectKey, ObjectError> {
        let kind = self.kind();
        let meta = self.metadata();
        let name = meta
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(ObjectError::MissingName { kind })?;
        let namespace = if kind.is_namespaced() {
            meta.namespace
                .clone()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| ObjectError::MissingNamespace {
                    kind,
                    name: name.clone(),
                })?
        } else {
            String::new()
        };
        Ok(ObjectKey {
            kind,
            namespace,
            name,
        })
    }
}

/// Deserializes with the path of the offending field in the error.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, ObjectError> {
    serde_path_to_error::deserialize(value).map_err(|e| ObjectError::Field {
        path: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_known_kinds() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "ns"}});
        let obj = Object::from_value(pod).unwrap();
        assert_eq!(
            obj.key().unwrap(),
            ObjectKey {
                kind: Kind::Pod,
                namespace: "ns".into(),
                name: "a".into()
            }
        );

        let ns =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prometheus"}});
        assert_eq!(
            Object::from_value(ns).unwrap().key().unwrap().to_string(),
            "Namespace prometheus"
        );

        let ap = json!({"apiVersion": "security.istio.io/v1beta1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "ns"}, "spec": {"action": "DENY"}});
        let Object::AuthorizationPolicy(ap) = Object::from_value(ap).unwrap() else {
            panic!()
        };
        assert_eq!(ap.spec.action.as_deref(), Some("DENY"));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let cases = [
            (json!([1, 2]), "mapping"),
            (json!({"kind": "Pod"}), "apiVersion"),
            (
                json!({"apiVersion": "apps/v1", "kind": "Deployment"}),
                "\"Deployment\"",
            ),
            (
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "x"}}),
                "metadata.name",
            ),
            (
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}),
                "metadata.namespace",
            ),
            (
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "namespace": "y"},
                       "spec": {"containers": [{"name": "c", "ports": [{"containerPort": "eighty"}]}]}}),
                "spec.containers[0].ports[0].containerPort",
            ),
        ];
        for (value, needle) in cases {
            let err = Object::from_value(value.clone()).unwrap_err().to_string();
            assert!(
                err.contains(needle),
                "error for {value} should mention {needle}: {err}"
            );
        }
    }

    #[test]
    fn unknown_policy_fields_are_kept_not_dropped() {
        let ap = json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"rules": [{"to": [{"operation": {"ports": ["80"], "methods": ["GET"]}}]}], "futureField": 1}});
        let Object::AuthorizationPolicy(ap) = Object::from_value(ap).unwrap() else {
            panic!()
        };
        assert!(ap.spec.unknown.contains_key("futureField"));
        let op = ap.spec.rules[0].to[0].operation.as_ref().unwrap();
        assert_eq!(op.ports, ["80"]);
        assert!(op.unknown.contains_key("methods"));
    }
}
