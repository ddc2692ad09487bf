//! Why a WDS resource was refused: the field at fault ([`DecodeError`]) and the resource it is in
//! ([`Rejected`]), so a NACK and a log line say exactly what to fix.

use ambit_identity::SpiffeIdError;

/// What is wrong in one resource; every variant names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("not a valid protobuf message: {0}")]
    Protobuf(String),
    #[error("the Address resource holds neither a workload nor a service: field `type` is unset")]
    Empty,
    #[error("workload has no uid: field `uid` is empty")]
    NoUid,
    #[error("address {index} is {len} bytes long, not 4 (IPv4) or 16 (IPv6), in field `{field}`")]
    BadAddress {
        field: &'static str,
        index: usize,
        len: usize,
    },
    #[error("unknown tunnel protocol {0} in field `tunnel_protocol`")]
    UnknownProtocol(i32),
    #[error("invalid identity in field `{field}`")]
    Identity {
        field: &'static str,
        #[source]
        source: SpiffeIdError,
    },
    #[error("port {port} is out of range in field `{field}`")]
    BadPort { field: &'static str, port: u32 },
    #[error("service has no hostname: field `hostname` is empty")]
    NoHostname,
}

/// A resource left out of an update: its name and what is wrong in it. Its `Display` is the
/// whole message (`<resource>: <what is wrong, in which field>`), as a NACK carries it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{resource}: {error}")]
pub struct Rejected {
    /// The WDS resource name.
    pub resource: String,
    pub error: DecodeError,
}
