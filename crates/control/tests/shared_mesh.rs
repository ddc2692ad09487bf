//! The manifest-directory source serves the shared mesh's expected WDS
//! (`ambit_testkit::shared_mesh`); the Kubernetes tier checks the API source against the same.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_control::{ControlConfig, ControlPlane, SourceConfig};
use ambit_identity::grpc::plaintext_channel;
use ambit_model::MeshConfig;
use ambit_proto::envoy::config::core::v3::Node;
use ambit_proto::security::Authorization;
use ambit_proto::workload::Address;
use ambit_testkit::{eventually, shared_mesh};
use ambit_xds::client::{ClientConfig, Handler, Subscription, Update, XdsClient};
use prost::Message;

/// What a WDS client holds, and whether each type's first response has arrived.
#[derive(Debug, Default)]
struct Mirror {
    addresses: Mutex<BTreeMap<String, Address>>,
    authorizations: Mutex<BTreeMap<String, Authorization>>,
    synced: Mutex<Vec<String>>,
}

impl Handler for Mirror {
    fn handle(&self, type_url: &str, update: Update) -> Result<(), String> {
        fn apply<M: Message + Default>(
            map: &Mutex<BTreeMap<String, M>>,
            update: Update,
        ) -> Result<(), String> {
            let mut map = map.lock().unwrap();
            for r in update.upserts {
                let decoded = M::decode(r.body.value.as_slice()).map_err(|e| e.to_string())?;
                map.insert(r.name, decoded);
            }
            for name in update.removals {
                map.remove(&name);
            }
            Ok(())
        }
        if update.initial {
            self.synced.lock().unwrap().push(type_url.to_owned());
        }
        match type_url {
            ambit_proto::ADDRESS_TYPE_URL => apply(&self.addresses, update),
            ambit_proto::AUTHORIZATION_TYPE_URL => apply(&self.authorizations, update),
            other => Err(format!("unexpected type {other}")),
        }
    }
}

#[tokio::test]
async fn the_directory_source_serves_the_shared_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("mesh.yaml"), shared_mesh::OBJECTS).unwrap();
    let any = "127.0.0.1:0".parse().unwrap();
    let control = ControlPlane::start(ControlConfig {
        source: SourceConfig::Dir {
            path: manifests,
            poll: Duration::from_millis(50),
        },
        mesh: MeshConfig::istio_defaults(),
        ca_dir: dir.path().join("ca"),
        bootstrap_tokens: None,
        plaintext_addr: Some(any),
        tls_addr: None,
        monitoring_addr: None,
        debug_addr: None,
        debounce: Duration::from_millis(20),
        serving_names: vec!["istiod.istio-system.svc".to_owned()],
    })
    .await
    .unwrap();

    let mirror = Arc::new(Mirror::default());
    let channel = plaintext_channel(&control.addrs().plaintext.unwrap().to_string()).unwrap();
    let config = ClientConfig::new(Node {
        id: "shared-mesh-test".to_owned(),
        ..Node::default()
    })
    .subscribe(ambit_proto::ADDRESS_TYPE_URL, Subscription::Wildcard)
    .subscribe(ambit_proto::AUTHORIZATION_TYPE_URL, Subscription::Wildcard);
    let _client = XdsClient::new(
        move || std::future::ready(Ok(channel.clone())),
        config,
        mirror.clone(),
    )
    .start();
    eventually!(observe = mirror.synced.lock().unwrap().len(), |n| n == 2);
    let rendered = shared_mesh::render(
        &mirror.addresses.lock().unwrap(),
        &mirror.authorizations.lock().unwrap(),
    );
    shared_mesh::assert_expected(&rendered, "manifest-directory");
}
