//! The CNI plugin's invocation: the `CNI_*` environment and the configuration on stdin.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_capture::fuzz::cni(data));
