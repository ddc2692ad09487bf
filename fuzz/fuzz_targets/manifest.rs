//! Manifest documents (YAML, as the directory source reads them) → objects → WDS resources.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_model::fuzz::manifest(data));
