//! The async runtime a role runs on.

use std::future::Future;

use anyhow::Context;

/// Runs `role` to completion on a new multi-threaded runtime with `worker_threads` threads
/// (tokio's default, one per CPU, when `None`); every task still running is dropped with the
/// runtime when `role` returns.
///
/// # Errors
/// When the runtime cannot be built, or what `role` returns.
pub fn block_on<T>(
    worker_threads: Option<usize>,
    role: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(role)
}
