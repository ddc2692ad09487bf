//! One mesh and what the control plane must serve for it, shared by every source's tests.
//!
//! [`OBJECTS`] is a set of Kubernetes manifests (namespaces, service accounts, pods with their
//! status, services, an EndpointSlice, authorization and peer-authentication policies).
//! [`EXPECTED`] is the WDS the control plane serves for them, rendered by [`render`]. The
//! manifest-directory source is checked against it in `crates/control/tests`, the Kubernetes
//! source (the same objects created in a real API server) in the Kubernetes tier: one
//! expectation, so the two sources cannot drift apart.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ambit_proto::security::Authorization;
use ambit_proto::workload::Address;

/// The manifests.
pub const OBJECTS: &str = include_str!("../fixtures/shared-mesh.yaml");

/// What [`render`] gives for the WDS served for [`OBJECTS`].
pub const EXPECTED: &str = include_str!("../fixtures/shared-mesh.wds");

/// The served resources as text: each `Address` and each `Authorization` by resource name, in
/// name order, as its pretty-printed message.
pub fn render(
    addresses: &BTreeMap<String, Address>,
    authorizations: &BTreeMap<String, Authorization>,
) -> String {
    let mut out = String::new();
    for (name, address) in addresses {
        let _ = writeln!(out, "=== Address {name}\n{address:#?}");
    }
    for (name, authorization) in authorizations {
        let _ = writeln!(out, "=== Authorization {name}\n{authorization:#?}");
    }
    out
}

/// Panics unless `rendered` is [`EXPECTED`], showing the first lines that differ. With
/// `AMBIT_UPDATE_GOLDEN=1` it writes `rendered` as the new expectation instead (review the diff).
pub fn assert_expected(rendered: &str, source: &str) {
    if rendered == EXPECTED {
        return;
    }
    if std::env::var_os("AMBIT_UPDATE_GOLDEN").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/shared-mesh.wds");
        if let Err(e) = std::fs::write(path, rendered) {
            panic!("cannot write {path}: {e}");
        }
        eprintln!("wrote {path} from the {source} source");
        return;
    }
    let first = rendered
        .lines()
        .zip(EXPECTED.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| rendered.lines().count().min(EXPECTED.lines().count()));
    let around = |text: &str| {
        text.lines()
            .skip(first.saturating_sub(3))
            .take(8)
            .collect::<Vec<_>>()
            .join("\n")
    };
    panic!(
        "the {source} source serves other WDS than crates/testkit/fixtures/shared-mesh.wds; first difference at line {}:\n--- served\n{}\n--- expected\n{}\n--- whole served rendering\n{rendered}",
        first + 1,
        around(rendered),
        around(EXPECTED),
    );
}
