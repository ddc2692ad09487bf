//! The unit both ends of the protocol exchange: a named, versioned `Any`.

use std::fmt::Write as _;

/// The subscription name meaning "every resource of the type".
pub(crate) const WILDCARD: &str = "*";

/// One xDS resource as the store and the handlers see it.
///
/// On the wire it becomes an `envoy.service.discovery.v3.Resource` whose `version` is
/// [`Resource::version`] as 16 lowercase hex digits.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Canonical name, unique within its type URL (e.g. a workload uid).
    pub name: String,
    /// Other names a client may subscribe by (e.g. `network/10.0.0.1` for a workload).
    pub aliases: Vec<String>,
    /// The resource itself.
    pub body: prost_types::Any,
}

impl Resource {
    /// A resource without aliases.
    pub fn new(name: impl Into<String>, body: prost_types::Any) -> Self {
        Self {
            name: name.into(),
            aliases: Vec::new(),
            body,
        }
    }

    /// Adds aliases, builder style.
    #[must_use]
    pub fn with_aliases<I, S>(mut self, aliases: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.aliases.extend(aliases.into_iter().map(Into::into));
        self
    }

    /// The version of this resource: a hash of `body.value`, stable across processes.
    pub fn version(&self) -> u64 {
        version_of(&self.body.value)
    }
}

/// FNV-1a (64 bit) of the encoded body.
///
/// Why FNV and not `DefaultHasher`: versions are compared across processes (a client
/// reconnecting to another replica sends the versions it holds), so the hash must be fixed by
/// this code, not by the standard library's unspecified algorithm or a random seed. A 64-bit
/// hash is what istiod uses for resource versions too; a collision would only matter between two
/// successive bodies of the same resource.
pub(crate) fn version_of(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// Renders a version the way it travels: 16 lowercase hex digits.
pub(crate) fn format_version(version: u64) -> String {
    let mut out = String::with_capacity(16);
    // Writing to a String cannot fail.
    let _ = write!(out, "{version:016x}");
    out
}

/// Parses a version a client reported; `None` for anything this server did not produce.
pub(crate) fn parse_version(text: &str) -> Option<u64> {
    if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_fixed_by_the_bytes() {
        // FNV-1a reference values.
        assert_eq!(version_of(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(version_of(b"a"), 0xaf63_dc4c_8601_ec8c);
        let a = Resource::new(
            "w",
            prost_types::Any {
                type_url: "t".into(),
                value: vec![1, 2],
            },
        );
        let mut b = a.clone().with_aliases(["x"]);
        assert_eq!(
            a.version(),
            b.version(),
            "aliases are not part of the version"
        );
        b.body.value.push(3);
        assert_ne!(a.version(), b.version());
    }

    #[test]
    fn versions_round_trip_and_foreign_ones_are_rejected() {
        for v in [0, 1, u64::MAX, 0xdead_beef] {
            assert_eq!(parse_version(&format_version(v)), Some(v));
        }
        assert_eq!(parse_version("2024-01-01"), None);
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("+000000000000001"), None);
    }
}
