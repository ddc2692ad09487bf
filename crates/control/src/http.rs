//! A minimal HTTP/1.1 server for the control plane's monitoring port (15014): `/metrics`,
//! `/ready` and the `/debug/…` JSON endpoints. Read-only, GET only, no request bodies.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

/// What a handler answers: status, content type, body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) content_type: &'static str,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from(body.into()),
        }
    }

    pub(crate) fn json(value: &serde_json::Value) -> Self {
        let body = serde_json::to_vec_pretty(value)
            .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()).into_bytes());
        Self {
            status: StatusCode::OK,
            content_type: "application/json",
            body: Bytes::from(body),
        }
    }

    pub(crate) fn not_found(path: &str) -> Self {
        Self::text(StatusCode::NOT_FOUND, format!("no endpoint {path}\n"))
    }
}

/// Routes a request path (with its query string) to a reply.
pub(crate) type Handler = Arc<dyn Fn(&str, Option<&str>) -> Reply + Send + Sync>;

/// Serves `handler` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, handler: Handler) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "monitoring accept failed");
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(respond(&handler, &req, peer)) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "monitoring connection ended with an error");
            }
        });
    }
}

fn respond(handler: &Handler, req: &Request<Incoming>, _peer: SocketAddr) -> Response<Full<Bytes>> {
    let reply = if req.method() == Method::GET || req.method() == Method::HEAD {
        handler(req.uri().path(), req.uri().query())
    } else {
        Reply::text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n")
    };
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = reply.status;
    if let Ok(value) = reply.content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
