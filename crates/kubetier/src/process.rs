//! An `ambit` role (control plane, node proxy, capture agent) as a process pointed at the API
//! server: its output in a log file, its pid registered with the cluster so `scripts/test-kube`
//! stops it even if the test process dies, and stopped (SIGTERM, then SIGKILL) on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cluster::{Cluster, unique_name};

/// A running role process.
#[derive(Debug)]
pub struct RoleProcess {
    name: String,
    child: Child,
    log: PathBuf,
    pid_file: PathBuf,
}

impl RoleProcess {
    /// Starts `program args…` with `env` added to this process's environment, and `KUBECONFIG`
    /// set to `kubeconfig` (kube-rs and the roles read it). `name` names its log and pid files.
    pub fn start(
        cluster: &Cluster,
        name: &str,
        program: &Path,
        args: &[&str],
        kubeconfig: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let name = unique_name(name);
        let work = cluster.env().path("AMBIT_KUBE_WORK")?;
        let log = work.join("logs").join(format!("{name}.log"));
        let pid_file = cluster
            .env()
            .path("AMBIT_KUBE_PIDS")?
            .join(format!("{name}.pid"));
        let out = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        std::fs::write(&pid_file, format!("{}\n", child.id()))?;
        Ok(Self {
            name,
            child,
            log,
            pid_file,
        })
    }

    /// `ambit args…` (the binary scripts/test-kube built).
    pub fn ambit(
        cluster: &Cluster,
        name: &str,
        args: &[&str],
        kubeconfig: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start(cluster, name, &cluster.ambit_exe(), args, kubeconfig, env)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_file(&self) -> &Path {
        &self.log
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its output contains `needle`; an error (with the output) if it exits first or
    /// `timeout` passes.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before printing {needle:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print {needle:?} within {timeout:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether it has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for it to end.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_none() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                crate::pid::signal(pid, rustix::process::Signal::TERM);
            }
            let deadline = Instant::now() + grace;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}
