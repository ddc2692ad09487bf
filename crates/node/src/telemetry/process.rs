//! Process metrics read from `/proc/self` at scrape time, under the names the Prometheus client
//! libraries use (`process_resident_memory_bytes`, `process_cpu_seconds_total`,
//! `process_open_fds`, `process_max_fds`, `process_start_time_seconds`).
//!
//! Reading `/proc` needs no privileges and no `unsafe`; a value that cannot be read (another
//! OS, a hardened `/proc`) is left out of the scrape rather than reported as zero.

use super::exposition::{family, sample};

/// Clock ticks per second in `/proc/<pid>/stat`. `USER_HZ` is part of Linux's user-space ABI
/// and is 100 on every architecture Ambit targets; reading it via `sysconf` would need `unsafe`.
const USER_HZ: f64 = 100.0;

/// Appends the process metrics that could be read.
pub(super) fn render(out: &mut String) {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_stat(&s));
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| parse_boot_time(&s));

    if let Some(rss) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_rss_bytes(&s))
    {
        let name = "process_resident_memory_bytes";
        family(out, name, "Resident memory size in bytes", "gauge");
        sample(out, name, &[], rss);
    }
    if let Some(stat) = stat {
        let name = "process_cpu_seconds_total";
        family(
            out,
            name,
            "Total user and system CPU time spent in seconds",
            "counter",
        );
        sample(out, name, &[], (stat.utime + stat.stime) as f64 / USER_HZ);
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        // The directory being listed holds one descriptor of its own.
        let open = entries.count().saturating_sub(1);
        let name = "process_open_fds";
        family(out, name, "Number of open file descriptors", "gauge");
        sample(out, name, &[], open);
    }
    if let Some(max) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| parse_max_fds(&s))
    {
        let name = "process_max_fds";
        family(
            out,
            name,
            "Maximum number of open file descriptors",
            "gauge",
        );
        sample(out, name, &[], max);
    }
    if let (Some(stat), Some(boot)) = (stat, boot_time) {
        let start = boot as f64 + stat.start_ticks as f64 / USER_HZ;
        let name = "process_start_time_seconds";
        family(
            out,
            name,
            "Start time of the process since unix epoch in seconds",
            "gauge",
        );
        sample(out, name, &[], start);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
}

/// Fields 14, 15 and 22 of `/proc/self/stat` (1-based, as in proc(5)). The command name (field
/// 2) is parenthesised and may hold spaces and parentheses, so counting starts after the last `)`.
fn parse_stat(s: &str) -> Option<Stat> {
    let rest = &s[s.rfind(')')? + 1..];
    // `rest` starts at field 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        start_ticks: field(22)?,
    })
}

/// `btime` from `/proc/stat`: boot time in Unix seconds.
fn parse_boot_time(s: &str) -> Option<u64> {
    s.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// `VmRSS:   1234 kB` from `/proc/self/status`, in bytes.
fn parse_rss_bytes(s: &str) -> Option<u64> {
    let line = s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The soft limit of `Max open files` from `/proc/self/limits`.
fn parse_max_fds(s: &str) -> Option<u64> {
    let line = s.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let s = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                 250 75 0 0 20 0 8 0 123456 1000000 500 18446744073709551615";
        let stat = parse_stat(s);
        assert_eq!(
            stat,
            Some(Stat {
                utime: 250,
                stime: 75,
                start_ticks: 123456
            })
        );
    }

    #[test]
    fn status_limits_and_boot_time_parse() {
        assert_eq!(
            parse_rss_bytes("Name:\tambit\nVmRSS:\t   2048 kB\n"),
            Some(2048 * 1024)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1048576              1048576              files\n";
        assert_eq!(parse_max_fds(limits), Some(1_048_576));
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_reports_itself() {
        let mut out = String::new();
        render(&mut out);
        for name in [
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(
                out.lines().any(|l| l.starts_with(name)),
                "{name} missing:\n{out}"
            );
        }
    }
}
