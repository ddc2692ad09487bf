//! A namespace's own addresses from its procfs `net/` files.
//!
//! - `fib_trie` prints the IPv4 routing tries; every address configured on an interface has a
//!   local route, printed as a leaf (`|-- 10.1.2.3`) followed by its alias lines, one of which
//!   is `/32 host LOCAL`. Network, broadcast and wider local routes (`127.0.0.0/8`) have other
//!   alias lines and are not addresses.
//! - `if_inet6` lists IPv6 addresses, one per line: 32 hex digits, then ifindex, prefix length,
//!   scope, flags and interface name.
//!
//! Loopback, link-local and unspecified addresses are dropped: no pod is known by them, and
//! every namespace has them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The IPv4 addresses of the namespace whose `fib_trie` this is, in order of appearance,
/// without duplicates (the main and local tries both list them).
pub(super) fn local_ipv4(fib_trie: &str) -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in fib_trie.lines() {
        let line = line.trim();
        if let Some(address) = line.strip_prefix("|-- ") {
            leaf = address.trim().parse().ok();
        } else if line.starts_with('/') {
            let mut words = line.split_whitespace();
            let host_local = words.next() == Some("/32")
                && words.next() == Some("host")
                && words.next() == Some("LOCAL");
            if let Some(address) = leaf.filter(|a| host_local && usable(IpAddr::V4(*a)))
                && !found.contains(&address)
            {
                found.push(address);
            }
        } else {
            // A prefix node (`+-- …`) or a table header: the next alias line belongs to none.
            leaf = None;
        }
    }
    found
}

/// The IPv6 addresses listed in an `if_inet6`, in order, without duplicates.
pub(super) fn ipv6(if_inet6: &str) -> Vec<Ipv6Addr> {
    let mut found = Vec::new();
    for line in if_inet6.lines() {
        let Some(hex) = line.split_whitespace().next() else {
            continue;
        };
        if hex.len() != 32 {
            continue;
        }
        let Ok(bits) = u128::from_str_radix(hex, 16) else {
            continue;
        };
        let address = Ipv6Addr::from(bits);
        if usable(IpAddr::V6(address)) && !found.contains(&address) {
            found.push(address);
        }
    }
    found
}

/// Whether a pod could be known by `ip`.
fn usable(ip: IpAddr) -> bool {
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || link_local)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A pod namespace with two addresses on one interface, as Linux 6.x prints it.
    const FIB_TRIE: &str = "\
Main:
  +-- 0.0.0.0/1 2 0 2
     +-- 10.211.3.0/24 2 0 2
        +-- 10.211.3.0/29 2 1 2
           |-- 10.211.3.0
              /24 link UNICAST
           +-- 10.211.3.4/31 1 0 0
              |-- 10.211.3.4
                 /32 host LOCAL
              |-- 10.211.3.5
                 /32 host LOCAL
        |-- 10.211.3.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/1 2 0 2
     +-- 10.211.3.0/24 2 0 2
           +-- 10.211.3.4/31 1 0 0
              |-- 10.211.3.4
                 /32 host LOCAL
              |-- 10.211.3.5
                 /32 host LOCAL
     |-- 169.254.1.1
        /32 host LOCAL
";

    const IF_INET6: &str = "\
00000000000000000000000000000001 01 80 10 80       lo
fe800000000000003482c3fffe34de7e 03 40 20 80     eth0
fd000211000000000000000000000005 03 40 00 80     eth0
not-an-address 03 40 00 80 eth0
";

    #[test]
    fn ipv4_addresses_are_the_host_local_slash_32_leaves() {
        let want: Vec<Ipv4Addr> =
            vec!["10.211.3.4".parse().unwrap(), "10.211.3.5".parse().unwrap()];
        assert_eq!(local_ipv4(FIB_TRIE), want);
    }

    #[test]
    fn ipv6_addresses_skip_loopback_link_local_and_garbage() {
        let want: Vec<Ipv6Addr> = vec!["fd00:211::5".parse().unwrap()];
        assert_eq!(ipv6(IF_INET6), want);
    }

    #[test]
    fn an_empty_namespace_has_no_addresses() {
        let lo_only =
            "Main:\n  +-- 127.0.0.0/8 2 0 2\n     |-- 127.0.0.1\n        /32 host LOCAL\n";
        assert!(local_ipv4(lo_only).is_empty());
        assert!(local_ipv4("").is_empty());
        assert!(ipv6("").is_empty());
    }
}
