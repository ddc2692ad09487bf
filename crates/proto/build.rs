//! Generates the wire types from `proto/` with pure-Rust tooling: protox parses
//! the files into a descriptor set (no system `protoc`), then tonic-prost-build
//! writes prost messages plus tonic clients and servers into `OUT_DIR`.

use std::error::Error;
use std::path::PathBuf;

/// Every file we compile; imports (including Google's well-known types, which
/// protox ships) are resolved from the `proto/` include root.
const PROTOS: &[&str] = &[
    "istio/workload/workload.proto",
    "istio/security/authorization.proto",
    "istio/ca/ca.proto",
    "istio/zds/zds.proto",
    "ambit/capture/pod.proto",
    "envoy/service/discovery/v3/discovery.proto",
    "envoy/service/discovery/v3/ads.proto",
    "envoy/config/core/v3/base.proto",
    "envoy/type/v3/semantic_version.proto",
    "google/rpc/status.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    println!("cargo:rerun-if-changed=build.rs");

    let fds = protox::Compiler::new([&root])?
        .include_imports(true)
        // Carries our .proto comments into the generated rustdoc.
        .include_source_info(true)
        .open_files(PROTOS)?
        .file_descriptor_set();

    // `google.protobuf.*` maps to `prost_types` (prost-build's default), so no
    // well-known type is generated here. No transport: the crate only needs
    // tonic's codegen feature; callers bring their own channel and server.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // Maps encode in key order, so equal messages encode to equal bytes: the control plane
        // versions resources by their encoding and must not see spurious changes.
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
