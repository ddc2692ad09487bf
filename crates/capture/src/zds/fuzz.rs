//! Fuzz target body for ZDS as the capture agent reads it (`fuzz/fuzz_targets/zds_agent.rs`):
//! the node proxy's `ZdsHello` and its answers to requests.
//!
//! Built only for `cargo fuzz` (`cfg(fuzzing)`) and this crate's tests, which replay the seed
//! corpus `fuzz/corpus/zds_agent/` through it on stable.
//!
//! Input: byte 0 picks the message (even: the first datagram of a connection, odd: an answer),
//! the rest is the datagram. Invariants checked:
//! - nothing panics, on any datagram;
//! - a hello is accepted only as version 1, and a refusal says why;
//! - an answer is an acknowledgement, a rejection with the node proxy's reason, or not an
//!   answer; the node proxy's own encoding of the same answer reads the same.

use ambit_proto::zds::{Ack, Version, WorkloadResponse, ZdsHello, workload_response};
use prost::Message;

use super::server::{Reply, decode_hello, decode_reply};

/// The body of the `zds_agent` target.
pub fn zds_agent(data: &[u8]) {
    let Some((kind, datagram)) = data.split_first() else {
        return;
    };
    if kind % 2 == 0 {
        match decode_hello(datagram) {
            Ok(()) => {
                let hello = ZdsHello::decode(datagram).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(hello.version, Version::V1 as i32);
            }
            Err(reason) => assert!(!reason.is_empty()),
        }
        return;
    }
    let error = match decode_reply(datagram) {
        Reply::Acked => String::new(),
        Reply::Rejected(error) => {
            assert!(!error.is_empty());
            error
        }
        Reply::NotAnAck => return,
    };
    let expected = if error.is_empty() {
        Reply::Acked
    } else {
        Reply::Rejected(error.clone())
    };
    assert_eq!(decode_reply(&ack(error)), expected);
}

/// An answer as the node proxy encodes it.
fn ack(error: String) -> Vec<u8> {
    WorkloadResponse {
        payload: Some(workload_response::Payload::Ack(Ack { error })),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node proxy's messages: hellos of both versions, an acknowledgement, a refusal.
    fn generated() -> Vec<(String, Vec<u8>)> {
        let tagged = |kind: u8, bytes: Vec<u8>| {
            let mut seed = vec![kind];
            seed.extend(bytes);
            seed
        };
        let hello = |version: Version| {
            ZdsHello {
                version: version as i32,
            }
            .encode_to_vec()
        };
        vec![
            ("hello-v1".to_owned(), tagged(0, hello(Version::V1))),
            (
                "hello-unknown".to_owned(),
                tagged(0, hello(Version::NotUsed)),
            ),
            ("ack".to_owned(), tagged(1, ack(String::new()))),
            (
                "rejected".to_owned(),
                tagged(
                    1,
                    ack("AddWorkload \"uid-1\": the descriptor is not a network namespace".into()),
                ),
            ),
        ]
    }

    #[test]
    fn seed_corpus() {
        ambit_testkit::corpus::run("zds_agent", generated(), zds_agent);
    }
}
