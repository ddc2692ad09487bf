//! [`PodInfo`]: a pod as the capture agent names it when it hands the pod over ZDS.

use std::fmt;

use serde::Serialize;

/// The pod as the capture agent names it (ZDS `WorkloadInfo`): in in-pod mode, the only thing
/// that says which workload a pod's listeners speak for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
}

impl fmt::Display for PodInfo {
    /// `<service account>.<namespace> (<name>)`, as ztunnel prints a `WorkloadInfo`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{} ({})",
            self.service_account, self.namespace, self.name
        )
    }
}
