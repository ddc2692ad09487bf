//! A read-only, cloneable view of a running proxy for the admin and readiness servers.
//!
//! The admin server (`/config_dump`, `/healthz/ready`) runs beside the data path and only
//! reads: it gets an [`AdminView`], never the `NodeProxy` itself, so it can neither
//! drain nor reconfigure anything.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};

use super::inputs::Inputs;
use crate::inpod::InPod;

/// What the admin server may see of a node proxy. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AdminView {
    pub(super) inputs: Arc<Inputs>,
    pub(super) hbone: Arc<Mutex<BTreeMap<IpAddr, SocketAddr>>>,
    pub(super) inpod: Option<Arc<InPod>>,
}

impl AdminView {
    /// `Ok` while the proxy should receive traffic; the reason otherwise.
    pub fn readiness(&self) -> Result<(), String> {
        if self.inputs.drain.stop_accepting.is_cancelled() {
            return Err("draining".to_owned());
        }
        if !self.inputs.state.is_synced() {
            return Err("waiting for the first complete workload update".to_owned());
        }
        Ok(())
    }

    /// The body of `/config_dump`: the state's snapshot plus listeners, the HBONE pool and, in
    /// in-pod mode, the pods served (`inpod`).
    pub fn config_dump(&self) -> Value {
        let mut dump = self.inputs.state.config_dump();
        let hbone: Vec<String> = self
            .hbone
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(ToString::to_string)
            .collect();
        let (connections, streams) = self.inputs.pool.stats();
        if let Value::Object(map) = &mut dump {
            map.insert(
                "listeners".to_owned(),
                json!({
                    "shared": self.inputs.shared.own().iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "hbone": hbone,
                }),
            );
            map.insert(
                "hbonePool".to_owned(),
                json!({ "connections": connections, "streams": streams }),
            );
            map.insert("ready".to_owned(), json!(self.readiness().is_ok()));
            map.insert(
                "controlPlaneConnected".to_owned(),
                json!(self.inputs.xds.as_ref().map(|x| x.connected())),
            );
            if let Some(pods) = &self.inpod {
                map.insert(
                    "inpod".to_owned(),
                    json!({ "zdsConnected": pods.is_connected(), "pods": pods.statuses() }),
                );
            }
        }
        dump
    }
}
