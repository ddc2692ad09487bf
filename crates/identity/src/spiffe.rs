//! SPIFFE identities in Istio's form: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! A workload's identity is the only thing the mesh authenticates: certificates carry it as their
//! single URI SAN, the TLS verifiers compare it, and authorization policy matches on it. It is
//! therefore parsed once, at the edge, into [`SpiffeId`] and [`TrustDomain`], and never handled
//! as a loose string inside the mesh.
//!
//! Invariants:
//! - A value of either type is always valid under the SPIFFE ID specification *and* Istio's
//!   `ns/<ns>/sa/<sa>` path form: lowercase trust domain of at most 255 bytes, no port, userinfo,
//!   query, fragment, percent-encoding, dot segment, empty segment or trailing slash; the whole id
//!   at most 2048 bytes.
//! - `Display` is canonical: `id.to_string().parse() == Ok(id)`, and a string that parses is
//!   exactly the `Display` of the value it parses to (no normalisation, so two different strings
//!   never name the same identity).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Longest trust domain the SPIFFE specification allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Longest SPIFFE id the SPIFFE specification allows, in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

const SCHEME: &str = "spiffe";
const NAMESPACE_KEYWORD: &str = "ns";
const SERVICE_ACCOUNT_KEYWORD: &str = "sa";

/// The trust domain of a mesh, e.g. `cluster.local`: the authority part of every SPIFFE id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

/// A workload identity, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
///
/// Shared and cheap to clone: identities are copied into maps, errors and log fields.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId(Arc<Parts>);

#[derive(PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Parts {
    // Field order matters for the derived `Ord`: ids sort by their string form.
    uri: String,
    trust_domain: TrustDomain,
    namespace: String,
    service_account: String,
}

/// Why a string is not a valid [`TrustDomain`] or Istio-form [`SpiffeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    #[error("empty SPIFFE id")]
    Empty,
    #[error("SPIFFE id is {len} bytes long; at most {MAX_SPIFFE_ID_LEN} are allowed")]
    TooLong { len: usize },
    #[error("SPIFFE id has no scheme; it must start with \"spiffe://\"")]
    MissingScheme,
    #[error("SPIFFE id has scheme {scheme:?}; it must be exactly \"spiffe\" (lowercase)")]
    WrongScheme { scheme: String },
    #[error("SPIFFE id must not have a query or fragment")]
    QueryOrFragment,
    #[error("SPIFFE id must not contain percent-encoding")]
    PercentEncoded,
    #[error("empty trust domain")]
    EmptyTrustDomain,
    #[error("trust domain is {len} bytes long; at most {MAX_TRUST_DOMAIN_LEN} are allowed")]
    TrustDomainTooLong { len: usize },
    #[error("trust domain {trust_domain:?} must not contain userinfo (\"@\")")]
    TrustDomainUserinfo { trust_domain: String },
    #[error("trust domain {trust_domain:?} must not contain a port")]
    TrustDomainPort { trust_domain: String },
    #[error("trust domain {trust_domain:?} must be lowercase")]
    TrustDomainUppercase { trust_domain: String },
    #[error(
        "trust domain {trust_domain:?} contains {ch:?}; only a-z, 0-9, '.', '-' and '_' are allowed"
    )]
    TrustDomainChar { trust_domain: String, ch: char },
    #[error("SPIFFE id has no namespace; expected /ns/<namespace>/sa/<service-account>")]
    MissingNamespace,
    #[error("SPIFFE id has no service account; expected /ns/<namespace>/sa/<service-account>")]
    MissingServiceAccount,
    #[error("path segment {position} is {found:?}; expected {expected:?}")]
    WrongKeyword {
        position: usize,
        expected: &'static str,
        found: String,
    },
    #[error("SPIFFE id has {count} path segments; Istio's form has exactly 4")]
    ExtraSegments { count: usize },
    #[error("SPIFFE id has an empty path segment")]
    EmptySegment,
    #[error("SPIFFE id must not contain \".\" or \"..\" path segments")]
    DotSegment,
    #[error("SPIFFE id must not end with \"/\"")]
    TrailingSlash,
    #[error(
        "path segment {segment:?} contains {ch:?}; only A-Z, a-z, 0-9, '.', '-' and '_' are allowed"
    )]
    PathChar { segment: String, ch: char },
}

// === impl TrustDomain ===

impl TrustDomain {
    /// Validates `name` (e.g. `cluster.local`, without scheme) as a trust domain.
    pub fn new(name: impl Into<String>) -> Result<Self, SpiffeIdError> {
        let name = name.into();
        validate_trust_domain(&name)?;
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({:?})", self.0)
    }
}

impl AsRef<str> for TrustDomain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// === impl SpiffeId ===

impl SpiffeId {
    /// Builds `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
    pub fn new(
        trust_domain: TrustDomain,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, SpiffeIdError> {
        let namespace = namespace.into();
        let service_account = service_account.into();
        validate_segment(&namespace)?;
        validate_segment(&service_account)?;
        let uri = format!(
            "{SCHEME}://{trust_domain}/{NAMESPACE_KEYWORD}/{namespace}/{SERVICE_ACCOUNT_KEYWORD}/{service_account}"
        );
        if uri.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: uri.len() });
        }
        Ok(Self(Arc::new(Parts {
            uri,
            trust_domain,
            namespace,
            service_account,
        })))
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.0.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.0.service_account
    }

    /// The URI form, as carried in a certificate's URI SAN.
    pub fn as_str(&self) -> &str {
        &self.0.uri
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: s.len() });
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(SpiffeIdError::MissingScheme);
        };
        // The SPIFFE specification makes the scheme case-sensitive, unlike generic URIs.
        if scheme != SCHEME {
            return Err(SpiffeIdError::WrongScheme {
                scheme: scheme.to_owned(),
            });
        }
        if rest.contains(['?', '#']) {
            return Err(SpiffeIdError::QueryOrFragment);
        }
        if rest.contains('%') {
            return Err(SpiffeIdError::PercentEncoded);
        }
        let (authority, path) = match rest.split_once('/') {
            Some((authority, path)) => (authority, Some(path)),
            None => (rest, None),
        };
        let trust_domain = TrustDomain::new(authority)?;
        let Some(path) = path else {
            return Err(SpiffeIdError::MissingNamespace);
        };
        if path.is_empty() || path.ends_with('/') {
            return Err(SpiffeIdError::TrailingSlash);
        }
        let segments: Vec<&str> = path.split('/').collect();
        for segment in &segments {
            validate_segment(segment)?;
        }
        let keyword = |position: usize, expected: &'static str| match segments.get(position) {
            Some(found) if *found != expected => Err(SpiffeIdError::WrongKeyword {
                position,
                expected,
                found: (*found).to_owned(),
            }),
            _ => Ok(()),
        };
        keyword(0, NAMESPACE_KEYWORD)?;
        let Some(namespace) = segments.get(1) else {
            return Err(SpiffeIdError::MissingNamespace);
        };
        keyword(2, SERVICE_ACCOUNT_KEYWORD)?;
        let Some(service_account) = segments.get(3) else {
            return Err(SpiffeIdError::MissingServiceAccount);
        };
        if segments.len() > 4 {
            return Err(SpiffeIdError::ExtraSegments {
                count: segments.len(),
            });
        }
        Ok(Self(Arc::new(Parts {
            uri: s.to_owned(),
            trust_domain,
            namespace: (*namespace).to_owned(),
            service_account: (*service_account).to_owned(),
        })))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({:?})", self.as_str())
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

// === validation helpers ===

fn validate_trust_domain(name: &str) -> Result<(), SpiffeIdError> {
    if name.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong { len: name.len() });
    }
    let owned = || name.to_owned();
    if name.contains('@') {
        return Err(SpiffeIdError::TrustDomainUserinfo {
            trust_domain: owned(),
        });
    }
    if name.contains(':') {
        return Err(SpiffeIdError::TrustDomainPort {
            trust_domain: owned(),
        });
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(SpiffeIdError::TrustDomainUppercase {
            trust_domain: owned(),
        });
    }
    match name.chars().find(|&c| !is_trust_domain_char(c)) {
        Some(ch) => Err(SpiffeIdError::TrustDomainChar {
            trust_domain: owned(),
            ch,
        }),
        None => Ok(()),
    }
}

/// Validates one path segment (a keyword, a namespace or a service account name).
fn validate_segment(segment: &str) -> Result<(), SpiffeIdError> {
    match segment {
        "" => Err(SpiffeIdError::EmptySegment),
        "." | ".." => Err(SpiffeIdError::DotSegment),
        _ if segment.contains('%') => Err(SpiffeIdError::PercentEncoded),
        _ => match segment.chars().find(|&c| !is_path_char(c)) {
            Some(ch) => Err(SpiffeIdError::PathChar {
                segment: segment.to_owned(),
                ch,
            }),
            None => Ok(()),
        },
    }
}

fn is_trust_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

#[cfg(test)]
mod tests;
