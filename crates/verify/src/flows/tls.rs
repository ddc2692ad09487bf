//! Does a byte stream parse as TLS records?
//!
//! A TLS record starts with a 5-byte header: content type (20 change_cipher_spec, 21 alert,
//! 22 handshake, 23 application_data), legacy version 0x0301..=0x0304, and a body length of at
//! most 2^14 + 256 (RFC 8446 §5.2). A stream is TLS when its records, walked header to header
//! across segment boundaries, cover every byte; the last record may be cut off by the end of
//! the capture.
//!
//! A run that does not start at the stream's first byte (capture started mid-connection, or
//! bytes after a hole) has no known record boundary: it is searched for an offset from which
//! the records walk cleanly to its end.

use super::{Chunk, Class};

const HEADER_LEN: usize = 5;
const MAX_BODY: usize = (1 << 14) + 256;
const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
/// Below this many bytes a run is not judged as text.
const MIN_TEXT_LEN: usize = 16;

/// What one run of bytes says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Tls,
    Plaintext,
    Undecided,
}

/// Classifies a direction from its runs. `client_hello_first`: the stream's first record must be
/// a handshake record holding a ClientHello (the client side of HBONE).
pub(super) fn classify(chunks: &[Chunk], client_hello_first: bool) -> Class {
    if chunks.is_empty() {
        return Class::Empty;
    }
    let mut undecided = false;
    for chunk in chunks {
        let verdict = if chunk.at_start {
            from_boundary(&chunk.bytes, client_hello_first)
        } else {
            resynchronise(&chunk.bytes)
        };
        match verdict {
            Verdict::Plaintext => return Class::Plaintext,
            Verdict::Undecided => undecided = true,
            Verdict::Tls => {}
        }
    }
    if undecided {
        Class::Incomplete
    } else {
        Class::Tls
    }
}

/// A run that starts at a record boundary: it must walk cleanly.
fn from_boundary(bytes: &[u8], client_hello_first: bool) -> Verdict {
    if !walks(bytes) {
        return Verdict::Plaintext;
    }
    if client_hello_first && !starts_with_client_hello(bytes) {
        return Verdict::Plaintext;
    }
    Verdict::Tls
}

/// A run with no known boundary: TLS if the records walk cleanly from some offset within the
/// first record's reach; plaintext if the run is too long to lie inside one record yet holds no
/// walkable header, or reads as text; otherwise undecided.
fn resynchronise(bytes: &[u8]) -> Verdict {
    let reach = bytes
        .len()
        .saturating_sub(HEADER_LEN - 1)
        .min(HEADER_LEN + MAX_BODY);
    if (0..reach).any(|at| header_ok(&bytes[at..]) && walks(&bytes[at..])) {
        return Verdict::Tls;
    }
    if bytes.len() >= HEADER_LEN + MAX_BODY || looks_like_text(bytes) {
        Verdict::Plaintext
    } else {
        Verdict::Undecided
    }
}

/// Whether the records walk header to header over all of `bytes`, the last one possibly cut.
fn walks(bytes: &[u8]) -> bool {
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < HEADER_LEN {
            return prefix_ok(rest);
        }
        if !header_ok(rest) {
            return false;
        }
        at += HEADER_LEN + usize::from(u16::from_be_bytes([rest[3], rest[4]]));
    }
    true
}

/// Whether `bytes` starts with a full, plausible record header.
fn header_ok(bytes: &[u8]) -> bool {
    match bytes {
        [kind, 3, minor, hi, lo, ..] => {
            (20..=23).contains(kind)
                && (1..=4).contains(minor)
                && usize::from(u16::from_be_bytes([*hi, *lo])) <= MAX_BODY
        }
        _ => false,
    }
}

/// Whether a header cut short by the end of the capture is consistent so far.
fn prefix_ok(bytes: &[u8]) -> bool {
    let kind = bytes.first().is_none_or(|k| (20..=23).contains(k));
    let major = bytes.get(1).is_none_or(|m| *m == 3);
    let minor = bytes.get(2).is_none_or(|m| (1..=4).contains(m));
    kind && major && minor
}

/// A handshake record whose first message is a ClientHello (or too short to tell).
fn starts_with_client_hello(bytes: &[u8]) -> bool {
    bytes.first().is_none_or(|k| *k == HANDSHAKE)
        && bytes.get(HEADER_LEN).is_none_or(|msg| *msg == CLIENT_HELLO)
}

/// Mostly printable ASCII: ciphertext is about 38% printable, protocol text nearly 100%.
fn looks_like_text(bytes: &[u8]) -> bool {
    if bytes.len() < MIN_TEXT_LEN {
        return false;
    }
    let printable = bytes
        .iter()
        .filter(|b| matches!(b, 0x20..=0x7e | b'\r' | b'\n' | b'\t'))
        .count();
    printable * 100 >= bytes.len() * 95
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![kind, 3, 3];
        r.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn walks_records_and_accepts_a_last_record_cut_short() {
        let mut stream = record(22, &[1, 0, 0, 4]);
        stream.extend(record(23, &[0x99; 300]));
        assert!(walks(&stream));
        assert!(walks(&stream[..stream.len() - 100]));
        assert!(walks(&stream[..10]));
        assert!(!walks(b"GET / HTTP/1.1\r\n"));
        assert!(!walks(&record(24, b"x")));
    }

    #[test]
    fn refuses_oversized_records() {
        let mut r = vec![23, 3, 3];
        r.extend_from_slice(&u16::try_from(MAX_BODY + 1).unwrap_or(0).to_be_bytes());
        assert!(!header_ok(&r));
    }

    #[test]
    fn finds_a_record_boundary_in_a_run_that_starts_mid_record() {
        let mut stream = record(23, &[0x42; 200]);
        stream.extend(record(23, &[0x17; 90]));
        assert_eq!(resynchronise(&stream[37..]), Verdict::Tls);
        // A run inside one record body, too short to decide.
        assert_eq!(resynchronise(&[0x99; 100]), Verdict::Undecided);
        // Text is plaintext wherever it starts.
        assert_eq!(
            resynchronise(b"istio_tcp_sent_bytes_total{reporter=\"source\"} 7\n"),
            Verdict::Plaintext
        );
        // Longer than any record with no header in it.
        assert_eq!(
            resynchronise(&[0; HEADER_LEN + MAX_BODY]),
            Verdict::Plaintext
        );
    }

    #[test]
    fn a_hbone_client_must_open_with_a_client_hello() {
        let hello = record(22, &[1, 0, 0, 0]);
        let server_hello = record(22, &[2, 0, 0, 0]);
        assert_eq!(from_boundary(&hello, true), Verdict::Tls);
        assert_eq!(from_boundary(&server_hello, true), Verdict::Plaintext);
        assert_eq!(from_boundary(&server_hello, false), Verdict::Tls);
    }
}
