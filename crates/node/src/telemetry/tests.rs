//! Unit tests of the metrics registry's rendering; the exact label sets of real connections are
//! asserted in `tests/telemetry.rs`.

use std::time::{Duration, UNIX_EPOCH};

use super::metrics::{Metrics, sample};

#[test]
fn label_values_are_escaped() {
    let mut out = String::new();
    sample(&mut out, "m", &[("a", "x\"y\\z\nw")], 3);
    assert_eq!(out, "m{a=\"x\\\"y\\\\z\\nw\"} 3\n");
}

#[test]
fn families_without_samples_still_describe_themselves() {
    let text = Metrics::with_build_tag("1.2.3").render();
    assert!(text.contains("# TYPE istio_tcp_connections_opened_total counter\n"));
    assert!(text.contains("istio_build{component=\"ztunnel\",tag=\"1.2.3\"} 1\n"));
    assert!(!text.contains("istio_tcp_connections_opened_total{"));
}

#[test]
fn gauges_are_set_and_removed() {
    let m = Metrics::new();
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    m.set_certificate_expiry("spiffe://cluster.local/ns/a/sa/b", t);
    m.set_xds_connection_state("istiod:15012", true);
    let text = m.render();
    assert!(text.contains(
            "ambit_certificate_expiry_seconds{identity=\"spiffe://cluster.local/ns/a/sa/b\"} 1700000000\n"
        ));
    assert!(text.contains("ambit_xds_connection_state{target=\"istiod:15012\"} 1\n"));
    m.remove_certificate_expiry("spiffe://cluster.local/ns/a/sa/b");
    m.set_xds_connection_state("istiod:15012", false);
    let text = m.render();
    assert!(!text.contains("ambit_certificate_expiry_seconds{"));
    assert!(text.contains("ambit_xds_connection_state{target=\"istiod:15012\"} 0\n"));
}

#[test]
fn log_identities_only_for_mutual_tls() {
    use super::access_log::AccessRecord;
    use super::{ConnectionInfo, Direction, PeerInfo, SecurityPolicy};
    let peer = |id: &str| PeerInfo {
        workload: String::new(),
        app: "app".into(),
        identity: id.into(),
        ..PeerInfo::default()
    };
    let mut info = ConnectionInfo {
        direction: Direction::Inbound,
        src_addr: ([10, 0, 0, 1], 1000).into(),
        src: peer("spiffe://td/ns/a/sa/b"),
        dst_addr: ([10, 0, 0, 2], 80).into(),
        dst_hbone_addr: None,
        dst_service: None,
        dst: peer("spiffe://td/ns/c/sa/d"),
        security: SecurityPolicy::Unknown,
    };
    let r = AccessRecord::new(&info, 0, 0, Duration::ZERO, None);
    assert_eq!((r.src_identity, r.dst_identity), (None, None));
    // A workload without a name is logged by its canonical service, as ztunnel does.
    assert_eq!(r.src_workload.as_deref(), Some("app"));
    info.security = SecurityPolicy::MutualTls;
    let r = AccessRecord::new(&info, 0, 0, Duration::ZERO, None);
    assert_eq!(r.src_identity.as_deref(), Some("spiffe://td/ns/a/sa/b"));
    assert_eq!(r.dst_addr, info.dst_addr);
    assert_eq!(r.dst_hbone_addr, None);
}
