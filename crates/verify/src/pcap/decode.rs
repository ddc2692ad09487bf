//! One captured frame → its TCP segment: link header, IPv4 or IPv6 (with the extension-header
//! chain), TCP (with options). Frames that are not TCP over IP, and IP fragments, are not
//! segments (`Ok(None)`); headers that contradict themselves are errors.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{LinkType, TcpFlags};

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: [u16; 3] = [0x8100, 0x88a8, 0x9100];
const PROTO_TCP: u8 = 6;

/// Why a frame's headers could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("the {layer} header needs {need} bytes, the frame has {have} left")]
    Truncated {
        layer: &'static str,
        need: usize,
        have: usize,
    },
    #[error("expected IP version {expected}, found {found}")]
    IpVersion { expected: u8, found: u8 },
    #[error("the {layer} header length {len} is impossible")]
    HeaderLength { layer: &'static str, len: usize },
    #[error("the IP packet says it carries {declared} bytes, fewer than its {header}-byte headers")]
    Length { declared: usize, header: usize },
}

/// The TCP part of a frame, borrowing the captured payload.
#[derive(Debug)]
pub(super) struct Tcp<'a> {
    pub(super) src: SocketAddr,
    pub(super) dst: SocketAddr,
    pub(super) flags: TcpFlags,
    pub(super) seq: u32,
    pub(super) ack: u32,
    pub(super) payload: &'a [u8],
    pub(super) payload_len: u32,
}

/// Decodes one frame of a capture with link type `link`.
pub(super) fn packet(link: LinkType, frame: &[u8]) -> Result<Option<Tcp<'_>>, DecodeError> {
    let (ethertype, ip) = match link {
        LinkType::Ethernet => ethernet(frame)?,
        LinkType::LinuxSll => {
            let header = take(frame, 16, "Linux SLL")?;
            (be16(header, 14), &frame[16..])
        }
        LinkType::LinuxSll2 => {
            let header = take(frame, 20, "Linux SLL2")?;
            (be16(header, 0), &frame[20..])
        }
        LinkType::Raw => match frame.first().map(|b| b >> 4) {
            Some(4) => (ETHERTYPE_IPV4, frame),
            Some(6) => (ETHERTYPE_IPV6, frame),
            Some(found) => return Err(DecodeError::IpVersion { expected: 4, found }),
            None => return Err(truncated("IP", 1, 0)),
        },
        LinkType::Ipv4 => (ETHERTYPE_IPV4, frame),
        LinkType::Ipv6 => (ETHERTYPE_IPV6, frame),
    };
    match ethertype {
        ETHERTYPE_IPV4 => ipv4(ip),
        ETHERTYPE_IPV6 => ipv6(ip),
        _ => Ok(None),
    }
}

/// The ethertype and what follows the Ethernet header (and any VLAN tags).
fn ethernet(frame: &[u8]) -> Result<(u16, &[u8]), DecodeError> {
    let header = take(frame, 14, "Ethernet")?;
    let mut ethertype = be16(header, 12);
    let mut rest = &frame[14..];
    while ETHERTYPE_VLAN.contains(&ethertype) {
        let tag = take(rest, 4, "VLAN")?;
        ethertype = be16(tag, 2);
        rest = &rest[4..];
    }
    Ok((ethertype, rest))
}

fn ipv4(packet: &[u8]) -> Result<Option<Tcp<'_>>, DecodeError> {
    let header = take(packet, 20, "IPv4")?;
    let version = header[0] >> 4;
    if version != 4 {
        return Err(DecodeError::IpVersion {
            expected: 4,
            found: version,
        });
    }
    let header_len = usize::from(header[0] & 0x0f) * 4;
    if header_len < 20 {
        return Err(DecodeError::HeaderLength {
            layer: "IPv4",
            len: header_len,
        });
    }
    take(packet, header_len, "IPv4 options")?;
    let fragment = be16(header, 6);
    let more_fragments = fragment & 0x2000 != 0;
    if more_fragments || fragment & 0x1fff != 0 {
        return Ok(None);
    }
    if header[9] != PROTO_TCP {
        return Ok(None);
    }
    // A total length of 0 appears on segmentation-offloaded frames captured before the NIC
    // splits them: the frame itself is then the only measure.
    let total = match usize::from(be16(header, 2)) {
        0 => packet.len(),
        total => total,
    };
    if total < header_len {
        return Err(DecodeError::Length {
            declared: total,
            header: header_len,
        });
    }
    let src = IpAddr::V4(Ipv4Addr::new(
        header[12], header[13], header[14], header[15],
    ));
    let dst = IpAddr::V4(Ipv4Addr::new(
        header[16], header[17], header[18], header[19],
    ));
    // Anything past the total length is link padding, not payload.
    let captured = &packet[header_len..packet.len().min(total)];
    tcp(src, dst, captured, total - header_len).map(Some)
}

fn ipv6(packet: &[u8]) -> Result<Option<Tcp<'_>>, DecodeError> {
    let header = take(packet, 40, "IPv6")?;
    let version = header[0] >> 4;
    if version != 6 {
        return Err(DecodeError::IpVersion {
            expected: 6,
            found: version,
        });
    }
    let declared = match usize::from(be16(header, 4)) {
        // Jumbograms and offloaded frames: the frame is the only measure.
        0 => packet.len() - 40,
        len => len,
    };
    let src = IpAddr::V6(Ipv6Addr::from(octets16(&header[8..24])));
    let dst = IpAddr::V6(Ipv6Addr::from(octets16(&header[24..40])));
    let mut next = header[6];
    let mut offset = 40;
    // Walk the extension headers (hop-by-hop, routing, fragment, destination options, AH).
    for _ in 0..8 {
        let rest = &packet[offset.min(packet.len())..];
        let ext_len = match next {
            PROTO_TCP => {
                if offset - 40 > declared {
                    return Err(DecodeError::Length {
                        declared,
                        header: offset - 40,
                    });
                }
                let end = packet.len().min(40 + declared);
                let captured = packet.get(offset..end).unwrap_or(&[]);
                return tcp(src, dst, captured, declared - (offset - 40)).map(Some);
            }
            0 | 43 | 60 => {
                let ext = take(rest, 8, "IPv6 extension")?;
                (usize::from(ext[1]) + 1) * 8
            }
            44 => {
                let ext = take(rest, 8, "IPv6 fragment")?;
                if be16(ext, 2) != 0 {
                    // Not the first fragment (offset or more-fragments set).
                    return Ok(None);
                }
                8
            }
            51 => {
                let ext = take(rest, 8, "IPv6 AH")?;
                (usize::from(ext[1]) + 2) * 4
            }
            _ => return Ok(None),
        };
        next = rest[0];
        offset += ext_len;
    }
    Ok(None)
}

fn tcp<'a>(
    src: IpAddr,
    dst: IpAddr,
    segment: &'a [u8],
    declared: usize,
) -> Result<Tcp<'a>, DecodeError> {
    let header = take(segment, 20, "TCP")?;
    let header_len = usize::from(header[12] >> 4) * 4;
    if header_len < 20 || header_len > declared {
        return Err(DecodeError::HeaderLength {
            layer: "TCP",
            len: header_len,
        });
    }
    take(segment, header_len, "TCP options")?;
    let payload_len = u32::try_from(declared - header_len).unwrap_or(u32::MAX);
    Ok(Tcp {
        src: SocketAddr::new(src, be16(header, 0)),
        dst: SocketAddr::new(dst, be16(header, 2)),
        seq: be32(header, 4),
        ack: be32(header, 8),
        flags: TcpFlags(header[13]),
        payload: &segment[header_len..],
        payload_len,
    })
}

// === byte helpers ===

/// The first `need` bytes of `bytes`, or a truncation error naming `layer`.
fn take<'a>(bytes: &'a [u8], need: usize, layer: &'static str) -> Result<&'a [u8], DecodeError> {
    bytes
        .get(..need)
        .ok_or_else(|| truncated(layer, need, bytes.len()))
}

fn truncated(layer: &'static str, need: usize, have: usize) -> DecodeError {
    DecodeError::Truncated { layer, need, have }
}

/// Callers pass slices already checked to hold `at + 2` bytes.
fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// Callers pass slices already checked to hold `at + 4` bytes.
fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn octets16(bytes: &[u8]) -> [u8; 16] {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(bytes);
    octets
}
