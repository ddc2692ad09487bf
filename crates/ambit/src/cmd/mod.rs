//! One module per subcommand.

pub(crate) mod ca;
pub(crate) mod cni;
pub(crate) mod config;
pub(crate) mod control;
pub(crate) mod control_plane;
pub(crate) mod demo;
pub(crate) mod node;
pub(crate) mod verify;
