//! Istio's `security.istio.io/v1` custom resources that the mesh reads: AuthorizationPolicy and
//! PeerAuthentication.
//!
//! Field names follow Istio's published API. Fields this version of Ambit does not know are not
//! dropped: each level keeps them in `unknown`, so the translation can fail closed on them (an
//! ALLOW rule with a field Ambit cannot enforce matches nothing) instead of silently ignoring them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::Value;

/// Fields present in a manifest that this version does not understand, by name.
pub type Unknown = BTreeMap<String, Value>;

/// `security.istio.io/v1` AuthorizationPolicy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: AuthorizationPolicySpec,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub selector: Option<WorkloadSelector>,
    /// `ALLOW` (the default), `DENY`, `AUDIT` or `CUSTOM`; kept as written so an unknown action is
    /// reported rather than mistaken for ALLOW.
    pub action: Option<String>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub from: Vec<From>,
    #[serde(default)]
    pub to: Vec<To>,
    #[serde(default)]
    pub when: Vec<Condition>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct From {
    pub source: Option<Source>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// The L4 fields of a rule's source, plus the request-level ones only a waypoint can enforce
/// (kept in `unknown` with the rest, since an L4 proxy cannot check them).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct To {
    pub operation: Option<Operation>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// The L4 fields of a rule's operation; hosts, methods and paths land in `unknown`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// `security.istio.io/v1` PeerAuthentication.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PeerAuthentication {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    pub selector: Option<WorkloadSelector>,
    pub mtls: Option<Mtls>,
    /// Per-port overrides, keyed by port number written as a string (as in Istio's API).
    #[serde(default)]
    pub port_level_mtls: BTreeMap<String, Mtls>,
    #[serde(flatten)]
    pub unknown: Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Mtls {
    /// `UNSET`, `DISABLE`, `PERMISSIVE` or `STRICT`, kept as written.
    pub mode: Option<String>,
    #[serde(flatten)]
    pub unknown: Unknown,
}
