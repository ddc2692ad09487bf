//! The metadata headers of an HBONE CONNECT, in ztunnel's formats.
//!
//! - `Forwarded: for="<src ip:port>"` (`;host=<service hostname>` when a service was addressed):
//!   who the tunnel is for, and which service was asked for. The receiving side never
//!   authorizes with either: `for=` is what a client wrote (policy takes the TCP peer the kernel
//!   saw), and `host=` only chooses, among the services the destination workload really backs,
//!   which one telemetry names (as ztunnel's `parse_forwarded_host`).
//! - `Baggage: k8s.cluster.name=…,k8s.namespace.name=…,k8s.<type>.name=…,service.name=…,
//!   service.version=…`: the source workload, for the destination's telemetry.
//! - `Traceparent: 00-<32 hex>-<16 hex>-00` (W3C trace context), fresh random ids.
//!
//! Values come from WDS, so they are built with [`HeaderValue::from_str`] and a value that is not
//! valid header text is left out rather than sent mangled.
//!
//! The server reads a CONNECT's head into a [`ConnectHead`]: the target from `:authority` (an
//! `ip:port`, nothing else) and the trace id of a W3C-valid `traceparent`; a head that names no
//! target is refused with the status and a reason naming what was wrong. [`forwarded_for`] reads
//! the source a client wrote in `Forwarded`.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};

use crate::state::Workload;

pub(crate) const BAGGAGE: &str = "baggage";
pub(crate) const TRACEPARENT: &str = "traceparent";

/// What the server reads from a CONNECT request's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnectHead {
    /// `:authority`: the application address the tunnel is for (IPv4-mapped addresses made
    /// plain IPv4).
    pub(crate) target: SocketAddr,
    /// The trace id of a W3C-valid `traceparent`.
    pub(crate) trace_id: Option<u128>,
}

impl ConnectHead {
    /// Reads the head, or says why the request names no tunnel target: the status to answer
    /// with and the reason, naming the method or authority.
    pub(crate) fn parse(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Self, (StatusCode, String)> {
        if method != Method::CONNECT {
            return Err((
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} is not CONNECT"),
            ));
        }
        let authority = uri.authority().map_or("", |a| a.as_str());
        let target: SocketAddr = authority.parse().map_err(|_| {
            (
                StatusCode::BAD_REQUEST,
                format!("CONNECT authority {authority:?} is not an ip:port"),
            )
        })?;
        Ok(Self {
            target: SocketAddr::new(target.ip().to_canonical(), target.port()),
            trace_id: headers.get(TRACEPARENT).and_then(trace_id),
        })
    }
}

/// The trace id of a W3C trace context `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, lowercase;
/// ids not all zero; a later version may append `-…`), if it is one.
pub(crate) fn trace_id(value: &HeaderValue) -> Option<u128> {
    let text = value.to_str().ok()?;
    let (head, rest) = text.split_at_checked(55)?;
    let mut parts = head.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |part: &str, len: usize| {
        part.len() == len && part.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    };
    let shaped = hex(version, 2) && hex(trace, 32) && hex(parent, 16) && hex(flags, 2);
    // Version ff is invalid; version 00 has nothing after the flags.
    let versioned = match version {
        "ff" => false,
        "00" => rest.is_empty(),
        _ => rest.is_empty() || rest.starts_with('-'),
    };
    if !shaped || !versioned {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok()?;
    let parent = u64::from_str_radix(parent, 16).ok()?;
    (trace != 0 && parent != 0).then_some(trace)
}

/// `Forwarded` for a connection from `src`, addressed to `service_host` if any. The host is
/// written only when it is an RFC 7230 token (every DNS name is one): any other text could end
/// the element or the pair early, or not read back at all, so it is left out.
pub(crate) fn forwarded(src: SocketAddr, service_host: Option<&str>) -> Option<HeaderValue> {
    let value = match service_host.filter(|host| is_token(host)) {
        Some(host) => format!("for=\"{src}\";host={host}"),
        None => format!("for=\"{src}\""),
    };
    HeaderValue::from_str(&value).ok()
}

/// Whether `text` is an RFC 7230 `token`: one or more `tchar`s.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// The `for=` address of a `Forwarded` value, if it names an IP (and port).
pub(crate) fn forwarded_for(value: &HeaderValue) -> Option<SocketAddr> {
    let text = value.to_str().ok()?;
    // The last element is the hop nearest to us; each is `;`-separated pairs.
    let element = text.rsplit(',').next()?;
    element.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        if !key.eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim().trim_matches('"');
        value.parse::<SocketAddr>().ok().or_else(|| {
            value
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok()
                .map(|ip| SocketAddr::new(ip, 0))
        })
    })
}

/// The `host=` of a `Forwarded` value (ztunnel reads the first element's), if non-empty ASCII;
/// quotes around it are dropped.
pub(crate) fn forwarded_host(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    let element = text.split(',').next()?;
    element.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        if !key.eq_ignore_ascii_case("host") {
            return None;
        }
        let value = value.trim();
        let value = value.strip_prefix('"').unwrap_or(value);
        let value = value.strip_suffix('"').unwrap_or(value);
        (!value.is_empty()).then_some(value)
    })
}

/// `Baggage` describing the source workload.
pub(crate) fn baggage(cluster_id: &str, source: &Workload) -> Option<HeaderValue> {
    let cluster = if source.cluster_id.is_empty() {
        cluster_id
    } else {
        &source.cluster_id
    };
    let value = format!(
        "k8s.cluster.name={cluster},k8s.namespace.name={ns},k8s.{kind}.name={name},\
         service.name={app},service.version={version}",
        cluster = baggage_value(cluster),
        ns = baggage_value(&source.namespace),
        kind = source.workload_type,
        name = baggage_value(&source.workload_name),
        app = baggage_value(&source.canonical_name),
        version = baggage_value(&source.canonical_revision),
    );
    HeaderValue::from_str(&value).ok()
}

/// `text` as a W3C baggage value: every byte that is not a `baggage-octet` (printable ASCII but
/// space, `"`, `,`, `;`, `\`), and `%` itself, percent-encoded, so a name from WDS can neither
/// split the list nor make the header unreadable. Kubernetes names have nothing to encode.
fn baggage_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if matches!(byte, 0x21..=0x7e) && !b"\",;\\%".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A W3C `traceparent` starting a new trace: random trace and span ids, not sampled.
pub(crate) fn traceparent() -> HeaderValue {
    let mut bytes = [0u8; 24];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        // A trace id is a correlation aid, not a secret: fall back to the clock.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes[..16].copy_from_slice(&nanos.to_le_bytes());
        bytes[16..].copy_from_slice(&nanos.to_be_bytes()[..8]);
    }
    // All-zero ids are invalid; a random draw of zero is fixed up rather than sent.
    bytes[15] |= 1;
    bytes[23] |= 1;
    let mut text = String::with_capacity(55);
    text.push_str("00-");
    push_hex(&mut text, &bytes[..16]);
    text.push('-');
    push_hex(&mut text, &bytes[16..]);
    text.push_str("-00");
    // Only hex digits and dashes: always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| {
        HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-00")
    })
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_round_trips() {
        let src: SocketAddr = "10.0.0.1:4242".parse().unwrap();
        let value = forwarded(src, Some("echo.demo.svc.cluster.local")).unwrap();
        assert_eq!(
            value,
            "for=\"10.0.0.1:4242\";host=echo.demo.svc.cluster.local"
        );
        assert_eq!(forwarded_for(&value), Some(src));
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(forwarded_for(&forwarded(v6, None).unwrap()), Some(v6));
        let bare = HeaderValue::from_static("for=10.0.0.9");
        assert_eq!(forwarded_for(&bare), Some("10.0.0.9:0".parse().unwrap()));
        assert_eq!(
            forwarded_for(&HeaderValue::from_static("for=unknown")),
            None
        );
    }

    #[test]
    fn forwarded_host_is_read_as_ztunnel_reads_it() {
        let src: SocketAddr = "10.0.0.1:4242".parse().unwrap();
        let value = forwarded(src, Some("echo.demo.svc.cluster.local")).unwrap();
        assert_eq!(forwarded_host(&value), Some("echo.demo.svc.cluster.local"));
        assert_eq!(forwarded_host(&forwarded(src, None).unwrap()), None);
        let cases = [
            ("host=\"a.b\";for=1.2.3.4", Some("a.b")),
            ("for=1.2.3.4; HOST=a.b", Some("a.b")),
            ("host=", None),
            ("host=\"\"", None),
            ("for=1.2.3.4, host=second.hop", None),
        ];
        for (text, want) in cases {
            let value = HeaderValue::from_str(text).unwrap();
            assert_eq!(forwarded_host(&value), want, "{text}");
        }
        // Not text: nothing.
        let bytes = HeaderValue::from_bytes(b"host=\xff").unwrap();
        assert_eq!(forwarded_host(&bytes), None);
    }

    #[test]
    fn baggage_describes_the_source_as_ztunnel_does() {
        let source = crate::state::testing::test_workload("scraper", "10.0.0.1");
        let value = baggage("Kubernetes", &source).unwrap();
        assert_eq!(
            value,
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=ns,k8s.deployment.name=scraper,\
             service.name=scraper,service.version=v1"
        );
    }

    #[test]
    fn a_host_that_is_not_a_token_is_left_out_of_forwarded() {
        let src: SocketAddr = "10.0.0.1:4242".parse().unwrap();
        // A comma would start a new element, a `;` a new pair, obs-text would make the whole
        // value unreadable as text (the fuzzer's find): each would lose `for=`.
        for host in ["a,for=10.9.9.9", "a;for=10.9.9.9", "K\u{fffd}s", "a b", ""] {
            let value = forwarded(src, Some(host)).unwrap();
            assert_eq!(value, "for=\"10.0.0.1:4242\"", "{host:?}");
            assert_eq!(forwarded_for(&value), Some(src), "{host:?}");
        }
        let value = forwarded(src, Some("echo.demo.svc.cluster.local")).unwrap();
        assert_eq!(forwarded_host(&value), Some("echo.demo.svc.cluster.local"));
    }

    #[test]
    fn baggage_values_are_percent_encoded_to_baggage_octets() {
        let mut source = crate::state::testing::test_workload("scraper", "10.0.0.1");
        source.namespace = "n,s=x;y".to_owned();
        source.canonical_name = "K\u{fffd}s 100%".to_owned();
        source.canonical_revision = "\"v\\1\"".to_owned();
        let value = baggage("Kubernetes", &source).unwrap();
        // Readable as text (obs-text made `to_str` fail: the fuzzer's find), five members.
        assert_eq!(
            value.to_str().unwrap(),
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=n%2Cs=x%3By,\
             k8s.deployment.name=scraper,service.name=K%EF%BF%BDs%20100%25,\
             service.version=%22v%5C1%22"
        );
    }

    #[test]
    fn traceparent_is_w3c_shaped_and_fresh() {
        let a = traceparent();
        let b = traceparent();
        assert_ne!(a, b);
        let text = a.to_str().unwrap();
        assert_eq!(text.len(), 55);
        let parts: Vec<&str> = text.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!((parts[0], parts[3]), ("00", "00"));
        assert_eq!((parts[1].len(), parts[2].len()), (32, 16));
        assert!(parts[1].bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
