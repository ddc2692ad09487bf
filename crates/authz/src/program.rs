//! [`Program`]: a policy's rules flattened into one array of tests, the form a decision walks.
//!
//! A policy is an OR of rules, a rule an AND of clauses, a clause an OR of matches, a match an
//! AND of fields, and a field an OR of entries (or, negated, a NOR). Rather than walking that
//! tree of boxed slices, compiling turns it into short-circuit code: every field becomes a
//! [`Test`] ("does any entry hold?"; two tests when it mixes exact strings and patterns) with
//! two continuations, where to go when it holds and where when it does not; a negated field
//! simply swaps them. A continuation is another test, "rule `r` matched" or "no rule matched".
//! Walking a policy is then one loop over one contiguous array, with a single dispatch per
//! test and no bookkeeping for the levels above.
//!
//! The walk and the tests are `#[inline(always)]`: `PolicyIndex::decide` has a single call
//! site for them, and inlined there the connection's fields are loaded once per decision
//! rather than once per policy (about 15% fewer instructions per decision than an out-of-line
//! walk, counted with callgrind on the benchmark).
//!
//! Invariants:
//! - Continuations only point forward (to a higher index) or to an outcome, so a walk ends
//!   after at most `ops.len()` tests. [`Builder`] ensures it: a test can only continue at
//!   tests added before it, and [`Builder::finish`] reverses the order.
//! - A walk reads the connection and the program and allocates nothing.
//! - Exact strings carry their hash; the peer's identity strings are hashed once per decision.

use std::net::IpAddr;

use ambit_proto::security::string_match::MatchType;
use ambit_proto::security::{self as wire};

use super::{Peer, fx_hash};

/// A policy's rules as tests with continuations. See the [module docs](self).
#[derive(Debug, Clone)]
pub(super) struct Program {
    entry: Next,
    ops: Box<[Op]>,
}

/// Where a walk goes next: the index of a test, or an outcome. Outcomes are numbered from
/// [`Next::FIRST_OUTCOME`] up, above any test index, so the walk tells them apart with the
/// same bounds check that fetches a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Next(u32);

#[derive(Debug, Clone)]
struct Op {
    test: Test,
    on_true: Next,
    on_false: Next,
}

/// One test on a connection: does any of these entries hold? A match's field becomes one
/// test, or two when it mixes exact strings with patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Test {
    DestinationPorts(Box<[u16]>),
    DestinationIps(Box<[Cidr]>),
    SourceIps(Box<[Cidr]>),
    /// The peer identity's namespace is one of these. Compared against "" when there is no
    /// identity, as ztunnel does (so only a pattern can hold then).
    NamespaceIs(Box<[Exact]>),
    NamespaceLike(Box<[Pattern]>),
    /// `(namespace, service account)` pairs; never hold without an identity.
    ServiceAccounts(Box<[(Box<str>, Box<str>)]>),
    /// The peer identity without `spiffe://` is one of these; never holds without an identity.
    PrincipalIs(Box<[Exact]>),
    PrincipalLike(Box<[Pattern]>),
}

/// A wire string match, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StrMatch {
    Exact(Exact),
    Pattern(Pattern),
}

/// An exact string with its hash, so most mismatches cost one integer comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Exact {
    hash: u64,
    value: Box<str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Pattern {
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// Any non-empty value.
    Presence,
}

/// An address block as a masked integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cidr {
    V4 {
        net: u32,
        mask: u32,
    },
    /// The address split into (high, low) halves: 8-byte aligned, so a test stays small.
    V6 {
        net: [u64; 2],
        mask: [u64; 2],
    },
}

/// Adds tests back to front; see [`Builder::test`].
#[derive(Debug, Default)]
pub(super) struct Builder {
    /// In reverse order of the final program.
    ops: Vec<Op>,
}

/// More tests or rules than a [`Next`] can address. Unreachable from the wire (a protobuf
/// message is at most 2 GiB and every test or rule costs at least two bytes of it), but
/// handled, not assumed.
#[derive(Debug)]
pub(super) struct TooLarge;

// === impl Program ===

impl Program {
    /// The index of the first rule that matches the connection.
    #[inline(always)]
    pub(super) fn first_match(&self, peer: &Peer<'_>) -> Option<usize> {
        let mut next = self.entry;
        // Outcomes lie above every test index, so `get` fails exactly on them.
        while let Some(op) = self.ops.get(next.0 as usize) {
            next = if op.test.holds(peer) {
                op.on_true
            } else {
                op.on_false
            };
        }
        next.rule()
    }

    /// A program whose walk ends at once in `outcome`.
    pub(super) fn constant(outcome: Next) -> Self {
        Self {
            entry: outcome,
            ops: Box::new([]),
        }
    }

    /// How many tests the program holds.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.ops.len()
    }
}

// === impl Next ===

impl Next {
    const FIRST_OUTCOME: u32 = 1 << 31;
    /// No rule matched.
    pub(super) const NO_MATCH: Next = Next(u32::MAX);
    /// The first rule matched.
    pub(super) const FIRST_RULE: Next = Next(Self::FIRST_OUTCOME);

    /// Rule `rule` matched.
    pub(super) fn matched(rule: usize) -> Result<Self, TooLarge> {
        match u32::try_from(rule) {
            Ok(r) if r < Self::NO_MATCH.0 - Self::FIRST_OUTCOME => {
                Ok(Next(Self::FIRST_OUTCOME + r))
            }
            _ => Err(TooLarge),
        }
    }

    /// The matching rule of an outcome.
    fn rule(self) -> Option<usize> {
        (self != Self::NO_MATCH).then(|| (self.0 - Self::FIRST_OUTCOME) as usize)
    }

    fn is_test(self) -> bool {
        self.0 < Self::FIRST_OUTCOME
    }
}

// === impl Builder ===

impl Builder {
    /// Adds `test` and returns where a walk starts it. Both continuations must already exist
    /// (outcomes, or tests this builder returned), so a program is built from its last test to
    /// its first.
    pub(super) fn test(
        &mut self,
        test: Test,
        on_true: Next,
        on_false: Next,
    ) -> Result<Next, TooLarge> {
        let at = Next(u32::try_from(self.ops.len()).map_err(|_| TooLarge)?);
        if !at.is_test() {
            return Err(TooLarge);
        }
        self.ops.push(Op {
            test,
            on_true,
            on_false,
        });
        Ok(at)
    }

    /// The program starting at `entry`, its tests in the order a walk meets them.
    pub(super) fn finish(self, entry: Next) -> Program {
        let last = self.ops.len().saturating_sub(1);
        // Added back to front: test `i` of the builder is test `last - i` of the program.
        let flip = |next: Next| {
            if next.is_test() {
                // `i <= last`, and `last` fit in a test index when it was handed out.
                Next((last - next.0 as usize) as u32)
            } else {
                next
            }
        };
        let ops = self
            .ops
            .into_iter()
            .rev()
            .map(|op| Op {
                on_true: flip(op.on_true),
                on_false: flip(op.on_false),
                test: op.test,
            })
            .collect();
        Program {
            entry: flip(entry),
            ops,
        }
    }
}

// === impl Test ===

impl Test {
    /// The tests a list of wire string matches becomes: exact values, then patterns (either
    /// may be absent). `is` and `like` make the test for the field at hand.
    pub(super) fn strings(
        matches: Box<[StrMatch]>,
        is: fn(Box<[Exact]>) -> Test,
        like: fn(Box<[Pattern]>) -> Test,
    ) -> Vec<Test> {
        let (mut exact, mut patterns) = (Vec::new(), Vec::new());
        for m in matches {
            match m {
                StrMatch::Exact(e) => exact.push(e),
                StrMatch::Pattern(p) => patterns.push(p),
            }
        }
        let exact = (!exact.is_empty()).then(|| is(exact.into()));
        let patterns = (!patterns.is_empty()).then(|| like(patterns.into()));
        exact.into_iter().chain(patterns).collect()
    }

    #[inline(always)]
    pub(super) fn holds(&self, peer: &Peer<'_>) -> bool {
        match self {
            // Not `contains`: its specialisation for integers is an out-of-line call, which
            // costs more than the two or three ports a rule lists.
            #[allow(clippy::manual_contains)]
            Test::DestinationPorts(ports) => ports.iter().any(|p| *p == peer.dst_port),
            Test::DestinationIps(cidrs) => cidrs.iter().any(|c| c.contains(peer.dst_ip)),
            Test::SourceIps(cidrs) => cidrs.iter().any(|c| c.contains(peer.src_ip)),
            Test::NamespaceIs(values) => Exact::any(values, peer.namespace, peer.namespace_hash),
            Test::NamespaceLike(patterns) => Pattern::any(patterns, peer.namespace),
            Test::ServiceAccounts(sas) => {
                peer.identified
                    && sas
                        .iter()
                        .any(|(ns, sa)| **ns == *peer.namespace && **sa == *peer.service_account)
            }
            Test::PrincipalIs(values) => {
                peer.identified && Exact::any(values, peer.principal, peer.principal_hash)
            }
            Test::PrincipalLike(patterns) => {
                peer.identified && Pattern::any(patterns, peer.principal)
            }
        }
    }
}

// === impl StrMatch ===

impl StrMatch {
    pub(super) fn read(m: &wire::StringMatch) -> Option<Self> {
        Some(match m.match_type.as_ref()? {
            MatchType::Exact(s) => StrMatch::Exact(Exact {
                hash: fx_hash(s),
                value: s.as_str().into(),
            }),
            MatchType::Prefix(s) => StrMatch::Pattern(Pattern::Prefix(s.as_str().into())),
            MatchType::Suffix(s) => StrMatch::Pattern(Pattern::Suffix(s.as_str().into())),
            MatchType::Presence(()) => StrMatch::Pattern(Pattern::Presence),
        })
    }

    /// `hash` is [`fx_hash`] of `value`.
    #[cfg(test)]
    fn matches(&self, value: &str, hash: u64) -> bool {
        match self {
            StrMatch::Exact(e) => Exact::any(std::slice::from_ref(e), value, hash),
            StrMatch::Pattern(p) => Pattern::any(std::slice::from_ref(p), value),
        }
    }
}

impl Exact {
    /// Whether `value` (whose [`fx_hash`] is `hash`) is one of `values`.
    #[inline]
    fn any(values: &[Exact], value: &str, hash: u64) -> bool {
        values.iter().any(|e| e.hash == hash && *e.value == *value)
    }
}

impl Pattern {
    #[inline]
    fn any(patterns: &[Pattern], value: &str) -> bool {
        patterns.iter().any(|p| match p {
            Pattern::Prefix(s) => value.starts_with(&**s),
            Pattern::Suffix(s) => value.ends_with(&**s),
            Pattern::Presence => !value.is_empty(),
        })
    }
}

// === impl Cidr ===

impl Cidr {
    pub(super) fn read(a: &wire::Address) -> Option<Self> {
        match a.address.len() {
            4 if a.length <= 32 => {
                let addr = u32::from_be_bytes(<[u8; 4]>::try_from(a.address.as_slice()).ok()?);
                let mask = u32::MAX.checked_shl(32 - a.length).unwrap_or(0);
                Some(Cidr::V4 {
                    net: addr & mask,
                    mask,
                })
            }
            16 if a.length <= 128 => {
                let addr = u128::from_be_bytes(<[u8; 16]>::try_from(a.address.as_slice()).ok()?);
                let mask = u128::MAX.checked_shl(128 - a.length).unwrap_or(0);
                Some(Cidr::V6 {
                    net: halves(addr & mask),
                    mask: halves(mask),
                })
            }
            _ => None,
        }
    }

    #[inline]
    fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Cidr::V4 { net, mask }, IpAddr::V4(ip)) => u32::from(ip) & mask == *net,
            (Cidr::V6 { net, mask }, IpAddr::V6(ip)) => {
                let [high, low] = halves(u128::from(ip));
                high & mask[0] == net[0] && low & mask[1] == net[1]
            }
            _ => false,
        }
    }
}

/// (high, low) 64-bit halves of a 128-bit address.
fn halves(addr: u128) -> [u64; 2] {
    [(addr >> 64) as u64, addr as u64]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(addr: &[u8], length: u32) -> Cidr {
        Cidr::read(&wire::Address {
            address: addr.to_vec(),
            length,
        })
        .unwrap()
    }

    #[test]
    fn cidrs_mask_host_bits_and_keep_families_apart() {
        let c = cidr(&[10, 1, 2, 3], 8);
        assert!(c.contains("10.200.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::ffff:10.0.0.1".parse().unwrap()));
        let all = cidr(&[0, 0, 0, 0], 0);
        assert!(all.contains("192.168.0.1".parse().unwrap()));
        let host = cidr(&[192, 168, 0, 1], 32);
        assert!(host.contains("192.168.0.1".parse().unwrap()));
        assert!(!host.contains("192.168.0.2".parse().unwrap()));
        let v6 = cidr(
            &"fd00::".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            16,
        );
        assert!(v6.contains("fd00:1::5".parse().unwrap()));
        assert!(!v6.contains("fd01::5".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        // Prefixes ending in the low half, and the whole space.
        let low = cidr(
            &"fd00::1:2:0:0"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
            96,
        );
        assert!(low.contains("fd00::1:2:3:4".parse().unwrap()));
        assert!(!low.contains("fd00::1:3:3:4".parse().unwrap()));
        let any6 = cidr(&[0; 16], 0);
        assert!(any6.contains("fd00::1".parse().unwrap()));
        for (bytes, len) in [(vec![1, 2, 3], 8), (vec![1, 2, 3, 4], 33)] {
            assert!(
                Cidr::read(&wire::Address {
                    address: bytes,
                    length: len
                })
                .is_none()
            );
        }
    }

    #[test]
    fn string_matches_follow_ztunnel() {
        let read = |m: MatchType| {
            StrMatch::read(&wire::StringMatch {
                match_type: Some(m),
            })
            .unwrap()
        };
        let exact = |s: &str| read(MatchType::Exact(s.into()));
        let prefix = |s: &str| read(MatchType::Prefix(s.into()));
        let suffix = |s: &str| read(MatchType::Suffix(s.into()));
        let presence = read(MatchType::Presence(()));
        let cases = [
            (exact("foo"), "foo", true),
            (exact("foo"), "", false),
            (prefix("foo"), "foobar", true),
            (prefix("foo"), "barfoo", false),
            (suffix("foo"), "barfoo", true),
            (suffix("foo"), "foobar", false),
            (presence.clone(), "x", true),
            (presence, "", false),
        ];
        for (m, value, expected) in cases {
            assert_eq!(
                m.matches(value, fx_hash(value)),
                expected,
                "{m:?} on {value:?}"
            );
        }
    }

    #[test]
    fn builder_orders_tests_as_a_walk_meets_them() {
        // (port 80 OR port 81) → rule 0; else no match. Built back to front.
        let mut b = Builder::default();
        let ports = |p: u16| Test::DestinationPorts(Box::new([p]));
        let matched = Next::matched(0).unwrap();
        let second = b.test(ports(81), matched, Next::NO_MATCH).unwrap();
        let first = b.test(ports(80), matched, second).unwrap();
        let program = b.finish(first);
        assert_eq!(program.entry, Next(0));
        assert_eq!(program.ops[0].test, ports(80));
        assert_eq!(program.ops[0].on_false, Next(1));
        assert_eq!(program.ops[1].test, ports(81));
        assert_eq!(program.len(), 2);
        assert_eq!(matched.rule(), Some(0));
        assert_eq!(Next::NO_MATCH.rule(), None);
        assert!(Next::matched(usize::MAX).is_err());
    }
}
