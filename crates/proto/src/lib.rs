//! Wire types for every protocol Ambit speaks with Istio components.
//!
//! Ambit must interoperate with a stock istiod and stock ztunnels byte for
//! byte, so this crate holds nothing but the messages and gRPC services of
//! those contracts, generated from `.proto` files in `proto/` that this
//! project wrote from Istio's and Envoy's published wire facts (package,
//! message and field names, field numbers, types, enum values).
//!
//! | module | protobuf package | contract |
//! |---|---|---|
//! | [`workload`] | `istio.workload` | WDS resources: [`workload::Address`] (a [`workload::Workload`] or a [`workload::Service`]), served under [`ADDRESS_TYPE_URL`] |
//! | [`security`] | `istio.security` | L4 policy: [`security::Authorization`], served under [`AUTHORIZATION_TYPE_URL`] |
//! | [`ca`] | `istio.v1.auth` | certificate signing: `IstioCertificateService/CreateCertificate` |
//! | [`zds`] | `istio.workload.zds` | capture agent ↔ node proxy messages over a Unix seqpacket socket |
//! | [`capture`] | `ambit.capture` | Ambit's own: every pod with its enrollment decision, from its object's creation (before it has an IP), served to Ambit's capture agents under [`POD_ENROLLMENT_TYPE_URL`] |
//! | [`envoy::service::discovery::v3`] | `envoy.service.discovery.v3` | xDS messages and the ADS service (WDS uses the delta stream) |
//! | [`envoy::config::core::v3`] | `envoy.config.core.v3` | `Node`, `Locality`, `ControlPlane`, `Metadata` (subset) |
//! | [`envoy::type::v3`] | `envoy.type.v3` | `SemanticVersion` |
//! | [`google::rpc`] | `google.rpc` | `Status`, the error carried by an xDS NACK |
//!
//! [`ports`] holds Istio's port numbers, the probe source address and the proxy's socket mark,
//! shared by every role.
//!
//! Google's well-known types (`Any`, `Struct`, `Duration`, `Empty`, the
//! wrappers) come from [`prost_types`], with prost's usual mapping: `Empty`
//! is `()` and `UInt32Value` is `Option<u32>`.
//!
//! # How the code is made
//!
//! `build.rs` parses `proto/` with protox (pure Rust, no `protoc` needed) and
//! hands the descriptor set to tonic-prost-build, which writes prost messages
//! and tonic clients and servers into `OUT_DIR`; the modules below include
//! those files. Clients and servers are transport-agnostic (tonic's `codegen`
//! feature only): callers supply the channel or the server.
//!
//! # Invariants
//!
//! - Field numbers and types never change once published upstream; upstream
//!   additions are added here, removals become `reserved`. The golden tests in
//!   `tests/golden.rs` pin hand-derived bytes for each contract, so a wrong
//!   number fails the build's tests, not an interop run.
//! - Module nesting mirrors the protobuf packages where generated code refers
//!   across packages (`envoy`, `google`): it uses relative `super::` paths.
//! - No hand-written logic lives here: conversions into the mesh model belong
//!   to the crates that own the model.

/// Declares a public module holding one generated file from `OUT_DIR`.
///
/// The lints are relaxed here and only here: generated code is not ours to
/// restyle (e.g. prost's unboxed oneof variants trip `large_enum_variant`).
macro_rules! generated {
    ($(#[$doc:meta])* $name:ident, $file:literal) => {
        $(#[$doc])*
        #[allow(missing_debug_implementations, unreachable_pub, clippy::all)]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/", $file));
        }
    };
}

generated!(
    /// `istio.workload`: WDS resources.
    workload,
    "istio.workload.rs"
);

generated!(
    /// `istio.security`: L4 authorization policies.
    security,
    "istio.security.rs"
);

generated!(
    /// `istio.v1.auth`: the certificate signing service.
    ca,
    "istio.v1.auth.rs"
);

generated!(
    /// `istio.workload.zds`: capture agent ↔ node proxy messages.
    zds,
    "istio.workload.zds.rs"
);

generated!(
    /// `ambit.capture`: Ambit's own resource for its capture agents (no Istio counterpart).
    capture,
    "ambit.capture.rs"
);

/// Envoy's xDS API (the subset Istio's ambient mode uses).
pub mod envoy {
    /// Envoy service definitions.
    pub mod service {
        /// Envoy discovery services.
        pub mod discovery {
            generated!(
                /// `envoy.service.discovery.v3`: xDS messages and ADS.
                v3,
                "envoy.service.discovery.v3.rs"
            );
        }
    }

    /// Envoy configuration types.
    pub mod config {
        /// Envoy core configuration types.
        pub mod core {
            generated!(
                /// `envoy.config.core.v3` (subset): the xDS client's `Node` and friends.
                v3,
                "envoy.config.core.v3.rs"
            );
        }
    }

    /// Envoy common value types.
    pub mod r#type {
        generated!(
            /// `envoy.type.v3` (subset).
            v3,
            "envoy.r#type.v3.rs"
        );
    }
}

/// Google API types that are not well-known types.
pub mod google {
    generated!(
        /// `google.rpc`: the gRPC error model.
        rpc,
        "google.rpc.rs"
    );
}

pub mod ports;

/// Type URL of WDS address resources ([`workload::Address`]).
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";

/// Type URL of WDS authorization resources ([`security::Authorization`]).
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// Type URL of the pod enrollment resources Ambit's control plane serves its capture agents
/// ([`capture::PodEnrollment`]).
pub const POD_ENROLLMENT_TYPE_URL: &str = "type.googleapis.com/ambit.capture.PodEnrollment";
