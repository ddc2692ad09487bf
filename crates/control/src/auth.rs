//! Who is calling the control plane, from the bearer token of a gRPC call.
//!
//! Two authenticators, one per deployment:
//! - [`BootstrapTokens`]: a file of per-node tokens, for the local mesh and hosts without
//!   Kubernetes. Only digests of the tokens are kept in memory and compared.
//! - [`TokenReviewAuthenticator`](crate::token_review::TokenReviewAuthenticator): the caller's
//!   projected service-account token, checked by the Kubernetes API server for audience
//!   `istio-ca`, and the pod it is bound to.
//!
//! Authentication says who the caller is; what it may have is decided by the CA service.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use ambit_identity::SpiffeId;
use aws_lc_rs::digest;
use tonic::metadata::MetadataMap;

/// A boxed future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Caller {
    /// A node proxy: entitled to the identities of pods scheduled on its node.
    NodeProxy { node: String },
    /// A workload: entitled to its own identity only.
    Workload { identity: SpiffeId },
}

/// Why a caller was not authenticated. Shown to the caller, so it never echoes the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("no bearer token in the `authorization` header")]
    MissingToken,
    #[error("the bearer token is not valid: {0}")]
    Invalid(String),
    /// A token that was checked and refused (expired, of the wrong account, its pod gone).
    #[error("the bearer token is refused: {0}")]
    Refused(String),
    #[error("the token could not be checked: {0}")]
    Unavailable(String),
}

/// Turns a bearer token into a [`Caller`].
pub trait Authenticator: Send + Sync + fmt::Debug + 'static {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>>;
}

/// Extracts the token of `authorization: Bearer <token>`.
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, AuthError> {
    let value = metadata
        .get("authorization")
        .ok_or(AuthError::MissingToken)?;
    let value = value
        .to_str()
        .map_err(|_| AuthError::Invalid("header is not ASCII".to_owned()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| AuthError::Invalid("expected `Bearer <token>`".to_owned()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    Ok(token)
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unavailable(_) => tonic::Status::unavailable(e.to_string()),
            AuthError::Refused(_) => tonic::Status::permission_denied(e.to_string()),
            _ => tonic::Status::unauthenticated(e.to_string()),
        }
    }
}

// === adapters ===

/// Refuses everyone: the CA when no authenticator is configured (nothing is issued unauthenticated).
#[derive(Debug, Clone, Copy, Default)]
pub struct DenyAll;

impl Authenticator for DenyAll {
    fn authenticate<'a>(&'a self, _token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(std::future::ready(Err(AuthError::Invalid(
            "no authenticator is configured".to_owned(),
        ))))
    }
}

/// Gates WDS streams on the TLS port with the same bearer tokens as the CA.
#[derive(Debug, Clone)]
pub struct XdsTokenCheck {
    inner: std::sync::Arc<dyn Authenticator>,
}

impl XdsTokenCheck {
    pub fn new(inner: std::sync::Arc<dyn Authenticator>) -> Self {
        Self { inner }
    }
}

impl ambit_xds::server::Authenticator for XdsTokenCheck {
    fn authenticate<'a>(&'a self, metadata: &'a MetadataMap) -> ambit_xds::server::AuthFuture<'a> {
        Box::pin(async move {
            let token = bearer_token(metadata)?;
            let caller = self.inner.authenticate(token).await?;
            Ok(ambit_xds::server::ClientId::new(match caller {
                Caller::NodeProxy { node } => format!("node-proxy/{node}"),
                Caller::Workload { identity } => identity.to_string(),
            }))
        })
    }
}

// === BootstrapTokens ===

/// Per-node bootstrap tokens from a file: one `<token> <node-name>` pair per line, `#` comments.
#[derive(Clone)]
pub struct BootstrapTokens {
    /// SHA-256 of each token → node name.
    nodes: HashMap<Vec<u8>, String>,
}

/// A bootstrap token file that cannot be used, with the line at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFileError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: expected `<token> <node-name>`")]
    Syntax { path: String, line: usize },
    #[error("{path}:{line}: a token must be at least 16 characters")]
    WeakToken { path: String, line: usize },
}

impl BootstrapTokens {
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: display.clone(),
            source,
        })?;
        Self::parse(&text, &display)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, TokenFileError> {
        let mut nodes = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(token), Some(node), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(TokenFileError::Syntax {
                    path: origin.to_owned(),
                    line: n + 1,
                });
            };
            if token.len() < 16 {
                return Err(TokenFileError::WeakToken {
                    path: origin.to_owned(),
                    line: n + 1,
                });
            }
            nodes.insert(digest_of(token), node.to_owned());
        }
        Ok(Self { nodes })
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

impl Authenticator for BootstrapTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        let result = match self.nodes.get(&digest_of(token)) {
            Some(node) => Ok(Caller::NodeProxy { node: node.clone() }),
            None => Err(AuthError::Invalid("unknown bootstrap token".to_owned())),
        };
        Box::pin(std::future::ready(result))
    }
}

impl fmt::Debug for BootstrapTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Node names only; never a token or its digest.
        let mut nodes: Vec<_> = self.nodes.values().collect();
        nodes.sort();
        f.debug_struct("BootstrapTokens")
            .field("nodes", &nodes)
            .finish()
    }
}

fn digest_of(token: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bootstrap_tokens_map_to_nodes() {
        let tokens = BootstrapTokens::parse(
            "# comment\n0123456789abcdef-node-a node-a\n\nfedcba9876543210-node-b node-b\n",
            "t",
        )
        .unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            tokens
                .authenticate("0123456789abcdef-node-a")
                .await
                .unwrap(),
            Caller::NodeProxy {
                node: "node-a".into()
            }
        );
        assert!(matches!(
            tokens.authenticate("0123456789abcdef-node-c").await,
            Err(AuthError::Invalid(_))
        ));
        assert!(
            !format!("{tokens:?}").contains("0123456789abcdef"),
            "Debug must not leak tokens"
        );
    }

    #[test]
    fn bad_token_files_name_the_line() {
        let err = BootstrapTokens::parse("0123456789abcdef node-a\nonly-one-field\n", "tokens.txt")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "tokens.txt:2: expected `<token> <node-name>`"
        );
        let err = BootstrapTokens::parse("short node-a\n", "tokens.txt").unwrap_err();
        assert!(err.to_string().contains("tokens.txt:1"), "{err}");
    }

    #[test]
    fn bearer_header_parsing() {
        let mut md = MetadataMap::new();
        assert!(matches!(bearer_token(&md), Err(AuthError::MissingToken)));
        md.insert("authorization", "Basic abc".parse().unwrap());
        assert!(matches!(bearer_token(&md), Err(AuthError::Invalid(_))));
        md.insert("authorization", "Bearer tok".parse().unwrap());
        assert_eq!(bearer_token(&md).unwrap(), "tok");
    }
}
