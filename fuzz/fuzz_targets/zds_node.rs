//! ZDS as the node proxy reads it: the capture agent's requests and their descriptors.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_node::fuzz::zds_node(data));
