//! The fuzz targets' seed corpora, run as ordinary tests on the pinned stable toolchain.
//!
//! Every `cargo fuzz` target (`fuzz/fuzz_targets/<target>.rs`) is a one-line call into a body
//! that lives beside the decoder it exercises (each crate's `fuzz` module, compiled only for
//! `cfg(test)` and `cfg(fuzzing)`). The crate's unit tests call [`run`] with the same body, so the
//! committed seeds and every crashing input kept in `fuzz/corpus/<target>/` are replayed by
//! `cargo test`, and a decoder that regresses fails without a nightly toolchain.
//!
//! Seeds made by the project's own encoders are passed to [`run`] as well; with
//! `AMBIT_FUZZ_WRITE_SEEDS=1` in the environment they are (re)written into the corpus folder,
//! which is how the committed seeds were made.

use std::path::{Path, PathBuf};

/// Set to write the generated seeds into `fuzz/corpus/<target>/`.
pub const WRITE_SEEDS: &str = "AMBIT_FUZZ_WRITE_SEEDS";

/// The seed folder of `target`: `fuzz/corpus/<target>` at the repository's root.
pub fn dir(target: &str) -> PathBuf {
    // This crate is `crates/testkit`: the repository's root is two folders up.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2);
    root.unwrap_or(Path::new("."))
        .join("fuzz/corpus")
        .join(target)
}

/// Saves `bytes` as a seed of `target` named `<prefix>-<hash of bytes>`, when
/// `AMBIT_FUZZ_WRITE_SEEDS` is set (a no-op otherwise). For tests whose own inputs make good
/// seeds, such as the manifests of the translation tables.
pub fn save(target: &str, prefix: &str, bytes: &[u8]) {
    if std::env::var_os(WRITE_SEEDS).is_none() {
        return;
    }
    // FNV-1a: a stable name, so writing the seeds again replaces rather than adds.
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    let dir = dir(target);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = dir.join(format!("{prefix}-{hash:016x}"));
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Runs `body` on every generated seed and every file of `fuzz/corpus/<target>/`, naming the
/// input that failed. Fails when the folder holds no file: a corpus that went missing must not
/// pass as an empty one.
pub fn run<F>(target: &str, generated: impl IntoIterator<Item = (String, Vec<u8>)>, body: F)
where
    F: Fn(&[u8]),
{
    let dir = dir(target);
    let write = std::env::var_os(WRITE_SEEDS).is_some();
    for (name, bytes) in generated {
        if write {
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let path = dir.join(&name);
            std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        check(target, &format!("generated seed {name}"), &bytes, &body);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {} of target {target}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "seed corpus {} of target {target} holds no file",
        dir.display()
    );
    for path in files {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        check(target, &path.display().to_string(), &bytes, &body);
    }
}

fn check<F: Fn(&[u8])>(target: &str, name: &str, bytes: &[u8], body: &F) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(bytes)));
    if let Err(panic) = outcome {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        panic!(
            "fuzz target {target} failed on {name} ({} bytes): {message}",
            bytes.len()
        );
    }
}
