//! The agent as the CNI plugin channel's handler: one [`PodEvent`] → one agent call.

use std::future::Future;

use super::{Agent, CniPod, error_chain};
use crate::plugin::{PodCommand, PodEvent, PodEventHandler};

impl PodEventHandler for Agent {
    fn handle(&self, event: PodEvent) -> impl Future<Output = Result<(), String>> + Send {
        let agent = self.clone();
        async move {
            let command = event.command.clone();
            let pod = CniPod::from(event);
            let result = match command {
                PodCommand::Add => agent.pod_added(pod).await,
                PodCommand::Del => agent.pod_deleted(pod).await,
                PodCommand::Check => agent.pod_checked(pod).await,
            };
            result.map_err(|e| error_chain(&e))
        }
    }
}

impl From<PodEvent> for CniPod {
    fn from(event: PodEvent) -> Self {
        Self {
            namespace: event.pod_namespace,
            name: event.pod_name,
            uid: event.pod_uid,
            container_id: event.container_id,
            netns: event.netns,
            ips: event.ips,
        }
    }
}
