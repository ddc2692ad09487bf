//! The minimal HTTP/1.1 server behind every role's side doors: the node proxy's admin, stats
//! and readiness ports, the control plane's monitoring port.
//!
//! A [`Route`] turns (method, path, query) into a [`Reply`]; it decides which methods an endpoint
//! takes. No request body is read. A failed connection ends only that connection.
//!
//! Every port is bounded by [`Limits::HTTP`] unless [`serve_with`] is given others: connections
//! come through an [`Acceptor`] (at most 64 at once, others wait in the backlog; a failed
//! accept, out of descriptors say, pauses instead of spinning), a client must send its whole
//! request head within the header timeout (10 s: a slowloris client sending a byte at a time
//! is cut, and holds its place only that long), and a connection that moves no byte for the
//! idle timeout (60 s) is closed. A request head is at most 16 KiB.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::accept::{Acceptor, Limits};

pub use hyper::{Method, StatusCode};

/// The largest request head (request line and headers) read, in bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What a route answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
    /// The `Allow` header, on a 405.
    pub allow: Option<&'static str>,
}

impl Reply {
    /// A reply of `content_type`.
    pub fn new(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
            allow: None,
        }
    }

    /// A UTF-8 text reply.
    pub fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body.into())
    }

    /// `200` with `value` as indented JSON.
    pub fn json(value: &serde_json::Value) -> Self {
        // Serializing a `Value` cannot fail: its map keys are strings.
        let body = serde_json::to_vec_pretty(value).unwrap_or_default();
        Self::new(StatusCode::OK, "application/json", body)
    }

    /// `404` naming the path.
    pub fn not_found(path: &str) -> Self {
        Self::text(StatusCode::NOT_FOUND, format!("no endpoint {path}\n"))
    }

    /// `405` with `Allow: allow`.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut reply = Self::text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("allowed: {allow}\n"),
        );
        reply.allow = Some(allow);
        reply
    }
}

/// Answers a request from its method, path and query string.
pub type Route = Arc<dyn Fn(&Method, &str, Option<&str>) -> Reply + Send + Sync>;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for the {server} server on {addr}")]
pub struct BindError {
    pub server: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// A running server: its bound address and the task serving it (which runs until aborted or
/// the runtime stops; dropping this handle does not stop it).
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// The bound address (useful when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves `route` there on a task of its own; `server` names it in logs and
/// errors.
///
/// # Errors
/// When `addr` cannot be bound.
pub async fn spawn(
    server: &'static str,
    addr: SocketAddr,
    route: Route,
) -> Result<Server, BindError> {
    let bind_error = |source| BindError {
        server,
        addr,
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    info!(%local_addr, "{server} server listening");
    let task = tokio::spawn(serve(server, listener, route));
    Ok(Server { local_addr, task })
}

/// Serves `route` on `listener` within [`Limits::HTTP`] until the task is dropped or aborted.
pub async fn serve(server: &'static str, listener: TcpListener, route: Route) {
    serve_with(server, listener, route, &Limits::HTTP).await;
}

/// Serves `route` on `listener` within `limits` until the task is dropped or aborted.
pub async fn serve_with(
    server: &'static str,
    listener: TcpListener,
    route: Route,
    limits: &Limits,
) {
    let acceptor = Acceptor::new(server, listener, limits);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    loop {
        let (conn, peer) = acceptor.accept().await;
        let route = route.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let reply = route(req.method(), req.uri().path(), req.uri().query());
                std::future::ready(Ok::<_, Infallible>(into_response(reply)))
            });
            if let Err(e) = builder.serve_connection(TokioIo::new(conn), service).await {
                debug!(%peer, error = %e, "{server} connection ended with an error");
            }
        });
    }
}

fn into_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(reply.content_type),
    );
    if let Some(allow) = reply.allow {
        headers.insert(header::ALLOW, header::HeaderValue::from_static(allow));
    }
    response
}
