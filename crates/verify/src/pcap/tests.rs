#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::*;

// === a small pcap writer for fixtures ===

struct Writer {
    big_endian: bool,
    nanos: bool,
    bytes: Vec<u8>,
}

impl Writer {
    fn new(link: u32) -> Self {
        Self::with(link, false, false)
    }

    fn with(link: u32, big_endian: bool, nanos: bool) -> Self {
        let mut w = Self {
            big_endian,
            nanos,
            bytes: Vec::new(),
        };
        w.u32(if nanos { MAGIC_NANOS } else { MAGIC_MICROS });
        w.u16(2);
        w.u16(4);
        w.u32(0);
        w.u32(0);
        w.u32(262_144);
        w.u32(link);
        w
    }

    fn record(mut self, ts: Duration, frame: &[u8]) -> Self {
        self.u32(u32::try_from(ts.as_secs()).unwrap());
        let fraction = if self.nanos {
            ts.subsec_nanos()
        } else {
            ts.subsec_micros()
        };
        self.u32(fraction);
        self.u32(u32::try_from(frame.len()).unwrap());
        self.u32(u32::try_from(frame.len()).unwrap());
        self.bytes.extend_from_slice(frame);
        self
    }

    fn u16(&mut self, v: u16) {
        let b = if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.bytes.extend_from_slice(&b);
    }

    fn u32(&mut self, v: u32) {
        let b = if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.bytes.extend_from_slice(&b);
    }
}

/// A TCP header (20 bytes plus `options`, padded to 4) followed by `payload`.
fn tcp(sport: u16, dport: u16, seq: u32, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(1); // NOP
    }
    let offset = u8::try_from((20 + opts.len()) / 4).unwrap();
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&7u32.to_be_bytes());
    t.push(offset << 4);
    t.push(flags);
    t.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(&opts);
    t.extend_from_slice(payload);
    t
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, body: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + body.len()).unwrap();
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]); // DF, no fragment offset
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(body);
    p
}

/// IPv6 with one hop-by-hop extension header before TCP.
fn ipv6_hop_by_hop(src: Ipv6Addr, dst: Ipv6Addr, body: &[u8]) -> Vec<u8> {
    let hop = [PROTO_TCP_FOR_TESTS, 0, 1, 4, 0, 0, 0, 0]; // next = TCP, len 0 (8 bytes), PadN
    let len = u16::try_from(hop.len() + body.len()).unwrap();
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&len.to_be_bytes());
    p.push(0); // next header: hop-by-hop
    p.push(64);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&hop);
    p.extend_from_slice(body);
    p
}

const PROTO_TCP_FOR_TESTS: u8 = 6;

fn ethernet(ethertype: u16, packet: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(packet);
    f
}

fn sll(packet: &[u8]) -> Vec<u8> {
    let mut f = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0];
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(packet);
    f
}

fn sll2(packet: &[u8]) -> Vec<u8> {
    let mut f = 0x0800u16.to_be_bytes().to_vec();
    f.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0]);
    f.extend_from_slice(packet);
    f
}

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn sample_packet(payload: &[u8]) -> Vec<u8> {
    ipv4(A, B, 6, &tcp(40000, 15008, 1000, 0x18, &[], payload))
}

/// A valid three-packet Ethernet capture: a segment, an ARP frame, another segment.
fn sample_file() -> Vec<u8> {
    Writer::new(1)
        .record(
            Duration::from_secs(1),
            &ethernet(0x0800, &sample_packet(b"hello")),
        )
        .record(Duration::from_secs(2), &ethernet(0x0806, &[0u8; 28]))
        .record(
            Duration::from_secs(3),
            &ethernet(0x0800, &sample_packet(b"world")),
        )
        .bytes
}

// === tests ===

#[test]
fn reads_ethernet_segments_and_counts_other_frames() {
    let trace = parse(&sample_file()).unwrap();
    assert_eq!(trace.link_type, LinkType::Ethernet);
    assert_eq!(trace.packets, 3);
    assert_eq!(trace.ignored, 1);
    assert!(trace.malformed.is_empty());
    let s = &trace.segments[0];
    assert_eq!(s.src, SocketAddr::new(IpAddr::V4(A), 40000));
    assert_eq!(s.dst, SocketAddr::new(IpAddr::V4(B), 15008));
    assert_eq!(s.seq, 1000);
    assert_eq!(s.ack, 7);
    assert!(s.flags.contains(TcpFlags::PSH) && s.flags.contains(TcpFlags::ACK));
    assert!(!s.flags.contains(TcpFlags::SYN));
    assert_eq!(s.payload, b"hello");
    assert_eq!(s.payload_len, 5);
    assert_eq!(trace.segments[1].index, 2);
    assert_eq!(trace.segments[1].timestamp, Duration::from_secs(3));
}

#[test]
fn reads_both_byte_orders_and_both_timestamp_resolutions() {
    let ts = Duration::new(1_700_000_000, 123_456_789);
    for (big_endian, nanos) in [(false, false), (true, false), (false, true), (true, true)] {
        let file = Writer::with(228, big_endian, nanos)
            .record(ts, &sample_packet(b"x"))
            .bytes;
        let trace = parse(&file).unwrap();
        let want = if nanos {
            ts
        } else {
            Duration::new(1_700_000_000, 123_456_000)
        };
        assert_eq!(trace.link_type, LinkType::Ipv4);
        assert_eq!(
            trace.segments[0].timestamp, want,
            "be={big_endian} ns={nanos}"
        );
        assert_eq!(trace.segments[0].payload, b"x");
    }
}

#[test]
fn reads_cooked_and_raw_link_types() {
    let packet = sample_packet(b"cooked");
    for (link, frame) in [
        (113, sll(&packet)),
        (276, sll2(&packet)),
        (101, packet.clone()),
        (228, packet.clone()),
    ] {
        let trace = parse(&Writer::new(link).record(Duration::ZERO, &frame).bytes).unwrap();
        assert_eq!(trace.link_type.code(), link);
        assert_eq!(trace.segments.len(), 1, "link type {link}");
        assert_eq!(trace.segments[0].payload, b"cooked");
    }
}

#[test]
fn skips_tcp_options() {
    // MSS, SACK-permitted and timestamp options: a 40-byte TCP header.
    let options = [2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    let packet = ipv4(A, B, 6, &tcp(1, 2, 3, 0x02, &options, b"after options"));
    let trace = parse(&Writer::new(228).record(Duration::ZERO, &packet).bytes).unwrap();
    let s = &trace.segments[0];
    assert!(s.flags.contains(TcpFlags::SYN));
    assert_eq!(s.payload, b"after options");
    assert_eq!(s.payload_len, 13);
}

#[test]
fn ethernet_padding_is_not_payload() {
    let mut frame = ethernet(0x0800, &ipv4(A, B, 6, &tcp(1, 2, 3, 0x10, &[], b"")));
    assert_eq!(frame.len(), 54);
    frame.resize(60, 0); // minimum Ethernet frame: padding after the IP packet
    let trace = parse(&Writer::new(1).record(Duration::ZERO, &frame).bytes).unwrap();
    let s = &trace.segments[0];
    assert!(
        s.payload.is_empty(),
        "padding is not payload: {:?}",
        s.payload
    );
    assert_eq!(s.payload_len, 0);
}

#[test]
fn keeps_the_wire_length_of_a_payload_cut_by_the_snap_length() {
    let mut frame = ethernet(0x0800, &sample_packet(&[0xaa; 100]));
    frame.truncate(frame.len() - 60);
    let trace = parse(&Writer::new(1).record(Duration::ZERO, &frame).bytes).unwrap();
    assert_eq!(trace.segments[0].payload.len(), 40);
    assert_eq!(trace.segments[0].payload_len, 100);
}

#[test]
fn walks_the_ipv6_extension_header_chain() {
    let (a, b) = (Ipv6Addr::LOCALHOST, "fd00::2".parse().unwrap());
    let packet = ipv6_hop_by_hop(a, b, &tcp(5000, 15008, 9, 0x18, &[], b"v6"));
    for (link, frame) in [(1, ethernet(0x86dd, &packet)), (229, packet.clone())] {
        let trace = parse(&Writer::new(link).record(Duration::ZERO, &frame).bytes).unwrap();
        let s = &trace.segments[0];
        assert_eq!(s.src, SocketAddr::new(IpAddr::V6(a), 5000));
        assert_eq!(s.dst, SocketAddr::new(IpAddr::V6(b), 15008));
        assert_eq!(s.payload, b"v6");
    }
}

#[test]
fn ignores_udp_and_fragments() {
    let udp = ipv4(A, B, 17, &[0u8; 12]);
    let mut fragment = sample_packet(b"frag");
    fragment[6] = 0x20; // more fragments
    let file = Writer::new(228)
        .record(Duration::ZERO, &udp)
        .record(Duration::ZERO, &fragment)
        .bytes;
    let trace = parse(&file).unwrap();
    assert_eq!((trace.packets, trace.ignored), (2, 2));
    assert!(trace.segments.is_empty());
}

#[test]
fn lists_a_malformed_packet_with_its_index_and_offset_and_reads_on() {
    let mut bad = sample_packet(b"bad");
    bad[0] = 0x43; // IHL 3: impossible
    let good = sample_packet(b"good");
    let file = Writer::new(228)
        .record(Duration::ZERO, &good)
        .record(Duration::ZERO, &bad)
        .record(Duration::ZERO, &good)
        .bytes;
    let trace = parse(&file).unwrap();
    assert_eq!(trace.segments.len(), 2);
    let e = &trace.malformed[0];
    assert_eq!(e.index, 1);
    assert_eq!(e.offset, 24 + 16 + good.len());
    let text = format!("{e}: {}", e.error);
    assert!(text.contains("packet 1") && text.contains("IPv4"), "{text}");
}

#[test]
fn refuses_broken_files_naming_where() {
    assert!(matches!(
        parse(&[0; 10]),
        Err(PcapError::TooShort { len: 10 })
    ));
    let mut pcapng = sample_file();
    pcapng[..4].copy_from_slice(&MAGIC_PCAPNG.to_le_bytes());
    assert!(matches!(parse(&pcapng), Err(PcapError::Pcapng)));
    let mut bad_link = sample_file();
    bad_link[20] = 99;
    assert!(matches!(
        parse(&bad_link),
        Err(PcapError::UnsupportedLinkType { code: 99 })
    ));
    let file = sample_file();
    let cut = &file[..file.len() - 3];
    let e = parse(cut).unwrap_err();
    assert!(
        matches!(e, PcapError::TruncatedRecord { index: 2, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("packet 2"), "{e}");
}

#[test]
fn never_panics_on_truncated_or_corrupted_input() {
    let file = sample_file();
    for len in 0..=file.len() {
        let _ = parse(&file[..len]);
    }
    // Corrupt every byte in turn, with a few values each, and some pseudo-random noise.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for at in 0..file.len() {
        for value in [0x00, 0xff, 0x45, 0x60, (next() & 0xff) as u8] {
            let mut corrupt = file.clone();
            corrupt[at] = value;
            let _ = parse(&corrupt);
        }
    }
    for _ in 0..2000 {
        let len = (next() % 200) as usize;
        let mut noise: Vec<u8> = (0..len).map(|_| (next() & 0xff) as u8).collect();
        if noise.len() >= 24 && next() % 4 != 0 {
            noise[..4].copy_from_slice(&MAGIC_MICROS.to_le_bytes());
            let links = [1u32, 101, 113, 228, 229, 276];
            let link = links[(next() % 6) as usize];
            noise[20..24].copy_from_slice(&link.to_le_bytes());
        }
        let _ = parse(&noise);
    }
}

// === fuzz seeds ===

/// A file of `link` holding the segments of `conns` as IPv4 packets (Ethernet-framed for link 1).
fn conversation(link: u32, conns: &[crate::testing::Conn]) -> Vec<u8> {
    let mut writer = Writer::new(link);
    for conn in conns {
        for s in &conn.segments {
            let (IpAddr::V4(src), IpAddr::V4(dst)) = (s.src.ip(), s.dst.ip()) else {
                unreachable!("the fixtures are IPv4")
            };
            let segment = tcp(
                s.src.port(),
                s.dst.port(),
                s.seq,
                s.flags.0,
                &[],
                &s.payload,
            );
            let packet = ipv4(src, dst, 6, &segment);
            let frame = if link == 1 {
                ethernet(0x0800, &packet)
            } else {
                packet
            };
            writer = writer.record(s.timestamp, &frame);
        }
    }
    writer.bytes
}

/// Seeds for the `pcap` fuzz target, from this module's fixtures.
fn fuzz_seeds() -> Vec<(String, Vec<u8>)> {
    use crate::testing::{Conn, client_hello, record};
    let hbone = Conn::new("10.0.0.1:40000", "10.0.0.2:15008")
        .handshake()
        .data(0, &client_hello())
        .data(1, &record(22, &[2; 90]))
        .data(0, &record(23, &[7; 300]))
        .close();
    let http = Conn::new("10.0.0.1:40001", "10.0.0.2:8080")
        .handshake()
        .data(0, b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n")
        .data(1, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .close();
    let conns = [hbone, http];
    let packet = sample_packet(b"cooked");
    let v6 = ipv6_hop_by_hop(
        Ipv6Addr::LOCALHOST,
        "fd00::2".parse().unwrap(),
        &tcp(5000, 15008, 9, 0x18, &[], b"v6"),
    );
    let mut vlan = ethernet(0x8100, &[0, 7, 0x08, 0x00]);
    vlan.extend_from_slice(&packet);
    let mut fragment = sample_packet(b"frag");
    fragment[6] = 0x20;
    let mut bad = sample_packet(b"bad");
    bad[0] = 0x43;
    let options = [2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    let one = |link: u32, frame: &[u8]| Writer::new(link).record(Duration::ZERO, frame).bytes;
    let mut seeds = vec![
        ("ethernet-arp".to_owned(), sample_file()),
        ("conversation-ethernet".to_owned(), conversation(1, &conns)),
        ("conversation-ipv4".to_owned(), conversation(228, &conns)),
        ("sll".to_owned(), one(113, &sll(&packet))),
        ("sll2".to_owned(), one(276, &sll2(&packet))),
        ("raw".to_owned(), one(101, &packet)),
        ("vlan".to_owned(), one(1, &vlan)),
        ("ipv6-hop-by-hop".to_owned(), one(229, &v6)),
        (
            "tcp-options".to_owned(),
            one(228, &ipv4(A, B, 6, &tcp(1, 2, 3, 2, &options, b"o"))),
        ),
        (
            "udp-fragment-malformed".to_owned(),
            Writer::new(228)
                .record(Duration::ZERO, &ipv4(A, B, 17, &[0u8; 12]))
                .record(Duration::ZERO, &fragment)
                .record(Duration::ZERO, &bad)
                .bytes,
        ),
    ];
    for (big_endian, nanos) in [(true, false), (false, true), (true, true)] {
        let file = Writer::with(228, big_endian, nanos)
            .record(Duration::new(1_700_000_000, 123_456_789), &packet)
            .bytes;
        seeds.push((format!("order-be{big_endian}-ns{nanos}"), file));
    }
    // The framed form (no file header): selector 4 (IPv4), two packets.
    let mut framed = vec![4];
    framed.extend_from_slice(&packet);
    framed.extend_from_slice(&[0xff, 0xfe]);
    framed.extend_from_slice(&sample_packet(b"second"));
    seeds.push(("framed-ipv4".to_owned(), framed));
    seeds
}

#[test]
fn fuzz_seed_corpus() {
    ambit_testkit::corpus::run("pcap", fuzz_seeds(), crate::fuzz::pcap);
}
