//! TCP segments → connections → what each direction carried.
//!
//! Segments are grouped by their 4-tuple into [`Flow`]s (a new SYN on a closed tuple starts a
//! new flow), each direction's payload is put back in sequence order, and each direction is
//! classified ([`Class`]): a stream of TLS records, plaintext, nothing, or too little captured
//! to tell (the `tls` submodule holds the record walker).
//!
//! Invariants:
//! - Retransmitted and duplicated bytes are counted and kept once (a retransmission fills in
//!   what a segment cut by the snap length missed); a hole in the sequence space is never
//!   papered over: bytes after it start a new [`Chunk`] whose first byte is not assumed to be a
//!   record boundary, and the direction is marked incomplete.
//! - `Plaintext` is only said on evidence: bytes that cannot be TLS records from a known record
//!   boundary, a run too long to sit inside one record with no header in it, or text.
//!   Anything less is `Incomplete`, never `Tls`.
//! - Sequence offsets are taken modulo 2^32 from the stream's start: a direction carrying more
//!   than 4 GiB within one capture is not reassembled correctly.

#[cfg(test)]
mod tests;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use ambit_proto::ports::HBONE;

use crate::pcap::{Segment, TcpFlags};

/// One TCP connection as captured.
#[derive(Debug, Clone)]
pub struct Flow {
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// The handshake (a SYN or SYN-ACK) was captured, so which end is the client is known
    /// rather than guessed from the ports.
    pub opened: bool,
    /// A FIN or RST was captured.
    pub closed: bool,
    pub first_seen: Duration,
    pub last_seen: Duration,
    /// Client → server.
    pub to_server: Stream,
    /// Server → client.
    pub to_client: Stream,
}

/// One direction of a flow.
#[derive(Debug, Clone)]
pub struct Stream {
    /// Segments that carried payload, retransmissions included.
    pub packets: usize,
    /// Distinct payload bytes on the wire (retransmissions counted once).
    pub bytes: u64,
    /// Every byte from the stream's first was captured, in order, without holes.
    pub complete: bool,
    pub class: Class,
    chunks: Vec<Chunk>,
}

/// What a direction carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// A stream of TLS records.
    Tls,
    /// Bytes that are not TLS records.
    Plaintext,
    /// No payload at all.
    Empty,
    /// Payload, but too little of it captured to tell.
    Incomplete,
}

/// A run of contiguous bytes of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the first byte from the stream's first (or first captured) byte.
    pub offset: u64,
    /// The first byte is the stream's first byte, so a record boundary.
    pub at_start: bool,
    pub bytes: Vec<u8>,
}

/// Groups `segments` (from one or more captures) into flows, ordered by first packet.
pub fn assemble<'a>(segments: impl IntoIterator<Item = &'a Segment>) -> Vec<Flow> {
    let mut segments: Vec<&Segment> = segments.into_iter().collect();
    // Stable: segments of one file keep their order when timestamps tie.
    segments.sort_by_key(|s| s.timestamp);
    let mut open: HashMap<(SocketAddr, SocketAddr), FlowBuilder<'_>> = HashMap::new();
    let mut done = Vec::new();
    for segment in segments {
        let key = canonical(segment.src, segment.dst);
        if let Some(builder) = open.get(&key)
            && builder.is_new_connection(segment)
            && let Some(old) = open.remove(&key)
        {
            done.push(old.finish());
        }
        open.entry(key)
            .or_insert_with(|| FlowBuilder::new(key))
            .push(segment);
    }
    done.extend(open.into_values().map(FlowBuilder::finish));
    done.sort_by_key(|f| (f.first_seen, f.client, f.server));
    done
}

// === impl Flow, Stream ===

impl Flow {
    /// Bytes on the wire in both directions.
    pub fn bytes(&self) -> u64 {
        self.to_server.bytes + self.to_client.bytes
    }

    /// Whether `needle` appears in the captured payload of either direction.
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.to_server.contains(needle) || self.to_client.contains(needle)
    }
}

impl Stream {
    /// Whether `needle` appears in this direction's payload as captured (not across a hole).
    pub fn contains(&self, needle: &[u8]) -> bool {
        if needle.is_empty() {
            return true;
        }
        self.chunks
            .iter()
            .any(|c| c.bytes.windows(needle.len()).any(|w| w == needle))
    }

    /// The contiguous runs of payload, in sequence order.
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }
}

// === building ===

fn canonical(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b { (a, b) } else { (b, a) }
}

struct FlowBuilder<'a> {
    /// The lower endpoint of the canonical tuple and the higher one.
    ends: [SocketAddr; 2],
    /// Per end: what it sent.
    sent: [Side<'a>; 2],
    /// Which end sent the first pure SYN, or was answered by a SYN-ACK.
    client: Option<usize>,
    first_seen: Duration,
    last_seen: Duration,
}

#[derive(Default)]
struct Side<'a> {
    /// Sequence number of this end's SYN.
    isn: Option<u32>,
    segments: Vec<&'a Segment>,
    closed: bool,
}

impl<'a> FlowBuilder<'a> {
    fn new((low, high): (SocketAddr, SocketAddr)) -> Self {
        Self {
            ends: [low, high],
            sent: [Side::default(), Side::default()],
            client: None,
            first_seen: Duration::MAX,
            last_seen: Duration::ZERO,
        }
    }

    fn side_of(&self, segment: &Segment) -> usize {
        usize::from(segment.src != self.ends[0])
    }

    /// A pure SYN on a tuple that already saw a connection close or open with another ISN.
    fn is_new_connection(&self, segment: &Segment) -> bool {
        let syn = segment.flags.contains(TcpFlags::SYN) && !segment.flags.contains(TcpFlags::ACK);
        if !syn {
            return false;
        }
        let side = &self.sent[self.side_of(segment)];
        let closed = self.sent.iter().any(|s| s.closed);
        closed || side.isn.is_some_and(|isn| isn != segment.seq)
    }

    fn push(&mut self, segment: &'a Segment) {
        let from = self.side_of(segment);
        self.first_seen = self.first_seen.min(segment.timestamp);
        self.last_seen = self.last_seen.max(segment.timestamp);
        let flags = segment.flags;
        if flags.contains(TcpFlags::SYN) {
            self.sent[from].isn.get_or_insert(segment.seq);
            if self.client.is_none() {
                let by_client = !flags.contains(TcpFlags::ACK);
                self.client = Some(if by_client { from } else { 1 - from });
            }
        }
        if flags.contains(TcpFlags::FIN) || flags.contains(TcpFlags::RST) {
            self.sent[from].closed = true;
        }
        if segment.payload_len > 0 {
            self.sent[from].segments.push(segment);
        }
    }

    fn finish(self) -> Flow {
        let opened = self.client.is_some();
        let client = self.client.unwrap_or_else(|| guess_client(self.ends));
        let server = 1 - client;
        let [a, b] = self.sent;
        let (client_side, server_side) = if client == 0 { (a, b) } else { (b, a) };
        let closed = client_side.closed || server_side.closed;
        let (client_addr, server_addr) = (self.ends[client], self.ends[server]);
        let hello_first = server_addr.port() == HBONE;
        Flow {
            client: client_addr,
            server: server_addr,
            opened,
            closed,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            to_server: client_side.into_stream(hello_first),
            to_client: server_side.into_stream(false),
        }
    }
}

/// Without a captured handshake: the end on the HBONE port, else the lower port, is the server.
fn guess_client(ends: [SocketAddr; 2]) -> usize {
    let [a, b] = ends.map(|e| e.port());
    match (a, b) {
        (HBONE, _) => 1,
        (_, HBONE) => 0,
        _ if a < b => 1,
        _ => 0,
    }
}

impl Side<'_> {
    fn into_stream(self, client_hello_first: bool) -> Stream {
        let packets = self.segments.len();
        let (chunks, bytes, complete) = reassemble(self.isn, &self.segments);
        let class = tls::classify(&chunks, client_hello_first);
        Stream {
            packets,
            bytes,
            complete,
            class,
            chunks,
        }
    }
}

/// Puts one direction's payload back in order: (chunks, distinct bytes, complete).
fn reassemble(isn: Option<u32>, segments: &[&Segment]) -> (Vec<Chunk>, u64, bool) {
    let Some(first) = segments.first() else {
        return (Vec::new(), 0, true);
    };
    // The stream's first byte follows the SYN; without one, the earliest captured byte.
    let (base, start_known) = match isn {
        Some(isn) => (isn.wrapping_add(1), true),
        None => {
            let earliest = segments
                .iter()
                .map(|s| s.seq.wrapping_sub(first.seq) as i32)
                .min()
                .unwrap_or(0);
            (first.seq.wrapping_add(earliest as u32), false)
        }
    };
    let mut pieces: Vec<(u64, &Segment)> = segments
        .iter()
        .filter(|s| (s.seq.wrapping_sub(base) as i32) >= 0)
        .map(|s| (u64::from(s.seq.wrapping_sub(base)), *s))
        .collect();
    pieces.sort_by_key(|(offset, s)| (*offset, std::cmp::Reverse(s.payload_len)));

    let mut chunks: Vec<Chunk> = Vec::new();
    // Wire bytes seen (from `payload_len`) and captured bytes held (in `chunks`) both end here;
    // they differ where a segment was cut by the snap length.
    let mut covered_end = 0u64;
    let mut held_end = 0u64;
    let mut bytes = 0u64;
    for (offset, segment) in pieces {
        let end = offset + u64::from(segment.payload_len);
        bytes += end.saturating_sub(offset.max(covered_end));
        covered_end = covered_end.max(end);
        // Only bytes past what is held are new: a retransmission may fill in what a cut
        // segment missed, and nothing is kept twice.
        let captured = &segment.payload;
        let captured_end = offset + captured.len() as u64;
        if captured_end <= held_end {
            continue;
        }
        let skip = usize::try_from(held_end.saturating_sub(offset)).unwrap_or(usize::MAX);
        let new = captured.get(skip..).unwrap_or(&[]);
        let at = offset.max(held_end);
        match chunks.last_mut() {
            Some(chunk) if chunk.end() == at => chunk.bytes.extend_from_slice(new),
            _ => chunks.push(Chunk {
                offset: at,
                at_start: start_known && at == 0,
                bytes: new.to_vec(),
            }),
        }
        held_end = captured_end;
    }
    // Complete: one run from the stream's known first byte holding every byte on the wire.
    let complete =
        start_known && held_end == covered_end && matches!(&chunks[..], [only] if only.offset == 0);
    (chunks, bytes, complete)
}

impl Chunk {
    /// Offset just past the last byte held.
    fn end(&self) -> u64 {
        self.offset + self.bytes.len() as u64
    }
}
