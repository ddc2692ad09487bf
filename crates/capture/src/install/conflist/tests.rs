#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;

const CALICO: &str = include_str!("../../../tests/fixtures/cni/10-calico.conflist");
const FLANNEL: &str = include_str!("../../../tests/fixtures/cni/10-flannel.conflist");
const BRIDGE: &str = include_str!("../../../tests/fixtures/cni/10-bridge.conf");

fn ours() -> Value {
    json!({
        "type": "ambit-cni",
        "ambit": {
            "agent_socket": "/var/run/istio-cni/pluginevent.sock",
            "exclude_namespaces": ["kube-system"],
        },
    })
}

fn plugins(text: &str) -> Vec<Value> {
    let conf: Value = serde_json::from_str(text).unwrap();
    conf["plugins"].as_array().unwrap().clone()
}

fn updated(edit: Edit) -> String {
    match edit {
        Edit::Updated(text) => text,
        other => panic!("expected an update, got {other:?}"),
    }
}

#[test]
fn inserting_into_a_list_appends_last_and_changes_no_other_byte() {
    for original in [CALICO, FLANNEL] {
        let edited = updated(insert(original, &ours()).unwrap());
        let before = plugins(original);
        let after = plugins(&edited);
        assert_eq!(after.len(), before.len() + 1);
        assert_eq!(
            after[..before.len()],
            before[..],
            "every other plugin, in order"
        );
        assert_eq!(after[before.len()], ours());
        // Every other top-level key survives.
        let (o, e): (Value, Value) = (
            serde_json::from_str(original).unwrap(),
            serde_json::from_str(&edited).unwrap(),
        );
        for (key, value) in o.as_object().unwrap() {
            if key != "plugins" {
                assert_eq!(&e[key], value, "key {key}");
            }
        }
        // The edit is one insertion: taking it out gives the file back byte for byte.
        assert_eq!(remove(&edited).unwrap().as_deref(), Some(original));
        assert!(
            edited.contains(",\n    {\"type\":\"ambit-cni\",\"ambit\":{"),
            "{edited}"
        );
    }
}

#[test]
fn inserting_twice_changes_nothing_the_second_time() {
    let once = updated(insert(CALICO, &ours()).unwrap());
    assert_eq!(insert(&once, &ours()).unwrap(), Edit::Unchanged);
    assert!(has_plugin(&once) && !has_plugin(CALICO));
}

#[test]
fn a_single_configuration_becomes_a_list_holding_it_and_the_plugin() {
    let Edit::Converted(list) = insert(BRIDGE, &ours()).unwrap() else {
        panic!("a .conf is converted")
    };
    let list_value: Value = serde_json::from_str(&list).unwrap();
    let original: Value = serde_json::from_str(BRIDGE).unwrap();
    assert_eq!(list_value["cniVersion"], "0.4.0");
    assert_eq!(list_value["name"], "mynet");
    assert_eq!(plugins(&list), [original, ours()]);
    assert_eq!(insert(&list, &ours()).unwrap(), Edit::Unchanged);
    // Taking the plugin out leaves the converted list with the original network alone.
    assert_eq!(plugins(&remove(&list).unwrap().unwrap()).len(), 1);
}

#[test]
fn a_single_configuration_of_ambits_own_type_is_refused_not_chained_twice() {
    // The fuzzer's find (fuzz/corpus/conflist/regression-single-ambit-conf): converting made a
    // list holding Ambit's plugin twice, which the next insertion rewrote, and so on.
    let text = "{\n  \"cniVersion\": \"1.0.0\",\n  \"name\": \"k8s-pod-network\",\n  \
                \"type\": \"ambit-cni\",\n  \"log_level\": \"info\"\n}\n";
    let err = insert(text, &ours()).unwrap_err();
    assert!(matches!(err, ConfError::OnlyAmbit), "{err:?}");
    assert!(err.to_string().contains("`ambit-cni`"), "{err}");
    assert_eq!(remove(text).unwrap(), None);
}

#[test]
fn stale_settings_and_duplicates_are_replaced_by_one_current_entry() {
    let mut stale = ours();
    stale["ambit"]["agent_socket"] = json!("/old/socket");
    let with_stale = updated(insert(FLANNEL, &stale).unwrap());
    let twice = updated(append(&with_stale, &stale).map(Edit::Updated).unwrap());
    let edited = updated(insert(&twice, &ours()).unwrap());
    let after = plugins(&edited);
    assert_eq!(after.len(), plugins(FLANNEL).len() + 1);
    assert_eq!(after.last(), Some(&ours()));
}

#[test]
fn lists_of_every_layout_get_the_plugin() {
    let cases = [
        (
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"ambit-cni","ambit":{"agent_socket":"/s","exclude_namespaces":[]}}]}"#,
        ),
        (
            r#"{"name":"n","plugins":[{"type":"a"}]}"#,
            r#"{"name":"n","plugins":[{"type":"a"}, {"type":"ambit-cni","ambit":{"agent_socket":"/s","exclude_namespaces":[]}}]}"#,
        ),
        (
            "{\"plugins\": [\n  {\"type\": \"a\"}\n]}",
            "{\"plugins\": [\n  {\"type\": \"a\"},\n  {\"type\":\"ambit-cni\",\"ambit\":{\"agent_socket\":\"/s\",\"exclude_namespaces\":[]}}\n]}",
        ),
    ];
    let plugin =
        json!({"type": "ambit-cni", "ambit": {"agent_socket": "/s", "exclude_namespaces": []}});
    for (before, after) in cases {
        assert_eq!(updated(insert(before, &plugin).unwrap()), after);
        assert_eq!(remove(after).unwrap().as_deref(), Some(before));
    }
}

#[test]
fn removing_from_a_list_without_the_plugin_changes_nothing() {
    assert_eq!(remove(CALICO).unwrap(), None);
    assert_eq!(remove(BRIDGE).unwrap(), None);
}

#[test]
fn malformed_configurations_are_errors_that_say_why() {
    let cases = [
        (r#"{"plugins": [ {"type": "a"} "#, "NotJson"),
        ("", "NotJson"),
        (r#"[{"type": "a"}]"#, "NotObject"),
        (r#"{"plugins": {"type": "a"}}"#, "PluginsNotList"),
        (r#"{"name": "n", "cniVersion": "1.0.0"}"#, "NotNetwork"),
    ];
    for (text, expected) in cases {
        let err = insert(text, &ours()).unwrap_err();
        assert!(
            format!("{err:?}").starts_with(expected),
            "{text:?}: {err:?}"
        );
        assert!(
            remove(text).is_err() || expected == "NotNetwork",
            "{text:?}"
        );
    }
}

#[test]
fn the_plugin_text_puts_type_first() {
    assert_eq!(
        plugin_text(&ours()),
        r#"{"type":"ambit-cni","ambit":{"agent_socket":"/var/run/istio-cni/pluginevent.sock","exclude_namespaces":["kube-system"]}}"#
    );
}

#[test]
fn removing_keeps_every_separator_as_it_was() {
    // Found by the `conflist` fuzz target: separators that differ from the first one were
    // rewritten as the first one, so removing the plugin did not give the file back.
    let before = "{\"plugins\": [\n    {\"type\": \"a\"},\n    {\"type\": \"b\"}  ,\n  {\"type\": \"c\"}\n]}";
    let edited = updated(insert(before, &ours()).unwrap());
    assert_eq!(remove(&edited).unwrap().as_deref(), Some(before));
    // Ours first, in the middle and last, and two in a row: the other elements keep their
    // separators, the list its layout.
    let p = plugin_text(&ours());
    let cases = [
        (
            format!("[{p},\n {{\"type\":\"a\"}} , {{\"type\":\"b\"}}]"),
            "[{\"type\":\"a\"} , {\"type\":\"b\"}]",
        ),
        (
            format!("[{{\"type\":\"a\"}},  {p} ,{{\"type\":\"b\"}}]"),
            "[{\"type\":\"a\"} ,{\"type\":\"b\"}]",
        ),
        (
            format!("[{p}, {p},{{\"type\":\"a\"}}]"),
            "[{\"type\":\"a\"}]",
        ),
        (format!("[ {p} ]"), "[ ]"),
        (format!("[\n  {p},\n  {p}\n]"), "[\n]"),
    ];
    for (list, expected) in cases {
        let text = format!("{{\"plugins\": {list}}}");
        let want = format!("{{\"plugins\": {expected}}}");
        assert_eq!(
            remove(&text).unwrap().as_deref(),
            Some(want.as_str()),
            "{text}"
        );
    }
}

#[test]
fn removing_from_an_empty_list_gives_its_layout_back() {
    // Found by the `conflist` fuzz target (fuzz/corpus/conflist/regression-empty-list-layout):
    // the plugin inserted into an empty list written over several lines was removed as `[]`, so
    // uninstalling did not give the file back byte for byte.
    for before in [
        "{\"plugins\": [\n\n  ]\n}\n",
        "{\"plugins\": [ ]}",
        "{\"plugins\": []}",
    ] {
        let edited = updated(insert(before, &ours()).unwrap());
        assert!(has_plugin(&edited), "{edited}");
        assert_eq!(
            remove(&edited).unwrap().as_deref(),
            Some(before),
            "{edited}"
        );
    }
}
