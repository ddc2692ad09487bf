//! Fuzz target body for `ambit verify`'s decoders of captured bytes (`fuzz/fuzz_targets/pcap.rs`).
//!
//! Built only for `cargo fuzz` (`cfg(fuzzing)`) and this crate's tests, which replay the seed
//! corpus `fuzz/corpus/pcap/` through it on stable.
//!
//! An input that starts with a pcap magic number is read as a whole file ([`pcap::parse`]); any
//! other input is cut into frames and written with [`pcap::Writer`] first, so the fuzzer reaches
//! the link, IP and TCP decoders without having to find a file header. Either way the segments
//! are assembled into flows and classified ([`flows::assemble`]). Invariants checked:
//! - nothing panics, on any input;
//! - every packet is counted exactly once: a segment, ignored, or malformed (with its index);
//! - a segment never holds more payload than the IP header says it carried;
//! - a file this crate's writer wrote always reads back, with every packet;
//! - reassembly keeps each flow's chunks in order and non-overlapping, counts at least the bytes
//!   it holds, and calls a direction TLS only when it holds bytes.

use std::time::Duration;

use crate::flows::{self, Class};
use crate::pcap::{self, LinkType, Trace};

/// Every link type the reader knows, indexed by the selector byte of a framed input.
const LINKS: [LinkType; 6] = [
    LinkType::Raw,
    LinkType::Ethernet,
    LinkType::LinuxSll,
    LinkType::LinuxSll2,
    LinkType::Ipv4,
    LinkType::Ipv6,
];

/// The body of the `pcap` target.
pub fn pcap(data: &[u8]) {
    let trace = match data.get(..4) {
        Some(magic) if is_pcap_magic(magic) => match pcap::parse(data) {
            Ok(trace) => trace,
            Err(error) => {
                // Every refusal says what it refused.
                assert!(!error.to_string().is_empty());
                return;
            }
        },
        _ => {
            let (file, frames) = written(data);
            let trace = pcap::parse(&file)
                .unwrap_or_else(|e| panic!("a file our writer wrote does not read back: {e}"));
            assert_eq!(trace.packets, frames, "packets written and read differ");
            trace
        }
    };
    check_trace(&trace);
    check_flows(&trace);
}

fn is_pcap_magic(magic: &[u8]) -> bool {
    let word = u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]);
    [0xa1b2_c3d4u32, 0xa1b2_3c4d, 0x0a0d_0d0a]
        .iter()
        .any(|m| word == *m || word == m.swap_bytes())
}

/// `data` as a capture: byte 0 picks the link type, the rest is frames separated by the
/// two-byte marker `0xff 0xfe` (so a fuzzer can grow and split them).
fn written(data: &[u8]) -> (Vec<u8>, usize) {
    let (selector, rest) = data.split_first().map_or((0, &[][..]), |(s, r)| (*s, r));
    let link = LINKS[usize::from(selector) % LINKS.len()];
    let mut writer = pcap::Writer::new(Vec::new(), link, 65_535)
        .unwrap_or_else(|e| panic!("writing to memory failed: {e}"));
    let mut frames = 0;
    for (n, frame) in split_frames(rest).into_iter().enumerate() {
        let timestamp = Duration::from_millis(u64::try_from(n).unwrap_or(u64::MAX));
        writer
            .write_packet(timestamp, frame, frame.len())
            .unwrap_or_else(|e| panic!("writing to memory failed: {e}"));
        frames += 1;
    }
    let file = writer
        .finish()
        .unwrap_or_else(|e| panic!("writing to memory failed: {e}"));
    (file, frames)
}

fn split_frames(bytes: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == 0xff && bytes[i + 1] == 0xfe {
            frames.push(&bytes[start..i]);
            i += 2;
            start = i;
        } else {
            i += 1;
        }
    }
    frames.push(&bytes[start..]);
    frames
}

fn check_trace(trace: &Trace) {
    assert_eq!(
        trace.segments.len() + trace.ignored + trace.malformed.len(),
        trace.packets,
        "every packet is a segment, ignored or malformed"
    );
    let mut indexes: Vec<usize> = trace.segments.iter().map(|s| s.index).collect();
    indexes.extend(trace.malformed.iter().map(|m| m.index));
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(
        indexes.len(),
        trace.segments.len() + trace.malformed.len(),
        "a packet counted twice"
    );
    assert!(indexes.iter().all(|i| *i < trace.packets));
    for segment in &trace.segments {
        assert!(
            segment.payload.len() as u64 <= u64::from(segment.payload_len),
            "segment {} holds {} bytes but says it carried {}",
            segment.index,
            segment.payload.len(),
            segment.payload_len
        );
    }
    for malformed in &trace.malformed {
        assert!(malformed.to_string().contains(&malformed.index.to_string()));
    }
}

fn check_flows(trace: &Trace) {
    let flows = flows::assemble(&trace.segments);
    let with_payload = trace.segments.iter().filter(|s| s.payload_len > 0).count();
    let counted: usize = flows
        .iter()
        .map(|f| f.to_server.packets + f.to_client.packets)
        .sum();
    assert_eq!(
        counted, with_payload,
        "every segment with payload is in one flow"
    );
    for flow in &flows {
        for stream in [&flow.to_server, &flow.to_client] {
            let mut end = 0u64;
            let mut held = 0u64;
            for (n, chunk) in stream.chunks().iter().enumerate() {
                assert!(
                    n == 0 || chunk.offset >= end,
                    "chunks overlap or go backwards"
                );
                end = chunk.offset + chunk.bytes.len() as u64;
                held += chunk.bytes.len() as u64;
            }
            assert!(stream.bytes >= held, "a stream holds more than it counted");
            if stream.chunks().is_empty() {
                assert_eq!(stream.class, Class::Empty);
            } else {
                assert_ne!(stream.class, Class::Empty);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_at_the_marker() {
        assert_eq!(
            split_frames(&[1, 0xff, 0xfe, 2, 3, 0xff]),
            [&[1][..], &[2, 3, 0xff][..]]
        );
        assert_eq!(split_frames(&[]), [&[0u8; 0][..]]);
    }
}
