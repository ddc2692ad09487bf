//! Helpers shared by the tier's test crates.

pub(crate) mod control;
