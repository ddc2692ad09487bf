//! The `ambit ca` subcommands, run as a user would run them: the real binary, real files.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn ambit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ambit"))
        .args(args)
        .output()
        .expect("run ambit")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn init_creates_istio_plugin_layout_and_inspect_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca_dir_str = ca_dir.to_str().unwrap();

    let out = ambit(&[
        "ca",
        "init",
        "--dir",
        ca_dir_str,
        "--trust-domain",
        "mesh.example",
    ]);
    assert!(out.status.success(), "ca init failed: {}", stderr(&out));
    assert!(
        stdout(&out).contains("trust domain mesh.example"),
        "{}",
        stdout(&out)
    );

    for file in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        assert!(ca_dir.join(file).is_file(), "{file} missing");
    }
    let mode = std::fs::metadata(ca_dir.join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the CA key must be readable by its owner only"
    );

    let out = ambit(&[
        "ca",
        "inspect",
        ca_dir.join("root-cert.pem").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "ca inspect failed: {}", stderr(&out));
    let report = stdout(&out);
    assert!(
        report.contains("mesh.example"),
        "inspect should name the trust domain: {report}"
    );
    assert!(
        report.to_lowercase().contains("ca"),
        "inspect should say the root is a CA: {report}"
    );
}

#[test]
fn init_refuses_to_overwrite_an_existing_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().to_str().unwrap();
    assert!(ambit(&["ca", "init", "--dir", ca_dir]).status.success());
    let key_before = std::fs::read(dir.path().join("ca-key.pem")).unwrap();

    let out = ambit(&["ca", "init", "--dir", ca_dir]);
    assert!(!out.status.success(), "a second init must fail");
    assert!(
        stderr(&out).contains("cannot create a CA"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(dir.path().join("ca-key.pem")).unwrap(),
        key_before,
        "key overwritten"
    );
}

#[test]
fn bad_input_is_named() {
    let out = ambit(&[
        "ca",
        "init",
        "--dir",
        "/nonexistent-ambit",
        "--trust-domain",
        "Bad_Domain",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Bad_Domain"),
        "the bad trust domain is named: {}",
        stderr(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let out = ambit(&["ca", "inspect", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("junk.pem"),
        "the bad file is named: {}",
        stderr(&out)
    );
}
