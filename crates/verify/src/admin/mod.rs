//! What the node proxies say about themselves: `/config_dump` on the admin port (15000) and
//! `/stats/prometheus` on the stats port (15020), read over plain HTTP/1.1, and their access
//! logs (`connection complete` lines) read from files.
//!
//! The client is deliberately tiny: one `GET` per connection with `Connection: close`, the body
//! delimited by `Content-Length`, chunked encoding, or the end of the stream. Responses are
//! bounded in size and time; anything unexpected is an error naming the address and path.

mod access_log;
mod config_dump;
mod http;
mod prometheus;

use std::net::SocketAddr;
use std::time::Duration;

pub use access_log::parse_access_log;
pub use config_dump::{ConfigDump, Protocol, Workload};
pub use prometheus::{
    CONNECTIONS_OPENED, PrometheusError, RECEIVED_BYTES, SENT_BYTES, Sample, TcpMetrics,
    TrafficCounters, TrafficKey, parse_line,
};

/// How long one request may take, connect to last byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a node proxy's endpoint could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("reading http://{addr}{path} failed")]
    Io {
        addr: SocketAddr,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("http://{addr}{path} did not answer within {timeout:?}")]
    Timeout {
        addr: SocketAddr,
        path: String,
        timeout: Duration,
    },
    #[error("http://{addr}{path} sent a malformed response: {reason}")]
    Malformed {
        addr: SocketAddr,
        path: String,
        reason: String,
    },
    #[error("http://{addr}{path} answered {status}: {body}")]
    Status {
        addr: SocketAddr,
        path: String,
        status: u16,
        body: String,
    },
    #[error("http://{addr}{path} is not the JSON expected")]
    Json {
        addr: SocketAddr,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("http://{addr}{path} is not Prometheus text")]
    Prometheus {
        addr: SocketAddr,
        path: String,
        #[source]
        source: PrometheusError,
    },
}

/// Reads `/config_dump` from a node proxy's admin address.
pub async fn fetch_config_dump(addr: SocketAddr) -> Result<ConfigDump, AdminError> {
    let path = "/config_dump";
    let body = http::get(addr, path, REQUEST_TIMEOUT).await?;
    ConfigDump::parse(&body).map_err(|source| AdminError::Json {
        addr,
        path: path.into(),
        source,
    })
}

/// Reads the L4 traffic counters from a node proxy's stats address.
pub async fn fetch_metrics(addr: SocketAddr) -> Result<TcpMetrics, AdminError> {
    let path = "/stats/prometheus";
    let body = http::get(addr, path, REQUEST_TIMEOUT).await?;
    TcpMetrics::from_text(&body).map_err(|source| AdminError::Prometheus {
        addr,
        path: path.into(),
        source,
    })
}

/// `GET path` from `addr`, returning the body of a 200 answer.
pub async fn get(addr: SocketAddr, path: &str) -> Result<String, AdminError> {
    http::get(addr, path, REQUEST_TIMEOUT).await
}
