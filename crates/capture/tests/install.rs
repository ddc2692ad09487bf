//! install-cni against real folders: the binary copied into a bin dir, the plugin chained into
//! the configuration a runtime would load from a conf dir holding real network plugins'
//! configurations, kept there while other tools rewrite it, and taken out on request.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_capture::install::{
    ConfigChange, InstallConfig, InstallError, Installer, PLUGIN_TYPE, invoked_as_plugin,
};
use ambit_testkit::eventually;
use serde_json::Value;
use tempfile::TempDir;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cni")
        .join(name);
    fs::read_to_string(path).unwrap()
}

/// A node's CNI folders in a temporary directory, and a stand-in for the running binary.
struct Node {
    dir: TempDir,
}

impl Node {
    fn new(configs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["bin", "net.d"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        fs::write(dir.path().join("ambit"), b"\x7fELF the ambit binary").unwrap();
        let node = Self { dir };
        for (name, text) in configs {
            fs::write(node.conf(name), text).unwrap();
        }
        node
    }

    fn conf(&self, name: &str) -> PathBuf {
        self.dir.path().join("net.d").join(name)
    }

    fn config(&self) -> InstallConfig {
        InstallConfig {
            bin_dir: self.dir.path().join("bin"),
            conf_dir: self.dir.path().join("net.d"),
            conf_name: None,
            binary: self.dir.path().join("ambit"),
            agent_socket: "/var/run/istio-cni/pluginevent.sock".into(),
            exclude_namespaces: vec!["kube-system".into()],
            poll_interval: Duration::from_millis(50),
        }
    }

    fn installer(&self) -> Installer {
        Installer::new(self.config())
    }

    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.path().join("net.d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

/// The plugins of a configuration list file.
fn plugins(path: &Path) -> Vec<Value> {
    let conf: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    conf["plugins"].as_array().unwrap().clone()
}

fn ours(plugins: &[Value]) -> Vec<&Value> {
    plugins
        .iter()
        .filter(|p| p["type"] == PLUGIN_TYPE)
        .collect()
}

#[test]
fn install_copies_the_binary_and_chains_the_plugin_into_the_first_configuration_only() {
    let (calico, flannel) = (
        fixture("10-calico.conflist"),
        fixture("10-flannel.conflist"),
    );
    let node = Node::new(&[
        ("10-calico.conflist", &calico),
        ("20-flannel.conflist", &flannel),
        ("README", "not a configuration"),
    ]);
    let installer = node.installer();

    let change = installer.install().unwrap();
    assert_eq!(
        change,
        ConfigChange::Inserted(node.conf("10-calico.conflist"))
    );
    assert_eq!(
        fs::read(installer.binary_path()).unwrap(),
        b"\x7fELF the ambit binary"
    );
    let chained = plugins(&node.conf("10-calico.conflist"));
    assert_eq!(chained.len(), 4, "calico, portmap, bandwidth, ambit-cni");
    assert_eq!(
        chained[3],
        serde_json::json!({
            "type": "ambit-cni",
            "ambit": {
                "agent_socket": "/var/run/istio-cni/pluginevent.sock",
                "exclude_namespaces": ["kube-system"],
            },
        })
    );
    assert_eq!(
        fs::read_to_string(node.conf("20-flannel.conflist")).unwrap(),
        flannel,
        "only the configuration the runtime loads is touched"
    );
    assert!(installer.is_installed());

    // Idempotent: a second install (a restarted agent) changes nothing.
    let after_first = fs::read_to_string(node.conf("10-calico.conflist")).unwrap();
    assert_eq!(
        installer.install().unwrap(),
        ConfigChange::Unchanged(node.conf("10-calico.conflist"))
    );
    assert_eq!(
        fs::read_to_string(node.conf("10-calico.conflist")).unwrap(),
        after_first
    );
    assert_eq!(
        node.files(),
        ["10-calico.conflist", "20-flannel.conflist", "README"],
        "no temporary file left behind"
    );
}

#[test]
fn a_single_conf_becomes_a_conflist_and_a_named_file_is_honoured() {
    let bridge = fixture("10-bridge.conf");
    let flannel = fixture("10-flannel.conflist");
    let node = Node::new(&[
        ("10-bridge.conf", &bridge),
        ("20-flannel.conflist", &flannel),
    ]);

    let change = node.installer().install().unwrap();
    assert_eq!(
        change,
        ConfigChange::Converted {
            from: node.conf("10-bridge.conf"),
            to: node.conf("10-bridge.conflist"),
        }
    );
    assert_eq!(node.files(), ["10-bridge.conflist", "20-flannel.conflist"]);
    let list = plugins(&node.conf("10-bridge.conflist"));
    let original: Value = serde_json::from_str(&bridge).unwrap();
    assert_eq!(list[0], original);
    assert_eq!(ours(&list).len(), 1);

    // CNI_CONF_NAME: chain into the named file instead of the first.
    let mut config = node.config();
    config.conf_name = Some("20-flannel.conflist".into());
    let named = Installer::new(config);
    assert_eq!(
        named.ensure_config().unwrap(),
        ConfigChange::Inserted(node.conf("20-flannel.conflist"))
    );
    assert_eq!(ours(&plugins(&node.conf("20-flannel.conflist"))).len(), 1);
}

#[test]
fn a_malformed_configuration_is_a_clear_error_and_stays_untouched() {
    let broken = "{\"cniVersion\": \"0.3.1\", \"plugins\": [ {\"type\": \"calico\" }\n";
    let node = Node::new(&[
        ("05-broken.conflist", broken),
        ("10-calico.conflist", &fixture("10-calico.conflist")),
    ]);
    let err = node.installer().ensure_config().unwrap_err();
    assert!(matches!(err, InstallError::Config { .. }), "{err:?}");
    let message = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        message.contains("05-broken.conflist") && message.contains("not valid JSON"),
        "{message}"
    );
    assert_eq!(
        fs::read_to_string(node.conf("05-broken.conflist")).unwrap(),
        broken
    );
    assert_eq!(node.files(), ["05-broken.conflist", "10-calico.conflist"]);
    assert!(!node.installer().is_installed());
}

#[test]
fn an_empty_conf_dir_is_reported_as_no_configuration_yet() {
    let node = Node::new(&[]);
    let err = node.installer().install().unwrap_err();
    assert!(matches!(err, InstallError::NoConfig { .. }), "{err:?}");
    assert!(
        node.installer().binary_path().exists(),
        "the binary goes in first"
    );
}

#[tokio::test]
async fn the_watch_puts_the_plugin_back_after_rewrites_and_uninstall_restores_the_original() {
    let calico = fixture("10-calico.conflist");
    let node = Node::new(&[]);
    let installer = node.installer();
    let watch = installer.clone().watch();

    // The network plugin's daemon writes its configuration after the agent started.
    fs::write(node.conf("10-calico.conflist"), &calico).unwrap();
    eventually!(installer.is_installed());
    // ... and rewrites it later, dropping the plugin; the binary is deleted too.
    fs::write(node.conf("10-calico.conflist"), &calico).unwrap();
    fs::remove_file(installer.binary_path()).unwrap();
    eventually!(installer.is_installed() && installer.binary_path().exists());
    assert_eq!(ours(&plugins(&node.conf("10-calico.conflist"))).len(), 1);

    watch.stop(true).await.unwrap();
    assert_eq!(
        fs::read_to_string(node.conf("10-calico.conflist")).unwrap(),
        calico,
        "uninstalling gives the file back byte for byte"
    );
    assert!(!installer.binary_path().exists());
}

#[tokio::test]
async fn stopping_without_uninstall_leaves_the_plugin_in_place() {
    let node = Node::new(&[("10-flannel.conflist", &fixture("10-flannel.conflist"))]);
    let installer = node.installer();
    let watch = installer.clone().watch();
    eventually!(installer.is_installed());
    watch.stop(false).await.unwrap();
    assert!(installer.is_installed() && installer.binary_path().exists());
}

#[test]
fn a_test_binary_is_not_the_plugin() {
    assert!(!invoked_as_plugin());
}
