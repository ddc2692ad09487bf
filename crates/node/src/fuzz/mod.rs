//! Fuzz target bodies for the node proxy's decoders of untrusted bytes.
//!
//! Built only for `cargo fuzz` (`cfg(fuzzing)`) and this crate's tests, which replay each
//! target's seed corpus (`fuzz/corpus/<target>/`) through it on stable:
//!
//! | target | decoder | bytes from |
//! |---|---|---|
//! | `socks5` | [`crate::proxy::socks5::handshake`] | any local client of 15080 |
//! | `zds_node` | [`crate::inpod::zds::Request::decode`] | the capture agent's seqpacket socket |
//! | `wds` | [`ambit_xds::wds`] into [`crate::state::ProxyState`] and its policy index | the control plane's delta xDS |
//! | `hbone` | `ConnectHead`, `forwarded_for`, and the `Forwarded`/`Baggage`/`traceparent` encoders read back | a meshed peer's CONNECT; WDS names |

mod hbone;
mod socks5;
mod wds;
mod zds;

pub use hbone::hbone;
pub use socks5::socks5;
pub use wds::wds;
pub use zds::zds_node;

/// Splits `data` at NUL bytes into at most `n` fields (missing ones are empty).
fn fields(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut fields: Vec<&[u8]> = data.splitn(n, |b| *b == 0).collect();
    fields.resize(n, &[]);
    fields
}
