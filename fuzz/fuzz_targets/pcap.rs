//! `ambit verify`'s capture decoders: pcap files, link/IP/TCP headers, reassembly, TLS records.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_verify::fuzz::pcap(data));
