#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;
use crate::pcap::Segment;
use crate::testing::{Conn, addr, client_hello, record};

fn one(segments: &[Segment]) -> Flow {
    let flows = assemble(segments);
    assert_eq!(flows.len(), 1, "{flows:#?}");
    flows.into_iter().next().unwrap()
}

#[test]
fn a_tls_flow_split_across_segments_is_tls() {
    let hello = client_hello();
    let mut server_hello = vec![2, 0, 0, 40];
    server_hello.extend_from_slice(&[0x44; 40]);
    let mut server = record(22, &server_hello);
    server.extend(record(23, &[0x55; 500]));
    let mut app = record(23, &[0x66; 1000]);
    app.extend(record(23, &[0x77; 20]));
    let conn = Conn::new("10.0.0.1:40000", "10.0.0.2:15008")
        .handshake()
        .data(0, &hello[..7]) // cut inside the handshake header's body
        .data(0, &hello[7..])
        .data(1, &server[..3]) // cut inside a record header
        .data(1, &server[3..300])
        .data(1, &server[300..])
        .data(0, &app[..1003])
        .data(0, &app[1003..])
        .close();
    let flow = one(&conn.segments);
    assert_eq!(flow.client, addr("10.0.0.1:40000"));
    assert_eq!(flow.server, addr("10.0.0.2:15008"));
    assert!(flow.opened && flow.closed);
    assert_eq!(flow.to_server.class, Class::Tls);
    assert_eq!(flow.to_client.class, Class::Tls);
    assert!(flow.to_server.complete && flow.to_client.complete);
    assert_eq!(flow.to_server.bytes, (hello.len() + app.len()) as u64);
    assert_eq!(flow.to_client.bytes, server.len() as u64);
    assert_eq!(flow.to_client.packets, 3);
}

#[test]
fn an_http_flow_is_plaintext_and_its_words_are_found() {
    let conn = Conn::new("10.0.0.1:40000", "10.0.0.2:9100")
        .handshake()
        .data(0, b"GET /metrics HTTP/1.1\r\nHost: exporter\r\n\r\n")
        .data(1, b"HTTP/1.1 200 OK\r\n\r\nistio_tcp_")
        .data(1, b"sent_bytes_total 42\n");
    let flow = one(&conn.segments);
    assert_eq!(flow.to_server.class, Class::Plaintext);
    assert_eq!(flow.to_client.class, Class::Plaintext);
    // Found across the segment boundary, in the reassembled stream.
    assert!(flow.to_client.contains(b"istio_tcp_sent_bytes_total"));
    assert!(flow.contains(b"GET /metrics"));
    assert!(!flow.to_server.contains(b"istio_tcp_sent_bytes_total"));
}

#[test]
fn a_hbone_client_that_does_not_open_with_a_client_hello_is_plaintext() {
    let conn = Conn::new("10.0.0.1:40000", "10.0.0.2:15008")
        .handshake()
        .data(0, &record(23, &[0x10; 30]));
    assert_eq!(one(&conn.segments).to_server.class, Class::Plaintext);
}

#[test]
fn retransmitted_and_reordered_segments_do_not_break_reassembly() {
    let hello = client_hello();
    let mut conn = Conn::new("10.0.0.1:40000", "10.0.0.2:15008")
        .handshake()
        .data(0, &hello[..20])
        .data(0, &hello[20..50])
        .data(0, &hello[50..]);
    // Retransmit the middle segment, a segment overlapping two, and swap the last two.
    let middle = conn.segments[4].clone();
    let mut overlap = conn.segments[3].clone();
    overlap.payload = hello[..40].to_vec();
    overlap.payload_len = 40;
    conn.segments.swap(4, 5);
    conn.segments.push(middle);
    conn.segments.push(overlap);
    for (i, s) in conn.segments.iter_mut().enumerate() {
        s.timestamp = Duration::from_millis(i as u64);
    }
    let flow = one(&conn.segments);
    assert_eq!(flow.to_server.class, Class::Tls);
    assert!(flow.to_server.complete);
    assert_eq!(flow.to_server.bytes, hello.len() as u64);
    assert_eq!(flow.to_server.packets, 5);
    assert_eq!(flow.to_server.chunks().len(), 1);
    assert_eq!(flow.to_server.chunks()[0].bytes, hello);
}

#[test]
fn a_hole_marks_the_stream_incomplete_and_the_rest_is_resynchronised() {
    let first = record(23, &[0x01; 100]);
    let lost = record(23, &[0x02; 100]);
    let mut after = record(23, &[0x03; 100]);
    after.extend(record(23, &[0x04; 50]));
    let mut conn = Conn::new("10.0.0.1:40000", "10.0.0.2:8443")
        .handshake()
        .data(0, &first)
        .data(0, &lost)
        .data(0, &after[30..]); // also starts mid-record
    conn.segments.remove(4);
    let flow = one(&conn.segments);
    assert!(!flow.to_server.complete);
    assert_eq!(flow.to_server.chunks().len(), 2);
    assert!(!flow.to_server.chunks()[1].at_start);
    assert_eq!(flow.to_server.class, Class::Tls);
}

#[test]
fn a_capture_started_mid_connection_still_tells_tls_from_text() {
    let mut tls = record(23, &[0x99; 400]);
    tls.extend(record(23, &[0x98; 400]));
    let conn = Conn::new("10.0.0.1:40000", "10.0.0.2:15008")
        .data(0, &tls[123..])
        .data(1, b"some plaintext the server sends back\n");
    let flow = one(&conn.segments);
    assert!(!flow.opened);
    // The client is guessed from the HBONE port.
    assert_eq!(flow.server, addr("10.0.0.2:15008"));
    assert_eq!(flow.to_server.class, Class::Tls);
    assert!(!flow.to_server.complete);
    assert_eq!(flow.to_client.class, Class::Plaintext);

    // A few bytes from inside a record body cannot be judged.
    let short = Conn::new("10.0.0.1:40000", "10.0.0.2:15008").data(0, &[0x99; 50]);
    assert_eq!(one(&short.segments).to_server.class, Class::Incomplete);
}

#[test]
fn a_segment_cut_by_the_snap_length_leaves_a_hole() {
    let mut conn = Conn::new("10.0.0.1:40000", "10.0.0.2:15008")
        .handshake()
        .data(0, &client_hello());
    let s = conn.segments.last_mut().unwrap();
    s.payload.truncate(10);
    let flow = one(&conn.segments);
    assert!(!flow.to_server.complete);
    assert_eq!(flow.to_server.bytes, client_hello().len() as u64);
    assert_eq!(flow.to_server.class, Class::Tls);
}

#[test]
fn empty_directions_and_port_reuse() {
    let first = Conn::new("10.0.0.1:40000", "10.0.0.2:80")
        .handshake()
        .close();
    let mut second = Conn::new("10.0.0.1:40000", "10.0.0.2:80");
    second.next = [5000, 9000];
    let mut second = second.handshake().data(0, b"hello there, plaintext\n");
    for s in &mut second.segments {
        s.timestamp += Duration::from_secs(1);
    }
    let all: Vec<Segment> = first.segments.into_iter().chain(second.segments).collect();
    let flows = assemble(&all);
    assert_eq!(flows.len(), 2);
    assert_eq!(flows[0].to_server.class, Class::Empty);
    assert_eq!(flows[0].to_client.class, Class::Empty);
    assert_eq!(flows[1].to_server.class, Class::Plaintext);
    assert_eq!(flows[1].to_client.class, Class::Empty);
}

#[test]
fn flows_of_several_captures_of_the_same_connection_merge() {
    let conn = Conn::new("10.0.0.1:40000", "10.0.0.2:15008")
        .handshake()
        .data(0, &client_hello());
    let twice: Vec<Segment> = conn
        .segments
        .iter()
        .chain(&conn.segments)
        .cloned()
        .collect();
    let flow = one(&twice);
    assert_eq!(flow.to_server.bytes, client_hello().len() as u64);
    assert_eq!(flow.to_server.class, Class::Tls);
}

#[test]
fn bytes_after_a_cut_segment_are_kept_once() {
    // Found by the `pcap` fuzz target: a segment cut by the snap length, then one overlapping
    // it, made two chunks holding the same bytes.
    let payload: Vec<u8> = (0..=255u8).cycle().take(260).collect();
    let mut conn = Conn::new("10.0.0.1:40000", "10.0.0.2:8080").handshake();
    let start = conn.next[0];
    conn = conn.data(0, &payload[..100]);
    for (from, len, captured) in [(50usize, 100usize, 30usize), (60, 200, 200)] {
        conn.next[0] = start.wrapping_add(from as u32);
        conn = conn.data(0, &payload[from..from + len]);
        conn.segments.last_mut().unwrap().payload.truncate(captured);
    }
    let flow = one(&conn.segments);
    let chunks = flow.to_server.chunks();
    assert_eq!(chunks.len(), 1, "{chunks:?}");
    assert_eq!(chunks[0].bytes, payload);
    assert_eq!(flow.to_server.bytes, 260);
    assert!(flow.to_server.complete);
}

#[test]
fn a_retransmission_fills_what_a_cut_segment_missed() {
    let payload = client_hello();
    let conn = Conn::new("10.0.0.1:40000", "10.0.0.2:15008")
        .handshake()
        .data(0, &payload);
    let mut segments = conn.segments;
    let mut cut = segments.last().unwrap().clone();
    cut.payload.truncate(10);
    let full = segments.pop().unwrap();
    segments.push(cut);
    segments.push(full);
    let flow = one(&segments);
    assert_eq!(flow.to_server.chunks().len(), 1);
    assert_eq!(flow.to_server.chunks()[0].bytes, payload);
    assert!(flow.to_server.complete);
    assert_eq!(flow.to_server.class, Class::Tls);
}
