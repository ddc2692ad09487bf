//! Property test of the delta state machine against a model client: after every push the
//! client holds exactly what its subscriptions select from the store, and no push carries a
//! resource the client already held or removes one it did not hold (unless it asked again).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use prost::Message as _;

use super::*;
use crate::Resource;
use crate::server::Store;

const T: &str = "type.test/Thing";
const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
const ALIASES: [&str; 3] = ["/1", "/2", "/3"];
/// What a client may subscribe to: canonical names, aliases, and a name nothing has.
const KEYS: [&str; 9] = ["a", "b", "c", "d", "e", "/1", "/2", "/3", "nope"];

#[derive(Debug, Clone)]
enum Op {
    Put {
        name: usize,
        body: u8,
        alias: Option<usize>,
    },
    Remove(usize),
    Diff,
    Release,
    Subscribe(usize),
    Unsubscribe(usize),
    Wildcard(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..NAMES.len(), 0..3u8, proptest::option::of(0..ALIASES.len()))
            .prop_map(|(name, body, alias)| Op::Put { name, body, alias }),
        2 => (0..NAMES.len()).prop_map(Op::Remove),
        4 => Just(Op::Diff),
        1 => Just(Op::Release),
        2 => (0..KEYS.len()).prop_map(Op::Subscribe),
        1 => (0..KEYS.len()).prop_map(Op::Unsubscribe),
        1 => any::<bool>().prop_map(Op::Wildcard),
    ]
}

/// The client's copy: name → (version, aliases).
type Held = BTreeMap<String, (u64, Vec<String>)>;

/// What the subscriptions select from the store right now.
fn expected(store: &Store, wildcard: bool, names: &BTreeSet<&str>) -> Held {
    let state = store.read();
    let current = state.get(T);
    current
        .resources
        .iter()
        .filter_map(|(name, entry)| {
            let matched: Vec<String> = entry
                .aliases
                .iter()
                .filter(|a| names.contains(a.as_str()) && current.resolve(a) == Some(name))
                .cloned()
                .collect();
            let wanted = wildcard || names.contains(&**name) || !matched.is_empty();
            wanted.then(|| (name.to_string(), (entry.version, matched)))
        })
        .collect()
}

fn run(wildcard_first: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = Store::new();
    let mut wildcard = wildcard_first;
    let mut names: BTreeSet<&str> = BTreeSet::new();
    let first = if wildcard {
        Vec::new()
    } else {
        names.insert("a");
        vec!["a".to_string()]
    };
    let request = xds::DeltaDiscoveryRequest {
        type_url: T.into(),
        resource_names_subscribe: first,
        ..Default::default()
    };
    let mut sub = TypeSubscription::new(&request, store.read().get(T));
    let mut client = Held::new();
    // Names asked for again since the last push: their resources may be sent unchanged.
    let mut again: BTreeSet<&str> = BTreeSet::new();
    for op in ops.into_iter().chain([Op::Diff]) {
        match op {
            Op::Put { name, body, alias } => {
                let resource = Resource::new(
                    NAMES[name],
                    prost_types::Any {
                        type_url: T.into(),
                        value: vec![body],
                    },
                )
                .with_aliases(alias.map(|a| ALIASES[a]));
                store.apply(T, vec![resource], vec![]);
            }
            Op::Remove(name) => store.apply(T, vec![], vec![NAMES[name].to_string()]),
            Op::Release => {
                sub.release_if_behind(store.read().get(T));
            }
            Op::Subscribe(key) => {
                if !names.insert(KEYS[key]) {
                    again.insert(KEYS[key]);
                }
                sub.update(store.read().get(T), &[KEYS[key].to_string()], &[]);
            }
            Op::Unsubscribe(key) => {
                names.remove(KEYS[key]);
                sub.update(store.read().get(T), &[], &[KEYS[key].to_string()]);
                // By protocol the client drops what it no longer subscribes to.
                client = forget_unwanted(&client, wildcard, &names);
            }
            Op::Wildcard(on) => {
                let change = ["*".to_string()];
                let (subscribe, unsubscribe): (&[String], &[String]) =
                    if on { (&change, &[]) } else { (&[], &change) };
                sub.update(store.read().get(T), subscribe, unsubscribe);
                wildcard = on;
                client = forget_unwanted(&client, wildcard, &names);
            }
            Op::Diff => {
                let state = store.read();
                let current = state.get(T);
                if sub.has_work(current)
                    && let Some(delta) = sub.diff(current)
                {
                    for wire in delta.resources.as_slice() {
                        let r = xds::Resource::decode(wire.clone()).expect("valid Resource");
                        let version =
                            crate::resource::parse_version(&r.version).expect("our own version");
                        let held = client.get(&r.name);
                        let asked_again = again.contains(r.name.as_str())
                            || r.aliases.iter().any(|a| again.contains(a.as_str()))
                            || held.is_some_and(|(_, aliases)| {
                                aliases.iter().any(|a| again.contains(a.as_str()))
                            });
                        prop_assert!(
                            asked_again || held != Some(&(version, r.aliases.clone())),
                            "{} sent again unchanged",
                            r.name
                        );
                        client.insert(r.name, (version, r.aliases));
                    }
                    for name in delta.removed {
                        let missing =
                            names.contains(name.as_str()) && current.resolve(&name).is_none();
                        prop_assert!(
                            client.remove(&name).is_some() || missing,
                            "{name} removed but not held"
                        );
                    }
                }
                drop(state);
                again.clear();
                prop_assert_eq!(&client, &expected(&store, wildcard, &names));
            }
        }
    }
    Ok(())
}

/// The client's copy after it unsubscribed: only what it still subscribes to, as it was told.
fn forget_unwanted(client: &Held, wildcard: bool, names: &BTreeSet<&str>) -> Held {
    client
        .iter()
        .filter(|(name, (_, aliases))| {
            wildcard
                || names.contains(name.as_str())
                || aliases.iter().any(|a| names.contains(a.as_str()))
        })
        .map(|(name, (version, aliases))| {
            let kept = aliases
                .iter()
                .filter(|a| names.contains(a.as_str()))
                .cloned()
                .collect();
            (name.clone(), (*version, kept))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn clients_converge_with_no_redundant_pushes(
        wildcard in any::<bool>(),
        ops in proptest::collection::vec(op(), 0..60),
    ) {
        run(wildcard, ops)?;
    }
}
