//! Keeping the plugin installed while the agent runs: a poll of the bin and conf folders.

use std::io;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{ConfigChange, InstallError, Installer, binary};

impl Installer {
    /// Checks now and every poll interval that the binary and the configuration are in place,
    /// putting them back when they are not. Problems are logged (once until they change) and
    /// retried.
    pub fn watch(self) -> InstallWatch {
        let (stop, mut stopped) = oneshot::channel();
        let installer = self.clone();
        let task = tokio::spawn(async move {
            let mut last_problem = String::new();
            loop {
                let pass = installer.clone();
                let result = tokio::task::spawn_blocking(move || pass.check()).await;
                let problem = match result {
                    Ok(Ok(())) => String::new(),
                    Ok(Err(e)) => crate::agent::error_chain(&e),
                    Err(e) => e.to_string(),
                };
                if problem != last_problem && !problem.is_empty() {
                    warn!(problem, "the CNI plugin is not installed; retrying");
                }
                last_problem = problem;
                tokio::select! {
                    _ = &mut stopped => return,
                    () = tokio::time::sleep(installer.config.poll_interval) => {}
                }
            }
        });
        InstallWatch {
            installer: self,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// One pass of the watch: the binary (by size, cheaply), then the configuration.
    fn check(&self) -> Result<(), InstallError> {
        if binary::ensure(&self.config.binary, &self.binary_path(), false)? {
            info!(path = %self.binary_path().display(), "copied the CNI plugin binary");
        }
        match self.ensure_config()? {
            ConfigChange::Unchanged(_) => {}
            ConfigChange::Inserted(path) => {
                info!(path = %path.display(), "chained the CNI plugin into the network configuration");
            }
            ConfigChange::Converted { from, to } => {
                info!(from = %from.display(), to = %to.display(), "turned the network configuration into a list and chained the CNI plugin");
            }
        }
        Ok(())
    }
}

/// The running [`Installer::watch`].
#[derive(Debug)]
pub struct InstallWatch {
    installer: Installer,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl InstallWatch {
    /// Stops watching; with `uninstall`, also takes the plugin out of the node's configuration
    /// and removes the binary.
    pub async fn stop(mut self, uninstall: bool) -> Result<(), InstallError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if !uninstall {
            return Ok(());
        }
        let installer = self.installer.clone();
        tokio::task::spawn_blocking(move || installer.uninstall())
            .await
            .unwrap_or_else(|e| {
                Err(InstallError::WriteConfig {
                    path: self.installer.config.conf_dir.clone(),
                    source: io::Error::other(e.to_string()),
                })
            })
    }
}

impl Drop for InstallWatch {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
