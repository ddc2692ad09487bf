//! The control plane's monitoring port (15014): `/metrics`, `/ready` and the `/debug/…` JSON
//! endpoints, on the roles' shared HTTP server ([`ambit_app::http`]). Read-only: GET (and HEAD)
//! only, no request bodies.

use std::sync::Arc;

use ambit_app::http::{Method, StatusCode};
use tokio::net::TcpListener;

pub(crate) use ambit_app::http::Reply;

/// Routes a request path (with its query string) to a reply.
pub(crate) type Handler = Arc<dyn Fn(&str, Option<&str>) -> Reply + Send + Sync>;

/// Serves `handler` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, handler: Handler) {
    let route = Arc::new(move |method: &Method, path: &str, query: Option<&str>| {
        if method == Method::GET || method == Method::HEAD {
            handler(path, query)
        } else {
            Reply::text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n")
        }
    });
    ambit_app::http::serve("monitoring", listener, route).await;
}
