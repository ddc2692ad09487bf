//! The manifest-directory source, on real files.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::Path;

use ambit_control::SharedState;
use ambit_control::source::dir::DirSource;

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    // Make sure the fingerprint moves even on filesystems with coarse timestamps.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(rand_secs(path));
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(later)
        .unwrap();
}

fn rand_secs(path: &Path) -> u64 {
    // Distinct per write: the current size plus a counter keeps successive writes distinct.
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed) + path.as_os_str().len() as u64
}

fn pods(state: &SharedState) -> Vec<String> {
    state.read(|s| s.pods.keys().map(|(ns, n)| format!("{ns}/{n}")).collect())
}

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}\n";

fn pod(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo}}\nstatus: {{podIP: {ip}}}\n"
    )
}

#[test]
fn follows_edits_and_keeps_last_good_state_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let state = SharedState::new();
    let mut source = DirSource::new(dir.path());

    let file = dir.path().join("mesh.yaml");
    write(
        &file,
        &format!(
            "{NS}---\n{}---\n{}",
            pod("a", "10.0.0.1"),
            pod("b", "10.0.0.2")
        ),
    );
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    write(&dir.path().join("sub/c.yml"), &pod("c", "10.0.0.3"));
    write(&dir.path().join(".hidden.yaml"), &pod("hidden", "10.0.0.9"));
    write(&dir.path().join("notes.txt"), "not a manifest");

    let scan = source.scan(&state);
    assert!(scan.changed);
    assert!(scan.issues.is_empty(), "{:?}", scan.issues);
    assert_eq!(pods(&state), ["demo/a", "demo/b", "demo/c"]);
    let generation = state.generation();

    // No change on disk: nothing moves.
    assert!(!source.scan(&state).changed);
    assert_eq!(state.generation(), generation);

    // Break pod b's document: the error names file, document and field; b keeps its last state.
    write(
        &file,
        &format!(
            "{NS}---\n{}---\n{}",
            pod("a", "10.0.0.1"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: demo}\nspec: {hostNetwork: perhaps}\n"
        ),
    );
    let scan = source.scan(&state);
    assert_eq!(scan.issues.len(), 1, "{:?}", scan.issues);
    let issue = scan.issues[0].to_string();
    assert!(
        issue.contains("mesh.yaml")
            && issue.contains("document 2")
            && issue.contains("spec.hostNetwork"),
        "{issue}"
    );
    assert_eq!(pods(&state), ["demo/a", "demo/b", "demo/c"]);
    let b_ip = state.read(|s| {
        s.pods[&("demo".into(), "b".into())]
            .status
            .clone()
            .unwrap()
            .pod_ip
    });
    assert_eq!(
        b_ip.as_deref(),
        Some("10.0.0.2"),
        "last good version of b is kept"
    );

    // Fix it with a new address, and delete a file: both are followed.
    write(
        &file,
        &format!(
            "{NS}---\n{}---\n{}",
            pod("a", "10.0.0.1"),
            pod("b", "10.0.0.22")
        ),
    );
    std::fs::remove_file(dir.path().join("sub/c.yml")).unwrap();
    assert!(source.scan(&state).changed);
    assert_eq!(pods(&state), ["demo/a", "demo/b"]);
    let b_ip = state.read(|s| {
        s.pods[&("demo".into(), "b".into())]
            .status
            .clone()
            .unwrap()
            .pod_ip
    });
    assert_eq!(b_ip.as_deref(), Some("10.0.0.22"));

    // Invalid YAML in a whole new file is reported and changes nothing.
    write(
        &dir.path().join("broken.yaml"),
        "kind: Pod\nmetadata: {name: x\n",
    );
    let scan = source.scan(&state);
    assert!(!scan.changed);
    assert!(
        scan.issues[0].to_string().contains("broken.yaml"),
        "{:?}",
        scan.issues
    );
}

#[tokio::test]
async fn run_polls_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let state = SharedState::new();
    tokio::spawn(
        DirSource::new(dir.path()).run(state.clone(), std::time::Duration::from_millis(20)),
    );
    write(
        &dir.path().join("a.yaml"),
        &format!("{NS}---\n{}", pod("a", "10.0.0.1")),
    );
    ambit_testkit::eventually!(observe = pods(&state), |p| p == ["demo/a"]);
    std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
    ambit_testkit::eventually!(observe = pods(&state), |p| p.is_empty());
}

#[test]
fn an_object_defined_in_two_files_stays_until_both_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let state = SharedState::new();
    let mut source = DirSource::new(dir.path());
    write(&dir.path().join("one.yaml"), &pod("a", "10.0.0.1"));
    write(&dir.path().join("two.yaml"), &pod("a", "10.0.0.1"));
    source.scan(&state);
    assert_eq!(pods(&state), ["demo/a"]);
    std::fs::remove_file(dir.path().join("one.yaml")).unwrap();
    source.scan(&state);
    assert_eq!(pods(&state), ["demo/a"], "still defined by two.yaml");
    std::fs::remove_file(dir.path().join("two.yaml")).unwrap();
    assert!(source.scan(&state).changed);
    assert!(pods(&state).is_empty());
}
