//! Classic libpcap files (what `tcpdump -w` and [`crate::capture`] write): a reader down to TCP
//! segments, and a [`Writer`].
//!
//! Both byte orders and both timestamp resolutions (micro- and nanosecond magic) are read. Link
//! types: Ethernet (1, also what Linux loopback captures carry), Linux cooked captures SLL (113)
//! and SLL2 (276, `tcpdump -i any`), and raw IP (101, what [`crate::capture`] writes; 228, 229). Each packet is decoded through
//! IPv4 or IPv6 (with the extension-header chain) to TCP (the `decode` submodule).
//!
//! Invariants:
//! - Reading never panics and never trusts a length field: a file whose structure is broken (bad
//!   magic, a record running past the end) is refused with an error naming the byte offset and
//!   the packet index; a packet whose headers are broken is listed in [`Trace::malformed`] with
//!   the same coordinates, and the rest of the file is still read.
//! - A segment's payload is what was captured, never link-layer padding; when the capture cut
//!   it short (snap length), [`Segment::payload_len`] still says how long it was on the wire.

mod decode;
#[cfg(test)]
mod tests;
mod write;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

pub use decode::DecodeError;
pub use write::Writer;

/// Length of the file header.
const FILE_HEADER_LEN: usize = 24;
/// Length of each record header.
const RECORD_HEADER_LEN: usize = 16;
/// Largest record accepted: far above any real snap length (tcpdump's default is 262144), small
/// enough that a corrupt length is caught rather than trusted.
const MAX_RECORD_LEN: usize = 1 << 20;

const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
const MAGIC_PCAPNG: u32 = 0x0a0d_0d0a;

/// Everything TCP read from one capture file.
#[derive(Debug, Clone)]
pub struct Trace {
    pub link_type: LinkType,
    /// Records in the file.
    pub packets: usize,
    /// TCP segments, in file order.
    pub segments: Vec<Segment>,
    /// Packets that are not TCP over IP (ARP, UDP, non-first IP fragments).
    pub ignored: usize,
    /// Packets whose headers could not be decoded.
    pub malformed: Vec<PacketError>,
}

/// One TCP segment as captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Index of the packet in the file, from 0.
    pub index: usize,
    /// Capture time, since the Unix epoch.
    pub timestamp: Duration,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub flags: TcpFlags,
    pub seq: u32,
    pub ack: u32,
    /// The payload bytes captured (possibly fewer than `payload_len`).
    pub payload: Vec<u8>,
    /// The payload length on the wire, from the IP header.
    pub payload_len: u32,
}

/// The TCP flag bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: Self = Self(0x01);
    pub const SYN: Self = Self(0x02);
    pub const RST: Self = Self(0x04);
    pub const PSH: Self = Self(0x08);
    pub const ACK: Self = Self(0x10);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::SYN, 'S'),
            (Self::FIN, 'F'),
            (Self::RST, 'R'),
            (Self::PSH, 'P'),
        ];
        let mut text: String = names
            .iter()
            .filter(|(bit, _)| self.contains(*bit))
            .map(|(_, c)| *c)
            .collect();
        if self.contains(Self::ACK) {
            text.push('.');
        }
        write!(f, "[{text}]")
    }
}

/// The link layer of a capture (libpcap's `LINKTYPE_*` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum LinkType {
    /// `LINKTYPE_ETHERNET` (1).
    Ethernet,
    /// `LINKTYPE_LINUX_SLL` (113).
    LinuxSll,
    /// `LINKTYPE_LINUX_SLL2` (276).
    LinuxSll2,
    /// `LINKTYPE_RAW` (101): IPv4 or IPv6 by the version nibble.
    Raw,
    /// `LINKTYPE_IPV4` (228).
    Ipv4,
    /// `LINKTYPE_IPV6` (229).
    Ipv6,
}

impl LinkType {
    /// The link type of a `LINKTYPE_*` code, if this reader knows it.
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => Self::Ethernet,
            113 => Self::LinuxSll,
            276 => Self::LinuxSll2,
            101 => Self::Raw,
            228 => Self::Ipv4,
            229 => Self::Ipv6,
            _ => return None,
        })
    }

    /// The `LINKTYPE_*` code.
    pub fn code(self) -> u32 {
        match self {
            Self::Ethernet => 1,
            Self::LinuxSll => 113,
            Self::LinuxSll2 => 276,
            Self::Raw => 101,
            Self::Ipv4 => 228,
            Self::Ipv6 => 229,
        }
    }
}

/// Why a capture file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PcapError {
    #[error("cannot read the capture file {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the file is {len} bytes long, shorter than a pcap file header (24 bytes)")]
    TooShort { len: usize },
    #[error("pcapng files are not supported; write classic pcap (`tcpdump -w` does by default)")]
    Pcapng,
    #[error("bad magic number {magic:#010x} at byte 0: not a pcap file")]
    BadMagic { magic: u32 },
    #[error("unsupported link type {code} (supported: 1, 101, 113, 228, 229, 276)")]
    UnsupportedLinkType { code: u32 },
    #[error(
        "packet {index}: the record header at byte {offset} is cut short ({available} of 16 bytes)"
    )]
    TruncatedRecordHeader {
        index: usize,
        offset: usize,
        available: usize,
    },
    #[error("packet {index}: the record at byte {offset} claims {len} bytes, more than {max}")]
    RecordTooLarge {
        index: usize,
        offset: usize,
        len: usize,
        max: usize,
    },
    #[error(
        "packet {index}: the record at byte {offset} claims {len} bytes but only {available} remain"
    )]
    TruncatedRecord {
        index: usize,
        offset: usize,
        len: usize,
        available: usize,
    },
}

/// A packet whose headers could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("packet {index} (record at byte {offset})")]
pub struct PacketError {
    pub index: usize,
    pub offset: usize,
    #[source]
    pub error: DecodeError,
}

/// Reads and decodes the capture file at `path`.
pub fn read_file(path: impl AsRef<Path>) -> Result<Trace, PcapError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| PcapError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&bytes)
}

/// Decodes a whole capture file held in memory.
pub fn parse(bytes: &[u8]) -> Result<Trace, PcapError> {
    let header = FileHeader::parse(bytes)?;
    let mut trace = Trace {
        link_type: header.link_type,
        packets: 0,
        segments: Vec::new(),
        ignored: 0,
        malformed: Vec::new(),
    };
    let mut offset = FILE_HEADER_LEN;
    while offset < bytes.len() {
        let index = trace.packets;
        let record = header.record(bytes, offset, index)?;
        match decode::packet(header.link_type, record.data) {
            Ok(Some(tcp)) => trace.segments.push(Segment {
                index,
                timestamp: record.timestamp,
                src: tcp.src,
                dst: tcp.dst,
                flags: tcp.flags,
                seq: tcp.seq,
                ack: tcp.ack,
                payload: tcp.payload.to_vec(),
                payload_len: tcp.payload_len,
            }),
            Ok(None) => trace.ignored += 1,
            Err(error) => trace.malformed.push(PacketError {
                index,
                offset,
                error,
            }),
        }
        trace.packets += 1;
        offset = record.next;
    }
    Ok(trace)
}

// === file structure ===

struct FileHeader {
    big_endian: bool,
    nanos: bool,
    link_type: LinkType,
}

struct Record<'a> {
    timestamp: Duration,
    data: &'a [u8],
    /// Offset of the next record.
    next: usize,
}

impl FileHeader {
    fn parse(bytes: &[u8]) -> Result<Self, PcapError> {
        let Some(header) = bytes.get(..FILE_HEADER_LEN) else {
            return Err(PcapError::TooShort { len: bytes.len() });
        };
        let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let (big_endian, nanos) = match magic {
            MAGIC_MICROS => (false, false),
            MAGIC_NANOS => (false, true),
            m if m.swap_bytes() == MAGIC_MICROS => (true, false),
            m if m.swap_bytes() == MAGIC_NANOS => (true, true),
            MAGIC_PCAPNG => return Err(PcapError::Pcapng),
            magic => return Err(PcapError::BadMagic { magic }),
        };
        let mut this = Self {
            big_endian,
            nanos,
            link_type: LinkType::Ethernet,
        };
        // The upper bits of the link-type field carry FCS information; the type is the low 16.
        let code = this.u32_at(header, 20) & 0xffff;
        this.link_type =
            LinkType::from_code(code).ok_or(PcapError::UnsupportedLinkType { code })?;
        Ok(this)
    }

    fn record<'a>(
        &self,
        bytes: &'a [u8],
        offset: usize,
        index: usize,
    ) -> Result<Record<'a>, PcapError> {
        let rest = &bytes[offset..];
        let Some(header) = rest.get(..RECORD_HEADER_LEN) else {
            return Err(PcapError::TruncatedRecordHeader {
                index,
                offset,
                available: rest.len(),
            });
        };
        let seconds = u64::from(self.u32_at(header, 0));
        let fraction = self.u32_at(header, 4);
        let len = self.u32_at(header, 8) as usize;
        if len > MAX_RECORD_LEN {
            return Err(PcapError::RecordTooLarge {
                index,
                offset,
                len,
                max: MAX_RECORD_LEN,
            });
        }
        let body = &rest[RECORD_HEADER_LEN..];
        let Some(data) = body.get(..len) else {
            return Err(PcapError::TruncatedRecord {
                index,
                offset,
                len,
                available: body.len(),
            });
        };
        let nanos = if self.nanos {
            u64::from(fraction)
        } else {
            u64::from(fraction) * 1000
        };
        let timestamp = Duration::from_secs(seconds) + Duration::from_nanos(nanos);
        Ok(Record {
            timestamp,
            data,
            next: offset + RECORD_HEADER_LEN + len,
        })
    }

    /// The u32 at `at` in `bytes`; callers pass slices at least `at + 4` long.
    fn u32_at(&self, bytes: &[u8], at: usize) -> u32 {
        let mut word = [0u8; 4];
        word.copy_from_slice(&bytes[at..at + 4]);
        if self.big_endian {
            u32::from_be_bytes(word)
        } else {
            u32::from_le_bytes(word)
        }
    }
}
