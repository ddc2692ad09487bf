//! Putting the CNI plugin on the node: istio-cni's install-cni, run by the agent at start.
//!
//! Two things make a container runtime call Ambit's plugin for every pod sandbox:
//!
//! - the binary: the running `ambit` is copied to `<bin dir>/ambit-cni` (the runtime looks up
//!   a plugin by its `type` in its bin dir). Invoked under that name, `ambit` acts as the
//!   plugin ([`invoked_as_plugin`]);
//! - the configuration: `{"type": "ambit-cni", "ambit": {...}}` is appended to the `plugins` of
//!   the node's primary network configuration, the file the runtime loads: the lexically first
//!   `*.conf`, `*.conflist` or `*.json` in the conf dir (or the one named by
//!   [`InstallConfig::conf_name`]). A single `.conf` becomes a `.conflist`.
//!
//! Invariants:
//! - Every write is atomic: a temporary file in the same directory, flushed, then renamed over
//!   the target. A runtime reading concurrently sees the old file or the new, never a mix; a
//!   running plugin keeps executing the binary it started with.
//! - Inserting is idempotent, and a configuration that does not parse is reported and left
//!   untouched.
//! - The network plugin's daemon may rewrite its configuration at any time (flannel, Calico
//!   do); [`Installer::watch`] checks every [`InstallConfig::poll_interval`] and inserts the
//!   plugin again, and copies the binary again if it vanished.
//! - Nothing is removed unless asked ([`InstallWatch::stop`] with `uninstall`): a node whose
//!   agent is away keeps failing pod ADDs closed rather than starting pods uncaptured. Removal
//!   takes the plugin out of every configuration in the conf dir and deletes the binary; a
//!   `.conf` that was converted stays a `.conflist` holding the original network alone.

mod binary;
mod conflist;
#[cfg(any(test, fuzzing))]
pub(crate) mod fuzz;
mod json_text;
mod watch;

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tracing::info;

pub use conflist::ConfError;
pub use watch::InstallWatch;

/// The plugin's `type` in CNI configurations, and its binary's name in the bin dir.
pub const PLUGIN_TYPE: &str = "ambit-cni";

/// The extensions of the files a runtime loads network configurations from (libcni's).
const CONF_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// Whether this process was started under the plugin's name (`<bin dir>/ambit-cni`), so it
/// must act as the CNI plugin rather than parse `ambit` arguments.
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .is_some_and(|argv0| is_plugin_name(&argv0))
}

/// Whether `argv0` (a bare name or a path, as runtimes pass the plugin's path) names the plugin.
fn is_plugin_name(argv0: &OsStr) -> bool {
    Path::new(argv0).file_name() == Some(OsStr::new(PLUGIN_TYPE))
}

/// Where the plugin goes, and what it is told.
#[derive(Clone, Debug)]
pub struct InstallConfig {
    /// The runtime's CNI plugin folder (`/host/opt/cni/bin` in the DaemonSet).
    pub bin_dir: PathBuf,
    /// The runtime's CNI configuration folder (`/host/etc/cni/net.d` in the DaemonSet).
    pub conf_dir: PathBuf,
    /// The configuration file to chain into; `None` means the one the runtime loads.
    pub conf_name: Option<String>,
    /// The binary to copy: the running one.
    pub binary: PathBuf,
    /// The agent's socket, as the plugin (running on the host) reaches it.
    pub agent_socket: PathBuf,
    /// Pods in these namespaces pass the plugin untouched.
    pub exclude_namespaces: Vec<String>,
    /// How often [`Installer::watch`] checks that the plugin is still in place.
    pub poll_interval: Duration,
}

impl InstallConfig {
    /// Installs the running binary into `bin_dir` and chains it in `conf_dir`.
    pub fn new(
        bin_dir: impl Into<PathBuf>,
        conf_dir: impl Into<PathBuf>,
        agent_socket: impl Into<PathBuf>,
    ) -> io::Result<Self> {
        Ok(Self {
            bin_dir: bin_dir.into(),
            conf_dir: conf_dir.into(),
            conf_name: None,
            binary: std::env::current_exe()?,
            agent_socket: agent_socket.into(),
            exclude_namespaces: Vec::new(),
            poll_interval: Duration::from_secs(5),
        })
    }
}

/// Why the plugin could not be installed or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    #[error("cannot copy {from} to {to}")]
    CopyBinary {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove {path}")]
    RemoveBinary {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list the CNI configuration folder {path}")]
    ListConfDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no CNI network configuration in {dir} yet (is the network plugin installed?)")]
    NoConfig { dir: PathBuf },
    #[error("cannot read the CNI configuration {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the CNI configuration {path} cannot be edited; left untouched")]
    Config {
        path: PathBuf,
        #[source]
        source: ConfError,
    },
    #[error("cannot write the CNI configuration {path}")]
    WriteConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What [`Installer::ensure_config`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigChange {
    /// The plugin was already chained in this file.
    Unchanged(PathBuf),
    /// The plugin was inserted (or its settings updated) in this file.
    Inserted(PathBuf),
    /// The single configuration `from` became the list `to`, ending with the plugin.
    Converted { from: PathBuf, to: PathBuf },
}

/// Installs and removes the plugin. Blocking file operations: async callers use
/// `spawn_blocking` (as [`Installer::watch`] does).
#[derive(Clone, Debug)]
pub struct Installer {
    config: InstallConfig,
}

impl Installer {
    pub fn new(config: InstallConfig) -> Self {
        Self { config }
    }

    /// Where the binary goes.
    pub fn binary_path(&self) -> PathBuf {
        self.config.bin_dir.join(PLUGIN_TYPE)
    }

    /// Copies the binary into the bin dir unless an identical one is there. Returns whether it
    /// copied.
    pub fn ensure_binary(&self) -> Result<bool, InstallError> {
        binary::ensure(&self.config.binary, &self.binary_path(), true)
    }

    /// Chains the plugin into the primary network configuration, unless it is there already.
    pub fn ensure_config(&self) -> Result<ConfigChange, InstallError> {
        let path = self.primary_config()?;
        let text = fs::read_to_string(&path).map_err(|source| InstallError::ReadConfig {
            path: path.clone(),
            source,
        })?;
        let edit =
            conflist::insert(&text, &self.plugin()).map_err(|source| InstallError::Config {
                path: path.clone(),
                source,
            })?;
        match edit {
            conflist::Edit::Unchanged => Ok(ConfigChange::Unchanged(path)),
            conflist::Edit::Updated(text) => {
                write_atomically(&path, &path, &text)?;
                Ok(ConfigChange::Inserted(path))
            }
            conflist::Edit::Converted(text) => {
                let to = path.with_extension("conflist");
                write_atomically(&to, &path, &text)?;
                if to != path {
                    fs::remove_file(&path).map_err(|source| InstallError::WriteConfig {
                        path: path.clone(),
                        source,
                    })?;
                }
                Ok(ConfigChange::Converted { from: path, to })
            }
        }
    }

    /// Copies the binary and chains the plugin.
    pub fn install(&self) -> Result<ConfigChange, InstallError> {
        self.ensure_binary()?;
        self.ensure_config()
    }

    /// Takes the plugin out of every configuration in the conf dir that chains it, then removes
    /// the binary. Carries on past a failure and reports the first.
    pub fn uninstall(&self) -> Result<(), InstallError> {
        let mut first_error = None;
        for path in self.config_files()? {
            let removed = fs::read_to_string(&path)
                .map_err(|source| InstallError::ReadConfig {
                    path: path.clone(),
                    source,
                })
                .and_then(|text| {
                    conflist::remove(&text).map_err(|source| InstallError::Config {
                        path: path.clone(),
                        source,
                    })
                })
                .and_then(|without| match without {
                    Some(text) => write_atomically(&path, &path, &text).map(|()| true),
                    None => Ok(false),
                });
            match removed {
                Ok(true) => {
                    info!(path = %path.display(), "removed the CNI plugin from the configuration")
                }
                Ok(false) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let binary = self.binary_path();
        match fs::remove_file(&binary) {
            Ok(()) => info!(path = %binary.display(), "removed the CNI plugin binary"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                first_error.get_or_insert(InstallError::RemoveBinary {
                    path: binary,
                    source,
                });
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Whether the primary configuration chains the plugin.
    pub fn is_installed(&self) -> bool {
        let Ok(path) = self.primary_config() else {
            return false;
        };
        fs::read_to_string(path).is_ok_and(|text| conflist::has_plugin(&text))
    }

    /// The plugin's entry in the configuration list.
    fn plugin(&self) -> Value {
        json!({
            "type": PLUGIN_TYPE,
            "ambit": {
                "agent_socket": self.config.agent_socket,
                "exclude_namespaces": self.config.exclude_namespaces,
            },
        })
    }

    /// The configuration the runtime loads: the named one, or the lexically first.
    fn primary_config(&self) -> Result<PathBuf, InstallError> {
        let dir = &self.config.conf_dir;
        if let Some(name) = &self.config.conf_name {
            let path = dir.join(name);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(InstallError::NoConfig { dir: path })
            };
        }
        self.config_files()?
            .into_iter()
            .next()
            .ok_or_else(|| InstallError::NoConfig { dir: dir.clone() })
    }

    /// Every configuration file in the conf dir, sorted by name as the runtime sorts them.
    fn config_files(&self) -> Result<Vec<PathBuf>, InstallError> {
        let dir = &self.config.conf_dir;
        let list_error = |source| InstallError::ListConfDir {
            path: dir.clone(),
            source,
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(list_error)? {
            let path = entry.map_err(list_error)?.path();
            let loadable = path
                .extension()
                .and_then(OsStr::to_str)
                .is_some_and(|ext| CONF_EXTENSIONS.contains(&ext));
            if loadable && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }
}

/// Writes `text` to `path` atomically, with the permissions of `like` when it exists.
fn write_atomically(path: &Path, like: &Path, text: &str) -> Result<(), InstallError> {
    let error = |source| InstallError::WriteConfig {
        path: path.to_owned(),
        source,
    };
    let temp = temp_path(path);
    let result = (|| {
        let mut out = fs::File::create(&temp)?;
        out.write_all(text.as_bytes())?;
        if let Ok(meta) = fs::metadata(like) {
            out.set_permissions(meta.permissions())?;
        }
        out.sync_all()?;
        drop(out);
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(error)
}

/// A temporary name beside `path` that no runtime loads (a dot file without a CNI extension).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.ambit-tmp-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_is_recognised_by_its_file_name_only() {
        for (argv0, plugin) in [
            ("/opt/cni/bin/ambit-cni", true),
            ("ambit-cni", true),
            ("./ambit-cni", true),
            ("/usr/local/bin/ambit", false),
            ("ambit", false),
            ("/opt/cni/bin/ambit-cni-old", false),
            ("/ambit-cni/ambit", false),
        ] {
            assert_eq!(is_plugin_name(OsStr::new(argv0)), plugin, "{argv0}");
        }
    }
}
