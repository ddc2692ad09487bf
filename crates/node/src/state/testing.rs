//! A fixture for the state modules' tests.

use ambit_xds::wds::{Protocol, Workload};

/// An HBONE pod `uid` at `ip` in namespace `ns`, service account `x`, on node `n`, for tests.
pub(crate) fn test_workload(uid: &str, ip: &str) -> Workload {
    Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: "ns".into(),
        addresses: ip.parse().into_iter().collect(),
        network: String::new(),
        protocol: Protocol::Hbone,
        identity: "spiffe://td/ns/ns/sa/x"
            .parse()
            .expect("valid test identity"),
        node: "n".into(),
        canonical_name: uid.into(),
        canonical_revision: "v1".into(),
        workload_type: "deployment",
        workload_name: uid.into(),
        services: std::collections::BTreeMap::new(),
        authorization_policies: vec![],
        healthy: true,
        cluster_id: String::new(),
        host_network: false,
        region: String::new(),
        zone: String::new(),
    }
}
