//! In-pod mode (Istio ztunnel's "inpod"): the node proxy serves each pod from listeners opened
//! inside the pod's own network namespace.
//!
//! The capture agent installs redirection rules in each captured pod and hands the pod's
//! namespace to the node proxy over ZDS (`zds`); the proxy binds the pod's listener set in
//! it (`pods`) through a [`NetnsSocketFactory`]:
//!
//! ```text
//! pod A netns                                                   pod B netns
//! app ─► nft redirect ─► 127.0.0.1:15001 (A's) ─► HBONE as A ══► 0.0.0.0:15008 (B's) ─► app
//!                         socket made in A, marked 0x539            socket made in B, marked
//! plaintext ─► nft redirect ─► 0.0.0.0:15006 (B's) ─► policy ─► app
//! ```
//!
//! Every socket a pod's connection opens is created in that pod's namespace and marked, so the
//! pod's rules let it through and peers see the pod's own address. In this mode the shared-mode
//! HBONE listeners on workload addresses are not opened; certificates of local identities are
//! still fetched ahead of time, and the proxy's own shared listeners stay as configured.
//!
//! Invariants: a pod is served from the `Ack` of its `AddWorkload` until its `DelWorkload`, a
//! later `SnapshotSent` that does not name it, or the proxy's drain — losing the agent changes
//! nothing; and a pod's pooled HBONE connections serve that pod only.

mod pods;
mod socket;
pub(crate) mod zds;

pub(crate) use self::pods::InPod;
pub use self::pods::{InPodStatus, PodError, PodState};
pub use self::socket::NetnsSocketFactory;
pub use self::zds::RequestError;
pub(crate) use self::zds::spawn;
pub use crate::state::PodInfo;
