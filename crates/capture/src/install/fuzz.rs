//! Fuzz target body for the CNI configuration text editor (`fuzz/fuzz_targets/conflist.rs`).
//!
//! Built only for `cargo fuzz` (`cfg(fuzzing)`) and this crate's tests, which replay the seed
//! corpus `fuzz/corpus/conflist/` through it on stable.
//!
//! The input is the text of a file in the node's CNI configuration folder, written by whatever
//! else runs there. Invariants checked, for every text:
//! - nothing panics; a refusal says why;
//! - an inserted list is JSON whose `plugins` are the original ones without Ambit's, in order,
//!   then Ambit's plugin once; every other top-level key keeps its value;
//! - inserting again changes nothing, and taking the plugin out of a list that had none gives the
//!   original text back byte for byte;
//! - a converted single configuration becomes a list of that configuration and the plugin;
//! - removing leaves JSON with the same keys and the other plugins, in order, and no Ambit
//!   plugin.

use serde_json::{Map, Value, json};

use super::PLUGIN_TYPE;
use super::conflist::{self, Edit};

/// The body of the `conflist` target.
pub fn conflist(data: &[u8]) {
    // The installer reads configurations as UTF-8 text; other bytes are a read error.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let plugin = json!({
        "type": PLUGIN_TYPE,
        "ambit": {
            "agent_socket": "/var/run/istio-cni/pluginevent.sock",
            "exclude_namespaces": ["kube-system"],
        },
    });
    let original = serde_json::from_str::<Value>(text).ok();
    match conflist::insert(text, &plugin) {
        Ok(Edit::Unchanged) => {
            let plugins = plugins_of(text);
            let ours: Vec<&Value> = plugins.iter().filter(|p| is_ours(p)).collect();
            assert_eq!(
                ours,
                [&plugin],
                "unchanged, yet not exactly one current plugin"
            );
        }
        Ok(Edit::Updated(edited)) => {
            let before = plugins_of(text);
            let mut expected: Vec<Value> = before.iter().filter(|p| !is_ours(p)).cloned().collect();
            expected.push(plugin.clone());
            assert_eq!(plugins_of(&edited), expected, "plugins after inserting");
            same_other_keys(text, &edited);
            assert_eq!(
                conflist::insert(&edited, &plugin).ok(),
                Some(Edit::Unchanged)
            );
            assert!(conflist::has_plugin(&edited));
            if !before.iter().any(is_ours) {
                let removed = conflist::remove(&edited).ok().flatten();
                assert_eq!(
                    removed.as_deref(),
                    Some(text),
                    "removal is not the insertion undone"
                );
            }
        }
        Ok(Edit::Converted(list)) => {
            let single = original.unwrap_or_else(|| panic!("converted a text that is not JSON"));
            assert_eq!(plugins_of(&list), [single.clone(), plugin.clone()]);
            for key in ["cniVersion", "name"] {
                assert_eq!(object_of(&list).get(key), single.get(key), "key {key}");
            }
            assert_eq!(conflist::insert(&list, &plugin).ok(), Some(Edit::Unchanged));
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
    match conflist::remove(text) {
        Ok(Some(without)) => {
            let expected: Vec<Value> = plugins_of(text)
                .into_iter()
                .filter(|p| !is_ours(p))
                .collect();
            assert_eq!(plugins_of(&without), expected, "plugins after removing");
            same_other_keys(text, &without);
            assert!(!conflist::has_plugin(&without));
        }
        Ok(None) => assert!(!conflist::has_plugin(text)),
        Err(error) => assert!(!error.to_string().is_empty()),
    }
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// The top-level object of a text the editor produced or accepted.
fn object_of(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => map,
        other => panic!("not a JSON object ({other:?}):\n{text}"),
    }
}

fn plugins_of(text: &str) -> Vec<Value> {
    match object_of(text).remove("plugins") {
        Some(Value::Array(plugins)) => plugins,
        other => panic!("plugins is not a list ({other:?}):\n{text}"),
    }
}

fn same_other_keys(before: &str, after: &str) {
    let (mut before, mut after) = (object_of(before), object_of(after));
    before.remove("plugins");
    after.remove("plugins");
    assert_eq!(before, after, "keys other than plugins changed");
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: [(&str, &str); 3] = [
        (
            "calico",
            include_str!("../../tests/fixtures/cni/10-calico.conflist"),
        ),
        (
            "flannel",
            include_str!("../../tests/fixtures/cni/10-flannel.conflist"),
        ),
        (
            "bridge",
            include_str!("../../tests/fixtures/cni/10-bridge.conf"),
        ),
    ];

    /// The real configurations of the tests, and each with the plugin inserted.
    fn generated() -> Vec<(String, Vec<u8>)> {
        let plugin = json!({"type": PLUGIN_TYPE, "ambit": {"agent_socket": "/s"}});
        let mut seeds = Vec::new();
        for (name, text) in FIXTURES {
            seeds.push((name.to_owned(), text.as_bytes().to_vec()));
            let edited = match conflist::insert(text, &plugin) {
                Ok(Edit::Updated(t) | Edit::Converted(t)) => t,
                other => panic!("{name}: {other:?}"),
            };
            seeds.push((format!("{name}-with-plugin"), edited.into_bytes()));
        }
        seeds
    }

    #[test]
    fn seed_corpus() {
        ambit_testkit::corpus::run("conflist", generated(), conflist);
    }
}
