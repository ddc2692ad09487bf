//! A cluster of one test's own: a second etcd and kube-apiserver, started with
//! `scripts/kube-cluster` exactly as the shared one is, for tests that change cluster-wide objects
//! (CRDs, ClusterRoles) and must see them alone — installing and uninstalling the charts and
//! checking nothing is left, say. It is stopped and its folder removed on drop.

use std::ops::Deref;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

use crate::cluster::{Cluster, unique_name};
use crate::env::Env;

/// A running private cluster; derefs to its [`Cluster`].
#[derive(Debug)]
pub struct PrivateCluster {
    cluster: Cluster,
    _running: Running,
}

impl PrivateCluster {
    /// Starts one beside `shared` (whose binaries, tools and repository it uses), in a folder
    /// under the shared cluster's, so scripts/test-kube stops it if this process cannot.
    pub async fn start(shared: &Cluster) -> anyhow::Result<Self> {
        let running = Running {
            script: shared.repo().join("scripts/kube-cluster"),
            dir: shared
                .env()
                .path("AMBIT_KUBE_WORK")?
                .join("private")
                .join(unique_name("cluster")),
        };
        let tools = shared.path("AMBIT_KUBE_KUBECTL");
        let tools = tools.parent().map(PathBuf::from).unwrap_or_default();
        let path = format!(
            "{}:{}",
            tools.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = Command::new(&running.script);
        command
            .arg("start")
            .arg(&running.dir)
            .env("AMBIT_KUBE_BIN", shared.env().get("AMBIT_KUBE_BIN")?)
            .env("PATH", path);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await?
            .with_context(|| format!("cannot run {}", running.script.display()))?;
        if !output.status.success() {
            bail!(
                "{} start {} failed:\n{}",
                running.script.display(),
                running.dir.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let own = Env::read(&running.dir.join("kube.env"))?;
        let cluster = Cluster::connect(shared.env().overlaid(own)).await?;
        Ok(Self {
            cluster,
            _running: running,
        })
    }
}

impl Deref for PrivateCluster {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

/// The started etcd and API server: stopped, and their folder removed, on drop (also when
/// start fails part-way).
#[derive(Debug)]
struct Running {
    script: PathBuf,
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .status();
        if std::env::var_os("AMBIT_KUBE_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
