//! The `hbone` target: what the 15008 server reads from a CONNECT's head, and what a peer reads
//! from the metadata headers this proxy writes.
//!
//! Input: NUL-separated fields — `:authority`, `Forwarded`, `traceparent`, method, then the
//! source address (bytes), service host, cluster, namespace, workload name, app and version
//! that the client-side encoders are given (names come from WDS: any text). Invariants checked:
//! - nothing panics, on any head a peer can send;
//! - a head is refused with 405 naming a method other than CONNECT, or 400 naming an authority
//!   that is not `ip:port`; an accepted target is that address, IPv4-mapped made IPv4;
//! - a trace id is read only from a W3C-valid `traceparent`, and is never zero;
//! - `Forwarded` is always written, and reads back as the source it was written for, whatever
//!   the host; the host reads back as itself or is left out (it is written only as a token);
//! - `Baggage` is always written, is readable as text, and reads back, as a W3C baggage list, as
//!   exactly the five members that were written, whatever the names (values are
//!   percent-encoded); a fresh `traceparent` is W3C-valid.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::uri::{Authority, Parts};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};

use super::fields;
use crate::hbone::headers::{self, ConnectHead};
use crate::state::{Protocol, Workload};

/// The body of the `hbone` target.
pub fn hbone(data: &[u8]) {
    let f = fields(data, 11);
    server_side(f[0], f[1], f[2], f[3]);
    let src = address(f[4]);
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    forwarded(src, &text(f[5]));
    baggage(
        &text(f[6]),
        &text(f[7]),
        &text(f[8]),
        &text(f[9]),
        &text(f[10]),
        f[4],
    );
    let fresh = headers::traceparent();
    assert!(
        headers::trace_id(&fresh).is_some(),
        "{fresh:?} is not W3C-valid"
    );
}

fn server_side(authority: &[u8], forwarded: &[u8], traceparent: &[u8], method: &[u8]) {
    // Only what h2 can hand over: a method token, an authority, valid header values.
    let method = if method.is_empty() {
        Method::CONNECT
    } else {
        match Method::from_bytes(method) {
            Ok(method) => method,
            Err(_) => return,
        }
    };
    let mut parts = Parts::default();
    parts.authority = Authority::try_from(authority).ok();
    let Ok(uri) = Uri::from_parts(parts) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for (name, value) in [
        (http::header::FORWARDED.as_str(), forwarded),
        (headers::TRACEPARENT, traceparent),
    ] {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(name, value);
        }
    }
    match ConnectHead::parse(&method, &uri, &headers) {
        Ok(head) => {
            assert_eq!(method, Method::CONNECT);
            let written: SocketAddr = uri
                .authority()
                .map(|a| a.as_str())
                .unwrap_or_default()
                .parse()
                .unwrap_or_else(|_| panic!("accepted an authority that is not ip:port: {uri}"));
            assert_eq!(head.target.port(), written.port());
            assert_eq!(head.target.ip(), written.ip().to_canonical());
            if let Some(id) = head.trace_id {
                assert_ne!(id, 0);
            }
        }
        Err((status, reason)) if status == StatusCode::METHOD_NOT_ALLOWED => {
            assert_ne!(method, Method::CONNECT);
            assert!(reason.contains(method.as_str()), "{reason}");
        }
        Err((status, reason)) => {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{reason}");
            let authority = uri.authority().map_or("", |a| a.as_str());
            assert!(reason.contains(&format!("{authority:?}")), "{reason}");
        }
    }
    if let Some(value) = headers.get(http::header::FORWARDED) {
        let _ = headers::forwarded_for(value);
    }
    if let Some(value) = headers.get(headers::TRACEPARENT)
        && let Some(id) = headers::trace_id(value)
    {
        let again = HeaderValue::from_str(&format!("00-{id:032x}-0000000000000001-01"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(headers::trace_id(&again), Some(id));
    }
}

/// A source address from raw bytes: IPv4 when the first byte is even, IPv6 otherwise.
fn address(bytes: &[u8]) -> SocketAddr {
    let mut b = [0u8; 19];
    for (slot, byte) in b.iter_mut().zip(bytes) {
        *slot = *byte;
    }
    let port = u16::from_be_bytes([b[17], b[18]]);
    let ip = if b[0] % 2 == 0 {
        IpAddr::V4(Ipv4Addr::new(b[1], b[2], b[3], b[4]))
    } else {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&b[1..17]);
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    SocketAddr::new(ip, port)
}

fn forwarded(src: SocketAddr, host: &str) {
    for service_host in [None, Some(host)] {
        let value = headers::forwarded(src, service_host)
            .unwrap_or_else(|| panic!("no Forwarded for {src} and {service_host:?}"));
        assert_eq!(
            headers::forwarded_for(&value),
            Some(src),
            "Forwarded {value:?} does not read back as {src}"
        );
        // A host is either written so that it reads back as itself, or left out.
        let read = headers::forwarded_host(&value);
        assert!(
            read.is_none() || read == service_host,
            "Forwarded {value:?} reads back host {read:?}, not {service_host:?}"
        );
    }
}

fn baggage(cluster: &str, namespace: &str, name: &str, app: &str, version: &str, kind: &[u8]) {
    let kinds = ["deployment", "cronjob", "pod", "job"];
    let workload_type = kinds[usize::from(kind.first().copied().unwrap_or(0)) % kinds.len()];
    let source = Workload {
        uid: "uid".to_owned(),
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        addresses: Vec::new(),
        network: String::new(),
        protocol: Protocol::Hbone,
        identity: "spiffe://cluster.local/ns/ns/sa/sa"
            .parse()
            .unwrap_or_else(|e| panic!("{e}")),
        node: String::new(),
        canonical_name: app.to_owned(),
        canonical_revision: version.to_owned(),
        workload_type,
        workload_name: name.to_owned(),
        services: BTreeMap::new(),
        authorization_policies: Vec::new(),
        healthy: true,
        cluster_id: String::new(),
        host_network: false,
        region: String::new(),
        zone: String::new(),
    };
    let value = headers::baggage(cluster, &source)
        .unwrap_or_else(|| panic!("no Baggage for {cluster:?} and {source:?}"));
    let text = value.to_str().unwrap_or_else(|e| panic!("{e}"));
    let expected = [
        ("k8s.cluster.name".to_owned(), cluster.to_owned()),
        ("k8s.namespace.name".to_owned(), namespace.to_owned()),
        (format!("k8s.{workload_type}.name"), name.to_owned()),
        ("service.name".to_owned(), app.to_owned()),
        ("service.version".to_owned(), version.to_owned()),
    ];
    assert_eq!(read_baggage(text), expected, "Baggage {text:?}");
}

/// A W3C baggage list: `key=value` members separated by commas, optional whitespace around
/// each, `;properties` after a value, values percent-decoded.
fn read_baggage(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .map(|member| {
            let member = member.split(';').next().unwrap_or_default();
            let (key, value) = member.split_once('=').unwrap_or((member, ""));
            (key.trim().to_owned(), percent_decode(value.trim()))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(fields: &[&[u8]]) -> Vec<u8> {
        fields.join(&0u8)
    }

    /// Heads as this proxy's client sends them (see `hbone::client`) and as the tests' hostile
    /// clients do, with the names of the test workloads.
    fn generated() -> Vec<(String, Vec<u8>)> {
        let v4 = [
            0u8, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x92,
        ];
        let mut v6 = [1u8; 19];
        v6[1..17].copy_from_slice(
            &"fd00::1"
                .parse::<Ipv6Addr>()
                .map_or([0; 16], |a| a.octets()),
        );
        let names: [&[u8]; 6] = [
            b"echo.demo.svc.cluster.local",
            b"Kubernetes",
            b"demo",
            b"scraper",
            b"scraper",
            b"v1",
        ];
        let tp = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut seeds = vec![];
        for (name, head) in [
            (
                "connect-v4",
                [
                    &b"10.0.0.2:8080"[..],
                    b"for=\"10.0.0.1:4242\";host=echo.demo.svc.cluster.local",
                    tp,
                    b"CONNECT",
                ],
            ),
            (
                "connect-v6",
                [&b"[fd00::2]:80"[..], b"for=\"[fd00::1]:4242\"", tp, b""],
            ),
            (
                "connect-mapped",
                [
                    &b"[::ffff:10.0.0.2]:80"[..],
                    b"for=10.0.0.9",
                    b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
                    b"",
                ],
            ),
            (
                "connect-hostname",
                [&b"echo.demo:80"[..], b"for=unknown", b"", b""],
            ),
            ("get", [&b"10.0.0.2:8080"[..], b"", b"", b"GET"]),
        ] {
            let src = if name == "connect-v6" {
                &v6[..]
            } else {
                &v4[..]
            };
            let mut all: Vec<&[u8]> = head.to_vec();
            all.push(src);
            all.extend(names);
            seeds.push((name.to_owned(), seed(&all)));
        }
        seeds
    }

    #[test]
    fn seed_corpus() {
        ambit_testkit::corpus::run("hbone", generated(), hbone);
    }

    #[test]
    fn w3c_baggage_reads_members_and_percent_escapes() {
        assert_eq!(
            read_baggage("a=1, b = x%2Cy;p=q"),
            [
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "x,y".to_owned())
            ]
        );
    }
}
