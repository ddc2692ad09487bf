//! The one crypto provider of the mesh: aws-lc-rs with TLS 1.3 cipher suites only and the
//! hybrid post-quantum key exchange X25519MLKEM768 offered first (X25519, then P-256, as the
//! fallbacks). Every TLS config, signature check and key of this crate uses it.

use std::sync::{Arc, OnceLock};

use rustls::SupportedCipherSuite;
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self, kx_group};

/// The process-wide crypto provider of the mesh. See the [module docs](self).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut provider = aws_lc_rs::default_provider();
            provider
                .cipher_suites
                .retain(|suite| matches!(suite, SupportedCipherSuite::Tls13(_)));
            provider.kx_groups = vec![
                kx_group::X25519MLKEM768,
                kx_group::X25519,
                kx_group::SECP256R1,
            ];
            Arc::new(provider)
        })
        .clone()
}
