//! Running without root: re-executing the current program inside a new user namespace where it
//! is root, so it may create network namespaces, bridges and nftables rules that belong to that
//! user namespace only.
//!
//! A process can only enter a new user namespace while it is single-threaded, so the switch is
//! a re-execution through util-linux's `unshare`, made before anything else starts.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Set in the re-executed process, so it never re-executes again.
pub const MARKER: &str = "AMBIT_IN_USERNS";

/// Whether this process may create network namespaces without help: it is root (uid 0) in its
/// user namespace.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// If not root, replaces this process with itself (same arguments) inside a new user namespace
/// mapped to root, through `unshare --user --map-root-user`; returns only if no switch is needed
/// or it failed (with an error that says how to fix it).
pub fn reexec_unless_root() -> io::Result<()> {
    if is_root() {
        return Ok(());
    }
    if std::env::var_os(MARKER).is_some() {
        return Err(io::Error::other(
            "still not root inside the user namespace made for this run",
        ));
    }
    let exe = std::env::current_exe()?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let err = Command::new("unshare")
        .args(["--user", "--map-root-user", "--"])
        .arg(exe)
        .args(args)
        .env(MARKER, "1")
        .exec();
    Err(io::Error::new(
        err.kind(),
        format!(
            "cannot re-run inside a user namespace with `unshare --user --map-root-user` ({err}); \
             install util-linux, allow unprivileged user namespaces \
             (sysctl kernel.unprivileged_userns_clone=1), or run as root"
        ),
    ))
}
