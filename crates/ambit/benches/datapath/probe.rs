//! What `/proc` says about the machine and the node proxies: resident memory, CPU time of a
//! process, busy time of the whole machine, and the machine's description.
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

/// CPU seconds the whole machine has spent busy (all CPUs; not idle, not waiting for I/O).
pub(crate) fn busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    (total - idle) / USER_HZ
}

/// CPU used between [`Meter::start`] and [`Meter::stop`]: by the machine and by the node
/// proxies.
#[derive(Debug)]
pub(crate) struct Meter {
    pids: Vec<u32>,
    busy: f64,
    proxies: f64,
}

/// CPU seconds used during a measurement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuUsed {
    pub(crate) machine: f64,
    pub(crate) proxies: f64,
}

impl Meter {
    pub(crate) fn start(pids: &[u32]) -> Self {
        Self {
            pids: pids.to_vec(),
            busy: busy_seconds(),
            proxies: pids.iter().map(|p| cpu_seconds(*p)).sum(),
        }
    }

    pub(crate) fn stop(self) -> CpuUsed {
        CpuUsed {
            machine: busy_seconds() - self.busy,
            proxies: self.pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - self.proxies,
        }
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
    Some(if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}
