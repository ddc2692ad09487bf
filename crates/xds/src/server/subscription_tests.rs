//! Table-like tests of the per-type delta state machine, without any I/O.

use super::*;
use crate::Resource;
use crate::server::Store;

const T: &str = "type.test/Thing";

fn res(name: &str, body: &str) -> Resource {
    Resource::new(
        name,
        prost_types::Any {
            type_url: T.into(),
            value: body.as_bytes().to_vec(),
        },
    )
}

fn request(subscribe: &[&str], initial: &[(&str, String)]) -> xds::DeltaDiscoveryRequest {
    xds::DeltaDiscoveryRequest {
        type_url: T.into(),
        resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        initial_resource_versions: initial
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect(),
        ..Default::default()
    }
}

/// (names sent, aliases of each, names removed), or `None` for "no response".
type Seen = Option<(Vec<(String, Vec<String>)>, Vec<String>)>;

fn diff(sub: &mut TypeSubscription, store: &Store) -> Seen {
    let state = store.read();
    let current = state.get(T);
    if !sub.has_work(current) {
        return None;
    }
    sub.diff(current).map(|delta| {
        let sent = delta
            .resources
            .into_iter()
            .map(|r| (r.name, r.aliases))
            .collect();
        (sent, delta.removed)
    })
}

fn names(sent: &[&str]) -> Vec<(String, Vec<String>)> {
    sent.iter().map(|n| (n.to_string(), vec![])).collect()
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn wildcard_gets_everything_then_only_changes() {
    let store = Store::new();
    store.apply(T, vec![res("a", "1"), res("b", "1")], vec![]);
    let mut sub = TypeSubscription::new(&request(&[], &[]));
    assert_eq!(diff(&mut sub, &store), Some((names(&["a", "b"]), vec![])));
    assert_eq!(diff(&mut sub, &store), None, "nothing changed");

    store.apply(T, vec![res("a", "2"), res("c", "1")], vec!["b".into()]);
    assert_eq!(
        diff(&mut sub, &store),
        Some((names(&["a", "c"]), strings(&["b"])))
    );

    store.replace_all(T, vec![res("a", "2"), res("d", "1")]);
    assert_eq!(
        diff(&mut sub, &store),
        Some((names(&["d"]), strings(&["c"])))
    );
}

#[test]
fn first_response_is_owed_even_when_empty() {
    let store = Store::new();
    let mut sub = TypeSubscription::new(&request(&["*"], &[]));
    assert_eq!(diff(&mut sub, &store), Some((vec![], vec![])));
    assert_eq!(diff(&mut sub, &store), None);
}

#[test]
fn initial_versions_suppress_unchanged_resources() {
    let store = Store::new();
    store.apply(T, vec![res("a", "1"), res("b", "1"), res("c", "1")], vec![]);
    let version = |name: &str| format_version(store.get(T, name).map(|r| r.version()).unwrap_or(0));
    let initial = [
        ("a", version("a")),
        ("b", "some-other-server's-version".to_string()),
        ("gone", version("a")),
    ];
    let mut sub = TypeSubscription::new(&request(&[], &initial));
    assert_eq!(
        diff(&mut sub, &store),
        Some((names(&["b", "c"]), strings(&["gone"])))
    );
}

#[test]
fn named_subscriptions_by_name_and_alias() {
    let store = Store::new();
    store.apply(
        T,
        vec![res("w1", "1").with_aliases(["/10.0.0.1"]), res("w2", "1")],
        vec![],
    );
    let mut sub = TypeSubscription::new(&request(&["/10.0.0.1", "w2", "nope"], &[]));
    let sent = vec![
        ("w1".to_string(), strings(&["/10.0.0.1"])),
        ("w2".to_string(), vec![]),
    ];
    assert_eq!(diff(&mut sub, &store), Some((sent, strings(&["nope"]))));

    // Changes to resources nobody asked for are not sent.
    store.apply(T, vec![res("w3", "1")], vec![]);
    assert_eq!(diff(&mut sub, &store), None);

    // The unknown name appears as an alias: it is answered.
    store.apply(T, vec![res("w3", "1").with_aliases(["nope"])], vec![]);
    assert_eq!(
        diff(&mut sub, &store),
        Some((vec![("w3".into(), strings(&["nope"]))], vec![]))
    );

    // The alias moves away: the holder is removed, and the alias answered "not found".
    store.apply(T, vec![res("w1", "1")], vec![]);
    assert_eq!(
        diff(&mut sub, &store),
        Some((vec![], strings(&["/10.0.0.1", "w1"])))
    );
}

#[test]
fn resubscribing_answers_again_and_unsubscribing_is_silent() {
    let store = Store::new();
    store.apply(T, vec![res("w1", "1")], vec![]);
    let mut sub = TypeSubscription::new(&request(&["w1", "nope"], &[]));
    assert_eq!(
        diff(&mut sub, &store),
        Some((names(&["w1"]), strings(&["nope"])))
    );

    sub.update(&strings(&["nope", "w1"]), &[]);
    assert_eq!(
        diff(&mut sub, &store),
        Some((names(&["w1"]), strings(&["nope"])))
    );

    sub.update(&[], &strings(&["w1"]));
    assert_eq!(diff(&mut sub, &store), None);
    store.apply(T, vec![res("w1", "2")], vec![]);
    assert_eq!(diff(&mut sub, &store), None, "w1 is no longer subscribed");

    sub.update(&strings(&["w1"]), &[]);
    assert_eq!(diff(&mut sub, &store), Some((names(&["w1"]), vec![])));
}

#[test]
fn wildcard_can_be_added_and_dropped() {
    let store = Store::new();
    store.apply(T, vec![res("a", "1"), res("b", "1")], vec![]);
    let mut sub = TypeSubscription::new(&request(&["a"], &[]));
    assert_eq!(diff(&mut sub, &store), Some((names(&["a"]), vec![])));
    sub.update(&strings(&["*"]), &[]);
    assert_eq!(diff(&mut sub, &store), Some((names(&["b"]), vec![])));
    sub.update(&[], &strings(&["*"]));
    store.apply(T, vec![res("a", "2"), res("b", "2")], vec![]);
    assert_eq!(diff(&mut sub, &store), Some((names(&["a"]), vec![])));
}

#[test]
fn a_subscriber_that_fell_behind_the_log_still_converges() {
    let store = Store::new();
    store.apply(T, vec![res("keep", "1"), res("drop", "1")], vec![]);
    let mut sub = TypeSubscription::new(&request(&[], &[]));
    assert!(diff(&mut sub, &store).is_some());
    store.apply(T, vec![], vec!["drop".into()]);
    for i in 0..3000 {
        store.apply(T, vec![res("churn", &i.to_string())], vec![]);
    }
    assert_eq!(
        diff(&mut sub, &store),
        Some((names(&["churn"]), strings(&["drop"])))
    );
}
