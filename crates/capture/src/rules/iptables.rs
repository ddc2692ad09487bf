//! The iptables backend: `nat` chains `AMBIT_PREROUTING` and `AMBIT_OUTPUT`, jumped to from
//! `PREROUTING` and `OUTPUT`, written with `iptables-restore --noflush` (and the `ip6tables`
//! pair for IPv6).
//!
//! Each change is one restore file, applied as one transaction. Install declares both chains
//! (which creates or empties them), refills them, and adds the jumps only where they are
//! missing, so a reinstall never leaves a moment without rules and never duplicates a jump.
//! Remove deletes the jumps that exist, then the chains.
//!
//! Rules are written exactly as `iptables-save` prints them, so checking is a comparison of
//! lines.

use ambit_netns::Netns;
use ambit_proto::ports::{HBONE, INBOUND_PASSTHROUGH, OUTBOUND, PROBE_SOURCE, PROXY_MARK};

use super::{PROXY_MARK_MASK, RulesError, run};

const PREROUTING: &str = "AMBIT_PREROUTING";
const OUTPUT: &str = "AMBIT_OUTPUT";

/// An address family, with its pair of tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

impl Family {
    fn restore(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }

    fn save(self) -> &'static str {
        match self {
            Self::V4 => "iptables-save",
            Self::V6 => "ip6tables-save",
        }
    }
}

pub(super) fn install(netns: &Netns, family: Family) -> Result<(), RulesError> {
    let current = Current::read(netns, family)?;
    let mut file = String::from("*nat\n");
    for chain in [PREROUTING, OUTPUT] {
        file.push_str(&format!(":{chain} - [0:0]\n-F {chain}\n"));
    }
    for rule in rules(family) {
        file.push_str(&rule);
        file.push('\n');
    }
    for jump in jumps() {
        if !current.rules.contains(&jump) {
            file.push_str(&jump);
            file.push('\n');
        }
    }
    file.push_str("COMMIT\n");
    run(netns, family.restore(), &["--noflush"], &file).map(drop)
}

pub(super) fn remove(netns: &Netns, family: Family) -> Result<(), RulesError> {
    let current = Current::read(netns, family)?;
    if !current.chains && current.rules.is_empty() {
        return Ok(());
    }
    let mut file = String::from("*nat\n");
    // Declaring the chains creates any that is missing, so the deletions below cannot fail.
    for chain in [PREROUTING, OUTPUT] {
        file.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for jump in jumps() {
        for _ in current.rules.iter().filter(|r| **r == jump) {
            file.push_str(&jump.replacen("-A ", "-D ", 1));
            file.push('\n');
        }
    }
    for chain in [PREROUTING, OUTPUT] {
        file.push_str(&format!("-F {chain}\n-X {chain}\n"));
    }
    file.push_str("COMMIT\n");
    run(netns, family.restore(), &["--noflush"], &file).map(drop)
}

pub(super) fn check(netns: &Netns, family: Family) -> Result<(), RulesError> {
    let current = Current::read(netns, family)?;
    if !current.chains && current.rules.is_empty() {
        return Err(RulesError::Missing);
    }
    let mut expected = jumps();
    expected.extend(rules(family));
    let mut found = current.rules;
    // iptables-save lists user chains in its own order; order matters only within a chain.
    expected.sort_by_key(|rule| chain_of(rule).to_owned());
    found.sort_by_key(|rule| chain_of(rule).to_owned());
    if expected == found {
        Ok(())
    } else {
        Err(RulesError::Differ { expected, found })
    }
}

/// The rules of both chains, as `iptables-save` prints them.
fn rules(family: Family) -> Vec<String> {
    let mut rules = Vec::new();
    if family == Family::V4 {
        rules.push(format!("-A {PREROUTING} -s {PROBE_SOURCE}/32 -j ACCEPT"));
    }
    rules.extend([
        format!("-A {PREROUTING} -p tcp -m tcp --dport {HBONE} -j ACCEPT"),
        format!("-A {PREROUTING} -p tcp -j REDIRECT --to-ports {INBOUND_PASSTHROUGH}"),
        format!("-A {OUTPUT} -m mark --mark {PROXY_MARK:#x}/{PROXY_MARK_MASK:#x} -j ACCEPT"),
        format!("-A {OUTPUT} -o lo -j ACCEPT"),
        format!("-A {OUTPUT} -p tcp -j REDIRECT --to-ports {OUTBOUND}"),
    ]);
    rules
}

/// The jumps from the built-in chains into ours.
fn jumps() -> Vec<String> {
    vec![
        format!("-A PREROUTING -j {PREROUTING}"),
        format!("-A OUTPUT -j {OUTPUT}"),
    ]
}

fn chain_of(rule: &str) -> &str {
    rule.split_whitespace().nth(1).unwrap_or_default()
}

/// What the `nat` table holds of ours: every rule in our chains and every jump into them.
#[derive(Debug)]
struct Current {
    /// Whether either chain exists.
    chains: bool,
    rules: Vec<String>,
}

impl Current {
    fn read(netns: &Netns, family: Family) -> Result<Self, RulesError> {
        let output = run(netns, family.save(), &["-t", "nat"], "")?;
        Ok(Self::parse(&String::from_utf8_lossy(&output.stdout)))
    }

    fn parse(save: &str) -> Self {
        let ours = |chain: &str| chain == PREROUTING || chain == OUTPUT;
        let mut current = Self {
            chains: false,
            rules: Vec::new(),
        };
        for line in save.lines().map(str::trim) {
            if let Some(declaration) = line.strip_prefix(':') {
                current.chains |= ours(declaration.split_whitespace().next().unwrap_or_default());
            } else if line.starts_with("-A ") {
                let target = line.split_once(" -j ").map(|(_, t)| t.trim());
                if ours(chain_of(line)) || target.is_some_and(ours) {
                    current.rules.push(line.to_owned());
                }
            }
        }
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_our_chains_and_jumps_out_of_a_save_listing() {
        let save = "# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:AMBIT_OUTPUT - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -j AMBIT_OUTPUT
-A AMBIT_OUTPUT -o lo -j ACCEPT
COMMIT
";
        let current = Current::parse(save);
        assert!(current.chains);
        assert_eq!(
            current.rules,
            [
                "-A OUTPUT -j AMBIT_OUTPUT",
                "-A AMBIT_OUTPUT -o lo -j ACCEPT"
            ]
        );
        let empty = Current::parse("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n");
        assert!(!empty.chains && empty.rules.is_empty());
    }

    #[test]
    fn ipv6_rules_have_no_probe_exception() {
        assert_eq!(rules(Family::V4).len(), 6);
        assert_eq!(rules(Family::V6).len(), 5);
        assert!(rules(Family::V6).iter().all(|r| !r.contains("169.254")));
    }
}
