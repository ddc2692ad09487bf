//! Table-like tests of the per-type delta state machine, without any I/O.

use prost::Message as _;

use super::*;
use crate::Resource;
use crate::resource::format_version;
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
            .as_slice()
            .iter()
            .map(|wire| {
                let r = xds::Resource::decode(wire.clone()).expect("a valid Resource");
                (r.name, r.aliases)
            })
            .collect();
        (sent, delta.removed)
    })
}

fn subscribe(store: &Store, request: &xds::DeltaDiscoveryRequest) -> TypeSubscription {
    TypeSubscription::new(request, store.read().get(T))
}

fn update(sub: &mut TypeSubscription, store: &Store, subscribe: &[&str], unsubscribe: &[&str]) {
    sub.update(
        store.read().get(T),
        &strings(subscribe),
        &strings(unsubscribe),
    );
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
    let mut sub = subscribe(&store, &request(&[], &[]));
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
    let mut sub = subscribe(&store, &request(&["*"], &[]));
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
    let mut sub = subscribe(&store, &request(&[], &initial));
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
    let mut sub = subscribe(&store, &request(&["/10.0.0.1", "w2", "nope"], &[]));
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
    let mut sub = subscribe(&store, &request(&["w1", "nope"], &[]));
    assert_eq!(
        diff(&mut sub, &store),
        Some((names(&["w1"]), strings(&["nope"])))
    );

    update(&mut sub, &store, &["nope", "w1"], &[]);
    assert_eq!(
        diff(&mut sub, &store),
        Some((names(&["w1"]), strings(&["nope"])))
    );

    update(&mut sub, &store, &[], &["w1"]);
    assert_eq!(diff(&mut sub, &store), None);
    store.apply(T, vec![res("w1", "2")], vec![]);
    assert_eq!(diff(&mut sub, &store), None, "w1 is no longer subscribed");

    update(&mut sub, &store, &["w1"], &[]);
    assert_eq!(diff(&mut sub, &store), Some((names(&["w1"]), vec![])));
}

#[test]
fn wildcard_can_be_added_and_dropped() {
    let store = Store::new();
    store.apply(T, vec![res("a", "1"), res("b", "1")], vec![]);
    let mut sub = subscribe(&store, &request(&["a"], &[]));
    assert_eq!(diff(&mut sub, &store), Some((names(&["a"]), vec![])));
    update(&mut sub, &store, &["*"], &[]);
    assert_eq!(diff(&mut sub, &store), Some((names(&["b"]), vec![])));
    update(&mut sub, &store, &[], &["*"]);
    store.apply(T, vec![res("a", "2"), res("b", "2")], vec![]);
    assert_eq!(diff(&mut sub, &store), Some((names(&["a"]), vec![])));
}

#[test]
fn a_subscriber_that_fell_behind_the_log_still_converges() {
    let store = Store::new();
    store.apply(T, vec![res("keep", "1"), res("drop", "1")], vec![]);
    let mut sub = subscribe(&store, &request(&[], &[]));
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

#[test]
fn an_up_to_date_wildcard_client_is_tracked_by_position_not_by_name() {
    let store = Store::new();
    let many: Vec<Resource> = (0..100).map(|i| res(&format!("r{i:03}"), "1")).collect();
    store.apply(T, many, vec![]);
    let mut sub = subscribe(&store, &request(&[], &[]));
    let (sent, removed) = diff(&mut sub, &store).expect("the whole type");
    assert_eq!((sent.len(), removed.len()), (100, 0));
    assert_eq!(sub.tracked(), 0, "nothing recorded per resource");

    // Added and removed between two diffs: the client never had it, so no removal.
    store.apply(T, vec![res("brief", "1")], vec![]);
    store.apply(T, vec![], vec!["brief".into()]);
    // Changed and changed back: the client holds that version already.
    store.apply(T, vec![res("r001", "2")], vec![]);
    store.apply(T, vec![res("r001", "1")], vec![]);
    assert_eq!(diff(&mut sub, &store), None);

    store.apply(
        T,
        vec![res("r002", "2"), res("new", "1")],
        vec!["r003".into()],
    );
    assert_eq!(
        diff(&mut sub, &store),
        Some((names(&["new", "r002"]), strings(&["r003"])))
    );
    assert_eq!(sub.tracked(), 0);
}

#[test]
fn a_wildcard_client_subscribing_by_alias_records_only_that() {
    let store = Store::new();
    store.apply(
        T,
        vec![
            res("w1", "1").with_aliases(["/10.0.0.1"]),
            res("w2", "1").with_aliases(["/10.0.0.2"]),
        ],
        vec![],
    );
    let mut sub = subscribe(&store, &request(&["*", "/10.0.0.1"], &[]));
    let sent = vec![
        ("w1".to_string(), strings(&["/10.0.0.1"])),
        ("w2".to_string(), vec![]),
    ];
    assert_eq!(diff(&mut sub, &store), Some((sent, vec![])));
    assert_eq!(sub.sent.len(), 1, "only the aliased copy is recorded");

    // Subscribing by a canonical name the client already holds sends nothing; asking again
    // does.
    update(&mut sub, &store, &["w2"], &[]);
    assert_eq!(diff(&mut sub, &store), None);
    update(&mut sub, &store, &["w2"], &[]);
    assert_eq!(diff(&mut sub, &store), Some((names(&["w2"]), vec![])));

    // The alias moves to w2: w1 is sent again without it, w2 with it.
    store.apply(
        T,
        vec![
            res("w1", "1"),
            res("w2", "1").with_aliases(["/10.0.0.2", "/10.0.0.1"]),
        ],
        vec![],
    );
    let sent = vec![
        ("w1".to_string(), vec![]),
        ("w2".to_string(), strings(&["/10.0.0.1"])),
    ];
    assert_eq!(diff(&mut sub, &store), Some((sent, vec![])));
    assert_eq!(sub.sent.len(), 1);
}

#[test]
fn dropping_the_wildcard_keeps_what_was_named_as_it_was_held() {
    let store = Store::new();
    store.apply(T, vec![res("a", "1"), res("b", "1")], vec![]);
    let mut sub = subscribe(&store, &request(&["*", "a"], &[]));
    assert_eq!(diff(&mut sub, &store), Some((names(&["a", "b"]), vec![])));
    // `a` changes before the client drops the wildcard: it still holds the old `a`.
    store.apply(T, vec![res("a", "2"), res("b", "2")], vec![]);
    update(&mut sub, &store, &[], &["*"]);
    assert_eq!(diff(&mut sub, &store), Some((names(&["a"]), vec![])));
    store.apply(T, vec![], vec!["a".into(), "b".into()]);
    assert_eq!(diff(&mut sub, &store), Some((vec![], strings(&["a"]))));
}

#[test]
fn subscribing_and_unsubscribing_the_wildcard_at_once_asks_for_nothing_yet() {
    // ztunnel's opening request with on-demand lookups enabled.
    let store = Store::new();
    store.apply(T, vec![res("w1", "1"), res("w2", "1")], vec![]);
    let mut first = request(&["*"], &[]);
    first.resource_names_unsubscribe = strings(&["*"]);
    let mut sub = subscribe(&store, &first);
    assert_eq!(diff(&mut sub, &store), Some((vec![], vec![])));
    store.apply(T, vec![res("w1", "2")], vec![]);
    assert_eq!(diff(&mut sub, &store), None);
    update(&mut sub, &store, &["w2"], &[]);
    assert_eq!(diff(&mut sub, &store), Some((names(&["w2"]), vec![])));
}

#[test]
fn a_lagging_client_lets_go_of_the_log_and_still_converges() {
    let store = Store::new();
    store.apply(T, vec![res("keep", "1"), res("drop", "1")], vec![]);
    let mut sub = subscribe(&store, &request(&[], &[]));
    assert!(diff(&mut sub, &store).is_some());
    store.apply(T, vec![], vec!["drop".into()]);
    store.apply(T, vec![res("brief", "1")], vec![]);
    store.apply(T, vec![], vec!["brief".into()]);
    for i in 0..3000 {
        store.apply(T, vec![res("churn", &i.to_string())], vec![]);
    }
    assert!(sub.release_if_behind(store.read().get(T)));
    assert!(sub.cursor.is_none(), "let go of the log");
    assert!(!sub.baseline);
    assert_eq!(
        diff(&mut sub, &store),
        Some((names(&["churn"]), strings(&["drop"])))
    );
    assert!(sub.baseline && sub.cursor.is_some(), "back on a baseline");
    assert_eq!(sub.tracked(), 0);
}

#[test]
fn clients_holding_nothing_current_share_the_whole_list() {
    let store = Store::new();
    store.apply(T, vec![res("a", "1"), res("b", "1")], vec![]);
    // What ztunnel sends on reconnecting: names with versions it does not track.
    let initial = [("a", String::new()), ("gone", String::new())];
    let mut subs = [
        subscribe(&store, &request(&[], &initial)),
        subscribe(&store, &request(&[], &[])),
    ];
    let state = store.read();
    let lists: Vec<Delta> = subs
        .iter_mut()
        .map(|sub| sub.diff(state.get(T)).expect("the whole type"))
        .collect();
    match (&lists[0].resources, &lists[1].resources) {
        (Resources::Whole(first), Resources::Whole(second)) => {
            assert!(Arc::ptr_eq(first, second));
            assert_eq!(first.len(), 2);
        }
        other => panic!("not shared: {other:?}"),
    }
    assert_eq!(lists[0].removed, ["gone"]);
    assert!(lists[1].removed.is_empty());
}
