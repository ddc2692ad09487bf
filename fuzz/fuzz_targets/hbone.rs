//! HBONE CONNECT heads (authority, Forwarded, traceparent) and the metadata headers read back.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_node::fuzz::hbone(data));
