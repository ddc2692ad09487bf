//! ZDS as the capture agent reads it: the node proxy's hello and acknowledgements.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_capture::fuzz::zds_agent(data));
