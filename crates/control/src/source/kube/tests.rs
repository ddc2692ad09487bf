//! The API source's event handling, on fixture objects (the watches against a real API server
//! are tested in the Kubernetes tier).

use serde_json::json;

use super::*;

fn pod(name: &str, ip: &str) -> Value {
    // As the API server sends list items: no apiVersion/kind.
    json!({"metadata": {"name": name, "namespace": "demo", "resourceVersion": "1"}, "status": {"podIP": ip}})
}

fn pods(state: &SharedState) -> Vec<String> {
    state.read(|s| s.pods.keys().map(|(_, n)| n.clone()).collect())
}

#[test]
fn relist_replaces_and_events_apply() {
    let state = SharedState::new();
    let mut mirror = KindMirror::new(Kind::Pod);
    mirror.handle(&state, watcher::Event::Init);
    mirror.handle(&state, watcher::Event::InitApply(pod("a", "10.0.0.1")));
    mirror.handle(&state, watcher::Event::InitApply(pod("b", "10.0.0.2")));
    assert!(pods(&state).is_empty(), "nothing applied before InitDone");
    mirror.handle(&state, watcher::Event::InitDone);
    assert_eq!(pods(&state), ["a", "b"]);

    mirror.handle(&state, watcher::Event::Apply(pod("c", "10.0.0.3")));
    mirror.handle(&state, watcher::Event::Delete(pod("a", "10.0.0.1")));
    assert_eq!(pods(&state), ["b", "c"]);

    // A malformed object is reported and changes nothing.
    let generation = state.generation();
    mirror.handle(
        &state,
        watcher::Event::Apply(json!({"metadata": {"name": "bad", "namespace": "demo"}, "spec": {"hostNetwork": "yes"}})),
    );
    assert_eq!(state.generation(), generation);

    // Re-list after a watch outage: b was deleted meanwhile, d added.
    mirror.handle(&state, watcher::Event::Init);
    mirror.handle(&state, watcher::Event::InitApply(pod("c", "10.0.0.3")));
    mirror.handle(&state, watcher::Event::InitApply(pod("d", "10.0.0.4")));
    mirror.handle(&state, watcher::Event::InitDone);
    assert_eq!(pods(&state), ["c", "d"]);
}

#[test]
fn relist_of_one_kind_leaves_others_alone() {
    let state = SharedState::new();
    let mut ns = KindMirror::new(Kind::Namespace);
    ns.handle(
        &state,
        watcher::Event::Apply(json!({"metadata": {"name": "demo"}})),
    );
    let mut pods_mirror = KindMirror::new(Kind::Pod);
    pods_mirror.handle(&state, watcher::Event::Init);
    pods_mirror.handle(&state, watcher::Event::InitDone);
    assert_eq!(state.read(|s| s.namespaces.len()), 1);
}

#[test]
fn api_resources_name_the_right_endpoints() {
    let r = api_resource(Kind::AuthorizationPolicy);
    assert_eq!(
        (r.api_version.as_str(), r.plural.as_str()),
        ("security.istio.io/v1", "authorizationpolicies")
    );
    let r = api_resource(Kind::EndpointSlice);
    assert_eq!(
        (r.api_version.as_str(), r.plural.as_str()),
        ("discovery.k8s.io/v1", "endpointslices")
    );
    assert_eq!(api_resource(Kind::Pod).api_version, "v1");
}
