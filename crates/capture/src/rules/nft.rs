//! The nftables backend: table `inet ambit`, written with `nft -f -`.
//!
//! Install sends one file: declare the table (a no-op if it exists), delete it, define it
//! afresh. `nft -f` applies a file as one transaction, so a reinstall swaps old rules for new
//! ones with no gap, and a first install does not fail on the missing table.

use std::fmt::Write as _;

use ambit_netns::Netns;
use ambit_proto::ports::{HBONE, INBOUND_PASSTHROUGH, OUTBOUND, PROBE_SOURCE, PROXY_MARK};

use super::{PROXY_MARK_MASK, RulesError, run, run_unchecked};

const TABLE: &str = "inet ambit";

pub(super) fn install(netns: &Netns) -> Result<(), RulesError> {
    let mut file = format!("table {TABLE}\ndelete table {TABLE}\n");
    file.push_str(&ruleset());
    run(netns, "nft", &["-f", "-"], &file).map(drop)
}

pub(super) fn remove(netns: &Netns) -> Result<(), RulesError> {
    let file = format!("table {TABLE}\ndelete table {TABLE}\n");
    run(netns, "nft", &["-f", "-"], &file).map(drop)
}

pub(super) fn check(netns: &Netns) -> Result<(), RulesError> {
    let output = run_unchecked(netns, "nft", &["list", "table", "inet", "ambit"], "")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No such file or directory") {
            return Err(RulesError::Missing);
        }
        return Err(super::command_failed("nft", &output));
    }
    let expected = normalize(&ruleset());
    let found = normalize(&String::from_utf8_lossy(&output.stdout));
    if expected == found {
        Ok(())
    } else {
        Err(RulesError::Differ { expected, found })
    }
}

/// The definition of the table (see the [module docs](super) for what each rule is for).
/// Priority -100 is `dstnat`, spelled as a number because this nft rejects the name in an
/// `inet` output chain.
pub(super) fn ruleset() -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        "table {TABLE} {{
  chain prerouting {{
    type nat hook prerouting priority -100; policy accept;
    ip saddr {PROBE_SOURCE} accept
    tcp dport {HBONE} accept
    meta l4proto tcp redirect to :{INBOUND_PASSTHROUGH}
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    meta mark & {PROXY_MARK_MASK:#x} == {PROXY_MARK:#x} accept
    oifname \"lo\" accept
    meta l4proto tcp redirect to :{OUTBOUND}
  }}
}}
"
    );
    s
}

/// The rules of a table listing as `chain: statement` lines, in order, in one spelling: nft
/// lists hex values zero-padded (`0x00000fff`) and some priorities by name (`dstnat`), so both
/// are rewritten to the plain numbers [`ruleset`] uses.
pub(super) fn normalize(listing: &str) -> Vec<String> {
    let mut chain = None;
    let mut rules = Vec::new();
    for line in listing.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if let Some(name) = line.strip_prefix("chain ") {
            chain = Some(name.trim_end_matches('{').trim().to_owned());
            continue;
        }
        if line == "}" {
            chain = None;
            continue;
        }
        let Some(chain) = &chain else { continue };
        if line.is_empty() {
            continue;
        }
        let words: Vec<String> = line.split_whitespace().map(normalize_word).collect();
        rules.push(format!("{chain}: {}", words.join(" ")));
    }
    rules
}

fn normalize_word(word: &str) -> String {
    let (body, semicolon) = match word.strip_suffix(';') {
        Some(body) => (body, ";"),
        None => (word, ""),
    };
    let body = match body {
        "raw" => "-300".to_owned(),
        "mangle" => "-150".to_owned(),
        "dstnat" => "-100".to_owned(),
        "filter" => "0".to_owned(),
        "security" => "50".to_owned(),
        "srcnat" => "100".to_owned(),
        hex if hex.starts_with("0x") => match u64::from_str_radix(&hex[2..], 16) {
            Ok(value) => format!("{value:#x}"),
            Err(_) => hex.to_owned(),
        },
        other => other.to_owned(),
    };
    format!("{body}{semicolon}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `nft list table inet ambit` (nftables 1.0.6) prints after [`install`].
    const LISTING: &str = "table inet ambit {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip saddr 169.254.7.127 accept
		tcp dport 15008 accept
		meta l4proto tcp redirect to :15006
	}

	chain output {
		type nat hook output priority -100; policy accept;
		meta mark & 0x00000fff == 0x00000539 accept
		oifname \"lo\" accept
		meta l4proto tcp redirect to :15001
	}
}
";

    #[test]
    fn the_listing_of_the_installed_table_matches_the_ruleset() {
        assert_eq!(normalize(LISTING), normalize(&ruleset()));
        assert_eq!(normalize(LISTING).len(), 8, "{:#?}", normalize(LISTING));
    }

    #[test]
    fn a_changed_or_reordered_rule_is_a_difference() {
        let changed = LISTING.replace(":15001", ":15002");
        assert_ne!(normalize(&changed), normalize(&ruleset()));
        let reordered = LISTING.replace(
            "\t\toifname \"lo\" accept\n\t\tmeta l4proto tcp redirect to :15001\n",
            "\t\tmeta l4proto tcp redirect to :15001\n\t\toifname \"lo\" accept\n",
        );
        assert_ne!(reordered, LISTING);
        assert_ne!(normalize(&reordered), normalize(&ruleset()));
    }
}
