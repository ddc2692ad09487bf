//! The environment `scripts/test-kube` writes: where the API server is and how to reach it.
//!
//! `scripts/kube-cluster start` writes `KEY=VALUE` lines to `<folder>/kube.env` (server URL, CA,
//! CA key, admin kubeconfig, service-account keys, the API server's command line and pid file);
//! `scripts/test-kube` adds the components' kubeconfigs, the tools and the `ambit` binaries, and
//! names the file in `AMBIT_KUBE_ENV`. Reading it fails loudly, naming what is missing: a test of
//! this tier never passes without an API server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The variable naming the environment file.
pub const ENV_VAR: &str = "AMBIT_KUBE_ENV";

/// The cluster's environment: every key of its file.
#[derive(Debug, Clone)]
pub struct Env {
    file: PathBuf,
    vars: BTreeMap<String, String>,
}

impl Env {
    /// Reads the file named by `AMBIT_KUBE_ENV`; panics (failing the test) when it is not set or
    /// cannot be read, saying how to run the tier.
    pub fn from_environment() -> Self {
        let Some(path) = std::env::var_os(ENV_VAR) else {
            panic!(
                "{ENV_VAR} is not set: the Kubernetes tier runs under scripts/test-kube, which \
                 builds and starts kube-apiserver and etcd and writes their environment \
                 (`scripts/test-kube`, or `scripts/test-kube -- <test name>` for some tests)"
            );
        };
        match Self::read(Path::new(&path)) {
            Ok(env) => env,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Reads an environment file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the tier's environment {}", path.display()))?;
        let mut vars = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                bail!(
                    "{}:{}: expected KEY=VALUE, got {line:?}",
                    path.display(),
                    n + 1
                );
            };
            vars.insert(key.to_owned(), value.to_owned());
        }
        Ok(Self {
            file: path.to_owned(),
            vars,
        })
    }

    /// The file it was read from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The value of `key`; an error naming the key and the file when it is absent.
    pub fn get(&self, key: &str) -> anyhow::Result<&str> {
        self.optional(key)
            .with_context(|| format!("{}: {key} is missing", self.file.display()))
    }

    /// The value of `key`, if the file has it.
    pub fn optional(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// The path `key` names; an error when it is absent or names nothing on disk.
    pub fn path(&self, key: &str) -> anyhow::Result<PathBuf> {
        let path = PathBuf::from(self.get(key)?);
        if !path.exists() {
            bail!(
                "{}: {key}={} does not exist",
                self.file.display(),
                path.display()
            );
        }
        Ok(path)
    }

    /// `own`'s keys over this one's: a private cluster keeps the shared environment's tools and
    /// binaries, and has its own server, PKI, kubeconfig and folder.
    pub fn overlaid(&self, own: Env) -> Env {
        let mut vars = self.vars.clone();
        // The shared cluster's component kubeconfigs are not the private cluster's.
        vars.retain(|key, _| !key.ends_with("_KUBECONFIG"));
        vars.extend(own.vars);
        Env {
            file: own.file,
            vars,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kubetier-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        file
    }

    #[test]
    fn keys_are_read_and_a_missing_one_is_named() {
        let path = file(
            "a.env",
            "# comment\nAMBIT_KUBE_SERVER=https://127.0.0.1:1\n\n",
        );
        let env = Env::read(&path).unwrap();
        assert_eq!(env.get("AMBIT_KUBE_SERVER").unwrap(), "https://127.0.0.1:1");
        let err = format!("{:#}", env.get("AMBIT_KUBE_CA").unwrap_err());
        assert!(err.contains("AMBIT_KUBE_CA is missing"), "{err}");
        let err = format!("{:#}", Env::read(&file("b.env", "no pair\n")).unwrap_err());
        assert!(err.contains("b.env:1: expected KEY=VALUE"), "{err}");
    }

    #[test]
    fn a_private_cluster_keeps_the_tools_and_drops_the_shared_kubeconfigs() {
        let shared = Env::read(&file(
            "shared.env",
            "AMBIT_KUBE_SERVER=a\nAMBIT_KUBE_HELM=/h\nAMBIT_KUBE_CONTROL_KUBECONFIG=/c\nAMBIT_KUBE_ADMIN_KUBECONFIG=/a\n",
        ))
        .unwrap();
        let own = Env::read(&file(
            "own.env",
            "AMBIT_KUBE_SERVER=b\nAMBIT_KUBE_ADMIN_KUBECONFIG=/b\n",
        ))
        .unwrap();
        let env = shared.overlaid(own);
        assert_eq!(env.get("AMBIT_KUBE_SERVER").unwrap(), "b");
        assert_eq!(env.get("AMBIT_KUBE_ADMIN_KUBECONFIG").unwrap(), "/b");
        assert_eq!(env.get("AMBIT_KUBE_HELM").unwrap(), "/h");
        assert!(env.optional("AMBIT_KUBE_CONTROL_KUBECONFIG").is_none());
    }
}
