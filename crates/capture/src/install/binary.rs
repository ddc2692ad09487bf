//! The plugin binary in the runtime's CNI bin folder: a copy of the running `ambit`.
//!
//! The copy is written to a temporary file beside the target, made executable, flushed and
//! renamed over the target, so a runtime never executes a half-written file and a plugin
//! already running keeps its (old) inode.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{InstallError, temp_path};

/// Copies `from` to `to` unless `to` already holds the same binary: same size, and with
/// `compare_content` the same bytes. Returns whether it copied.
pub(super) fn ensure(from: &Path, to: &Path, compare_content: bool) -> Result<bool, InstallError> {
    let error = |source| InstallError::CopyBinary {
        from: from.to_owned(),
        to: to.to_owned(),
        source,
    };
    if same(from, to, compare_content).map_err(error)? {
        return Ok(false);
    }
    let temp = temp_path(to);
    let result = (|| {
        fs::copy(from, &temp)?;
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o755))?;
        fs::File::open(&temp)?.sync_all()?;
        fs::rename(&temp, to)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(error)?;
    Ok(true)
}

/// Whether `to` exists and matches `from`.
fn same(from: &Path, to: &Path, compare_content: bool) -> io::Result<bool> {
    let source = fs::metadata(from)?;
    let target = match fs::metadata(to) {
        Ok(target) => target,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if source.len() != target.len() || target.permissions().mode() & 0o111 == 0 {
        return Ok(false);
    }
    if !compare_content {
        return Ok(true);
    }
    Ok(fs::read(from)? == fs::read(to)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn copies_once_executable_and_again_when_changed_or_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("ambit"), dir.path().join("bin/ambit-cni"));
        fs::create_dir(dir.path().join("bin")).unwrap();
        fs::write(&from, b"binary v1").unwrap();

        assert!(ensure(&from, &to, true).unwrap());
        assert_eq!(fs::read(&to).unwrap(), b"binary v1");
        assert_eq!(
            fs::metadata(&to).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(!ensure(&from, &to, true).unwrap(), "identical: no copy");

        fs::write(&from, b"binary v2").unwrap();
        assert!(
            !ensure(&from, &to, false).unwrap(),
            "same size: the cheap check passes"
        );
        assert!(
            ensure(&from, &to, true).unwrap(),
            "the full check sees the change"
        );
        assert_eq!(fs::read(&to).unwrap(), b"binary v2");

        fs::remove_file(&to).unwrap();
        assert!(ensure(&from, &to, false).unwrap());
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("bin"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["ambit-cni"], "no temporary file left");
    }

    #[test]
    fn a_missing_source_is_an_error_naming_both_paths() {
        let dir = tempfile::tempdir().unwrap();
        let err = ensure(
            &dir.path().join("nope"),
            &dir.path().join("ambit-cni"),
            true,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("nope") && text.contains("ambit-cni"),
            "{text}"
        );
    }
}
