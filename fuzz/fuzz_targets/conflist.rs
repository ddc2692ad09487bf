//! The CNI configuration text editor: inserting and removing Ambit's plugin.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_capture::fuzz::conflist(data));
