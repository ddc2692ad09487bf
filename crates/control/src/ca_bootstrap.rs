//! The certificate authority of a control plane in a cluster, found or made as istiod does.
//!
//! - **Plug-in CA**: when the CA directory (the `cacerts` Secret, mounted at `/etc/cacerts`)
//!   holds `ca-cert.pem` or `ca-key.pem`, the CA is loaded from there, and a partial bundle is an
//!   error, never a reason to make a root.
//! - **Self-signed root**: otherwise the root lives in Secret [`CA_SECRET`] of the control
//!   plane's namespace, with istiod's key names (`ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`,
//!   `key.pem`, `root-cert.pem`) and type [`CA_SECRET_TYPE`]. It is read if it exists; if not,
//!   a root is generated and the Secret created. Creation is the API server's
//!   create-if-absent: of several replicas starting at once, exactly one create succeeds; the
//!   others get 409 (AlreadyExists), read the Secret again and use the winner's root. So every
//!   replica and every restart signs with one root.
//!
//! Invariants: an existing root is never overwritten or replaced, even when it cannot be used
//! (the control plane stays not ready and says why); a root is used only after the Secret that
//! holds it was created or read back, so no replica ever signs with a root others do not have.

use std::collections::BTreeMap;
use std::time::Duration;

use ambit_identity::{CaConfig, CaPem, CertificateAuthority};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{info, warn};

use crate::auth::BoxFuture;
use crate::readiness::Readiness;

/// The Secret holding a self-signed root (istiod's `CASecret`).
pub const CA_SECRET: &str = "istio-ca-secret";
/// Its type, as istiod writes it.
pub const CA_SECRET_TYPE: &str = "istio.io/ca-root";
/// The readiness precondition this module meets.
pub const PRECONDITION: &str = "the certificate authority";

/// Keys of the Secret's data, as istiod names them.
pub const CA_CERT_KEY: &str = "ca-cert.pem";
pub const CA_KEY_KEY: &str = "ca-key.pem";
pub const CERT_CHAIN_KEY: &str = "cert-chain.pem";
pub const KEY_KEY: &str = "key.pem";
pub const ROOT_CERT_KEY: &str = "root-cert.pem";

/// Retry delays after a failed read or create: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Where the self-signed root is kept: read it, or create it only if absent.
pub trait RootStore: Send + Sync {
    /// The stored root, if there is one.
    fn get(&self) -> BoxFuture<'_, Result<Option<CaPem>, String>>;
    /// Stores `root` unless a root is already stored.
    fn create<'a>(&'a self, root: &'a CaPem) -> BoxFuture<'a, Result<Created, String>>;
}

/// What [`RootStore::create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// This root is now the stored one.
    Stored,
    /// Another root was stored first (another replica won the race).
    AlreadyExists,
}

/// How the CA was obtained, for the log and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Loaded from the existing Secret.
    Loaded,
    /// Generated here and stored by this process.
    Created,
}

/// Reads the root from `store`, or creates it there, retrying with backoff until one of those
/// succeeds; every failure is recorded in `readiness` under [`PRECONDITION`], which is marked
/// done at the end.
pub async fn self_signed(
    store: &dyn RootStore,
    config: &CaConfig,
    readiness: &Readiness,
) -> (CertificateAuthority, Origin) {
    let mut delay = RETRY_FIRST;
    loop {
        match attempt(store, config).await {
            Ok(Some(found)) => {
                readiness.done(PRECONDITION);
                return found;
            }
            // Lost a create race: read the winner's root at once.
            Ok(None) => continue,
            Err(why) => {
                warn!(error = %why, retry_in = ?delay, "the certificate authority is not available yet");
                readiness.failing(PRECONDITION, why);
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

/// One read-or-create. `Ok(None)`: another root was stored meanwhile; read again.
async fn attempt(
    store: &dyn RootStore,
    config: &CaConfig,
) -> Result<Option<(CertificateAuthority, Origin)>, String> {
    if let Some(pem) = store.get().await? {
        let ca = CertificateAuthority::from_pem(&pem, config)
            .map_err(|e| format!("{} cannot be used: {}", pem.origin.display(), chain(&e)))?;
        info!(origin = %pem.origin.display(), "loaded the self-signed root");
        return Ok(Some((ca, Origin::Loaded)));
    }
    let root = CertificateAuthority::generate_root(config)
        .map_err(|e| format!("cannot generate a root: {}", chain(&e)))?;
    // Loaded before it is stored: a root that cannot sign is never published.
    let ca = CertificateAuthority::from_pem(&root, config)
        .map_err(|e| format!("the generated root does not load: {}", chain(&e)))?;
    match store.create(&root).await? {
        Created::Stored => {
            info!("created a self-signed root and stored it");
            Ok(Some((ca, Origin::Created)))
        }
        Created::AlreadyExists => {
            info!("another control plane stored a root first; using that one");
            Ok(None)
        }
    }
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

// === SecretStore ===

/// [`CA_SECRET`] in one namespace, through the API server.
#[derive(Clone)]
pub struct SecretStore {
    api: Api<Secret>,
    namespace: String,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl SecretStore {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
        }
    }

    fn origin(&self) -> String {
        format!("Secret {}/{CA_SECRET}", self.namespace)
    }
}

impl RootStore for SecretStore {
    fn get(&self) -> BoxFuture<'_, Result<Option<CaPem>, String>> {
        Box::pin(async move {
            let secret = self
                .api
                .get_opt(CA_SECRET)
                .await
                .map_err(|e| format!("cannot read {}: {}", self.origin(), chain(&e)))?;
            secret
                .map(|s| pem_of(&self.origin(), s.data.unwrap_or_default()))
                .transpose()
        })
    }

    fn create<'a>(&'a self, root: &'a CaPem) -> BoxFuture<'a, Result<Created, String>> {
        Box::pin(async move {
            match self
                .api
                .create(&PostParams::default(), &secret_of(&self.namespace, root))
                .await
            {
                Ok(_) => Ok(Created::Stored),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(Created::AlreadyExists),
                Err(e) => Err(format!("cannot create {}: {}", self.origin(), chain(&e))),
            }
        })
    }
}

/// The Secret istiod writes for a self-signed root: the root as `ca-cert.pem` and
/// `root-cert.pem`, its key as `ca-key.pem`, empty `cert-chain.pem` and `key.pem`.
pub fn secret_of(namespace: &str, root: &CaPem) -> Secret {
    let data: BTreeMap<String, ByteString> = [
        (CA_CERT_KEY, root.ca_cert.clone()),
        (CA_KEY_KEY, root.ca_key.clone()),
        (ROOT_CERT_KEY, root.root_cert.clone()),
        (CERT_CHAIN_KEY, Vec::new()),
        (KEY_KEY, Vec::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v)))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        type_: Some(CA_SECRET_TYPE.to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Reads a root Secret as istiod does: the signing certificate and key are `ca-cert.pem` and
/// `ca-key.pem`, and the signing certificate is the root.
pub fn pem_of(origin: &str, data: BTreeMap<String, ByteString>) -> Result<CaPem, String> {
    let take = |key: &str| match data.get(key) {
        Some(ByteString(bytes)) if !bytes.is_empty() => Ok(bytes.clone()),
        _ => Err(format!("{origin} has no {key}")),
    };
    let ca_cert = take(CA_CERT_KEY)?;
    Ok(CaPem {
        origin: origin.into(),
        ca_key: take(CA_KEY_KEY)?,
        root_cert: ca_cert.clone(),
        ca_cert,
        cert_chain: None,
    })
}

#[cfg(test)]
mod tests;
