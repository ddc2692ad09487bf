//! Read-only JSON views of the state for the admin server's `/config_dump`.
//!
//! Field names follow ztunnel's dump where one exists (`workloadIps`, `serviceAccount`-style
//! camelCase), so an operator used to `istioctl ztunnel-config` reads them without a legend.
//! Nothing here exposes key material: certificates are shown by identity, serial and validity.

use ambit_identity::rfc3339;

use ambit_identity::{CertificateState, CertificateStatus};
use ambit_proto::security::{self as pb, Authorization};
use serde_json::{Value, json};

use super::proxy_state::ProxyState;

impl ProxyState {
    /// Every workload, sorted by uid.
    pub fn workloads_snapshot(&self) -> Value {
        let mut workloads: Vec<_> = self.read(|m| m.workloads().cloned().collect());
        workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
        serde_json::to_value(workloads.iter().map(|w| &**w).collect::<Vec<_>>())
            .unwrap_or(Value::Null)
    }

    /// Every service, sorted by `namespace/hostname`.
    pub fn services_snapshot(&self) -> Value {
        let mut services: Vec<_> = self.read(|m| m.services().cloned().collect());
        services.sort_by_key(|s| s.key());
        serde_json::to_value(services.iter().map(|s| &**s).collect::<Vec<_>>())
            .unwrap_or(Value::Null)
    }

    /// Every authorization policy, by namespace and name.
    pub fn policies_snapshot(&self) -> Value {
        let mut policies = self.policies();
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Value::Array(policies.iter().map(|p| policy(p)).collect())
    }

    /// The certificate of every identity this proxy speaks for (never the key).
    pub fn certificates_snapshot(&self) -> Value {
        let statuses = self
            .certificates()
            .map(|c| c.snapshot())
            .unwrap_or_default();
        Value::Array(statuses.iter().map(certificate).collect())
    }

    /// Connections in flight by listener.
    pub fn connections_snapshot(&self) -> Value {
        let c = self.connections();
        json!({
            "outbound": c.outbound(),
            "inbound": c.inbound(),
            "inboundPassthrough": c.passthrough(),
            "total": c.total(),
        })
    }

    /// Everything above, plus who this proxy is: the body of `/config_dump`.
    pub fn config_dump(&self) -> Value {
        let node = self.node();
        json!({
            "node": {
                "name": node.node_name,
                "clusterId": node.cluster_id,
                "trustDomain": node.trust_domain.as_str(),
            },
            "workloads": self.workloads_snapshot(),
            "services": self.services_snapshot(),
            "policies": self.policies_snapshot(),
            "certificates": self.certificates_snapshot(),
            "connections": self.connections_snapshot(),
        })
    }
}

fn policy(p: &Authorization) -> Value {
    let scope = pb::Scope::try_from(p.scope).map_or("UNKNOWN", |s| s.as_str_name());
    let action = pb::Action::try_from(p.action).map_or("UNKNOWN", |a| a.as_str_name());
    let rules: Vec<Value> = p
        .rules
        .iter()
        .map(|rule| {
            Value::Array(
                rule.clauses
                    .iter()
                    .map(|clause| {
                        Value::Array(
                            clause
                                .matches
                                .iter()
                                .map(|m| json!(format!("{m:?}")))
                                .collect(),
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    json!({
        "name": p.name,
        "namespace": p.namespace,
        "scope": scope,
        "action": action,
        "rules": rules,
    })
}

fn certificate(s: &CertificateStatus) -> Value {
    let state = match &s.state {
        CertificateState::Available => "Available".to_owned(),
        CertificateState::Pending => "Pending".to_owned(),
        CertificateState::Failed(e) => format!("Failed: {e}"),
        CertificateState::Expired => "Expired".to_owned(),
        other => format!("{other:?}"),
    };
    json!({
        "identity": s.identity.as_str(),
        "state": state,
        "serialNumber": s.serial,
        "validFrom": s.not_before.map(rfc3339),
        "expirationTime": s.not_after.map(rfc3339),
        "refreshAt": s.refresh_at.map(rfc3339),
        "refreshing": s.refreshing,
        "failures": s.failures,
        "lastError": s.last_error,
    })
}
