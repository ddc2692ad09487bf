//! The CNI plugin (`ambit cni plugin`) and its channel to the agent.
