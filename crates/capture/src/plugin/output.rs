//! What the plugin prints on stdout: results, the VERSION answer and error objects.
//!
//! Invariant: stdout carries exactly one JSON document or nothing — the runtime parses it, so
//! logs never go here (they go to stderr).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Serialize;
use serde_json::{Map, Value};

/// A CNI spec version this plugin speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub(crate) const SUPPORTED: [Self; 5] = [
        Self::V0_3_0,
        Self::V0_3_1,
        Self::V0_4_0,
        Self::V1_0_0,
        Self::V1_1_0,
    ];
    /// The version used when the runtime has not said which one it speaks.
    pub(crate) const LATEST: Self = Self::V1_1_0;

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    pub(crate) fn supported_list() -> String {
        let names: Vec<&str> = Self::SUPPORTED.iter().map(|v| v.as_str()).collect();
        names.join(", ")
    }

    /// Results before 1.0.0 carry `ips[].version` ("4" or "6"); 1.0.0 dropped it.
    fn has_ip_version_field(self) -> bool {
        self < Self::V1_0_0
    }
}

impl FromStr for CniVersion {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Self::SUPPORTED
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or(())
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The spec's well-known error codes, and this plugin's own (100 and up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    IncompatibleVersion,
    InvalidEnvironment,
    IoFailure,
    DecodingFailure,
    InvalidNetworkConfig,
    TryAgainLater,
    /// The agent answered and refused the pod.
    AgentRefused,
    /// The agent answered something this plugin cannot read (version skew).
    AgentProtocol,
}

impl ErrorCode {
    pub(crate) fn number(self) -> u32 {
        match self {
            Self::IncompatibleVersion => 1,
            Self::InvalidEnvironment => 4,
            Self::IoFailure => 5,
            Self::DecodingFailure => 6,
            Self::InvalidNetworkConfig => 7,
            Self::TryAgainLater => 11,
            Self::AgentRefused => 100,
            Self::AgentProtocol => 101,
        }
    }
}

/// The spec's error object.
#[derive(Debug, Serialize)]
pub(crate) struct CniError {
    #[serde(rename = "cniVersion")]
    pub(crate) cni_version: &'static str,
    pub(crate) code: u32,
    pub(crate) msg: String,
    pub(crate) details: String,
}

impl CniError {
    /// `msg` is the error itself; `details` its chain of causes, innermost last.
    pub(crate) fn new(
        cni_version: CniVersion,
        code: ErrorCode,
        error: &dyn std::error::Error,
    ) -> Self {
        let mut causes = Vec::new();
        let mut source = error.source();
        while let Some(cause) = source {
            causes.push(cause.to_string());
            source = cause.source();
        }
        Self {
            cni_version: cni_version.as_str(),
            code: code.number(),
            msg: error.to_string(),
            details: causes.join(": "),
        }
    }
}

/// The answer to VERSION.
#[derive(Debug, Serialize)]
pub(crate) struct VersionInfo {
    #[serde(rename = "cniVersion")]
    cni_version: &'static str,
    #[serde(rename = "supportedVersions")]
    supported_versions: Vec<&'static str>,
}

impl VersionInfo {
    pub(crate) fn new(cni_version: CniVersion) -> Self {
        Self {
            cni_version: cni_version.as_str(),
            supported_versions: CniVersion::SUPPORTED.iter().map(|v| v.as_str()).collect(),
        }
    }
}

/// ADD's result for a chained plugin that changes no interface: the previous result, passed
/// through with `cniVersion` set to the configuration's. The only conversion done is the one
/// that is mechanical — adding or dropping `ips[].version` across the 1.0.0 boundary;
/// everything else is left as the previous plugin wrote it. Without a previous result the
/// answer is the minimal `{"cniVersion": ..}`.
pub(crate) fn passthrough_result(
    prev_result: Option<&Map<String, Value>>,
    cni_version: CniVersion,
) -> Value {
    let mut result = prev_result.cloned().unwrap_or_default();
    result.insert(
        "cniVersion".to_owned(),
        Value::String(cni_version.as_str().to_owned()),
    );
    if let Some(Value::Array(ips)) = result.get_mut("ips") {
        for ip in ips.iter_mut().filter_map(Value::as_object_mut) {
            if !cni_version.has_ip_version_field() {
                ip.remove("version");
            } else if !ip.contains_key("version") {
                let family = ip
                    .get("address")
                    .and_then(Value::as_str)
                    .and_then(parse_cidr_address)
                    .map(|a| if a.is_ipv4() { "4" } else { "6" });
                if let Some(family) = family {
                    ip.insert("version".to_owned(), Value::String(family.to_owned()));
                }
            }
        }
    }
    Value::Object(result)
}

/// `10.0.0.5/24` → `10.0.0.5`; a bare address is accepted as well.
pub(crate) fn parse_cidr_address(cidr: &str) -> Option<IpAddr> {
    let (address, prefix) = match cidr.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (cidr, None),
    };
    let address: IpAddr = address.parse().ok()?;
    let max_prefix = if address.is_ipv4() { 32 } else { 128 };
    match prefix.map(str::parse::<u8>) {
        None => Some(address),
        Some(Ok(len)) if len <= max_prefix => Some(address),
        Some(_) => None,
    }
}
