//! Proof that enrolled traffic is mutual TLS.
