//! The SOCKS5 listener's handshake (RFC 1928 greeting and CONNECT request).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ambit_node::fuzz::socks5(data));
