//! The control plane's run, start to exit (what `ambit control` calls): watch SIGTERM and
//! SIGINT, start every source, service and listener ([`ControlPlane::start`]), then serve until
//! one of them. A signal while starting gives the start up; a control plane whose tasks stop on
//! their own is an error: it serves nothing any more.

use ambit_app::Shutdown;
use anyhow::Context;
use tracing::info;

use crate::run::{ControlConfig, ControlPlane};

/// Runs the control plane until `shutdown`.
///
/// # Errors
/// When it cannot start, or stops before it is asked to.
pub async fn run(config: ControlConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut stop = shutdown
        .watch()
        .context("cannot watch SIGTERM and SIGINT")?;
    let control = match stop.or_stop(ControlPlane::start(config)).await {
        Ok(started) => started.context("cannot start the control plane")?,
        Err(reason) => {
            info!("{reason} while starting; stopping");
            return Ok(());
        }
    };
    match stop.or_stop(control.wait()).await {
        Ok(()) => anyhow::bail!("the control plane stopped"),
        Err(reason) => {
            info!("{reason}; stopping");
            Ok(())
        }
    }
}
