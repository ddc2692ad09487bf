//! The WDS handler: turns delta-xDS updates into [`ProxyState`] changes.
//!
//! Each resource is decoded on its own. One that fails is left out and named in the NACK, with
//! the decode error; the others of the same update still apply (a bad workload must not hide a
//! good one). Removals naming an on-demand alias (`<network>/<ip>`) that the control plane does
//! not know are remembered, so connections to that address stop waiting for it.

use std::net::IpAddr;

use ambit_xds::client::{Handler, Update};
use ambit_xds::wds::{Address, decode_address, decode_authorization};
use tracing::{debug, info, warn};

use super::proxy_state::ProxyState;

/// The target of the per-policy lines, as ztunnel's `xds` module logs them.
const XDS_TARGET: &str = "xds";

/// Applies `istio.workload.Address` and `istio.security.Authorization` updates.
#[derive(Debug, Clone)]
pub struct WdsHandler {
    state: ProxyState,
}

/// What one update changed, for the debug log.
#[derive(Debug, Default)]
struct Applied {
    upserts: usize,
    removals: usize,
    errors: Vec<String>,
}

impl WdsHandler {
    pub fn new(state: ProxyState) -> Self {
        Self { state }
    }

    fn addresses(&self, update: Update) -> Applied {
        let td = self.state.node().trust_domain.clone();
        let mut applied = Applied::default();
        self.state.update(|mesh| {
            for resource in update.upserts {
                match decode_address(&resource, &td) {
                    Ok(Address::Workload(w)) => mesh.insert_workload(&resource.name, *w),
                    Ok(Address::Service(s)) => mesh.insert_service(&resource.name, s),
                    Err(rejected) => {
                        applied.errors.push(rejected.to_string());
                        continue;
                    }
                }
                applied.upserts += 1;
            }
            for name in update.removals {
                if mesh.remove(&name) {
                    applied.removals += 1;
                } else if let Some(ip) = alias_ip(&name) {
                    debug!(%ip, "control plane does not know the address");
                    mesh.mark_not_found(ip);
                }
            }
        });
        applied
    }

    fn authorizations(&self, update: Update) -> Applied {
        // ztunnel's lines for each policy change (target `xds`), written before the state lock
        // is taken so a slow log never holds it.
        for resource in &update.upserts {
            info!(target: XDS_TARGET, "handling RBAC update {}", resource.name);
        }
        for name in &update.removals {
            info!(target: XDS_TARGET, "handling RBAC delete {name}");
        }
        let mut applied = Applied::default();
        self.state.update(|mesh| {
            for resource in update.upserts {
                match decode_authorization(&resource) {
                    Ok(policy) => {
                        mesh.insert_policy(&resource.name, policy);
                        applied.upserts += 1;
                    }
                    Err(rejected) => applied.errors.push(rejected.to_string()),
                }
            }
            for name in update.removals {
                applied.removals += usize::from(mesh.remove_policy(&name));
            }
        });
        applied
    }
}

impl Handler for WdsHandler {
    fn handle(&self, type_url: &str, update: Update) -> Result<(), String> {
        let initial = update.initial;
        let applied = match type_url {
            ambit_proto::ADDRESS_TYPE_URL => {
                let applied = self.addresses(update);
                if initial {
                    self.state.mark_synced();
                }
                applied
            }
            ambit_proto::AUTHORIZATION_TYPE_URL => self.authorizations(update),
            other => return Err(format!("unexpected type {other}")),
        };
        debug!(
            type_url,
            initial,
            upserts = applied.upserts,
            removals = applied.removals,
            rejected = applied.errors.len(),
            "applied WDS update"
        );
        if applied.errors.is_empty() {
            Ok(())
        } else {
            let message = applied.errors.join("; ");
            warn!(type_url, error = %message, "rejected WDS resources");
            Err(message)
        }
    }

    fn on_connection_state(&self, connected: bool) {
        if connected {
            info!("connected to the control plane");
        } else {
            warn!("lost the control plane; serving the last known state");
        }
    }
}

/// The address of an on-demand alias: `<network>/<ip>` (network may be empty).
fn alias_ip(name: &str) -> Option<IpAddr> {
    let (_, ip) = name.rsplit_once('/')?;
    ip.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_proto::workload::{self as pb, address};
    use ambit_xds::Resource;
    use prost::Message;

    use crate::state::proxy_state::test_state as state;

    fn resource(name: &str, w: pb::Workload) -> Resource {
        let body = pb::Address {
            r#type: Some(address::Type::Workload(w)),
        };
        Resource::new(
            name,
            prost_types::Any {
                type_url: ambit_proto::ADDRESS_TYPE_URL.into(),
                value: body.encode_to_vec(),
            },
        )
    }

    fn pod(uid: &str, ip: &[u8]) -> pb::Workload {
        pb::Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "ns".into(),
            addresses: vec![ip.to_vec()],
            ..pb::Workload::default()
        }
    }

    #[test]
    fn a_bad_resource_is_nacked_and_the_good_ones_still_apply() {
        let state = state();
        let handler = WdsHandler::new(state.clone());
        let garbage = Resource::new(
            "garbage",
            prost_types::Any {
                type_url: ambit_proto::ADDRESS_TYPE_URL.into(),
                value: vec![0xff, 0xff, 0xff],
            },
        );
        let update = Update {
            upserts: vec![
                resource("good", pod("good", &[10, 0, 0, 1])),
                resource("bad", pod("bad", &[10, 0, 0])),
                garbage,
            ],
            removals: vec!["/10.9.9.9".into()],
            initial: true,
        };
        let err = handler
            .handle(ambit_proto::ADDRESS_TYPE_URL, update)
            .unwrap_err();
        assert!(err.contains("bad: address 0 is 3 bytes long"), "{err}");
        assert!(
            err.contains("garbage: not a valid protobuf message"),
            "{err}"
        );
        assert!(state.workload_by_ip([10, 0, 0, 1].into()).is_some());
        assert!(state.read(|m| m.is_not_found([10, 9, 9, 9].into())));
    }

    #[test]
    fn policy_changes_are_logged_as_ztunnel_logs_them() {
        use ambit_logging::{Capture, Clock, Format};

        let handler = WdsHandler::new(state());
        let policy = ambit_proto::security::Authorization {
            name: "allow".into(),
            namespace: "ns".into(),
            ..Default::default()
        };
        let update = Update {
            upserts: vec![Resource::new(
                "ns/allow",
                prost_types::Any {
                    type_url: ambit_proto::AUTHORIZATION_TYPE_URL.into(),
                    value: policy.encode_to_vec(),
                },
            )],
            removals: vec!["ns/old".into()],
            initial: false,
        };
        let out = Capture::new();
        let subscriber = ambit_logging::subscriber(
            Format::Text,
            Clock::Fixed(std::time::UNIX_EPOCH),
            out.clone(),
        );
        tracing::subscriber::with_default(subscriber, || {
            handler
                .handle(ambit_proto::AUTHORIZATION_TYPE_URL, update)
                .unwrap();
        });
        let time = "1970-01-01T00:00:00.000000Z";
        let lines: Vec<String> = out
            .lines()
            .into_iter()
            .filter(|l| l.contains("\tinfo\t"))
            .collect();
        assert_eq!(
            lines,
            [
                format!("{time}\tinfo\txds\thandling RBAC update ns/allow\t"),
                format!("{time}\tinfo\txds\thandling RBAC delete ns/old\t"),
            ]
        );
    }
}
