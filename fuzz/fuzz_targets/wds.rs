//! WDS: delta-xDS responses through the one WDS decoder into the node proxy's state and policies.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_node::fuzz::wds(data));
