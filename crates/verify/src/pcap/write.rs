//! A writer for classic libpcap files: the file header, then one record header and the
//! captured bytes per packet. Little-endian, nanosecond timestamps (magic `0xa1b23c4d`), so the
//! reader in this module, tcpdump and Wireshark all read it.

use std::io::{self, Write};
use std::time::Duration;

use super::{FILE_HEADER_LEN, LinkType, MAGIC_NANOS, RECORD_HEADER_LEN};

/// Writes a pcap file to `W`, one packet at a time.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    snap_len: u32,
    packets: u64,
}

impl<W: Write> Writer<W> {
    /// Writes the file header: frames of `link` type, each cut to at most `snap_len` bytes.
    pub fn new(mut out: W, link: LinkType, snap_len: u32) -> io::Result<Self> {
        let mut header = [0u8; FILE_HEADER_LEN];
        header[0..4].copy_from_slice(&MAGIC_NANOS.to_le_bytes());
        header[4..6].copy_from_slice(&2u16.to_le_bytes()); // format version 2.4
        header[6..8].copy_from_slice(&4u16.to_le_bytes());
        // Bytes 8..16: time-zone offset and timestamp accuracy, both 0 as every writer does.
        header[16..20].copy_from_slice(&snap_len.to_le_bytes());
        header[20..24].copy_from_slice(&link.code().to_le_bytes());
        out.write_all(&header)?;
        Ok(Self {
            out,
            snap_len,
            packets: 0,
        })
    }

    /// Appends one packet captured at `timestamp` (since the Unix epoch): `data` is what was
    /// captured, `wire_len` how long the packet was. `data` beyond the snap length is cut.
    pub fn write_packet(
        &mut self,
        timestamp: Duration,
        data: &[u8],
        wire_len: usize,
    ) -> io::Result<()> {
        let captured = &data[..data.len().min(self.snap_len as usize)];
        // Lengths fit: `captured` is at most the u32 snap length; a wire length past 4 GiB
        // (impossible for one frame) is recorded as the largest one can say.
        let captured_len = u32::try_from(captured.len()).unwrap_or(u32::MAX);
        let wire_len = u32::try_from(wire_len.max(captured.len())).unwrap_or(u32::MAX);
        // Seconds past 2106 do not fit the format; such a clock is broken anyway.
        let seconds = u32::try_from(timestamp.as_secs()).unwrap_or(u32::MAX);
        let mut header = [0u8; RECORD_HEADER_LEN];
        header[0..4].copy_from_slice(&seconds.to_le_bytes());
        header[4..8].copy_from_slice(&timestamp.subsec_nanos().to_le_bytes());
        header[8..12].copy_from_slice(&captured_len.to_le_bytes());
        header[12..16].copy_from_slice(&wire_len.to_le_bytes());
        self.out.write_all(&header)?;
        self.out.write_all(captured)?;
        self.packets += 1;
        Ok(())
    }

    /// Packets written so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Flushes what is buffered, so a reader sees every packet written so far.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flushes and hands back the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::pcap;

    /// IPv4 10.0.0.1:40000 → 10.0.0.2:15008, a PSH-ACK carrying `payload`.
    fn ipv4_tcp(payload: &[u8]) -> Vec<u8> {
        let total = 20 + 20 + payload.len();
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        p[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&15008u16.to_be_bytes());
        p.extend_from_slice(&7u32.to_be_bytes()); // seq
        p.extend_from_slice(&0u32.to_be_bytes()); // ack
        p.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn the_reader_reads_what_the_writer_wrote() {
        let mut w = Writer::new(Vec::new(), LinkType::Raw, 65535).unwrap();
        let first = Duration::new(1_700_000_000, 123_456_789);
        w.write_packet(first, &ipv4_tcp(b"hello"), 45).unwrap();
        w.write_packet(first + Duration::from_nanos(1), &[0x60, 0, 0], 3)
            .unwrap();
        assert_eq!(w.packets(), 2);
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len(), 24 + 16 + 45 + 16 + 3);

        let trace = pcap::parse(&bytes).unwrap();
        assert_eq!(trace.link_type, LinkType::Raw);
        assert_eq!(trace.packets, 2);
        let segment = &trace.segments[0];
        assert_eq!(segment.timestamp, first);
        assert_eq!(segment.src, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(segment.dst, "10.0.0.2:15008".parse().unwrap());
        assert_eq!(segment.seq, 7);
        assert_eq!(segment.payload, b"hello");
        // The second is a cut-short IPv6 header: listed as malformed, nanoseconds kept.
        assert_eq!(trace.malformed.len(), 1);
        assert_eq!(trace.malformed[0].index, 1);
    }

    #[test]
    fn cuts_packets_at_the_snap_length_and_keeps_their_wire_length() {
        let payload = vec![b'x'; 100];
        let packet = ipv4_tcp(&payload);
        let mut w = Writer::new(Vec::new(), LinkType::Raw, 60).unwrap();
        w.write_packet(Duration::from_secs(1), &packet, packet.len())
            .unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len(), 24 + 16 + 60);
        // The record header says 60 captured of 140 on the wire.
        assert_eq!(bytes[32..36], 60u32.to_le_bytes());
        assert_eq!(bytes[36..40], 140u32.to_le_bytes());
        let trace = pcap::parse(&bytes).unwrap();
        let segment = &trace.segments[0];
        assert_eq!(segment.payload, &payload[..20]);
        assert_eq!(segment.payload_len, 100);
    }
}
