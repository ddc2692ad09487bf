//! What the plugin prints: passed-through results, VERSION, error objects.

use serde_json::{Value, json};

use super::super::output::{CniError, CniVersion, ErrorCode, VersionInfo, passthrough_result};

fn object(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

#[test]
fn result_passes_through_with_the_configured_version() {
    let prev = object(json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/cni-1"}],
        "ips": [{"address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["10.96.0.10"]},
        "somePluginKey": {"kept": true}
    }));
    let out = passthrough_result(Some(&prev), CniVersion::V1_1_0);
    let mut expected = prev.clone();
    expected.insert("cniVersion".into(), json!("1.1.0"));
    assert_eq!(out, Value::Object(expected));
}

#[test]
fn ip_version_field_follows_the_1_0_0_boundary() {
    let old = object(json!({
        "cniVersion": "0.4.0",
        "ips": [{"version": "4", "address": "10.0.0.2/24"}]
    }));
    assert_eq!(
        passthrough_result(Some(&old), CniVersion::V1_0_0),
        json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]})
    );
    let new = object(json!({
        "cniVersion": "1.0.0",
        "ips": [{"address": "10.0.0.2/24"}, {"address": "fd00::2/64"}, {"address": "junk"}]
    }));
    assert_eq!(
        passthrough_result(Some(&new), CniVersion::V0_3_1),
        json!({"cniVersion": "0.3.1", "ips": [
            {"version": "4", "address": "10.0.0.2/24"},
            {"version": "6", "address": "fd00::2/64"},
            {"address": "junk"}
        ]})
    );
}

#[test]
fn without_a_previous_result_add_answers_the_minimal_result() {
    assert_eq!(
        passthrough_result(None, CniVersion::V0_4_0),
        json!({"cniVersion": "0.4.0"})
    );
}

#[test]
fn version_info_lists_every_supported_version() {
    let info = serde_json::to_value(VersionInfo::new(CniVersion::V1_0_0)).unwrap();
    assert_eq!(
        info,
        json!({
            "cniVersion": "1.0.0",
            "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        })
    );
}

#[test]
fn error_object_carries_code_message_and_causes() {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);
    let error = Outer(std::io::Error::other("inner"));
    let json = serde_json::to_value(CniError::new(
        CniVersion::V0_3_1,
        ErrorCode::TryAgainLater,
        &error,
    ))
    .unwrap();
    assert_eq!(
        json,
        json!({"cniVersion": "0.3.1", "code": 11, "msg": "outer", "details": "inner"})
    );
}

#[test]
fn error_codes_are_the_specs() {
    let codes = [
        (ErrorCode::IncompatibleVersion, 1),
        (ErrorCode::InvalidEnvironment, 4),
        (ErrorCode::IoFailure, 5),
        (ErrorCode::DecodingFailure, 6),
        (ErrorCode::InvalidNetworkConfig, 7),
        (ErrorCode::TryAgainLater, 11),
        (ErrorCode::AgentRefused, 100),
        (ErrorCode::AgentProtocol, 101),
    ];
    for (code, number) in codes {
        assert_eq!(code.number(), number, "{code:?}");
    }
}
