//! What `/proc` says about the machine and the processes taking part: resident memory and CPU
//! time of a process, and the machine's description.
//!
//! `/proc` reports CPU time in USER_HZ ticks, which Linux fixes at 100 per second for
//! userspace whatever the kernel's internal tick rate.

use std::time::Duration;

const USER_HZ: f64 = 100.0;

/// Resident set size of `pid` in MB (VmRSS), 0 if it cannot be read.
pub(crate) fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// User plus system CPU seconds `pid` has used (all its threads).
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start with field 3, the state.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field(14) + field(15)) / USER_HZ
}

/// User plus system CPU seconds of this process and of its children it has waited for (the
/// load generators run to completion through `Command::output`).
pub(crate) fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // utime, stime, cutime, cstime: fields 14 to 17, counted from 3 here.
    fields.get(11..15).map_or(0.0, |f| f.iter().sum::<f64>()) / USER_HZ
}

/// CPU used between [`Meter::start`] and [`Meter::stop`] by every process taking part (this
/// one with its clients and servers, its finished load generators, the long-running servers
/// and the node proxies) and by the node proxies alone. Unlike the machine's busy time, this
/// leaves out whatever else runs on the machine; the kernel's network work is included, as it
/// mostly runs in the context of the process sending.
#[derive(Debug)]
pub(crate) struct Meter {
    proxies: Vec<u32>,
    others: Vec<u32>,
    start_all: f64,
    start_proxies: f64,
}

/// CPU seconds used during a measurement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuUsed {
    pub(crate) all: f64,
    pub(crate) proxies: f64,
}

impl Meter {
    /// `proxies` are the node proxies, `others` further long-running processes taking part.
    pub(crate) fn start(proxies: &[u32], others: &[u32]) -> Self {
        let mut meter = Self {
            proxies: proxies.to_vec(),
            others: others.to_vec(),
            start_all: 0.0,
            start_proxies: 0.0,
        };
        (meter.start_all, meter.start_proxies) = meter.now();
        meter
    }

    pub(crate) fn stop(self) -> CpuUsed {
        let (all, proxies) = self.now();
        CpuUsed {
            all: all - self.start_all,
            proxies: proxies - self.start_proxies,
        }
    }

    fn now(&self) -> (f64, f64) {
        let proxies: f64 = self.proxies.iter().map(|p| cpu_seconds(*p)).sum();
        let others: f64 = self.others.iter().map(|p| cpu_seconds(*p)).sum();
        (proxies + others + own_cpu_seconds(), proxies)
    }
}

/// The machine the figures were measured on.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) cpus: usize,
    pub(crate) model: String,
    pub(crate) kernel: String,
    pub(crate) memory_gb: f64,
}

impl Machine {
    pub(crate) fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_gb = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            model,
            kernel,
            memory_gb,
        }
    }

    pub(crate) fn line(&self) -> String {
        format!(
            "{} CPUs ({}), {:.0} GB RAM, Linux {}",
            self.cpus, self.model, self.memory_gb, self.kernel
        )
    }
}

/// The `p` quantile (0..=1) of sorted `samples`, in microseconds.
pub(crate) fn percentile_us(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Some(sorted[i].as_secs_f64() * 1e6)
}

/// The median of `values` (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}
