//! The capture agent: istio-cni's role in ambient mode.
//!
//! For each enrolled pod it installs redirection rules inside the pod's network namespace and
//! hands the namespace to the node proxy over ZDS; the CNI plugin lets a container runtime
//! report pods as they are created.

pub mod plugin;
