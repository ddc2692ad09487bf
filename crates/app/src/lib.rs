//! What every role's entry point shares, written once: `ambit_control::app`, `ambit_node::app`
//! and `ambit_capture::app` each start their role with these, and the `ambit` binary only parses
//! flags and calls them.
//!
//! - [`runtime`]: the multi-threaded async runtime a role runs on.
//! - [`shutdown`]: [`Shutdown`], which ends a role's run on SIGTERM or SIGINT alike (a pod
//!   deleted, Ctrl-C) or when asked from inside the process (`/quitquitquit`), and says which.
//! - [`accept`]: [`Acceptor`], a listener with a connection cap that pauses instead of spinning
//!   when descriptors run out, handing out [`Conn`]s that idle out.
//! - [`http`]: the minimal HTTP/1.1 server behind the roles' side doors (node proxy admin, stats
//!   and readiness; the control plane's monitoring port): one request at a time per connection,
//!   no request bodies, replies built by a routing function.
//!
//! Invariant: a role's run returns only after its shutdown reason is known and its own drain has
//! finished; nothing here exits the process.

pub mod accept;
mod conn;
pub mod http;
pub mod runtime;
pub mod shutdown;

pub use accept::{Acceptor, Limits};
pub use conn::Conn;
pub use shutdown::{Reason, Shutdown};
