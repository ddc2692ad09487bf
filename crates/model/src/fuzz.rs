//! Fuzz target body for manifest documents (`fuzz/fuzz_targets/manifest.rs`).
//!
//! Built only for `cargo fuzz` (`cfg(fuzzing)`) and this crate's tests, which replay the seed
//! corpus `fuzz/corpus/manifest/` through it on stable.
//!
//! The input is a manifest file as the directory source reads it: text, split into YAML
//! documents ([`manifest::parse`]), each typed into objects, applied to a [`ClusterState`] and
//! translated into WDS resources. Invariants checked:
//! - nothing panics, on any text;
//! - documents keep their order and a line number inside the text; each refusal says why;
//! - applying the second half of the objects and translating only the namespaces they touched
//!   ([`retranslate`]) gives exactly what a full [`translate`] gives;
//! - every workload's identity is in the mesh's trust domain;
//! - every resource served encodes and decodes back to itself.

use prost::Message;

use crate::translate::{MeshConfig, retranslate, translate};
use crate::{ClusterState, Object, manifest};

/// The body of the `manifest` target.
pub fn manifest(data: &[u8]) {
    // The directory source reads files as UTF-8 text and reports any other file as unreadable.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let documents = manifest::parse(text);
    let lines = text.split_inclusive('\n').count().max(1);
    let mut objects: Vec<Object> = Vec::new();
    let mut last_index = None;
    for document in documents {
        assert!(last_index < Some(document.index), "documents out of order");
        last_index = Some(document.index);
        assert!(
            (1..=lines + 1).contains(&document.line),
            "document {} starts at line {} of a {lines}-line text",
            document.index,
            document.line
        );
        match document.result {
            Ok(found) => objects.extend(found),
            Err(error) => assert!(!error.to_string().is_empty()),
        }
    }

    let config = MeshConfig::istio_defaults();
    let half = objects.len() / 2;
    let mut state = ClusterState::default();
    let mut rest = objects;
    let second = rest.split_off(half);
    for object in rest {
        let _ = state.apply(object);
    }
    let _ = state.take_dirty();
    let mut incremental = translate(&state, &config);
    for object in second {
        let _ = state.apply(object);
    }
    let dirty = state.take_dirty();
    let _ = retranslate(&state, &config, &mut incremental, &dirty);
    let full = translate(&state, &config);
    // Pod reports included, in the same order (fuzz/corpus/manifest/regression-pod-report-order:
    // an incremental translation appended a namespace's reports after the others').
    assert_eq!(
        incremental, full,
        "an incremental translation differs from a full one"
    );

    let trust_domain = config.trust_domain.to_string();
    for workload in full.workloads.values() {
        assert_eq!(workload.trust_domain, trust_domain);
    }
    for (name, address) in full.addresses() {
        let decoded = ambit_proto::workload::Address::decode(address.encode_to_vec().as_slice());
        assert_eq!(decoded.ok(), Some(address), "{name} does not round-trip");
    }
    for (name, authorization) in &full.authorizations {
        let decoded =
            ambit_proto::security::Authorization::decode(authorization.encode_to_vec().as_slice());
        assert_eq!(
            decoded.ok().as_ref(),
            Some(authorization),
            "{name} does not round-trip"
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn seed_corpus() {
        ambit_testkit::corpus::run("manifest", Vec::new(), super::manifest);
    }
}
