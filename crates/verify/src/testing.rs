//! Test fixtures shared by the unit tests: TCP segments of made-up connections.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use crate::pcap::{Segment, TcpFlags};

const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
const FIN_ACK: u8 = 0x11;

pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Builds segments of one connection, numbering sequence space as a real stack would.
pub(crate) struct Conn {
    pub(crate) client: SocketAddr,
    pub(crate) server: SocketAddr,
    pub(crate) segments: Vec<Segment>,
    /// Next sequence number of client and server.
    pub(crate) next: [u32; 2],
}

impl Conn {
    pub(crate) fn new(client: &str, server: &str) -> Self {
        Self {
            client: addr(client),
            server: addr(server),
            segments: Vec::new(),
            next: [1000, 0xffff_fff0], // the server's sequence numbers wrap around 2^32
        }
    }

    pub(crate) fn handshake(mut self) -> Self {
        self.send(0, SYN, b"");
        self.next[0] = self.next[0].wrapping_add(1);
        self.send(1, SYN_ACK, b"");
        self.next[1] = self.next[1].wrapping_add(1);
        self.send(0, ACK, b"");
        self
    }

    /// `from`: 0 = client, 1 = server.
    pub(crate) fn data(mut self, from: usize, payload: &[u8]) -> Self {
        self.send(from, PSH_ACK, payload);
        self.next[from] = self.next[from].wrapping_add(payload.len() as u32);
        self
    }

    fn send(&mut self, from: usize, flags: u8, payload: &[u8]) {
        let (src, dst) = if from == 0 {
            (self.client, self.server)
        } else {
            (self.server, self.client)
        };
        self.segments.push(Segment {
            index: self.segments.len(),
            timestamp: Duration::from_millis(self.segments.len() as u64),
            src,
            dst,
            flags: TcpFlags(flags),
            seq: self.next[from],
            ack: 0,
            payload: payload.to_vec(),
            payload_len: payload.len() as u32,
        });
    }

    pub(crate) fn close(mut self) -> Self {
        self.send(0, FIN_ACK, b"");
        self
    }
}

/// A TLS record of `kind` holding `body`.
pub(crate) fn record(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut r = vec![kind, 3, if kind == 22 { 1 } else { 3 }];
    r.extend_from_slice(&(body.len() as u16).to_be_bytes());
    r.extend_from_slice(body);
    r
}

/// A handshake record holding a (fake) ClientHello.
pub(crate) fn client_hello() -> Vec<u8> {
    let mut body = vec![1, 0, 0, 60];
    body.extend_from_slice(&[0x33; 60]);
    record(22, &body)
}
